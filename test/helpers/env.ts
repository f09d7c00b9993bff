// A seeded world for tests: a generated ACM2 source frozen into a temp seeds dir, a data dir,
// and a master. Packages are frozen once per options per test file.

import { chmodSync, closeSync, mkdtempSync, openSync, rmSync, readdirSync, statSync, readFileSync, lstatSync, writeSync } from 'node:fs';
import Database from 'better-sqlite3';
import os from 'node:os';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { generateSource, type SourceFixture, type SourceOptions } from '../../src/fixtures/source.js';
import { freezeSeed } from '../../src/core/freeze.js';
import { writeCurrent } from '../../src/core/freeze.js';
import { checkPackage, loadPackage, type SeedPackage } from '../../src/seed/package.js';
import { PackageError } from '../../src/errors.js';
import { afterAll, beforeAll, expect } from 'vitest';
import { openMaster } from '../../src/master/factory.js';
import { parseMasterUrl } from '../../src/config.js';
import type { MasterDb } from '../../src/master/types.js';

export function tmpDir(prefix = 'acm2-test-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * A real small file system (tmpfs), for full-disk tests: root can mount one, as in CI. Mounted
 * inside the test that uses it and unmounted when it ends, so a filtered run (`vitest -t`), which
 * skips a suite's hooks, leaves no mount behind.
 */
export const CAN_MOUNT_TMPFS: boolean = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = tmpDir('acm2-tmpfs-probe-');
  try {
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status !== 0) return false;
    spawnSync('umount', [probe]);
    return true;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
})();

