// `acm2 seed check [v...]`: full integrity check of the named versions (all when none named).
// Failures are findings: the report is printed, then the exit code is 1.

import { color } from '../ui/color.js';
import { assertSeedsDir, checkPackage, currentState, knownVersions, listPackages, refuseSymlinkedVersion } from '../seed/package.js';
import { assertVersionName } from '../config.js';
import { UsageError } from '../errors.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';
import { visibleDeep } from '../ui/text.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  // A name no version can have is refused as seed show refuses it, before the folder is looked at.
  for (const v of args) assertVersionName(v);
  // No seeds folder is said as such, whether versions are named or not (as seed list says it).
  assertSeedsDir(cfg.seedsDir);
  // listPackages refuses a seeds folder that does not exist, so a typo is not a silent 'ok'. It
  // lists a symlinked version too, which checkPackage then fails: the whole folder is not 'ok'.
  const versions = args.length > 0 ? args : listPackages(cfg.seedsDir).map((p) => p.version);
  // A version named explicitly that is a symlink is refused in seed show's words.
  for (const v of args) refuseSymlinkedVersion(cfg.seedsDir, v);
  // A version that is not there is a typo (exit 2), not a package that failed its check (exit 1).
  const known = knownVersions(cfg.seedsDir);
  const unknown = args.filter((v) => !known.includes(v));
  if (unknown.length > 0) throw new UsageError(`no seed version ${unknown.map((v) => `'${v}'`).join(', ')} in ${cfg.seedsDir}`, 'unknown_version');
  const packages = versions.map((v) => checkPackage(cfg.seedsDir, v));
  // Checking the whole folder checks CURRENT too: every command that relies on it would fail.
  const currentError = args.length === 0 ? currentState(cfg.seedsDir).error : undefined;
  const ok = packages.every((p) => p.ok) && currentError === undefined;
  out.result(currentError === undefined ? { ok, seedsDir: cfg.seedsDir, packages } : { ok, seedsDir: cfg.seedsDir, packages, currentError }, () => {
    // Versions and problems name what is on disk (folder and file names): shown escaped.
    const { seedsDir, packages: checked, currentError: brokenCurrent } = visibleDeep({ seedsDir: cfg.seedsDir, packages, currentError });
    const paint = (s: string, good: boolean) => (out.color ? (good ? color.green(s) : color.red(s)) : s);
    const lines = checked.map((p) => [`${p.version}  ${paint(p.ok ? 'ok' : 'FAILED', p.ok)}`, ...p.problems.map((x) => `  - ${x}`)].join('\n'));
    if (checked.length === 0) lines.push(`No seed packages in ${seedsDir}.`);
    if (brokenCurrent !== undefined) lines.push(`CURRENT  ${paint('FAILED', false)}\n  - ${brokenCurrent}`);
    return lines.join('\n');
  });
  // Not FindingsError: with --json that would print a second document after the report.
  if (!ok) process.exitCode = 1;
}
