// seed freeze: what a package holds, that it is deterministic, and that every refusal exits 2
// leaving neither a version folder nor a staging folder behind.

import Database from 'better-sqlite3';
import { appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statfsSync, symlinkSync, truncateSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freezeSeed, withSource, type FreezeInput, type FreezeResult } from '../src/core/freeze.js';
import { UnavailableError, UsageError } from '../src/errors.js';
import { generateSource, safeDocId, type SourceFixture, type SourceOptions } from '../src/fixtures/source.js';
import { dumpTable, sha256File } from '../src/seed/canonical.js';
import { CAN_MOUNT_TMPFS, readOnlyView, withTmpfs } from './helpers/env.js';
import { checkPackage, listPackages, loadPackage, readCurrent, readPackageRows } from '../src/seed/package.js';

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

function tmp(prefix = 'acm2-freeze-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  roots.push(d);
  return d;
}

function source(opts: SourceOptions = {}): SourceFixture {
  return generateSource(path.join(tmp('acm2-src-'), 'source'), opts);
}

function input(src: SourceFixture, seedsDir: string, extra: Partial<FreezeInput> = {}): FreezeInput {
  return { sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v1', seedsDir, ...extra };
}

/** ACM2 never turns foreign keys on; better-sqlite3 does by default. */
/** `acm2 seed freeze` of src as v1 into seedsDir beside dataDir, expected to fail: its error (status, stderr). */
function freezeRefused(src: SourceFixture, seedsDir: string, dataDir: string): { status: number; stderr: string; stdout: string } | undefined {
  try {
    execFileSync(process.execPath, [BIN, 'seed', 'freeze', '--source', src.dbPath, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId, '--version', 'v1', '--seeds', seedsDir, '--data-dir', dataDir, '--no-color'], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    return e as { status: number; stderr: string; stdout: string };
  }
  return undefined;
}

function openSource(src: SourceFixture): Database.Database {
  const db = new Database(src.dbPath);
  db.pragma('foreign_keys = OFF');
  return db;
}

const runDir = (src: SourceFixture) => path.join(src.filesDir, 'runs', src.runId);

function expectRefused(fn: () => unknown, seedsDir: string, version: string, ...messageParts: Array<string | RegExp>): UsageError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(UsageError);
  const ue = err as UsageError;
  expect(ue.exitCode).toBe(2);
  for (const p of messageParts) expect(ue.message).toMatch(p);
  expect(existsSync(path.join(seedsDir, version))).toBe(false);
  const left = existsSync(seedsDir) ? readdirSync(seedsDir).filter((n) => n.startsWith('.staging-')) : [];
  expect(left).toEqual([]);
  return ue;
}

describe('freezeSeed: contents of a package', () => {
  const src = source({ withCredentials: true, legacyCombinedFolder: true });
  const seedsDir = path.join(tmp(), 'seeds');
  const result = freezeSeed(input(src, seedsDir, { setCurrent: true }));
  const pkg = loadPackage(seedsDir, 'v1');

  it('reports what it wrote and makes it CURRENT', () => {
    expect(result.packageSha256).toBe(pkg.manifest.packageSha256);
    expect(result.current).toBe(true);
    expect(readCurrent(seedsDir)).toBe('v1');
    expect(checkPackage(seedsDir, 'v1')).toEqual({ version: 'v1', ok: true, problems: [] });
    expect(pkg.manifest.source).toEqual({ presetId: src.presetId, runId: src.runId });
    expect(pkg.manifest.format).toBe(1);
    expect(pkg.manifest.schemaVersion).toBe(1);
  });

  it('holds the preset, every content row, the run, its tasks and artifacts', () => {
    const rows = readPackageRows(pkg);
    expect(rows.presets?.map((r) => r.id)).toEqual([src.presetId]);
    expect(rows.runs?.map((r) => r.id)).toEqual([src.runId]);
    expect(rows.contents?.map((r) => r.id).sort()).toEqual([...src.contentIds].sort());
    expect(rows.tasks?.map((r) => r.id).sort()).toEqual([...src.taskIds].sort());
    expect(rows.artifacts?.map((r) => r.id).sort()).toEqual([...src.artifactIds].sort());
    for (const t of ['contents', 'presets', 'runs', 'documents']) for (const r of rows[t] ?? []) expect(r.user_id).toBeNull();
  });

  it('copies the whole run tree, every folder, and nothing else', () => {
    const walk = (d: string, pre = ''): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name), `${pre}${e.name}/`) : [`${pre}${e.name}`]));
    const want = walk(runDir(src)).map((p) => `runs/${src.runId}/${p}`).sort();
    expect(want.some((p) => p.includes('/combined/'))).toBe(true);
    expect(pkg.manifest.files.map((f) => f.path)).toEqual(want);
    for (const d of src.docIds) expect(want).toContain(`runs/${src.runId}/generated/${safeDocId(d)}.md`);
  });

  it("keeps credentials and personal state out, and clears the preset's github_connection_id", () => {
    expect(src.credentials?.githubConnectionIds.length).toBeGreaterThan(0);
    const db = new Database(pkg.seedDbPath, { readonly: true });
    try {
      for (const t of ['github_connections', 'provider_keys', 'user_settings', 'usage_stats', 'user_meta']) {
        expect((db.prepare(`SELECT COUNT(*) AS n FROM ${t}`).get() as { n: number }).n, t).toBe(0);
      }
      expect((db.prepare('SELECT github_connection_id AS g FROM presets').get() as { g: unknown }).g).toBeNull();
      expect(db.pragma('journal_mode', { simple: true })).toBe('delete');
    } finally {
      db.close();
    }
    const bytes = [readFileSync(pkg.seedDbPath), ...pkg.manifest.files.map((f) => readFileSync(path.join(pkg.filesDir, f.path)))];
    for (const secret of src.credentials?.secrets ?? []) for (const b of bytes) expect(b.includes(secret)).toBe(false);
    for (const id of src.credentials?.githubConnectionIds ?? []) expect(bytes[0]?.includes(id)).toBe(false);
  });

  it("the manifest's tables, seed.db and files match what is on disk", () => {
    const db = new Database(pkg.seedDbPath, { readonly: true });
    try {
      for (const [t, want] of Object.entries(pkg.manifest.tables)) expect(dumpTable(db, t), t).toEqual(want);
    } finally {
      db.close();
    }
    expect(sha256File(pkg.seedDbPath)).toEqual(pkg.manifest.seedDb);
    for (const f of pkg.manifest.files) expect(sha256File(path.join(pkg.filesDir, f.path))).toEqual({ bytes: f.bytes, sha256: f.sha256 });
    expect(listPackages(seedsDir)).toMatchObject([{ version: 'v1', current: true, rows: result.rows, files: result.files, bytes: result.bytes }]);
  });
});