/** Runs fn with a fresh tmpfs of this size mounted at a temp folder; unmounts and removes it after. */
export async function withTmpfs<T>(size: string, fn: (dir: string) => T | Promise<T>): Promise<T> {
  const dir = tmpDir('acm2-tmpfs-');
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]).status !== 0) throw new Error(`cannot mount a tmpfs at ${dir}`);
  try {
    return await fn(dir);
  } finally {
    spawnSync('umount', [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A read-only view of dir: a read-only bind mount as root, the folder made 0500 otherwise. */
export function readOnlyView(dir: string): { path: string; undo(): void } | undefined {
  if (process.getuid?.() === 0) {
    const view = tmpDir('acm2-ro-view-');
    const ok = spawnSync('mount', ['--bind', dir, view]).status === 0 && spawnSync('mount', ['-o', 'remount,ro,bind', view]).status === 0;
    if (!ok) {
      spawnSync('umount', [view]);
      return undefined;
    }
    return { path: view, undo: () => (spawnSync('umount', [view]), rmSync(view, { recursive: true, force: true })) };
  }
  chmodSync(dir, 0o500);
  return { path: dir, undo: () => chmodSync(dir, 0o700) };
}

export interface FrozenSource {
  root: string;
  seedsDir: string;
  source: SourceFixture;
  pkg: SeedPackage;
  cleanup(): void;
}

/** Generate a source and freeze it as `version` (CURRENT) into a fresh seeds dir. */
export function frozenSource(opts: SourceOptions = {}, version = 'v1'): FrozenSource {
  const root = tmpDir('acm2-pkg-');
  const source = generateSource(path.join(root, 'source'), opts);
  const seedsDir = path.join(root, 'seeds');
  freezeSeed({
    sourceDb: source.dbPath,
    sourceFiles: source.filesDir,
    presetId: source.presetId,
    runId: source.runId,
    version,
    seedsDir,
    setCurrent: true,
    renderReport: true,
  });
  return { root, seedsDir, source, pkg: loadPackage(seedsDir, version), cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

export { writeCurrent };

export interface World {
  dataDir: string;
  masterUrl: string;
  master: MasterDb;
  cleanup(): Promise<void>;
}

export async function sqliteWorld(): Promise<World> {
  const dataDir = tmpDir('acm2-data-');
  const masterUrl = `sqlite:${path.join(dataDir, 'master.db')}`;
  const master = await openMaster(parseMasterUrl(masterUrl));
  return {
    dataDir,
    masterUrl,
    master,
    async cleanup() {
      await master.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A package frozen from a generated source and an embedded-master world, made before this test
 * file's tests and removed after them: `env.pkg`, `env.world`, and `env.deps()` for the core API.
 */
export function fileWorld(opts: SourceOptions = { sourceDocs: 1 }): { pkg: FrozenSource; world: World; deps(): { master: MasterDb; dataDir: string; seedsDir: string; lockTimeoutMs: number } } {
  const env = {
    pkg: undefined as unknown as FrozenSource,
    world: undefined as unknown as World,
    deps: () => ({ master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 }),
  };
  beforeAll(async () => {
    env.pkg = frozenSource(opts);
    env.world = await sqliteWorld();
  });
  afterAll(async () => {
    await env.world?.cleanup();
    env.pkg?.cleanup();
  });
  return env;
}

/** Every file under dir (relative paths, sorted), skipping nothing. */
export function walkFiles(dir: string, base = dir): string[] {
  const out: string[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of entries.sort()) {
    const abs = path.join(dir, name);
    const st = lstatSync(abs);
    if (st.isDirectory()) out.push(...walkFiles(abs, base));
    else out.push(path.relative(base, abs));
  }
  return out;
}

/** A snapshot of a tree (paths + bytes) to prove "nothing changed". */
export function snapshotTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of walkFiles(dir)) {
    const abs = path.join(dir, rel);
    out[rel] = statSync(abs).isFile() ? readFileSync(abs).toString('base64') : 'other';
  }
  return out;
}

/**
 * Damage one index of a real SQLite DB as a torn write would: its root page overwritten with
 * garbage. Page 1 (the schema) is sound, so the DB opens and its tables list, but quick_check
 * fails; returns quick_check's findings.
 */
export function corruptIndex(file: string, index: string): string[] {
  return tearRootPage(file, 'index', index);
}

/**
 * The same for a table: its root page overwritten. The DB opens and its schema reads; the first
 * statement that reads or writes that table's rows fails with SQLITE_CORRUPT (quick_check too:
 * its message is returned).
 */
export function corruptTable(file: string, table: string): string[] {
  return tearRootPage(file, 'table', table);
}

function tearRootPage(file: string, type: 'index' | 'table', name: string): string[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  const { rootpage } = db.prepare(`SELECT rootpage FROM sqlite_master WHERE type = ? AND name = ?`).get(type, name) as { rootpage: number };
  const size = db.pragma('page_size', { simple: true }) as number;
  db.close();
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, Buffer.alloc(size, 0x67), 0, size, (rootpage - 1) * size);
  } finally {
    closeSync(fd);
  }
  const after = new Database(file, { readonly: true, fileMustExist: true });
  try {
    let found: string[];
    try {
      found = (after.pragma('quick_check') as Array<{ quick_check: string }>).map((r) => r.quick_check);
    } catch (e) {
      // A table's torn root stops quick_check itself.
      expect((e as { code?: unknown }).code).toMatch(/^SQLITE_CORRUPT/);
      found = [(e as Error).message];
    }
    expect(found).not.toEqual(['ok']);
    return found;
  } finally {
    after.close();
  }
}

/**
 * seed check fails the package with a problem matching `problem`, and loadPackage (every command
 * that uses it) refuses it with exit 2 and a message `seed package <v> is <kind>: …`.
 */
export function expectPackageRefused(seeds: string, problem: RegExp, kinds = /tampered|incomplete|malformed|unsafe/, version = 'v1'): PackageError {
  const r = checkPackage(seeds, version);
  expect(r.ok, 'seed check passed the package').toBe(false);
  expect(r.problems.some((p) => problem.test(p)), r.problems.join('\n')).toBe(true);
  let err: unknown;
  try {
    loadPackage(seeds, version);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PackageError);
  expect((err as PackageError).exitCode).toBe(2);
  expect((err as PackageError).message).toMatch(new RegExp(`^seed package ${version} is (${kinds.source}): `));
  return err as PackageError;
}

const BIN = fileURLToPath(new URL('../../bin/acm2.js', import.meta.url));

/** The built CLI on a data dir and seeds dir (embedded master, no colour): its exit code and output, whatever the code. */
export async function runCli(dataDir: string, seedsDir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await promisify(execFile)(process.execPath, [BIN, '--data-dir', dataDir, '--seeds', seedsDir, ...args], { env: { ...process.env, ACM2_MASTER_URL: '', NO_COLOR: '1' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/**
 * What a backup killed mid-copy leaves: a process fills a WAL DB at `src`, starts SQLite's backup
 * of it into `dst` and is SIGKILLed during the copy (`dst` and its `-journal` stay).
 */
export function killMidBackup(src: string, dst: string): void {
  const killed = spawnSync(
    process.execPath,
    [
      '-e',
      `const D = require('better-sqlite3'); const [src, dst] = process.argv.slice(1); const d = new D(src); d.pragma('journal_mode = WAL');
       d.exec('CREATE TABLE t (x)'); const s = d.prepare('INSERT INTO t VALUES (randomblob(1000))'); d.transaction(() => { for (let i = 0; i < 20000; i++) s.run(); })();
       d.backup(dst, { progress: () => 1 }); setTimeout(() => process.kill(process.pid, 'SIGKILL'), 20);`,
      src,
      dst,
    ],
    { cwd: fileURLToPath(new URL('../..', import.meta.url)) },
  );
  expect(killed.signal).toBe('SIGKILL');
}
