// `acm2 user show <user>`: status from both master and user DB.

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { checkUserRef, resolveUser, userStatus } from '../core/users.js';
import { renderStatus } from '../ui/users.js';
import { visibleDeep } from '../ui/text.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const ref = checkUserRef(args[0]!);
  const s = await usingMaster(cfg.master, async (master) => userStatus({ master, dataDir: cfg.dataDir }, await resolveUser(master, ref, cfg.dataDir), { backups: true }), { create: false, readOnly: true, pairWith: { dataDir: cfg.dataDir, write: false, read: true, notice: out.warn } });
  out.result(s, () => renderStatus(visibleDeep(s)));
}