describe('freezeSeed: a source ACM2 is writing to', () => {
  it('reads the source in one snapshot: a write committed while it reads is not seen half way', () => {
    const src = source();
    const w = openSource(src);
    w.pragma('journal_mode = WAL'); // so ACM2's writer can commit while the freeze reads
    const count = (db: Database.Database) => (db.prepare('SELECT COUNT(*) AS n FROM contents').get() as { n: number }).n;
    const [before, after] = withSource(src.dbPath, (db) => {
      const first = count(db);
      w.prepare(`INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('mid-freeze', 1, '2026-01-01 00:00:00.000000', 'x', 'input_document', 'x', '{}', '[]', 0)`).run();
      return [first, count(db)];
    });
    w.close();
    expect(after).toBe(before);
  });
});

describe('freezeSeed: a run folder ACM2 changes while it is copied', () => {
  it('a log rotated away and a temp report renamed over report.html after the listing: frozen again, from the tree as it is then', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const run = runDir(src);
    writeFileSync(path.join(run, 'logs', 'run.log.1'), 'rotated\n');
    writeFileSync(path.join(run, 'reports', 'report.html.tmp'), '<html>the new report</html>');
    let ticks = 0;
    const acm2 = {
      start() {},
      tick() {
        if (ticks++ > 0) return; // after the first file is copied
        unlinkSync(path.join(run, 'logs', 'run.log.1'));
        renameSync(path.join(run, 'reports', 'report.html.tmp'), path.join(run, 'reports', 'report.html'));
      },
      done() {},
    };
    const r = freezeSeed(input(src, seedsDir), acm2);
    expect(checkPackage(seedsDir, 'v1').ok).toBe(true);
    const pkg = loadPackage(seedsDir, 'v1');
    const paths = pkg.manifest.files.map((f) => f.path.slice(`runs/${src.runId}/`.length));
    expect(paths).not.toContain('logs/run.log.1');
    expect(paths).not.toContain('reports/report.html.tmp');
    expect(readFileSync(path.join(pkg.filesDir, 'runs', src.runId, 'reports', 'report.html'), 'utf8')).toBe('<html>the new report</html>');
    expect(r.files).toBe(pkg.manifest.files.length);
    expect(readdirSync(seedsDir)).toEqual(['v1']);
  });

  it('a log written to during every copy: exit 3 naming it, nothing published, no staging left', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const log = path.join(runDir(src), 'logs', 'run.log');
    let n = 0;
    const acm2 = { start() {}, tick: () => appendFileSync(log, `line ${n++}\n`), done() {} };
    let err: unknown;
    try {
      freezeSeed(input(src, seedsDir), acm2);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).exitCode).toBe(3);
    expect((err as UnavailableError).code).toBe('source_changing');
    expect((err as UnavailableError).message).toMatch(/kept changing while it was frozen \(3 tries; last, runs\/[^ ]+\/logs\/run\.log was written to while it was copied\)/);
    expect(readdirSync(seedsDir)).toEqual([]);
  });
});

