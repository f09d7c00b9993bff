// `acm2 user create`: validate, create master rows in one transaction, seed (or queue).

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { checkCreateInput, createUser } from '../core/users.js';
import { renderCreate } from '../ui/users.js';
import { EXIT, isAcm2Error } from '../errors.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  // Checked before the master is opened, so bad input leaves the disk untouched.
  const input = checkCreateInput(cfg.seedsDir, {
    email: String(opts.email),
    username: String(opts.username),
    wordpressUserId: opts.wordpressUserId,
    seedVersion: cfg.seedVersion,
    async: Boolean(opts.async),
  });
  const result = await usingMaster(cfg.master, (master) =>
    createUser({ master, dataDir: cfg.dataDir, seedsDir: cfg.seedsDir, lockTimeoutMs: cfg.lockTimeoutMs }, input),
  );
  const { seedError, ...shown } = result;
  out.result(shown, () => renderCreate(result));
  // The key exists nowhere else and is shown once: --quiet keeps the rest quiet, not the key.
  if (cfg.quiet && !cfg.json) process.stdout.write(`${result.apiKey}\n`);
  // Exit 1 for a failed seed; 3 or 70 when the environment or a bug stopped it (the key is shown either way).
  if (seedError !== undefined) process.exitCode = isAcm2Error(seedError) ? seedError.exitCode : EXIT.internal;
  else if (result.seed.status === 'failed') process.exitCode = EXIT.findings;
}
