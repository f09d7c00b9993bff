// Rebuilds the bundled seed package v1 from ACM2's real sample run (src/fixtures/real-sample.ts),
// with a rendered report since the real run has none. `node dist/seed/build-bundled.js [seedsDir]`.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { SHIPPED_SEEDS_DIR } from '../config.js';
import { freezeSeed, type FreezeResult } from '../core/freeze.js';
import { isAcm2Error } from '../errors.js';
import { buildRealSampleSource } from '../fixtures/real-sample.js';

export const BUNDLED_VERSION = 'v1';

export interface BuildBundledOptions {
  setCurrent?: boolean;
  /** Pass the committed manifest's tool to reproduce it byte for byte after a tool version bump. */
  tool?: { name: string; version: string };
  sampleDir?: string;
}

/** Freeze the real sample into `<seedsDir>/v1` (refused if it exists: packages are immutable). */
export function buildBundled(seedsDir: string, opts: BuildBundledOptions = {}): FreezeResult {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'acm2-bundled-'));
  try {
    const src = buildRealSampleSource(path.join(tmp, 'source'), ...(opts.sampleDir ? [opts.sampleDir] : []));
    return freezeSeed({
      sourceDb: src.dbPath,
      sourceFiles: src.filesDir,
      presetId: src.presetId,
      runId: src.runId,
      version: BUNDLED_VERSION,
      seedsDir,
      renderReport: true,
      setCurrent: opts.setCurrent ?? false,
      tool: opts.tool,
    });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const seedsDir = path.resolve(process.argv[2] ?? SHIPPED_SEEDS_DIR);
  try {
    const r = buildBundled(seedsDir, { setCurrent: true });
    process.stdout.write(`built ${r.dir}: ${r.rows} rows, ${r.files} files, ${r.bytes} bytes, packageSha256 ${r.packageSha256}\n`);
  } catch (e) {
    process.stderr.write(`build-bundled: ${(e as Error).message}\n`);
    process.exitCode = isAcm2Error(e) ? e.exitCode : 70;
  }
}