describe('freezeSeed --set-current on a seeds dir with room for the package but not for CURRENT', () => {
  it.runIf(CAN_MOUNT_TMPFS)('exit 3 saying the version was published and CURRENT was not moved, and how to finish', async () => {
    const src = source();
    // How many inodes a freeze with --set-current uses; one fewer leaves CURRENT no room.
    const used = await withTmpfs('4m', (dir) => {
      freezeSeed(input(src, path.join(dir, 'seeds'), { setCurrent: true }));
      const st = statfsSync(dir);
      return st.files - st.ffree;
    });
    await withTmpfs(`4m,nr_inodes=${used - 1}`, (dir) => {
      const seedsDir = path.join(dir, 'seeds');
      let err: unknown;
      try {
        freezeSeed(input(src, seedsDir, { setCurrent: true }));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as UnavailableError).code).toBe('disk_full');
      expect((err as UnavailableError).message).toMatch(/^seed version v1 was frozen into .*\/seeds\/v1, but CURRENT was not moved to it \(disk full while writing .*\): once that is fixed, run the same freeze again/);
      expect(checkPackage(seedsDir, 'v1').ok).toBe(true);
      expect(readdirSync(seedsDir)).toEqual(['v1']);
    });
  });
});

describe('freezeSeed: a source DB it cannot read now', () => {
  /** freezeSeed's error, expected to be exit 3 with nothing in the seeds dir. */
  const unavailable = (fn: () => unknown, seedsDir: string): UnavailableError => {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).exitCode).toBe(3);
    expect(existsSync(seedsDir) ? readdirSync(seedsDir) : []).toEqual([]);
    return err as UnavailableError;
  };

  it('a writer holding its lock past the wait: exit 3, in use, nothing frozen; then it freezes', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const w = openSource(src); // rollback journal: an exclusive lock keeps readers out
    w.exec('BEGIN EXCLUSIVE');
    w.exec("UPDATE runs SET title = 'mid-write'");
    const err = unavailable(() => freezeSeed(input(src, seedsDir, { sourceBusyTimeoutMs: 100 })), seedsDir);
    expect(err.code).toBe('source_busy');
    expect(err.message).toMatch(/is in use: another process held it locked for more than 0\.1 s/);
    w.exec('ROLLBACK');
    w.close();
    expect(freezeSeed(input(src, seedsDir)).packageSha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a hot journal left by a killed writer: exit 3 saying so, the source left as it is', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    // A writer killed (kill -9) in the middle of a transaction that had written pages.
    const writer = `const D = require('better-sqlite3'); const db = new D(${JSON.stringify(src.dbPath)}); db.pragma('cache_size = 1');
      db.exec('BEGIN'); db.exec("UPDATE contents SET body = body || hex(randomblob(4000))"); process.kill(process.pid, 'SIGKILL');`;
    spawnSync(process.execPath, ['-e', writer], { cwd: fileURLToPath(new URL('..', import.meta.url)) });
    expect(existsSync(`${src.dbPath}-journal`)).toBe(true);
    const before = readFileSync(src.dbPath);
    const err = unavailable(() => freezeSeed(input(src, seedsDir)), seedsDir);
    expect(err.code).toBe('source_hot_journal');
    expect(err.message).toMatch(/has a hot journal/);
    expect(readFileSync(src.dbPath).equals(before)).toBe(true);
    expect(existsSync(`${src.dbPath}-journal`)).toBe(true);
  });
});

