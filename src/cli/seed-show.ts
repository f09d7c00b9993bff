// `acm2 seed show <v>`: check the package, then print its manifest (JSON) or a summary.

import { makeTable } from '../ui/table.js';
import { loadPackage, type SeedPackage } from '../seed/package.js';
import { formatBytes } from '../ui/reporter.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';
import { visibleDeep } from '../ui/text.js';

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const pkg = loadPackage(cfg.seedsDir, args[0] ?? '');
  out.result(pkg.manifest, () => render(visibleDeep(pkg), out.color));
}

function render({ manifest: m, dir }: SeedPackage, color: boolean): string {
  const tables = makeTable(['table', 'rows', 'sha256'], color);
  for (const [t, v] of Object.entries(m.tables)) tables.push([t, v.rows, v.sha256.slice(0, 16)]);
  const files = makeTable(['file', 'bytes', 'sha256'], color);
  for (const f of m.files) files.push([f.path, f.bytes, f.sha256.slice(0, 16)]);
  return [
    `Seed package ${m.version} (${dir}): intact`,
    `created ${m.createdAt} by ${m.tool.name} ${m.tool.version}, schema ${m.schemaVersion}`,
    `source preset ${m.source.presetId}, run ${m.source.runId}`,
    `seed.db ${formatBytes(m.seedDb.bytes)}, packageSha256 ${m.packageSha256}`,
    tables.toString(),
    files.toString(),
  ].join('\n');
}
