// `acm2 seed freeze`: flags (with their env fallbacks) → freezeSeed → the plan or result.

import { makeTable } from '../ui/table.js';
import { freezeSeed, type FreezeResult } from '../core/freeze.js';
import { formatBytes } from '../ui/reporter.js';
import { context } from './context.js';
import type { CommandCall } from './program.js';
import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { folderOverlap } from '../userdb/paths.js';
import { visible, visibleDeep } from '../ui/text.js';

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  refuseNested(cfg.seedsDir, cfg.dataDir);
  const result = freezeSeed(
    {
      sourceDb: str(opts.source),
      sourceFiles: str(opts.sourceFiles),
      presetId: str(opts.preset) ?? str(process.env.SEED_PRESET_ID),
      runId: str(opts.run) ?? str(process.env.SEED_RUN_ID),
      version: str(opts.version) ?? cfg.seedVersion,
      seedsDir: cfg.seedsDir,
      renderReport: Boolean(opts.renderReport),
      setCurrent: Boolean(opts.setCurrent),
      dryRun: Boolean(opts.dryRun),
    },
    out.progress(),
  );
  for (const w of result.warnings) out.verbose(`warning: ${visible(w)}`);
  out.result(result, () => render(visibleDeep(result), out.color));
}

/**
 * The seeds dir and the data dir are folders of their own: a version folder frozen into a data dir
 * (--seeds pointed at it) or a data dir inside the packages would mix packages with users' data.
 */
function refuseNested(seeds: string, dataDir: string): void {
  // Freeze makes a missing seeds dir, and the first writing command a missing data dir (the
  // default ./data too): each is compared where it is, or would be made.
  const how = folderOverlap(realOrPlanned(seeds), realOrPlanned(dataDir));
  if (how) throw new UsageError(`--seeds '${seeds}' ${how} the data dir (${dataDir}): the seed packages must be a folder apart from it; nothing was frozen`);
}

/** The real path of a folder, or where it would be made: its nearest existing parent's real path, plus the rest. */
function realOrPlanned(dir: string): string {
  const abs = path.resolve(dir);
  let base = abs;
  while (!existsSync(base) && path.dirname(base) !== base) base = path.dirname(base);
  return path.join(realpathSync(base), path.relative(base, abs));
}

function render(r: FreezeResult, color: boolean): string {
  const head = r.dryRun
    ? `Dry run: would freeze ${r.version} into ${r.dir} (nothing written).`
    : r.unchanged
      ? `${r.version} is already in ${r.dir} with exactly this content: nothing was written${r.current ? '; it is now CURRENT' : ''}.`
      : `Froze ${r.version} into ${r.dir}${r.current ? ' (now CURRENT)' : ''}.`;
  const table = makeTable(['table', 'rows'], color);
  for (const [t, n] of Object.entries(r.tables)) table.push([t, n]);
  const lines = [head, `Source: preset ${r.source.presetId}, run ${r.source.runId}`, table.toString()];
  // The files' bytes, as a dry run counts them; a package's total (seed list) has seed.db's too.
  const fileBytes = r.bytes - (r.seedDbBytes ?? 0);
  lines.push(`${r.files} files, ${formatBytes(fileBytes)}${r.seedDbBytes !== null ? ` (and seed.db, ${formatBytes(r.seedDbBytes)})` : ''}${r.reportRendered ? ' (reports/report.html rendered from results_summary)' : ''}`);
  if (r.packageSha256) lines.push(`packageSha256 ${r.packageSha256}`);
  if (r.warnings.length > 0) lines.push(`${r.warnings.length} warning(s); run with --verbose to see them.`);
  return lines.join('\n');
}