describe('seed freeze by a user that may not read all of the source', () => {
  // Only root can run the CLI as another user; CI runs as root.
  it.runIf(process.getuid?.() === 0)('a run subfolder or the source DB it cannot read: exit 3 naming it, not a bug or bad input', () => {
    const root = tmp('acm2-freeze-eacces-');
    chmodSync(root, 0o777);
    const src = generateSource(path.join(root, 'source'), {});
    const seedsDir = path.join(root, 'seeds');
    const NOBODY = 65534;
    const freeze = () => {
      try {
        execFileSync(process.execPath, [BIN, 'seed', 'freeze', '--source', src.dbPath, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId, '--version', 'v1', '--seeds', seedsDir, '--data-dir', path.join(root, 'data'), '--json'], { encoding: 'utf8', stdio: 'pipe', uid: NOBODY, gid: NOBODY, cwd: root });
      } catch (e) {
        const x = e as { status: number; stdout: string };
        return { status: x.status, error: (JSON.parse(x.stdout) as { error: { code: string; message: string } }).error };
      }
      return { status: 0, error: undefined };
    };
    const extra = path.join(runDir(src), 'extra');
    mkdirSync(extra);
    writeFileSync(path.join(extra, 'notes.txt'), 'x');
    chmodSync(extra, 0o700); // root's alone
    const dir = freeze();
    expect(dir.status).toBe(3);
    expect(dir.error).toMatchObject({ code: 'permission_denied', message: expect.stringContaining(`permission denied on ${extra}`) });
    chmodSync(extra, 0o755);
    chmodSync(src.dbPath, 0o600);
    const db = freeze();
    expect(db.status).toBe(3);
    expect(db.error).toMatchObject({ code: 'permission_denied', message: expect.stringContaining(`permission denied on source database ${src.dbPath}`) });
    expect(existsSync(path.join(seedsDir, 'v1'))).toBe(false);
    chmodSync(src.dbPath, 0o644);
    expect(freeze().status).toBe(0);
  });
});

describe('freezeSeed: a source on a read-only mount', () => {
  it.runIf(process.getuid?.() === 0)('reads a WAL source that has no -shm there, and freezes what the writable source gives', () => {
    const src = source();
    const w = openSource(src);
    w.pragma('journal_mode = WAL'); // as ACM2 keeps its DBs; closing removes the -wal and -shm
    w.close();
    expect(existsSync(`${src.dbPath}-shm`)).toBe(false);
    const now = new Date('2026-01-01T00:00:00Z');
    const seedsDir = path.join(tmp(), 'seeds');
    const view = readOnlyView(path.dirname(src.dbPath));
    expect(view).toBeDefined();
    let got: FreezeResult;
    try {
      const ro = (p: string) => path.join(view!.path, path.relative(path.dirname(src.dbPath), p));
      got = freezeSeed({ ...input(src, seedsDir, { now }), sourceDb: ro(src.dbPath), sourceFiles: ro(src.filesDir) });
    } finally {
      view!.undo();
    }
    expect(checkPackage(seedsDir, 'v1').ok).toBe(true);
    expect(got.packageSha256).toBe(freezeSeed(input(src, path.join(tmp(), 'seeds'), { now })).packageSha256);
  });
});

