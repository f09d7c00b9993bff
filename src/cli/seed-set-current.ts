// `acm2 seed set-current <v>`: make an intact version CURRENT, the one new users and seeds without
// --seed-version get. Rolling CURRENT back after a bad version at 3 a.m. is one command that checks
// the package first, not a hand edit of a file every seeding command reads.

import { assertSeedsDir, checkPackage, currentState, knownVersions, refuseSymlinkedVersion } from '../seed/package.js';
import { assertVersionName } from '../config.js';
import { writeCurrent } from '../core/freeze.js';
import { PackageError, UsageError } from '../errors.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';
import { visible } from '../ui/text.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  // A bad name, a symlinked version, a typo: each refused as seed show and seed check refuse it.
  const version = assertVersionName(args[0]!);
  assertSeedsDir(cfg.seedsDir);
  refuseSymlinkedVersion(cfg.seedsDir, version);
  // A version that is not there is a typo (checked as seed check does); a broken one is refused
  // whole: every seed would then fail on it.
  if (!knownVersions(cfg.seedsDir).includes(version)) throw new UsageError(`no seed version '${version}' in ${cfg.seedsDir}: CURRENT was not changed`, 'unknown_version');
  const check = checkPackage(cfg.seedsDir, version);
  if (!check.ok) {
    const more = check.problems.length > 1 ? ` (and ${check.problems.length - 1} more: acm2 seed check ${version})` : '';
    throw new PackageError(`seed version ${version} is not intact (${check.problems[0]}${more}): CURRENT was not changed`);
  }
  const state = currentState(cfg.seedsDir);
  const previous = state.version ?? null;
  const changed = previous !== version;
  if (changed) writeCurrent(cfg.seedsDir, version);
  out.result({ version, previous, changed, ...(state.error === undefined ? {} : { previousError: state.error }) }, () => {
    const [v, was] = [visible(version), previous === null ? null : visible(previous)];
    return changed
      ? `CURRENT is now ${v} (was ${was ?? (state.error === undefined ? 'unset' : 'broken')}): new users, and seeds and backfills without --seed-version, get ${v}; users already seeded keep theirs.`
      : `CURRENT is already ${v}: nothing changed.`;
  });
}
