// `acm2 seed check [v...]`: full integrity check of the named versions (all when none named).
// Failures are findings: the report is printed, then the exit code is 1.

import chalk from 'chalk';
import { checkPackage, knownVersions, listPackages } from '../seed/package.js';
import { UsageError } from '../errors.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  // listPackages refuses a seeds folder that does not exist, so a typo is not a silent 'ok'.
  const versions = args.length > 0 ? args : listPackages(cfg.seedsDir).map((p) => p.version);
  // A version that is not there is a typo (exit 2), not a package that failed its check (exit 1).
  const known = knownVersions(cfg.seedsDir);
  const unknown = args.filter((v) => !known.includes(v));
  if (unknown.length > 0) throw new UsageError(`no seed version ${unknown.map((v) => `'${v}'`).join(', ')} in ${cfg.seedsDir}`, 'unknown_version');
  const packages = versions.map((v) => checkPackage(cfg.seedsDir, v));
  const ok = packages.every((p) => p.ok);
  out.result({ ok, seedsDir: cfg.seedsDir, packages }, () => {
    if (packages.length === 0) return `No seed packages in ${cfg.seedsDir}.`;
    const paint = (s: string, good: boolean) => (out.color ? (good ? chalk.green(s) : chalk.red(s)) : s);
    return packages
      .map((p) => [`${p.version}  ${paint(p.ok ? 'ok' : 'FAILED', p.ok)}`, ...p.problems.map((x) => `  - ${x}`)].join('\n'))
      .join('\n');
  });
  // Not FindingsError: with --json that would print a second document after the report.
  if (!ok) process.exitCode = 1;
}