describe('freezeSeed: determinism', () => {
  it('gives the same packageSha256 for the same source, twice, and for an identically generated source', () => {
    const a = source();
    const b = source();
    const s1 = freezeSeed(input(a, path.join(tmp(), 'seeds'), { now: new Date('2026-01-01T00:00:00Z') }));
    const s2 = freezeSeed(input(a, path.join(tmp(), 'seeds'), { now: new Date('2027-06-01T00:00:00Z') }));
    const s3 = freezeSeed(input(b, path.join(tmp(), 'seeds')));
    expect(s1.packageSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(s2.packageSha256).toBe(s1.packageSha256);
    expect(s3.packageSha256).toBe(s1.packageSha256);
    const m1 = readFileSync(path.join(s1.dir, 'seed.db'));
    expect(readFileSync(path.join(s3.dir, 'seed.db')).equals(m1)).toBe(true);
  });

  it('a different source gives a different packageSha256', () => {
    const s1 = freezeSeed(input(source({ seed: 1 }), path.join(tmp(), 'seeds')));
    const s2 = freezeSeed(input(source({ seed: 2 }), path.join(tmp(), 'seeds')));
    expect(s2.packageSha256).not.toBe(s1.packageSha256);
  });
});

describe('freezeSeed: what it follows and what it leaves', () => {
  it('ships a documents row a task references, not the unreferenced ones', () => {
    const src = source();
    const db = openSource(src);
    const doc = (id: string) =>
      db
        .prepare(
          `INSERT INTO documents (id, user_id, created_at, name, path, size_bytes, word_count, file_type, is_deleted) VALUES (?, 7, '2026-01-01 00:00:00.000000', 'd', 'd.md', 1, 1, 'md', 0)`,
        )
        .run(id);
    doc('11111111-1111-4111-8111-111111111111');
    doc('22222222-2222-4222-8222-222222222222');
    db.prepare('UPDATE tasks SET document_id = ? WHERE id = ?').run('11111111-1111-4111-8111-111111111111', src.taskIds[0]);
    db.close();
    const seedsDir = path.join(tmp(), 'seeds');
    const r = freezeSeed(input(src, seedsDir));
    expect(r.tables.documents).toBe(1);
    const rows = readPackageRows(loadPackage(seedsDir, 'v1'));
    expect(rows.documents?.map((d) => [d.id, d.user_id])).toEqual([['11111111-1111-4111-8111-111111111111', null]]);
  });

  it('--dry-run returns the plan and writes nothing', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const r = freezeSeed(input(src, seedsDir, { dryRun: true, setCurrent: true }));
    expect(r.dryRun).toBe(true);
    expect(r.packageSha256).toBeNull();
    expect(r.tables.runs).toBe(1);
    expect(r.files).toBeGreaterThan(0);
    expect(existsSync(seedsDir)).toBe(false);
    // The real freeze counts the same files and bytes, plus seed.db's; the CLI shows them apart.
    const real = freezeSeed(input(src, seedsDir, { setCurrent: true }));
    expect(real.seedDbBytes).toBeGreaterThan(0);
    expect([real.files, real.bytes - real.seedDbBytes!]).toEqual([r.files, r.bytes]);
  });

  it('the CLI says the same files and bytes for --dry-run and the freeze, seed.db apart', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const cli = (...extra: string[]) =>
      execFileSync(process.execPath, [BIN, 'seed', 'freeze', '--source', src.dbPath, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId, '--version', 'v1', '--seeds', seedsDir, '--no-color', ...extra], { encoding: 'utf8' });
    const line = (out: string) => /^\d+ files, [^(\n]+/m.exec(out)?.[0].trim();
    const dry = cli('--dry-run');
    const real = cli();
    expect(line(dry)).toBeDefined();
    expect(line(real)).toBe(line(dry));
    expect(real).toMatch(/\(and seed\.db, [\d.]+ KiB\)/);
  });

  it('refuses (exit 2, one sentence, nothing written) a seeds dir that is, is inside or holds the data dir', () => {
    const src = source();
    const root = tmp();
    const data = path.join(root, 'data');
    mkdirSync(path.join(data, 'user_1'), { recursive: true });
    for (const [seedsDir, dataDir, says] of [
      [data, data, 'is'],
      [path.join(data, 'seeds'), data, 'is inside'],
      [root, data, 'holds'],
    ] as const) {
      mkdirSync(seedsDir, { recursive: true });
      const before = readdirSync(seedsDir).sort();
      const err = freezeRefused(src, seedsDir, dataDir);
      expect(err?.status).toBe(2);
      expect(err!.stderr.trim()).toBe(`acm2: --seeds '${seedsDir}' ${says} the data dir (${dataDir}): the seed packages must be a folder apart from it; nothing was frozen`);
      expect(readdirSync(seedsDir).sort()).toEqual(before);
    }
  });

  it('refuses a seeds dir that does not exist yet inside the data dir (freeze would make it there)', () => {
    const src = source();
    const data = path.join(tmp(), 'data');
    mkdirSync(path.join(data, 'user_1'), { recursive: true });
    const seedsDir = path.join(data, 'seeds');
    const err = freezeRefused(src, seedsDir, data);
    expect(err?.status).toBe(2);
    expect(err!.stderr.trim()).toBe(`acm2: --seeds '${seedsDir}' is inside the data dir (${data}): the seed packages must be a folder apart from it; nothing was frozen`);
    expect(readdirSync(data)).toEqual(['user_1']);
  });

  it('refuses a seeds dir inside a data dir that does not exist yet (freeze would make both there)', () => {
    const src = source();
    const root = tmp();
    const data = path.join(root, 'data'); // the default ./data before any user create
    const seedsDir = path.join(data, 'seeds');
    const err = freezeRefused(src, seedsDir, data);
    expect(err?.status).toBe(2);
    expect(err!.stderr.trim()).toBe(`acm2: --seeds '${seedsDir}' is inside the data dir (${data}): the seed packages must be a folder apart from it; nothing was frozen`);
    expect(existsSync(data)).toBe(false);
  });

  it('removes staging folders left by a crashed freeze, and list/check ignore them', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const stale = path.join(seedsDir, '.staging-v1-999999999-deadbeef'); // an older tool's name: no host
    const here = path.join(seedsDir, `.staging-v1-999999998-deadbeef@${hostname()}`);
    // Another host's freeze (a shared seeds dir): its pid means nothing here, only its age does.
    // (A host name shaped like the rest of the name, as AWS's are, must not be read as pid and hex.)
    const elsewhere = path.join(seedsDir, '.staging-v1-999999997-deadbeef@ip-172-31-212-9');
    const elsewhereOld = path.join(seedsDir, '.staging-v1-999999996-deadbeef@other-host.example');
    for (const d of [stale, here, elsewhere, elsewhereOld]) mkdirSync(path.join(d, 'files'), { recursive: true });
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    utimesSync(elsewhereOld, twoHoursAgo, twoHoursAgo);
    expect(listPackages(seedsDir)).toEqual([]);
    const r = freezeSeed(input(src, seedsDir));
    expect(r.removedStaging.sort()).toEqual([path.basename(stale), path.basename(here), path.basename(elsewhereOld)].sort());
    expect(readdirSync(seedsDir).sort()).toEqual([path.basename(elsewhere), 'v1'].sort());
  });

  // A container with the host's name (host networking) and pids of its own, freezing into the
  // same seeds dir: its pid is not one of this pid space's, but its freeze is alive.
  const CAN_UNSHARE = process.getuid?.() === 0 && spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true']).status === 0;
  it.runIf(CAN_UNSHARE)("leaves alone the staging of a live freeze in another pid space of this host name", async () => {
    const src = source();
    const root = tmp();
    const seedsDir = path.join(root, 'seeds');
    const ready = path.join(root, 'ready');
    const go = path.join(root, 'go');
    const child = `import { freezeSeed } from ${JSON.stringify(fileURLToPath(new URL('../dist/core/freeze.js', import.meta.url)))};
      import { existsSync, writeFileSync } from 'node:fs';
      const a = JSON.parse(process.env.ACM2_T_ARGS);
      let first = true;
      const tick = () => {
        if (!first) return;
        first = false;
        writeFileSync(a.ready, String(process.pid));
        while (!existsSync(a.go)) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      };
      freezeSeed(a.input, { start() {}, tick, done() {} });`;
    // Its pid is made one this pid space cannot have (above pid_max here), as a container's may be.
    const proc = spawn('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', 'echo 400000 > /proc/sys/kernel/ns_last_pid && "$0" --input-type=module -e "$ACM2_T_CHILD"', process.execPath], {
      env: { ...process.env, ACM2_T_CHILD: child, ACM2_T_ARGS: JSON.stringify({ input: input(src, seedsDir), ready, go }) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    try {
      for (let i = 0; i < 400 && !existsSync(ready); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(ready), stderr).toBe(true);
      const theirs = readdirSync(seedsDir).filter((n) => n.startsWith('.staging-v1-'));
      expect(theirs).toHaveLength(1);
      const mine = freezeSeed(input(src, seedsDir, { version: 'v2' }));
      expect(mine.removedStaging).toEqual([]);
      expect(existsSync(path.join(seedsDir, theirs[0]!))).toBe(true);
    } finally {
      writeFileSync(go, ''); // the other freeze goes on (or, after a failure above, ends)
    }
    expect(await exited, stderr).toBe(0);
    expect(checkPackage(seedsDir, 'v1').ok).toBe(true);
  });

  it('renders reports/report.html into the package only, when the run has none', () => {
    const src = source({ withReport: false });
    const seedsDir = path.join(tmp(), 'seeds');
    const r = freezeSeed(input(src, seedsDir, { renderReport: true }));
    expect(r.reportRendered).toBe(true);
    expect(existsSync(path.join(runDir(src), 'reports'))).toBe(false);
    const html = readFileSync(path.join(seedsDir, 'v1', 'files', 'runs', src.runId, 'reports', 'report.html'), 'utf8');
    expect(html).toContain('id="winner"');
    expect(checkPackage(seedsDir, 'v1').ok).toBe(true);
  });

  it('keeps an existing report.html rather than rendering one', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const r = freezeSeed(input(src, seedsDir, { renderReport: true }));
    expect(r.reportRendered).toBe(false);
    const rel = path.join('runs', src.runId, 'reports', 'report.html');
    expect(readFileSync(path.join(seedsDir, 'v1', 'files', rel)).equals(readFileSync(path.join(src.filesDir, rel)))).toBe(true);
  });
});

