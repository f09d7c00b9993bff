// `acm2 seed list`: every version in the seeds folder, CURRENT marked (reads manifests only).

import { makeTable } from '../ui/table.js';
import chalk from 'chalk';
import { listPackages } from '../seed/package.js';
import { formatBytes } from '../ui/reporter.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const packages = listPackages(cfg.seedsDir);
  out.result({ seedsDir: cfg.seedsDir, packages }, () => {
    if (packages.length === 0) return `No seed packages in ${cfg.seedsDir}.`;
    const table = makeTable(['', 'version', 'rows', 'files', 'bytes', 'packageSha256', 'created'], out.color);
    for (const p of packages) {
      const mark = p.current ? (out.color ? chalk.green('*') : '*') : '';
      if (p.error) table.push([mark, p.version, { colSpan: 5, content: `unreadable: ${p.error}` }]);
      else table.push([mark, p.version, p.rows, p.files, formatBytes(p.bytes), p.packageSha256.slice(0, 16), p.createdAt]);
    }
    return `${table.toString()}\n* = CURRENT (${cfg.seedsDir})`;
  });
}
