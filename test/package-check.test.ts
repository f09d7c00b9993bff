// Seed package integrity: checkPackage finds every kind of tampering, loadPackage refuses it
// with exit 2, the bundled v1 is what the code makes, and the built binary agrees end to end.

import { execa } from 'execa';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { freezeSeed } from '../src/core/freeze.js';
import { PackageError, UsageError } from '../src/errors.js';
import { generateSource } from '../src/fixtures/source.js';
import { buildBundled } from '../src/seed/build-bundled.js';
import { computePackageSha256, type Manifest } from '../src/seed/manifest.js';
import { checkPackage, clearPackageCache, loadPackage, readCurrent, resolveVersion } from '../src/seed/package.js';
import { expectPackageRefused } from './helpers/env.js';

const REPO = fileURLToPath(new URL('../', import.meta.url));
const SHIPPED = path.join(REPO, 'seed-packages');

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});
function tmp(prefix = 'acm2-check-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  roots.push(d);
  return d;
}

// One frozen package; each case tampers with its own copy.
const golden = tmp('acm2-golden-');
const src = generateSource(path.join(golden, 'source'), {});
const goldenSeeds = path.join(golden, 'seeds');
freezeSeed({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v1', seedsDir: goldenSeeds });
const goldenManifest = JSON.parse(readFileSync(path.join(goldenSeeds, 'v1', 'manifest.json'), 'utf8')) as Manifest;
const firstFile = goldenManifest.files[0]?.path as string;

function copy(from = goldenSeeds): { seeds: string; dir: string } {
  const seeds = path.join(tmp(), 'seeds');
  cpSync(from, seeds, { recursive: true });
  return { seeds, dir: path.join(seeds, 'v1') };
}

function flipByte(file: string, at?: number): void {
  const buf = readFileSync(file);
  const i = at ?? Math.floor(buf.length / 2);
  buf[i] = (buf[i] as number) ^ 0xff;
  writeFileSync(file, buf);
}

/** Rewrite the manifest, re-sealing packageSha256 so only the targeted check can catch it. */
function editManifest(dir: string, edit: (m: Manifest) => void, reseal = true): void {
  const file = path.join(dir, 'manifest.json');
  const m = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  edit(m);
  if (reseal) m.packageSha256 = computePackageSha256(m);
  writeFileSync(file, JSON.stringify(m, null, 2));
}

const cases: Array<{ name: string; tamper: (dir: string) => void; problem: RegExp }> = [
  { name: 'one flipped byte in seed.db', tamper: (d) => flipByte(path.join(d, 'seed.db')), problem: /^seed\.db sha256 does not match the manifest$/ },
  {
    name: 'one flipped byte in a file',
    tamper: (d) => flipByte(path.join(d, 'files', firstFile), 0),
    problem: new RegExp(`^files/${firstFile.replace(/\./g, '\\.')} sha256 does not match the manifest$`),
  },
  { name: 'a removed file', tamper: (d) => unlinkSync(path.join(d, 'files', firstFile)), problem: /is missing$/ },
  {
    name: 'an added file',
    tamper: (d) => writeFileSync(path.join(d, 'files', 'runs', src.runId, 'logs', 'extra.log'), 'x'),
    problem: /extra\.log is not in the manifest$/,
  },
  {
    name: "a manifest path '../x'",
    tamper: (d) => editManifest(d, (m) => void ((m.files[0] as { path: string }).path = '../x')),
    problem: /manifest path '\.\.\/x' contains '\.\.'/,
  },
  {
    name: 'an absolute manifest path',
    tamper: (d) => editManifest(d, (m) => void ((m.files[0] as { path: string }).path = '/etc/passwd')),
    problem: /manifest path '\/etc\/passwd' is absolute/,
  },
  {
    name: 'a symlink in place of a file',
    tamper: (d) => {
      const f = path.join(d, 'files', firstFile);
      const outside = path.join(tmp(), 'outside.md');
      cpSync(f, outside);
      unlinkSync(f);
      symlinkSync(outside, f);
    },
    problem: /is a symlink$/,
  },
  { name: 'malformed JSON', tamper: (d) => writeFileSync(path.join(d, 'manifest.json'), '{"format": 1,'), problem: /^manifest\.json is not valid JSON/ },
  {
    name: 'a manifest edited without resealing',
    tamper: (d) => editManifest(d, (m) => void (m.source.presetId = '00000000-0000-4000-8000-000000000000'), false),
    problem: /does not match its packageSha256/,
  },
  {
    name: 'a wrong size recorded for a file',
    tamper: (d) => editManifest(d, (m) => void ((m.files[0] as { bytes: number }).bytes += 1)),
    problem: /bytes, the manifest says/,
  },
  { name: 'a seed.db journal beside seed.db', tamper: (d) => writeFileSync(path.join(d, 'seed.db-wal'), 'x'), problem: /^unexpected seed\.db-wal in the package$/ },
  { name: 'a missing seed.db', tamper: (d) => unlinkSync(path.join(d, 'seed.db')), problem: /^seed\.db is missing$/ },
];

describe('checkPackage and loadPackage catch tampering', () => {
  it('the untouched package is fine', () => {
    const { seeds } = copy();
    expect(checkPackage(seeds, 'v1')).toEqual({ version: 'v1', ok: true, problems: [] });
    expect(loadPackage(seeds, 'v1').manifest.packageSha256).toBe(goldenManifest.packageSha256);
  });

  for (const c of cases) {
    it(c.name, () => {
      const { seeds, dir } = copy();
      c.tamper(dir);
      clearPackageCache();
      expectPackageRefused(seeds, c.problem);
    });
  }

  it('collects every problem, not only the first', () => {
    const { seeds, dir } = copy();
    flipByte(path.join(dir, 'seed.db'));
    unlinkSync(path.join(dir, 'files', firstFile));
    writeFileSync(path.join(dir, 'files', 'runs', src.runId, 'new.md'), 'x');
    const r = checkPackage(seeds, 'v1');
    expect(r.problems).toHaveLength(3);
    clearPackageCache();
    expect(() => loadPackage(seeds, 'v1')).toThrow(`seed package v1 is tampered: ${r.problems[0]}`);
  });

  it('a version folder that is a symlink is refused', () => {
    const seeds = path.join(tmp(), 'seeds');
    cpSync(goldenSeeds, path.join(seeds, '..', 'real'), { recursive: true });
    mkdirSync(seeds);
    symlinkSync(path.join(seeds, '..', 'real', 'v1'), path.join(seeds, 'v1'));
    expect(checkPackage(seeds, 'v1').problems[0]).toMatch(/is a symlink$/);
    expect(() => loadPackage(seeds, 'v1')).toThrow(PackageError);
  });

  it('an unknown version names the known ones', () => {
    expect(() => loadPackage(goldenSeeds, 'v9')).toThrow(/^unknown seed version 'v9' in .* \(known: v1\)$/);
    // The code `acm2 seed check v9` gives too, for scripts: every command says it the same way.
    expect(() => loadPackage(goldenSeeds, 'v9')).toThrow(expect.objectContaining({ code: 'unknown_version', exitCode: 2 }));
    expect(checkPackage(goldenSeeds, 'v9').ok).toBe(false);
    expect(() => loadPackage(goldenSeeds, '../v1')).toThrow(UsageError);
  });

  it('caches a checked package until its manifest changes', () => {
    const { seeds, dir } = copy();
    clearPackageCache();
    const a = loadPackage(seeds, 'v1');
    expect(loadPackage(seeds, 'v1')).toBe(a);
    editManifest(dir, (m) => void (m.createdAt = '2030-01-01T00:00:00.000Z'));
    const b = loadPackage(seeds, 'v1');
    expect(b).not.toBe(a);
    expect(b.manifest.createdAt).toBe('2030-01-01T00:00:00.000Z');
  });

  it('CURRENT: read, missing and invalid', () => {
    const { seeds } = copy();
    expect(() => readCurrent(seeds)).toThrow(PackageError);
    writeFileSync(path.join(seeds, 'CURRENT'), 'v1\n');
    expect(readCurrent(seeds)).toBe('v1');
    expect(resolveVersion(seeds)).toBe('v1');
    expect(resolveVersion(seeds, 'v7')).toBe('v7');
    expect(() => resolveVersion(seeds, '../etc')).toThrow(UsageError);
    writeFileSync(path.join(seeds, 'CURRENT'), '../x\n');
    expect(() => readCurrent(seeds)).toThrow(PackageError);
  });
});

describe('the bundled v1', () => {
  it('is intact and CURRENT', () => {
    expect(readCurrent(SHIPPED)).toBe('v1');
    expect(checkPackage(SHIPPED, 'v1')).toEqual({ version: 'v1', ok: true, problems: [] });
    const m = loadPackage(SHIPPED, 'v1').manifest;
    expect(m.files.some((f) => f.path.endsWith('/reports/report.html'))).toBe(true);
  });

  it('is exactly what build-bundled makes from the real sample (same packageSha256)', () => {
    const committed = loadPackage(SHIPPED, 'v1').manifest;
    const seeds = path.join(tmp(), 'seeds');
    const r = buildBundled(seeds, { tool: committed.tool });
    expect(r.packageSha256).toBe(committed.packageSha256);
  });
});

describe('end to end through the built binary', () => {
  const bin = path.join(REPO, 'bin', 'acm2.js');
  const acm2 = (args: string[], env: Record<string, string> = {}) =>
    execa('node', [bin, ...args], { reject: false, cwd: REPO, env: { NO_COLOR: '1', ...env }, extendEnv: true });

  // dist/ is built once by test/global-setup.ts: building it again here rewrote its files while
  // other suites ran the CLI from them, which then failed to import a half-written module.

  it('seed check v1 --json exits 0 with one JSON document', async () => {
    const r = await acm2(['seed', 'check', 'v1', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, packages: [{ version: 'v1', ok: true, problems: [] }] });
  });

  it('seed check on a tampered copy exits 1 and still prints exactly one document', async () => {
    const { seeds, dir } = copy(SHIPPED);
    flipByte(path.join(dir, 'seed.db'));
    const r = await acm2(['seed', 'check', '--seeds', seeds, '--json']);
    expect(r.exitCode).toBe(1);
    const doc = JSON.parse(r.stdout) as { ok: boolean; packages: Array<{ problems: string[] }> };
    expect(doc.ok).toBe(false);
    expect(doc.packages[0]?.problems).toContain('seed.db sha256 does not match the manifest');
    const human = await acm2(['seed', 'check', 'v1', '--seeds', seeds]);
    expect(human.exitCode).toBe(1);
    expect(human.stdout).toMatch(/v1 {2}FAILED/);
  });

  it('seed show refuses a tampered package with exit 2; list shows CURRENT', async () => {
    const { seeds, dir } = copy(SHIPPED);
    flipByte(path.join(dir, 'seed.db'));
    const show = await acm2(['seed', 'show', 'v1', '--seeds', seeds, '--json']);
    expect(show.exitCode).toBe(2);
    expect(JSON.parse(show.stdout).error.message).toMatch(/^seed package v1 is tampered: seed\.db sha256/);
    const list = await acm2(['seed', 'list', '--json']);
    expect(list.exitCode).toBe(0);
    expect(JSON.parse(list.stdout).packages).toMatchObject([{ version: 'v1', current: true }]);
    const ok = await acm2(['seed', 'show', 'v1', '--json']);
    expect(JSON.parse(ok.stdout).packageSha256).toBe(loadPackage(SHIPPED, 'v1').manifest.packageSha256);
  });

  it('a freeze killed (SIGKILL) mid-copy leaves no version folder, and the next freeze cleans its staging', async () => {
    const seeds = path.join(tmp(), 'seeds');
    const script = `
      const { freezeSeed } = await import(${JSON.stringify(pathToFileURL(path.join(REPO, 'dist', 'core', 'freeze.js')).href)});
      const die = { start() {}, tick() { process.kill(process.pid, 'SIGKILL'); }, done() {} };
      freezeSeed(${JSON.stringify({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v1', seedsDir: seeds })}, die);`;
    const killed = await execa('node', ['--input-type=module', '-e', script], { reject: false });
    expect(killed.signal).toBe('SIGKILL');
    expect(existsSync(path.join(seeds, 'v1'))).toBe(false);
    expect(readdirSync(seeds).filter((n) => n.startsWith('.staging-v1-'))).toHaveLength(1);
    expect((await acm2(['seed', 'list', '--seeds', seeds, '--json'])).stdout).toContain('"packages": []');
    const r = freezeSeed({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v1', seedsDir: seeds });
    expect(r.removedStaging).toHaveLength(1);
    expect(readdirSync(seeds)).toEqual(['v1']);
    expect(r.packageSha256).toBe(goldenManifest.packageSha256);
  });

  it('seed freeze: cuts a version (SEED_* env), then refuses the same version with exit 2', async () => {
    const seeds = path.join(tmp(), 'seeds');
    const env = { SEED_PRESET_ID: src.presetId, SEED_RUN_ID: src.runId, SEED_VERSION: 'v5' };
    const args = ['seed', 'freeze', '--seeds', seeds, '--source', src.dbPath, '--source-files', src.filesDir, '--set-current', '--json'];
    const r = await acm2(args, env);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ version: 'v5', current: true, packageSha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(readCurrent(seeds)).toBe('v5');
    // The same source again: nothing to write, exit 0 (idempotent); other content under the name: exit 2.
    const again = await acm2(args, env);
    expect(again.exitCode, again.stdout + again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ version: 'v5', unchanged: true, current: true });
    const src2 = generateSource(path.join(tmp(), 'other-source'), { contents: 7 });
    const other = await acm2(['seed', 'freeze', '--seeds', seeds, '--source', src2.dbPath, '--source-files', src2.filesDir, '--json'], { SEED_PRESET_ID: src2.presetId, SEED_RUN_ID: src2.runId, SEED_VERSION: 'v5' });
    expect(other.exitCode, other.stdout + other.stderr).toBe(2);
    expect(JSON.parse(other.stdout).error.code).toBe('version_exists');
    const missing = await acm2(['seed', 'freeze', '--seeds', seeds, '--source', src.dbPath, '--source-files', src.filesDir, '--json']);
    expect(missing.exitCode).toBe(2);
    expect(JSON.parse(missing.stdout).error.message).toMatch(/--preset.*--run.*--version/);
    expect(existsSync(path.join(seeds, 'v5'))).toBe(true);
  });
});