describe('freezeSeed: refusals exit 2 and leave nothing', () => {
  it('missing --preset, --run and --version are all named', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(
      () => freezeSeed(input(src, seedsDir, { presetId: undefined, runId: undefined, version: undefined })),
      seedsDir,
      'v1',
      '--preset',
      '--run',
      '--version',
    );
    expectRefused(() => freezeSeed(input(src, seedsDir, { runId: '' })), seedsDir, 'v1', '--run');
  });

  it('a bad version name', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    for (const v of ['../x', '.hidden', 'a/b', 'x'.repeat(65)]) expectRefused(() => freezeSeed(input(src, seedsDir, { version: v })), seedsDir, v, 'not a valid seed version name');
  });

  it("'CURRENT' as a version name: refused before the version folder takes CURRENT's place", () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    for (const v of ['CURRENT', 'current']) {
      expectRefused(() => freezeSeed(input(src, seedsDir, { version: v })), seedsDir, v, 'not a valid seed version name', "CURRENT file");
    }
    // The version frozen next can still be made CURRENT.
    freezeSeed(input(src, seedsDir, { setCurrent: true }));
    expect(readCurrent(seedsDir)).toBe('v1');
  });

  it('a missing preset, a missing run', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const nope = '00000000-0000-4000-8000-000000000000';
    expectRefused(() => freezeSeed(input(src, seedsDir, { presetId: nope })), seedsDir, 'v1', `preset ${nope} is not in the source`);
    expectRefused(() => freezeSeed(input(src, seedsDir, { runId: nope })), seedsDir, 'v1', `run ${nope} is not in the source`, `runs/${nope}/ is missing`);
  });

  it('a referenced content row missing from the source', () => {
    const src = source();
    const db = openSource(src);
    const { g } = db.prepare('SELECT generation_instructions_id AS g FROM presets WHERE id = ?').get(src.presetId) as { g: string };
    db.prepare('DELETE FROM contents WHERE id = ?').run(g);
    db.close();
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `references contents ${g} which is not in the source`);
  });

  it('a source doc named in results_summary missing from the source', () => {
    const src = source();
    const db = openSource(src);
    db.prepare('DELETE FROM contents WHERE id = ?').run(src.sourceDocIds[0]);
    db.close();
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `run ${src.runId} references`, src.sourceDocIds[0] as string);
  });

  it('a generated doc file removed, logs/ removed: every gap is listed', () => {
    const src = source();
    const doc = src.docIds[0] as string;
    unlinkSync(path.join(runDir(src), 'generated', `${safeDocId(doc)}.md`));
    rmSync(path.join(runDir(src), 'logs'), { recursive: true });
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(
      () => freezeSeed(input(src, seedsDir)),
      seedsDir,
      'v1',
      `generated doc ${doc} has no file runs/${src.runId}/generated/${safeDocId(doc)}.md`,
      `runs/${src.runId}/logs/ is missing`,
    );
  });

  it('a logs/ with no file in it is no logs: refused (a package cannot carry an empty folder, and a freeze from a user seeded with it would find none)', () => {
    const src = source();
    const logs = path.join(runDir(src), 'logs');
    rmSync(logs, { recursive: true });
    mkdirSync(logs);
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `runs/${src.runId}/logs/ holds no file`);
  });

  it('reports/ missing without --render-report', () => {
    const src = source({ withReport: false });
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `runs/${src.runId}/reports/ is missing`);
  });

  it('a reports/ with no file in it is no report: refused without --render-report (a package cannot carry an empty folder), rendered with it', () => {
    const src = source({ withReport: false });
    mkdirSync(path.join(runDir(src), 'reports'));
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `runs/${src.runId}/reports/ holds no file (give --render-report`);
    const r = freezeSeed(input(src, seedsDir, { renderReport: true }));
    expect(r.reportRendered).toBe(true);
    expect(existsSync(path.join(seedsDir, 'v1', 'files', 'runs', src.runId, 'reports', 'report.html'))).toBe(true);
  });

  it('a --source that is a folder or a FIFO: exit 2 naming what it is (not an I/O error, not a wait for ever)', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir, { sourceDb: src.filesDir })), seedsDir, 'v1', `source database ${src.filesDir} is a folder, not an SQLite database file`);
    const fifo = path.join(tmp(), 'user_7.db');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    // Through the CLI too, with a time limit: SQLite opening a FIFO would block for ever.
    const r = spawnSync(process.execPath, [BIN, 'seed', 'freeze', '--source', fifo, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId, '--version', 'v1', '--seeds', seedsDir, '--data-dir', path.join(tmp(), 'data'), '--json'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status, r.stderr).toBe(2);
    expect(JSON.parse(r.stdout)).toEqual({ error: { code: 'db_not_file', message: `source database ${fifo} is a FIFO, not an SQLite database file` } });
    expect(existsSync(path.join(seedsDir, 'v1'))).toBe(false);
  });

  it('a file name no package may hold (a backslash): refused, not published as an unreadable CURRENT', () => {
    const src = source();
    writeFileSync(path.join(runDir(src), 'logs', 'fpf_a\\b.log'), 'odd name\n');
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed({ ...input(src, seedsDir), setCurrent: true }), seedsDir, 'v1', `runs/${src.runId}/logs/fpf_a\\b.log cannot be a package path: it contains a backslash`);
  });

  it('a file whose name is not UTF-8: refused, saying so (not "not a regular file")', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    writeFileSync(Buffer.concat([Buffer.from(`${runDir(src)}/logs/`), Buffer.from([0x72, 0xe9, 0x73, 0x75, 0x6d, 0xe9, 0x2e, 0x6c, 0x6f, 0x67])]), 'latin-1 name\n');
    const err = expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', /logs\/r\uFFFDsum\uFFFD\.log has a name that is not valid UTF-8/);
    expect(err.message).not.toMatch(/not a regular file/);
  });

  it('a file too big to be read as one string (over 512 MiB): refused, not frozen into a package no user can be seeded from', () => {
    const MAX_PACKAGE_FILE_BYTES = 2 ** 29 - 24; // V8's longest string on 64-bit Node 20
    const src = source();
    const big = path.join(runDir(src), 'logs', 'huge.log');
    writeFileSync(big, '');
    truncateSync(big, MAX_PACKAGE_FILE_BYTES + 1); // sparse: nothing is written
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `runs/${src.runId}/logs/huge.log is ${MAX_PACKAGE_FILE_BYTES + 1} bytes: a package file can be at most ${MAX_PACKAGE_FILE_BYTES} (just under 512 MiB)`);
  });

  it('a symlink in the source tree', () => {
    const src = source();
    symlinkSync('/etc/passwd', path.join(runDir(src), 'logs', 'passwd.log'));
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', `runs/${src.runId}/logs/passwd.log is a symlink`);
  });

  it('an existing version is never overwritten', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const first = freezeSeed(input(src, seedsDir));
    const before = readFileSync(path.join(first.dir, 'manifest.json'));
    // The source has moved on since: the same name would now mean other content.
    writeFileSync(path.join(runDir(src), 'logs', 'later.log'), 'written after v1 was cut\n');
    let err: unknown;
    try {
      freezeSeed(input(src, seedsDir));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).exitCode).toBe(2);
    expect((err as UsageError).message).toMatch(/already exists/);
    expect(readFileSync(path.join(first.dir, 'manifest.json')).equals(before)).toBe(true);
    expect(readdirSync(seedsDir)).toEqual(['v1']);
  });

  it('an existing version folder that is no intact package (a copy cut short): not overwritten, and the refusal says what is wrong with it', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const first = freezeSeed(input(src, seedsDir));
    unlinkSync(path.join(first.dir, 'manifest.json')); // an rsync of it killed before its last file
    for (const dryRun of [true, false]) {
      const err = expectRefused(() => freezeSeed(input(src, seedsDir, { dryRun })), seedsDir, 'none', /already exists in .* but is not an intact package \(manifest\.json is missing\); it was not overwritten: move that folder aside/);
      expect(err.message).not.toMatch(/other content/);
    }
    expect(readdirSync(first.dir).sort()).toEqual(['files', 'seed.db']);
  });

  it('a rerun of a freeze killed between publishing and CURRENT converges: same content, nothing rewritten, CURRENT set, litter gone', () => {
    const src = source();
    const seedsDir = path.join(tmp(), 'seeds');
    const v0 = freezeSeed(input(src, seedsDir, { version: 'v0', setCurrent: true }));
    expect(v0.current).toBe(true);
    // What the kill leaves: v1 published, CURRENT still v0, the CURRENT being written beside it.
    const published = freezeSeed(input(src, seedsDir));
    const litter = path.join(seedsDir, `.CURRENT.tmp-999999999-0a1b2c3d@${hostname()}`);
    writeFileSync(litter, 'v1\n');
    const manifest = readFileSync(path.join(published.dir, 'manifest.json'));
    const again = freezeSeed(input(src, seedsDir, { setCurrent: true, now: new Date(Date.now() + 60_000) }));
    expect(again).toMatchObject({ unchanged: true, current: true, packageSha256: published.packageSha256 });
    expect(readCurrent(seedsDir)).toBe('v1');
    expect(readFileSync(path.join(published.dir, 'manifest.json')).equals(manifest)).toBe(true);
    expect(existsSync(litter)).toBe(false);
    expect(readdirSync(seedsDir).sort()).toEqual(['CURRENT', 'v0', 'v1']);
  });

  it('a run of another preset', () => {
    const src = source();
    const db = openSource(src);
    db.prepare('UPDATE runs SET preset_id = ? WHERE id = ?').run('33333333-3333-4333-8333-333333333333', src.runId);
    db.close();
    const seedsDir = path.join(tmp(), 'seeds');
    expectRefused(() => freezeSeed(input(src, seedsDir)), seedsDir, 'v1', 'belongs to preset 33333333-3333-4333-8333-333333333333');
  });
});
