// `acm2 user show <user>`: status from both master and user DB.

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { resolveUser, userStatus } from '../core/users.js';
import { renderStatus } from '../ui/users.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const s = await usingMaster(cfg.master, async (master) => userStatus({ master, dataDir: cfg.dataDir }, await resolveUser(master, args[0]!)));
  out.result(s, () => renderStatus(s));
}
