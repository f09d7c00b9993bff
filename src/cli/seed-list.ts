// `acm2 seed list`: every version in the seeds folder, CURRENT marked (reads manifests only).

import { makeTable } from '../ui/table.js';
import { color } from '../ui/color.js';
import { currentState, listPackages } from '../seed/package.js';
import { formatBytes } from '../ui/reporter.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';
import { visibleDeep } from '../ui/text.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const packages = listPackages(cfg.seedsDir);
  const current = currentState(cfg.seedsDir);
  // Like a package's `error`: present only when CURRENT is broken, so the usual document is unchanged.
  const doc = current.error === undefined ? { seedsDir: cfg.seedsDir, packages } : { seedsDir: cfg.seedsDir, packages, currentError: current.error };
  out.result(doc, () => {
    // Folder names and a CURRENT file's text are whatever is on disk: shown escaped.
    const { seedsDir, packages, currentError } = visibleDeep({ seedsDir: cfg.seedsDir, packages: doc.packages, currentError: current.error });
    const warning = currentError === undefined ? '' : `${out.color ? color.yellow('warning:') : 'warning:'} CURRENT is broken: ${currentError}`;
    if (packages.length === 0) return [`No seed packages in ${seedsDir}.`, warning].filter(Boolean).join('\n');
    const table = makeTable(['', 'version', 'rows', 'files', 'bytes', 'packageSha256', 'created'], out.color);
    for (const p of packages) {
      const mark = p.current ? (out.color ? color.green('*') : '*') : '';
      if (p.error) table.push([mark, p.version, { colSpan: 5, content: `not usable: ${p.error}` }]);
      else table.push([mark, p.version, p.rows, p.files, formatBytes(p.bytes), p.packageSha256.slice(0, 16), p.createdAt]);
    }
    const legend = currentError !== undefined ? warning : current.version !== undefined ? `* = CURRENT (${seedsDir})` : `No version is CURRENT in ${seedsDir}.`;
    return `${table.toString()}\n${legend}`;
  });
}
