// `acm2 user create`: validate, create master rows in one transaction, seed (or queue).

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { createUser } from '../core/users.js';
import { renderCreate } from '../ui/users.js';
import { EXIT } from '../errors.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const result = await usingMaster(cfg.master, (master) =>
    createUser(
      { master, dataDir: cfg.dataDir, seedsDir: cfg.seedsDir, lockTimeoutMs: cfg.lockTimeoutMs },
      {
        email: String(opts.email),
        username: String(opts.username),
        wordpressUserId: opts.wordpressUserId,
        seedVersion: cfg.seedVersion,
        async: Boolean(opts.async),
      },
    ),
  );
  out.result(result, () => renderCreate(result));
  if (result.seed.status === 'failed') process.exitCode = EXIT.findings;
}
