// `acm2 seed set-current <v>`: CURRENT rolled back (or forward) in one command that checks the
// package first; a typo or a broken package leaves CURRENT as it was.
import { execFile } from 'node:child_process';
import { cpSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freezeSeed } from '../src/core/freeze.js';
import { computePackageSha256, type Manifest } from '../src/seed/manifest.js';
import { frozenSource, type FrozenSource } from './helpers/env.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
let pkg: FrozenSource;

beforeAll(() => {
  pkg = frozenSource();
  // v2 from the same source, made CURRENT: the version an operator wants to roll back from.
  const s = pkg.source;
  freezeSeed({ sourceDb: s.dbPath, sourceFiles: s.filesDir, presetId: s.presetId, runId: s.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: true, renderReport: true });
});
afterAll(() => pkg.cleanup());

async function acm2(...args: string[]) {
  try {
    const r = await run(process.execPath, [BIN, '--seeds', pkg.seedsDir, '--json', 'seed', 'set-current', ...args]);
    return { code: 0, out: JSON.parse(r.stdout) as Record<string, unknown> };
  } catch (e) {
    const x = e as { code: number; stdout: string };
    return { code: x.code, out: JSON.parse(x.stdout) as Record<string, unknown> };
  }
}
const current = () => readFileSync(path.join(pkg.seedsDir, 'CURRENT'), 'utf8');

describe('seed set-current', () => {
  it('moves CURRENT to an intact version and says what it was; a second time changes nothing', async () => {
    expect(current()).toBe('v2\n');
    expect(await acm2('v1')).toEqual({ code: 0, out: { version: 'v1', previous: 'v2', changed: true } });
    expect(current()).toBe('v1\n');
    expect(await acm2('v1')).toEqual({ code: 0, out: { version: 'v1', previous: 'v1', changed: false } });
    expect(readdirSync(pkg.seedsDir).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('a version named `current`, frozen before that name was refused for new versions, stays usable', async () => {
    // What a freeze --version current wrote before: the package v1 under that name.
    const dir = path.join(pkg.seedsDir, 'current');
    cpSync(path.join(pkg.seedsDir, 'v1'), dir, { recursive: true });
    const m = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
    m.version = 'current';
    m.packageSha256 = computePackageSha256(m);
    writeFileSync(path.join(dir, 'manifest.json'), `${JSON.stringify(m, null, 2)}\n`);
    expect(await acm2('current')).toMatchObject({ code: 0, out: { version: 'current', changed: true } });
    expect(current()).toBe('current\n');
    // Every command that reads CURRENT goes on with it.
    const check = await run(process.execPath, [BIN, '--seeds', pkg.seedsDir, '--json', 'seed', 'check']);
    expect((JSON.parse(check.stdout) as { packages: Array<{ version: string; ok: boolean }> }).packages).toContainEqual(expect.objectContaining({ version: 'current', ok: true }));
    expect(await acm2('v1')).toMatchObject({ code: 0, out: { version: 'v1', previous: 'current', changed: true } });
  });

  it('refuses a version that is not there, or not intact, with exit 2 and CURRENT as it was', async () => {
    const before = current();
    const typo = await acm2('v9');
    expect(typo).toMatchObject({ code: 2, out: { error: { code: 'unknown_version', message: expect.stringContaining("no seed version 'v9'") } } });
    const f = readdirSync(path.join(pkg.seedsDir, 'v2', 'files'), { recursive: true, withFileTypes: true }).find((e) => e.isFile())!;
    writeFileSync(path.join(f.parentPath, f.name), 'tampered\n');
    const broken = await acm2('v2');
    expect(broken).toMatchObject({ code: 2, out: { error: { code: 'bad_package', message: expect.stringMatching(/^seed version v2 is not intact \(.+\): CURRENT was not changed$/) } } });
    expect(current()).toBe(before);
  });

  it('refuses a bad version name and a symlinked version as seed show does (exit 2), CURRENT as it was', async () => {
    const before = current();
    const show = async (v: string) => {
      try {
        await run(process.execPath, [BIN, '--seeds', pkg.seedsDir, '--json', 'seed', 'show', v]);
        throw new Error(`seed show ${v} succeeded`);
      } catch (e) {
        return { code: (e as { code: number }).code, out: JSON.parse((e as { stdout: string }).stdout) as Record<string, unknown> };
      }
    };
    const bad = await acm2('../x');
    expect(bad).toMatchObject({ code: 2, out: { error: { code: 'bad_version' } } });
    expect(bad).toEqual(await show('../x'));
    symlinkSync('v1', path.join(pkg.seedsDir, 'v8'));
    try {
      const linked = await acm2('v8');
      expect(linked).toEqual({ code: 2, out: { error: { code: 'bad_package', message: `seed package v8 is unsafe: ${path.join(pkg.seedsDir, 'v8')} is a symlink` } } });
      expect(linked).toEqual(await show('v8'));
    } finally {
      rmSync(path.join(pkg.seedsDir, 'v8'));
    }
    expect(current()).toBe(before);
  });
});
