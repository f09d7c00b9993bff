// `acm2 diff`: user vs package, package vs package, or user vs user; exit 1 when they differ (like diff(1)).

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { planDiff, runDiff } from '../core/diff.js';
import { renderDiff } from '../ui/diff.js';
import { EXIT } from '../errors.js';
import { visibleDeep } from '../ui/text.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const req = planDiff({
    versions: args,
    users: (opts.user as string[] | undefined) ?? [],
    seedVersionFlag: opts.seedVersion === undefined ? undefined : String(opts.seedVersion),
    seedVersion: cfg.seedVersion,
  });
  const deps = { dataDir: cfg.dataDir, seedsDir: cfg.seedsDir };
  // Two packages need no master: do not create or touch one.
  const r = req.kind === 'packages' ? await runDiff(deps, req) : await usingMaster(cfg.master, (master) => runDiff({ ...deps, master }, req), { create: false, readOnly: true, pairWith: { dataDir: cfg.dataDir, write: false, read: true, notice: out.warn } });
  out.result(r, () => renderDiff(visibleDeep(r), { color: out.color }));
  if (!r.equal) process.exitCode = EXIT.findings;
}
