// verify: a tamper suite (one seeded user broken in exactly one way per problem code, its
// neighbours untouched), the JSON Schema of --json, the JUnit report, and the built binary.

import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { chmodSync, closeSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn, spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import Ajv2020 from 'ajv/dist/2020.js';
import { CAN_MOUNT_TMPFS, frozenSource, sqliteWorld, tmpDir, withTmpfs, type FrozenSource, type World } from './helpers/env.js';
import { DIALECTS } from './helpers/mysql.js';
import { holdLocks } from './helpers/legacy-fleet.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { thisPidSpace } from '../src/core/worker-name.js';
import { LeakIndex, PROBLEM_CODES, verifyTestHooks, verifyUsers, type Problem, type ProblemCode, type VerifyOptions, type VerifyResult } from '../src/core/verify.js';
import { renderJunit, renderVerify } from '../src/ui/verify.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';
import { userMigrations } from '../src/userdb/user-db.js';
import { SHIPPED_SEEDS_DIR, TOOL_VERSION } from '../src/config.js';
import { Prng } from '../src/fixtures/prng.js';
import { DocIndex, tokenize } from '../src/seed/remap.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const SCHEMA = JSON.parse(readFileSync(path.join(REPO, 'schemas', 'verify.schema.json'), 'utf8')) as object;
const ajv = new Ajv2020({ allErrors: true, strict: true });
const validate = ajv.compile(SCHEMA);

function expectValid(r: unknown): void {
  const ok = validate(JSON.parse(JSON.stringify(r)));
  expect(validate.errors ?? [], JSON.stringify(validate.errors)).toEqual([]);
  expect(ok).toBe(true);
}

let pkg: FrozenSource;
const worlds: World[] = [];
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 2 });
});
afterAll(async () => {
  for (const w of worlds) await w.cleanup();
  pkg.cleanup();
});

interface Fleet {
  world: World;
  ids: number[];
  victim: number;
  deps: { master: World['master']; dataDir: string; seedsDir: string };
}

/** A fresh data dir and master with three seeded users; the middle one is the one to break. */
async function fleet(seedsDir = pkg.seedsDir): Promise<Fleet> {
  const world = await sqliteWorld();
  worlds.push(world);
  const deps = { master: world.master, dataDir: world.dataDir, seedsDir, lockTimeoutMs: 5000 };
  const ids: number[] = [];
  for (const n of ['ann', 'ben', 'cat']) {
    const r = await createUser(deps, { email: `${n}@example.com`, username: n });
    expect(r.seed.status).toBe('ready');
    ids.push(r.user.id);
  }
  return { world, ids, victim: ids[1]!, deps: { master: world.master, dataDir: world.dataDir, seedsDir } };
}

function withDb<T>(f: Fleet, fn: (db: Database.Database) => T, id = f.victim): T {
  const db = new Database(userDbPath(f.world.dataDir, id));
  try {
    db.pragma('foreign_keys = OFF');
    return fn(db);
  } finally {
    db.close();
  }
}

function one<T>(db: Database.Database, sql: string, ...args: unknown[]): T {
  return db.prepare(sql).get(...args) as T;
}

function runDir(f: Fleet, id = f.victim): string {
  const run = withDb(f, (db) => one<{ id: string }>(db, `SELECT id FROM runs`).id, id);
  return path.join(userRoot(f.world.dataDir, id), 'runs', run);
}

function seededFile(f: Fleet, match: RegExp): string {
  const rows = withDb(f, (db) => db.prepare(`SELECT path FROM acm2_seed_files ORDER BY path`).all() as { path: string }[]);
  const hit = rows.find((r) => match.test(r.path));
  if (!hit) throw new Error(`no seeded file matches ${match}`);
  return path.join(userRoot(f.world.dataDir, f.victim), hit.path);
}

function codesOf(r: VerifyResult, id: number): Set<ProblemCode> {
  return new Set(r.users.find((u) => u.id === id)!.problems.map((p) => p.code));
}

/** The victim has exactly these codes; every other user is clean; the run fails (exit 1). */
function expectOnly(r: VerifyResult, f: Fleet, codes: ProblemCode[]): void {
  expectValid(r);
  expect(r.ok).toBe(false);
  expect(r.checked).toBe(3);
  expect(r.failed).toBe(1);
  const victim = r.users.find((u) => u.id === f.victim)!;
  expect(victim.ok).toBe(false);
  expect([...codesOf(r, f.victim)].sort(), JSON.stringify(victim.problems, null, 1)).toEqual([...codes].sort());
  for (const p of victim.problems) expect(p.userId).toBe(f.victim);
  for (const u of r.users.filter((x) => x.id !== f.victim)) expect(u, JSON.stringify(u.problems)).toMatchObject({ ok: true, problems: [] });
  expect(r.orphans).toEqual([]);
}

const verify = (f: Fleet, opts: VerifyOptions = {}) => verifyUsers(f.deps, opts);

describe('a clean fleet', () => {
  it('is ok in quick and deep mode, sequentially and with concurrency', async () => {
    const f = await fleet();
    for (const opts of [{}, { deep: true }, { concurrency: 3 }, { deep: true, concurrency: 2, pageSize: 1 }] as VerifyOptions[]) {
      const r = await verify(f, opts);
      expectValid(r);
      expect(r).toMatchObject({ ok: true, checked: 3, failed: 0, orphans: [] });
      expect(r.users.map((u) => u.id)).toEqual(f.ids);
      for (const u of r.users) expect(u).toEqual({ id: u.id, ok: true, problems: [] });
    }
  });

  it('is ok for a user seeded from the real ACM2 sample package (no false positives on real data)', async () => {
    const f = await fleet(SHIPPED_SEEDS_DIR);
    const r = await verify(f, { deep: true });
    expect(r.users.flatMap((u) => u.problems)).toEqual([]);
    expect(r.ok).toBe(true);
  });

  it("is ok after ACM2 rebuilds the seeded run's report (it does on every GET of it), quick and deep", async () => {
    const f = await fleet();
    const report = withDb(f, (db) => db.prepare(`SELECT path FROM acm2_seed_files WHERE path LIKE '%/reports/report.html'`).pluck().get() as string);
    expect(report).toBeDefined();
    writeFileSync(path.join(userRoot(f.world.dataDir, f.victim), report), '<html>rebuilt by ACM2 from results_summary</html>');
    for (const opts of [{}, { deep: true }] as VerifyOptions[]) expect((await verify(f, opts)).users.flatMap((u) => u.problems)).toEqual([]);
    // Gone is still gone.
    rmSync(path.join(userRoot(f.world.dataDir, f.victim), report));
    expect((await verify(f)).users.flatMap((u) => u.problems.map((p) => p.code))).toEqual(['file_missing']);
  });

  it('a DB whose writer died mid-transaction (a hot journal) is a warning to verify again, not corrupt', async () => {
    const f = await fleet();
    const file = userDbPath(f.world.dataDir, f.victim);
    // A writer killed with its transaction spilled to the file: the journal is hot.
    const r = spawnSync(process.execPath, [
      '-e',
      `const D = require(${JSON.stringify(require.resolve('better-sqlite3'))}); const db = new D(${JSON.stringify(file)}); db.pragma('cache_size = 1'); db.exec('BEGIN'); db.prepare("UPDATE contents SET body = body || hex(randomblob(20000))").run(); process.kill(process.pid, 'SIGKILL');`,
    ]);
    expect(r.signal).toBe('SIGKILL');
    expect(existsSync(`${file}-journal`)).toBe(true);
    const v = await verify(f, { users: [f.victim] });
    expect(v.users[0]!.problems.map((p) => [p.code, p.severity])).toEqual([['db_busy', 'warning']]);
    expect(v.users[0]!.problems[0]!.message).toMatch(/hot journal left by a writer that died mid-transaction/);
    // A temp folder that cannot hold the rolled-back copy is the environment (exit 3), not a bug.
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = path.join(f.world.dataDir, 'no-such-folder');
    try {
      await expect(verify(f, { users: [f.victim] })).rejects.toMatchObject({ exitCode: 3, message: expect.stringMatching(/into the temp folder .*no-such-folder \(ENOENT\); set TMPDIR/) });
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
    // Its next writer rolls it back, and the user is ok again.
    withDb(f, (db) => db.prepare('SELECT COUNT(*) FROM contents').get());
    expect((await verify(f, { users: [f.victim] })).users[0]!.problems).toEqual([]);
  });

  it('a DB with a hot journal that is corrupt besides (a page the journal does not hold) is db_corrupt, checked on a rolled-back copy', async () => {
    const f = await fleet();
    const file = userDbPath(f.world.dataDir, f.victim);
    const { page, size } = withDb(f, (db) => ({ page: db.prepare(`SELECT rootpage FROM sqlite_master WHERE name = 'acm2_seed_state'`).pluck().get() as number, size: db.pragma('page_size', { simple: true }) as number }));
    const r = spawnSync(process.execPath, [
      '-e',
      `const D = require(${JSON.stringify(require.resolve('better-sqlite3'))}); const db = new D(${JSON.stringify(file)}); db.pragma('cache_size = 1'); db.exec('BEGIN'); db.prepare("UPDATE contents SET body = body || hex(randomblob(20000))").run(); process.kill(process.pid, 'SIGKILL');`,
    ]);
    expect(r.signal).toBe('SIGKILL');
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(64, 0xde), 0, 64, (page - 1) * size);
    closeSync(fd);
    const before = readFileSync(file);
    const v = await verify(f, { users: [f.victim] });
    expect(v.users[0]!.problems.map((p) => p.code)).toEqual(['db_corrupt']);
    expect(v.users[0]!.problems[0]!.message).toMatch(/rolled back from its hot journal \(on a copy\), failed/);
    // verify changed nothing: the journal is still there, the file as it was.
    expect(existsSync(`${file}-journal`)).toBe(true);
    expect(readFileSync(file).equals(before)).toBe(true);
  });

  it('--shard i/n verifies only ids with id % n == i; --user only those named', async () => {
    const f = await fleet();
    const r0 = await verify(f, { shard: { index: 0, count: 2 } });
    const r1 = await verify(f, { shard: { index: 1, count: 2 } });
    expect(r0.users.map((u) => u.id)).toEqual(f.ids.filter((id) => id % 2 === 0));
    expect(r1.users.map((u) => u.id)).toEqual(f.ids.filter((id) => id % 2 === 1));
    const named = await verify(f, { users: [f.ids[2]!, f.ids[0]!, f.ids[0]!] });
    expect(named.users.map((u) => u.id)).toEqual([f.ids[0], f.ids[2]]);
  });
});

describe('tamper suite: one user broken in one way is reported with that code, the others stay ok', () => {
  it('seed_row_missing: a seeded row deleted', async () => {
    const f = await fleet();
    const gone = withDb(f, (db) => {
      const a = one<{ id: string }>(db, `SELECT id FROM artifacts ORDER BY id LIMIT 1`);
      db.prepare(`DELETE FROM artifacts WHERE id = ?`).run(a.id);
      return a.id;
    });
    const r = await verify(f);
    expectOnly(r, f, ['seed_row_missing']);
    expect(r.users.find((u) => u.id === f.victim)!.problems[0]).toMatchObject({ table: 'artifacts', rowId: gone, severity: 'error' });
  });

  it("foreign_user_row: a row's user_id changed", async () => {
    const f = await fleet();
    const id = withDb(f, (db) => {
      const c = one<{ id: string }>(db, `SELECT id FROM contents ORDER BY id LIMIT 1`);
      db.prepare(`UPDATE contents SET user_id = 999 WHERE id = ?`).run(c.id);
      return c.id;
    });
    const r = await verify(f);
    expectOnly(r, f, ['foreign_user_row']);
    expect(r.users.find((u) => u.id === f.victim)!.problems).toEqual([expect.objectContaining({ code: 'foreign_user_row', table: 'contents', rowId: id })]);
  });

  it("foreign_user_row on a seeded row names its seed and the --force that puts it back (ACM2 cannot show the row to fix it); on the user's own row, not", async () => {
    const f = await fleet();
    const own = randomUUID();
    const seeded = withDb(f, (db) => {
      const c = one<{ id: string }>(db, `SELECT id FROM contents ORDER BY id LIMIT 1`);
      db.prepare(`UPDATE contents SET user_id = 999 WHERE id = ?`).run(c.id);
      // A row ACM2 wrote (not the seed), copied in from user 999's DB.
      db.prepare(`INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES (?, 999, '2026-01-21 09:00:00.000000', 'copied', 'input_document', 'x', '{}', '[]', 0)`).run(own);
      return c.id;
    });
    const r = await verify(f);
    expectOnly(r, f, ['foreign_user_row']);
    const problems = r.users.find((u) => u.id === f.victim)!.problems;
    const onSeeded = problems.find((p) => p.rowId === seeded)!;
    const onOwn = problems.find((p) => p.rowId === own)!;
    expect(onSeeded.message).toContain(`it is a seeded row (seed v1): acm2 user seed ${f.victim} --force --seed-version v1 puts it back`);
    expect(onOwn.message).not.toContain('seeded row');
    expect(renderVerify(r, { color: false })).toMatch(/foreign_user_row\s+a row names another user, so ACM2 cannot show it \(nor fix it\): one the seed wrote .* is put back by acm2 user seed <id> --force --seed-version <its version>/);
    // The command the message names clears the seeded row's problem, and leaves the other row alone.
    await seedOneUser({ ...f.deps, lockTimeoutMs: 5000 }, String(f.victim), { force: true, seedVersion: 'v1' });
    const after = (await verify(f)).users.find((u) => u.id === f.victim)!.problems;
    expect(after.map((p) => [p.code, p.rowId])).toEqual([['foreign_user_row', own]]);
  });

  it('file_missing: a seeded log deleted', async () => {
    const f = await fleet();
    unlinkSync(seededFile(f, /logs\/run\.log$/));
    expectOnly(await verify(f), f, ['file_missing']);
  });

  it('seed_row_missing: a seeded row deleted together with its ID map entry (checked against the package)', async () => {
    const f = await fleet();
    const src = withDb(f, (db) => {
      const m = one<{ source_id: string; target_id: string }>(db, `SELECT source_id, target_id FROM acm2_id_map WHERE kind = 'artifacts' ORDER BY source_id LIMIT 1`);
      db.prepare(`DELETE FROM artifacts WHERE id = ?`).run(m.target_id);
      db.prepare(`DELETE FROM acm2_id_map WHERE source_id = ?`).run(m.source_id);
      return m.source_id;
    });
    const r = await verify(f);
    expectOnly(r, f, ['seed_row_missing']);
    expect(r.users.find((u) => u.id === f.victim)!.problems).toEqual([expect.objectContaining({ code: 'seed_row_missing', table: 'artifacts', message: expect.stringContaining(src) })]);
  });

  it('seed_row_missing + file_missing: a ready user whose rows, map, file list and files are all gone', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`DELETE FROM artifacts; DELETE FROM tasks; DELETE FROM runs; DELETE FROM presets; DELETE FROM documents; DELETE FROM contents; DELETE FROM acm2_id_map; DELETE FROM acm2_seed_files;`));
    rmSync(userRoot(f.deps.dataDir, f.victim), { recursive: true, force: true });
    const r = await verify(f);
    expectOnly(r, f, ['seed_row_missing', 'file_missing']);
    const problems = r.users.find((u) => u.id === f.victim)!.problems;
    expect(problems.filter((p) => p.code === 'file_missing')).toHaveLength(pkg.pkg.manifest.files.length);
  });

  it('file_missing: a seeded file deleted together with its entry in the seeded-file list', async () => {
    const f = await fleet();
    const file = seededFile(f, /reports\/report\.html$/);
    unlinkSync(file);
    withDb(f, (db) => db.prepare(`DELETE FROM acm2_seed_files WHERE path LIKE '%reports/report.html'`).run());
    const r = await verify(f);
    expectOnly(r, f, ['file_missing']);
    expect(r.users.find((u) => u.id === f.victim)!.problems[0]).toMatchObject({ table: 'acm2_seed_files', message: expect.stringContaining('reports/report.html') });
  });

  it('a seed that begins between the DB read and the file checks: a warning to look again, not file errors', async () => {
    const f = await fleet();
    const file = seededFile(f, /generated\/combined\./);
    verifyTestHooks.afterDbRead = (id) => {
      if (id !== f.victim) return;
      // user seed --force starts: in_progress, then the files are rewritten (one half-way now).
      withDb(f, (db) => db.prepare(`UPDATE user_meta SET seed_status = 'in_progress'`).run());
      truncateSync(file, 10);
    };
    try {
      const r = await verify(f, { concurrency: 1 });
      const victim = r.users.find((u) => u.id === f.victim)!;
      expect(victim.problems.map((p) => [p.code, p.severity])).toEqual([['not_ready', 'warning']]);
      expect(victim.problems[0]!.message).toMatch(/a seed of this user began or ran while verify checked it/);
    } finally {
      delete verifyTestHooks.afterDbRead;
    }
    // Checked again (here the seed never finished): not ready, against a master job that says done.
    expect(codesOf(await verify(f), f.victim)).toEqual(new Set(['not_ready', 'job_state_mismatch']));
  });

  it('file_missing + unresolved_reference: a generated doc the Evaluation tabs need deleted', async () => {
    const f = await fleet();
    const doc = seededFile(f, /generated\/[0-9a-f]{8}\.[0-9a-f]{4}\.fpf/);
    unlinkSync(doc);
    const r = await verify(f);
    expectOnly(r, f, ['file_missing', 'unresolved_reference']);
    const unresolved = r.users.find((u) => u.id === f.victim)!.problems.find((p) => p.code === 'unresolved_reference')!;
    expect(unresolved).toMatchObject({ table: 'runs', path: path.relative(f.world.dataDir, doc) });
  });

  it('file_size_mismatch: a seeded file truncated', async () => {
    const f = await fleet();
    truncateSync(seededFile(f, /generated\/combined\./), 10);
    expectOnly(await verify(f), f, ['file_size_mismatch']);
  });

  it('file_hash_mismatch: one byte flipped (found with --deep only)', async () => {
    const f = await fleet();
    const file = seededFile(f, /generated\/combined\./);
    const buf = readFileSync(file);
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.from([buf[100]! ^ 0x01]), 0, 1, 100);
    closeSync(fd);
    expect((await verify(f)).ok).toBe(true);
    expectOnly(await verify(f, { deep: true }), f, ['file_hash_mismatch']);
  });

  it('seed_id_leaked: a package id put back into a JSON value', async () => {
    const f = await fleet();
    const source = pkg.source.sourceDocIds[0]!;
    withDb(f, (db) => {
      const run = one<{ id: string; config: string }>(db, `SELECT id, config FROM runs`);
      const cfg = JSON.parse(run.config) as { document_ids: string[] };
      cfg.document_ids[0] = source;
      db.prepare(`UPDATE runs SET config = ? WHERE id = ?`).run(JSON.stringify(cfg), run.id);
    });
    const r = await verify(f);
    // The id also no longer resolves in this user's DB: both are true, both are reported.
    expectOnly(r, f, ['seed_id_leaked', 'unresolved_reference']);
    expect(r.users.find((u) => u.id === f.victim)!.problems.find((p) => p.code === 'seed_id_leaked')!.message).toContain(source);
  });

  it('seed_id_leaked: a package doc id in a text file (found with --deep only)', async () => {
    const f = await fleet();
    const note = path.join(runDir(f), 'logs', 'note.txt');
    writeFileSync(note, `copied from ${pkg.source.docIds[0]} by hand\n`, { mode: 0o600 });
    expect((await verify(f)).ok).toBe(true);
    expectOnly(await verify(f, { deep: true }), f, ['seed_id_leaked']);
  });

  it('unresolved_reference: results_summary names a doc that has no file', async () => {
    const f = await fleet();
    withDb(f, (db) => {
      const run = one<{ id: string; results_summary: string }>(db, `SELECT id, results_summary FROM runs`);
      const summary = JSON.parse(run.results_summary) as { generated_docs: Array<{ id: string }> };
      const doc = summary.generated_docs[0]!.id;
      const text = run.results_summary.split(JSON.stringify(doc)).join(JSON.stringify('deadbeef.0000.fpf.1.openai_o4-mini'));
      db.prepare(`UPDATE runs SET results_summary = ? WHERE id = ?`).run(text, run.id);
    });
    expectOnly(await verify(f), f, ['unresolved_reference']);
  });

  it('unresolved_reference: a preset lists a content id that is not a row', async () => {
    const f = await fleet();
    withDb(f, (db) => db.prepare(`UPDATE presets SET documents = ?`).run(JSON.stringify([randomUUID()])));
    expectOnly(await verify(f), f, ['unresolved_reference']);
  });

  it('fk_violation: a task pointing at a run that does not exist', async () => {
    const f = await fleet();
    withDb(f, (db) => db.prepare(`UPDATE tasks SET run_id = ? WHERE id = (SELECT id FROM tasks ORDER BY id LIMIT 1)`).run(randomUUID()));
    const r = await verify(f);
    expectOnly(r, f, ['fk_violation']);
    // PRAGMA foreign_key_check and the logical check agree: reported once.
    expect(r.users.find((u) => u.id === f.victim)!.problems).toHaveLength(1);
  });

  it('path_escape: a symlink under user_{id}/ pointing outside it', async () => {
    const f = await fleet();
    const outside = tmpDir('acm2-outside-');
    symlinkSync(outside, path.join(runDir(f), 'elsewhere'));
    const r = await verify(f);
    expectOnly(r, f, ['path_escape']);
    rmSync(outside, { recursive: true, force: true });
  });

  it('path_escape: a seeded file replaced by a symlink to a file outside (never read through)', async () => {
    const f = await fleet();
    const file = seededFile(f, /generated\/combined\./);
    const outside = path.join(tmpDir('acm2-outside-'), 'x.html');
    copyFileSync(file, outside);
    unlinkSync(file);
    symlinkSync(outside, file);
    expectOnly(await verify(f, { deep: true }), f, ['path_escape']);
    rmSync(path.dirname(outside), { recursive: true, force: true });
  });

  it('meta_missing: user_meta row removed (the master job still says done)', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`DELETE FROM user_meta`));
    expectOnly(await verify(f), f, ['meta_missing', 'job_state_mismatch']);
  });

  it('not_ready: user_meta set in_progress (the master job still says done)', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`UPDATE user_meta SET seed_status = 'in_progress'`));
    const r = await verify(f);
    expectOnly(r, f, ['not_ready', 'job_state_mismatch']);
    expect(r.users.find((u) => u.id === f.victim)!.problems.find((p) => p.code === 'not_ready')!.severity).toBe('error');
  });

  it('not_ready (warning): a user whose seed job is still queued', async () => {
    const f = await fleet();
    const u = await createUser({ ...f.deps, lockTimeoutMs: 5000 }, { email: 'dan@example.com', username: 'dan', async: true });
    const r = await verify(f);
    expect(r.ok).toBe(false);
    expect(r.users.find((x) => x.id === u.user.id)!.problems).toEqual([expect.objectContaining({ code: 'not_ready', severity: 'warning', userId: u.user.id })]);
    for (const id of f.ids) expect(r.users.find((x) => x.id === id)!.ok).toBe(true);
  });

  it('schema_outdated: a column dropped (table rebuilt without it)', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`ALTER TABLE contents DROP COLUMN description`));
    const r = await verify(f);
    expectOnly(r, f, ['schema_outdated']);
    expect(r.users.find((u) => u.id === f.victim)!.problems[0]).toMatchObject({ table: 'contents', message: expect.stringContaining('contents.description') });
  });

  it('schema_outdated: an index dropped', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`DROP INDEX ix_user_meta_user_id`));
    const r = await verify(f);
    expectOnly(r, f, ['schema_outdated']);
    expect(r.users.find((u) => u.id === f.victim)!.problems[0]).toMatchObject({ message: 'index ix_user_meta_user_id is missing' });
  });

  it('schema_outdated: a migration not applied', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`DELETE FROM acm2_migrations WHERE id = 2`));
    expectOnly(await verify(f), f, ['schema_outdated']);
  });

  it('schema_newer: a newer acm2 migrated the DB (version skew): reported as such, not as outdated, and nothing else of it is judged', async () => {
    const f = await fleet();
    const next = userMigrations().length + 1;
    const name = `${String(next).padStart(4, '0')}_from_a_newer_acm2`;
    withDb(f, (db) => {
      db.prepare(`INSERT INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(next, name, 'f'.repeat(64), new Date().toISOString());
      // What that newer migration did is unknown to this tool: here it replaced an index, which
      // this tool alone would call schema_outdated and send to a backfill it must not run.
      db.exec(`DROP INDEX ix_user_meta_user_id`);
    });
    const r = await verify(f);
    expectOnly(r, f, ['schema_newer']);
    expect(r.users.find((u) => u.id === f.victim)!.problems).toEqual([
      {
        code: 'schema_newer',
        severity: 'error',
        userId: f.victim,
        path: `user_${f.victim}.db`,
        message: `user_${f.victim}.db has migration ${name}, which this acm2 (${TOOL_VERSION}) does not know: a newer acm2 applied it, so this acm2 did not check the DB's contents; upgrade acm2 on this host to the newer version, then run again`,
      },
    ]);
  });

  it('seed_version_unknown: user_meta names a version no package has', async () => {
    const f = await fleet();
    withDb(f, (db) => db.exec(`UPDATE user_meta SET seed_version = 'v9'`));
    // The master's done job was for v1, so it disagrees too.
    expectOnly(await verify(f), f, ['seed_version_unknown', 'job_state_mismatch']);
  });

  it("seed_version_unknown for a version acm2 never seeded (ACM2's own '1') names a seed, not a package to put back", async () => {
    const f = await fleet();
    // ACM2's own seeding (f390420) writes its SEED_VERSION into user_meta; no package of it exists
    // anywhere, and neither the seed record nor the ID map knows it.
    withDb(f, (db) => db.exec(`UPDATE user_meta SET seed_version = '1'`));
    const r = await verify(f);
    expectOnly(r, f, ['seed_version_unknown', 'job_state_mismatch']);
    const p = r.users.find((u) => u.id === f.victim)!.problems.find((x) => x.code === 'seed_version_unknown')!;
    expect(p.message).toContain('acm2 never seeded it here');
    expect(p.message).toContain(`\`acm2 user seed ${f.victim}\``);
    // A version the tool did seed here, whose package is gone from the seeds dir, is still the
    // package to put back (seed check, restore it).
    withDb(f, (db) => db.exec(`UPDATE user_meta SET seed_version = 'v9'; UPDATE acm2_seed_state SET seed_version = 'v9'`));
    const again = (await verify(f)).users.find((u) => u.id === f.victim)!.problems.find((x) => x.code === 'seed_version_unknown')!;
    expect(again.message).toBe(`user_meta.seed_version 'v9' is neither a seed package in the seeds dir nor 'legacy'`);
  });

  it('db_busy (warning), not db_corrupt: a DB another process holds locked past the wait', async () => {
    const f = await fleet();
    // ACM2 in the middle of a long write: an exclusive lock on the rollback-journal DB.
    const holder = new Database(userDbPath(f.world.dataDir, f.victim));
    holder.exec('BEGIN EXCLUSIVE');
    holder.prepare(`UPDATE user_meta SET updated_at = updated_at`).run();
    try {
      const r = await verify(f, { busyTimeoutMs: 200 });
      expectOnly(r, f, ['db_busy']);
      expect(r.users.find((u) => u.id === f.victim)!.problems[0]).toMatchObject({ severity: 'warning', message: expect.stringMatching(/locked by another process .* not checked/) });
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
    expect((await verify(f)).ok).toBe(true);
  });

  it('db_corrupt: garbage over the DB file', async () => {
    const f = await fleet();
    const file = userDbPath(f.world.dataDir, f.victim);
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(100, 0x5a), 0, 100, 0);
    closeSync(fd);
    expectOnly(await verify(f), f, ['db_corrupt']);
  });

  it('db_corrupt: a damaged page found by quick_check', async () => {
    const f = await fleet();
    const file = userDbPath(f.world.dataDir, f.victim);
    const pageSize = withDb(f, (db) => db.pragma('page_size', { simple: true }) as number);
    const pages = readFileSync(file).length / pageSize;
    const fd = openSync(file, 'r+');
    // Overwrite every page after the schema page's neighbours with junk b-tree headers.
    for (let p = 2; p < pages; p++) writeSync(fd, Buffer.alloc(16, 0xff), 0, 16, p * pageSize);
    closeSync(fd);
    const r = await verify(f);
    expect(codesOf(r, f.victim).has('db_corrupt')).toBe(true);
    for (const id of f.ids.filter((x) => x !== f.victim)) expect(codesOf(r, id).size).toBe(0);
  });

  it('db_missing: the DB deleted (the master job still says done)', async () => {
    const f = await fleet();
    unlinkSync(userDbPath(f.world.dataDir, f.victim));
    expectOnly(await verify(f), f, ['db_missing', 'job_state_mismatch']);
  });

  it('bad_permissions: DB chmod 0644, a folder 0755', async () => {
    const f = await fleet();
    chmodSync(userDbPath(f.world.dataDir, f.victim), 0o644);
    let r = await verify(f);
    expectOnly(r, f, ['bad_permissions']);
    expect(r.users.find((u) => u.id === f.victim)!.problems[0]!.message).toMatch(/0644.*0600/);
    chmodSync(userDbPath(f.world.dataDir, f.victim), 0o600);
    chmodSync(runDir(f), 0o755);
    r = await verify(f);
    expectOnly(r, f, ['bad_permissions']);
  });

  it("job_state_mismatch: the master's job failed but the user is ready", async () => {
    const f = await fleet();
    const m = new Database(path.join(f.world.dataDir, 'master.db'));
    m.prepare(`UPDATE acm2_seed_jobs SET status = 'failed', last_error = 'boom' WHERE user_id = ?`).run(f.victim);
    m.close();
    expectOnly(await verify(f), f, ['job_state_mismatch']);
  });

  it("job_state_mismatch: the master's job is running with an expired lease but the user is ready", async () => {
    const f = await fleet();
    const m = new Database(path.join(f.world.dataDir, 'master.db'));
    m.prepare(`UPDATE acm2_seed_jobs SET status = 'running', locked_by = 'gone', locked_until = ? WHERE user_id = ?`).run(Date.now() - 60_000, f.victim);
    m.close();
    expectOnly(await verify(f), f, ['job_state_mismatch']);
  });

  it('orphan: a user DB and a user folder with no master user; listed in orphans, not per user', async () => {
    const f = await fleet();
    copyFileSync(userDbPath(f.world.dataDir, f.victim), path.join(f.world.dataDir, 'user_99.db'));
    mkdirSync(path.join(f.world.dataDir, 'user_77'), { mode: 0o700 });
    const r = await verify(f);
    expectValid(r);
    expect(r.ok).toBe(false);
    expect(r.failed).toBe(0);
    expect(r.users.every((u) => u.ok)).toBe(true);
    expect(r.orphans).toEqual([
      expect.objectContaining({ code: 'orphan', userId: 77, path: 'user_77' }),
      expect.objectContaining({ code: 'orphan', userId: 99, path: 'user_99.db' }),
    ]);
    // Sharded: each orphan is reported by the shard that owns its id.
    expect((await verify(f, { shard: { index: 1, count: 2 } })).orphans.map((o) => o.userId)).toEqual([77, 99]);
    expect((await verify(f, { shard: { index: 0, count: 2 } })).orphans).toEqual([]);
  });

  it('master_user_missing: --user names an id the master does not have', async () => {
    const f = await fleet();
    const r = await verify(f, { users: [f.ids[0]!, 4242] });
    expectValid(r);
    expect(r.ok).toBe(false);
    expect(r.users.map((u) => u.id)).toEqual([f.ids[0], 4242]);
    expect(r.users[1]!.problems).toEqual([expect.objectContaining({ code: 'master_user_missing', userId: 4242 })]);
    expect(r.users[0]!.ok).toBe(true);
  });

  it('reports every problem of a user, not the first', async () => {
    const f = await fleet();
    withDb(f, (db) => {
      db.exec(`DELETE FROM artifacts`);
      db.exec(`UPDATE contents SET user_id = 5`);
    });
    unlinkSync(seededFile(f, /logs\/run\.log$/));
    chmodSync(userDbPath(f.world.dataDir, f.victim), 0o640);
    const r = await verify(f);
    expectOnly(r, f, ['seed_row_missing', 'foreign_user_row', 'file_missing', 'bad_permissions']);
    const probs = r.users.find((u) => u.id === f.victim)!.problems;
    expect(probs.filter((p) => p.code === 'seed_row_missing')).toHaveLength(pkg.source.artifactIds.length);
    expect(probs.filter((p) => p.code === 'foreign_user_row')).toHaveLength(pkg.source.contentIds.length);
  });

  it('every problem code of the SPEC is exercised by this suite', () => {
    const src = readFileSync(fileURLToPath(import.meta.url), 'utf8');
    for (const code of PROBLEM_CODES) expect(src, code).toMatch(new RegExp(`it\\('${code}|it\\("${code}|\\['${code}'|'${code}'\\]`));
  });
});

for (const dialect of DIALECTS) {
  describe.skipIf(dialect.skip)(`against the ${dialect.name} master`, () => {
    beforeAll(() => dialect.ready());

    it('streams users in keyset pages, compares job state and finds orphans through the master', async () => {
      const tm = await dialect.open();
      const dataDir = tmpDir('acm2-data-');
      try {
        const deps = { master: tm.master, dataDir, seedsDir: pkg.seedsDir };
        const ids: number[] = [];
        for (const n of ['ann', 'ben', 'cat']) ids.push((await createUser({ ...deps, lockTimeoutMs: 5000 }, { email: `${n}@example.com`, username: n })).user.id);
        const clean = await verifyUsers(deps, { pageSize: 2 });
        expectValid(clean);
        expect(clean).toMatchObject({ ok: true, checked: 3, failed: 0, orphans: [] });

        await tm.query(`UPDATE acm2_seed_jobs SET status = 'failed', last_error = 'boom' WHERE user_id = ?`, [ids[1]]);
        mkdirSync(path.join(dataDir, `user_${ids[2]! + 100}`), { mode: 0o700 });
        const r = await verifyUsers(deps, { pageSize: 2, concurrency: 2 });
        expectValid(r);
        expect(r.ok).toBe(false);
        expect(r.users.map((u) => [u.id, [...new Set(u.problems.map((p) => p.code))]])).toEqual([
          [ids[0], []],
          [ids[1], ['job_state_mismatch']],
          [ids[2], []],
        ]);
        expect(r.orphans.map((o) => o.userId)).toEqual([ids[2]! + 100]);
      } finally {
        await tm.cleanup();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  });
}

describe('a run ACM2 deletes while verify checks the user', () => {
  /** A run of the user's own: the seeded run copied under a new id, its folder with it. */
  function ownRun(f: Fleet): { id: string; dir: string } {
    const id = randomUUID();
    const seeded = runDir(f);
    withDb(f, (db) => {
      const row = one<Record<string, unknown>>(db, `SELECT * FROM runs WHERE id = ?`, path.basename(seeded));
      const cols = Object.keys(row);
      db.prepare(`INSERT INTO runs (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`).run(...cols.map((c) => (c === 'id' ? id : row[c])));
    });
    const dir = path.join(userRoot(f.world.dataDir, f.victim), 'runs', id);
    cpSync(seeded, dir, { recursive: true });
    return { id, dir };
  }

  it('its docs, gone with it between the DB read and the file check, are no unresolved_reference; a doc gone from a run still there is', async () => {
    const f = await fleet();
    const run = ownRun(f);
    expect((await verify(f)).ok).toBe(true);
    try {
      // ACM2 deletes the run: its row, then its folder, after verify read the DB.
      verifyTestHooks.afterDbRead = (id) => {
        if (id !== f.victim) return;
        withDb(f, (db) => db.prepare(`DELETE FROM runs WHERE id = ?`).run(run.id));
        rmSync(run.dir, { recursive: true, force: true });
      };
      expect((await verify(f)).users.flatMap((u) => u.problems)).toEqual([]);
      // A doc file lost from a run that stays: reported, as ever.
      const again = ownRun(f);
      const gen = path.join(again.dir, 'generated');
      const doc = readdirSync(gen).find((n) => n.endsWith('.md') && !n.startsWith('combined.'))!;
      verifyTestHooks.afterDbRead = (id) => {
        if (id === f.victim) rmSync(path.join(gen, doc), { force: true });
      };
      const r = await verify(f);
      expectOnly(r, f, ['unresolved_reference']);
      expect(r.users.find((u) => u.id === f.victim)!.problems[0]).toMatchObject({ rowId: again.id, path: expect.stringContaining(doc) });
    } finally {
      verifyTestHooks.afterDbRead = undefined;
    }
  });
});

describe('a seed job whose seeder was killed', () => {
  it('not_ready says the process that claimed the job is gone and what to run, not only that it is running', async () => {
    const f = await fleet();
    const deps = { ...f.deps, lockTimeoutMs: 5000 };
    const queued = await createUser(deps, { email: 'dan@example.com', username: 'dan', async: true });
    const alive = await createUser(deps, { email: 'eve@example.com', username: 'eve', async: true });
    // A drainer of this host claimed dan's job and was killed (its pid is gone); eve's is at work.
    const gone = spawn(process.execPath, ['-e', '0']);
    await new Promise((r) => gone.once('exit', r));
    expect(await f.world.master.claimJobForUser(queued.user.id, `${hostname()}:${gone.pid}:x:${thisPidSpace()}`, 10 * 60_000)).toBeTruthy();
    expect(await f.world.master.claimJobForUser(alive.user.id, `${hostname()}:${process.pid}:x:${thisPidSpace()}`, 10 * 60_000)).toBeTruthy();
    const r = await verifyUsers(f.deps, { users: [queued.user.id, alive.user.id] });
    const [dead, live] = r.users.map((u) => u.problems);
    expect(dead).toEqual([
      expect.objectContaining({ code: 'not_ready', severity: 'warning', message: expect.stringMatching(/is running, but the process that claimed it on this host is gone .*acm2 user seed --pending takes it over at once, or run acm2 user seed \d+$/) }),
    ]);
    expect(live).toEqual([expect.objectContaining({ code: 'not_ready', message: expect.stringMatching(/seed job #\d+ \(v1\) is running$/) })]);
  });
});

describe('LeakIndex', () => {
  it('finds package UUIDs and doc-id heads, and nothing else', () => {
    const idx = new LeakIndex(['9490e0ef-b200-46fb-8c2c-21f2673307e8', '673307e8.4a48.fpf.1.openai_o4-mini', 'combined.673307e8.2b47.openai_gpt-5']);
    expect(idx.find('x 9490E0EF-B200-46FB-8C2C-21F2673307E8 y')).toBe('9490E0EF-B200-46FB-8C2C-21F2673307E8');
    expect(idx.find('Evaluated 673307e8.4a48.fp...')).toBe('673307e8.4a48.');
    expect(idx.find('generated/combined.673307e8.2b47.openai_gpt-5.md')).toBe('combined.673307e8.2b47.');
    expect(idx.find('a9490e0ef-b200-46fb-8c2c-21f2673307e8')).toBeUndefined();
    expect(idx.find('673307e9.ffff.fpf.1.openai_o4-mini and 11111111-2222-3333-4444-555555555555')).toBeUndefined();
    // A doc head with a tag the package has not still carries S's last 8 characters: a bare part of S.
    expect(idx.find('673307e8.ffff.fpf.1.openai_o4-mini')).toBe('673307e8');
  });

  it('finds a bare first group, tail or dashless form of a package UUID, not one inside a longer run', () => {
    const idx = new LeakIndex(['9490e0ef-b200-46fb-8c2c-21f2673307e8']);
    expect(idx.find('[run 9490e0ef] started')).toBe('9490e0ef');
    expect(idx.find('source \\u2026673307e8 done')).toBe('673307e8');
    expect(idx.find('group 21F2673307E8')).toBe('21F2673307E8');
    expect(idx.find('hex=9490e0efb20046fb8c2c21f2673307e8')).toBe('9490e0efb20046fb8c2c21f2673307e8');
    expect(idx.find('9490e0ef-aaaa x9490e0ef 9490e0efx ffffffff-aaaa-bbbb-cccc-21f2673307e8 12345678')).toBeUndefined();
  });

  it('with --deep, finds a package UUID cut short (str(e)[:100]) exactly where the seed remaps one', () => {
    const ids = ['9490e0ef-b200-46fb-8c2c-21f2673307e8', '11112222-aaaa-4bbb-8ccc-ddddeeeeffff', '11112222-bbbb-4bbb-8ccc-ddddeeeeffff'];
    const idx = new LeakIndex(ids, { parts: true });
    const texts = [
      "error: Task 9490e0ef-b200-46fb-8",
      'x 9490E0EF-B200 y',
      '"\\n9490e0ef-b2"',
      'run%2F9490e0ef-b200-46fb-8c2c-21f2',
      // Not one: two ids begin so, a whole id of no package, one glued to a word, one going on.
      'x 11112222-',
      'x 9490e0ef-b200-46fb-8c2c-21f2673307e9',
      'x 9490e0ef-b200-46fbx',
      'x 9490e0ef-b200-46fb-8c2c-21f2673307e8a',
    ];
    const found = texts.map((t) => idx.find(t));
    expect(found).toEqual(['9490e0ef-b200-46fb-8', '9490E0EF-B200', '9490e0ef-b2', '9490e0ef-b200-46fb-8c2c-21f2', undefined, undefined, undefined, undefined]);
    // What the seed takes for an identifier is what verify --deep looks for, and nothing else.
    const uuids = new Set(ids);
    for (const t of texts) expect(idx.find(t) !== undefined, t).toBe(tokenize(t, new DocIndex([]), uuids).toks.length > 0);
    // A quick verify does not probe for these (nor for the bare parts): see LeakIndex's parts.
    expect(new LeakIndex(ids, { parts: false }).find(texts[0]!)).toBeUndefined();
  });

  it('with --deep, counts no part two package ids share: the seed leaves it, it names neither', () => {
    const ids = ['746301ce-1a2b-4c3d-8e9f-21f2673307e8', '746301ce-ffff-4c3d-8e9f-000000000000'];
    // An id listed twice (two versions of one source) is still one id.
    const idx = new LeakIndex([...ids, ...ids], { parts: true });
    const uuids = new Set(ids);
    for (const text of ['[run 746301ce] started', 'x 746301ce-', 'x 746301ce-1a2b', 'tail 21f2673307e8', 'y 746301CE-FFFF-4']) {
      const seeded = tokenize(text, new DocIndex([]), uuids).toks;
      expect(idx.find(text), text).toBe(seeded[0]);
    }
    expect(idx.find('[run 746301ce] started')).toBeUndefined();
    expect(idx.find('x 746301ce-1a2b')).toBe('746301ce-1a2b');
  });

  it('finds a bare part right after a JSON escape whose one letter is a hex digit (\\b, \\f), as the seed remaps it', () => {
    const id = '9490e0ef-b200-46fb-8c2c-21f2673307e8';
    const idx = new LeakIndex([id]);
    for (const text of ['"page\\f9490e0ef"', '"\\b673307e8 done"', '"\\F21f2673307e8"']) {
      // What the seed takes for an identifier (and so remaps in every user) is what verify --deep looks for.
      const seeded = tokenize(text, new DocIndex([]), new Set([id])).toks;
      expect(idx.find(text), text).toBe(seeded[0]);
    }
    expect(idx.find('"page\\f9490e0ef"')).toBe('9490e0ef');
    expect(idx.find('"\\b673307e8 done"')).toBe('673307e8');
  });

  it('finds an id right after a JSON or URL escape (\\n, \\t, \\u201c, %2F), doubled ones too (JSON inside JSON)', () => {
    const idx = new LeakIndex(['9490e0ef-b200-46fb-8c2c-21f2673307e8', '673307e8.4a48.fpf.1.openai_o4-mini', 'combined.673307e8.2b47.openai_gpt-5']);
    expect(idx.find('{"errors": ["Traceback:\\n9490e0ef-b200-46fb-8c2c-21f2673307e8"]}')).toBe('9490e0ef-b200-46fb-8c2c-21f2673307e8');
    expect(idx.find('"done\\t673307e8.4a48.fpf.1.openai_o4-mini"')).toBe('673307e8.4a48.');
    expect(idx.find('"\\u201ccombined.673307e8.2b47.openai_gpt-5\\u201d"')).toBe('combined.673307e8.2b47.');
    expect(idx.find('?path=runs%2F9490e0ef-b200-46fb-8c2c-21f2673307e8%2Fx')).toBe('9490e0ef-b200-46fb-8c2c-21f2673307e8');
    expect(idx.find('"raw_response": "{\\"note\\": \\"see\\\\n673307e8.4a48.fpf.1.openai_o4-mini\\"}"')).toBe('673307e8.4a48.');
    expect(idx.find('n9490e0ef-b200-46fb-8c2c-21f2673307e8 %2G673307e8.4a48. \\u20x673307e8.4a48. \\x673307e8.4a48.')).toBeUndefined();
  });

  it('finds exactly what the look-behind regexes it replaced find, on 20,000 random near-miss strings', () => {
    const uuids = ['9490e0ef-b200-46fb-8c2c-21f2673307e8', 'abcdef01-2345-6789-abcd-ef0123456789'];
    const docs = ['673307e8.4a48.fpf.1.openai_o4-mini', 'combined.673307e8.2b47.openai_gpt-5', 'deadbeef.0001.x'];
    const idx = new LeakIndex([...uuids, ...docs]);
    // The previous implementation, kept here as the reference.
    const uuidSet = new Set(uuids);
    const heads = new Set(docs.map((d) => /^((?:combined\.)?[0-9a-f]{8}\.[0-9a-f]{4}\.)/.exec(d)![1]!));
    const reference = (text: string): string | undefined => {
      // A boundary: no letter or digit before, or the end of a JSON escape or a URL %XX.
      const B = String.raw`(?:(?<![0-9A-Za-z])|(?<=\\(?:[nrtbf]|u[0-9A-Fa-f]{4})|%[0-9A-Fa-f]{2}))`;
      const U = new RegExp(`${B}[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9A-Za-z])`, 'g');
      for (let m = U.exec(text); m; m = U.exec(text)) if (uuidSet.has(m[0].toLowerCase())) return m[0];
      const H = new RegExp(`${B}(?:combined\\.)?[0-9a-f]{8}\\.[0-9a-f]{4}\\.`, 'g');
      for (let m = H.exec(text); m; m = H.exec(text)) {
        if (heads.has(m[0])) return m[0];
        const bare = m[0].startsWith('combined.') ? m[0].slice('combined.'.length) : undefined;
        if (bare && heads.has(bare)) return bare;
      }
      // A bare first group, tail (8 to 12) or dashless form of a UUID, not the last group of a dashed
      // run; or a UUID cut short from its first group and dash on, the start of exactly one.
      const P = new RegExp(`${B}(?:((?<![0-9A-Fa-f]-)(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8,12})(?![0-9A-Za-z-]))|([0-9a-fA-F]{8}-[0-9a-fA-F-]{0,26}(?![0-9A-Za-z-])))`, 'g');
      for (let m = P.exec(text); m; m = P.exec(text)) {
        if (m[1] && parts.has(m[1].toLowerCase())) return m[0];
        if (m[2] && uuids.filter((u) => u.startsWith(m![2]!.toLowerCase()) && u.length !== m![2]!.length).length === 1) return m[0];
        P.lastIndex = m.index + 1; // `%2FABCDEF01`: not `2FABCDEF01`, but maybe the run after the escape
      }
      return undefined;
    };
    const parts = new Set(uuids.flatMap((u) => [u.slice(0, 8), ...[8, 9, 10, 11, 12].map((n) => u.slice(-n)), u.replace(/-/g, '')]));
    const rng = new Prng(7);
    const pieces = [
      ...uuids, ...uuids.map((u) => u.toUpperCase()), '9490e0ef-b200-46fb-8c2c-21f2673307e', '11111111-2222-3333-4444-555555555555',
      '673307e8.4a48.', '673307e8.4a48', 'combined.', 'combined.673307e8.2b47.', '673307e8.2b47.', 'deadbeef.0001.', 'DEADBEEF.0001.', 'eadbeef.0001.',
      '-', '.', 'a', 'Z', '0', ' ', '_', '/', '"', 'x-', 'é', '\\', '\\n', '\\u201c', '\\u00E9', '%2F', '%2', '%',
      '9490e0ef', '2673307e8', 'ABCDEF01', '9490e0efb20046fb8c2c21f2673307e8', '0123456789', 'ef0123456789',
      '9490e0ef-b200', '9490E0EF-B200-46FB-8', 'abcdef01-2345-6789-abcd-ef01', '-4', '\\b', '\\f',
    ];
    let found = 0;
    for (let i = 0; i < 20_000; i++) {
      let text = '';
      for (let n = rng.int(0, 6); n > 0; n--) text += rng.pick(pieces);
      const want = reference(text);
      if (want) found++;
      expect(idx.find(text), JSON.stringify(text)).toBe(want);
    }
    expect(found).toBeGreaterThan(1000);
  });
});

describe('renderers', () => {
  let r: VerifyResult;
  let f: Fleet;
  beforeAll(async () => {
    f = await fleet();
    withDb(f, (db) => db.exec(`UPDATE contents SET name = 'a <b> & "c"', user_id = 3 WHERE id = (SELECT id FROM contents ORDER BY id LIMIT 1)`));
    writeFileSync(path.join(f.world.dataDir, 'user_98.db'), '');
    r = await verify(f);
  });

  it('human output: summary table with problems by code, problems grouped by user', () => {
    const text = renderVerify(r, { color: false });
    expect(text).toMatch(/checked\s*│\s*3/);
    expect(text).toMatch(/failed\s*│\s*1/);
    expect(text).toMatch(/foreign_user_row\s*│\s*1/);
    expect(text).toMatch(/orphan\s*│\s*1/);
    expect(text).toContain(`user ${f.victim}`);
    expect(text).toContain('user_98.db');
    // What to do, for the codes that have a remedy.
    expect(text).toMatch(/What to do\n(?:.*\n)*?\s+orphan\s+no master user owns it: move it out of the data dir/);
    expect(text).toMatch(/What to do\n(?:.*\n)*?\s+foreign_user_row\s+a row names another user/);
  });

  it('human output: every error code a user can have comes with what to do, naming the version to restore', () => {
    for (const code of PROBLEM_CODES.filter((c) => c !== 'orphan')) {
      const one: VerifyResult = { ok: false, checked: 1, failed: 1, users: [{ id: 1, ok: false, problems: [{ code, severity: 'error', userId: 1, message: 'x' }] }], orphans: [], durationMs: 1 };
      expect(renderVerify(one, { color: false }), code).toMatch(new RegExp(`What to do\\n\\s+${code}\\s+\\S`));
    }
    const missing: VerifyResult = { ok: false, checked: 1, failed: 1, users: [{ id: 1, ok: false, problems: [{ code: 'file_missing', severity: 'error', userId: 1, message: 'x' }] }], orphans: [], durationMs: 1 };
    expect(renderVerify(missing, { color: false })).toContain('acm2 user seed <id> --force --seed-version <its version>');
  });

  it('human output: users only waiting for their seed are one line, and the verdict says they are warnings', () => {
    const notReady = (id: number) => ({ id, ok: false, problems: [{ code: 'not_ready' as const, severity: 'warning' as const, userId: id, message: `not seeded yet: seed job #${id} (v1) is pending` }] });
    const many: VerifyResult = { ok: false, checked: 13, failed: 12, users: [...Array.from({ length: 12 }, (_, i) => notReady(i + 1)), { id: 13, ok: true, problems: [] }], orphans: [], durationMs: 5 };
    const text = renderVerify(many, { color: false });
    expect(text).toContain('12 users not seeded yet (not_ready warnings only): 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12');
    expect(text).not.toContain('user 1: 1 problem');
    expect(text).toMatch(/not_ready\s+acm2 user seed <id>, or let the queue run/);
    expect(text).toContain('12 of 13 users failed (12 with warnings only)');
    // A few are still listed one by one.
    const few = renderVerify({ ...many, checked: 3, failed: 2, users: [notReady(1), notReady(2), { id: 3, ok: true, problems: [] }] }, { color: false });
    expect(few).toContain('user 1: 1 problem');
    // A failed seed is an error with its own cause: never folded away.
    const failedSeed = (id: number) => ({ id, ok: false, problems: [{ code: 'not_ready' as const, severity: 'error' as const, userId: id, message: `seed failed: boom ${id}` }] });
    const errors = renderVerify({ ...many, users: Array.from({ length: 12 }, (_, i) => failedSeed(i + 1)) }, { color: false });
    expect(errors).not.toContain('users not seeded yet');
    expect(errors).toContain('seed failed: boom 12');
  });

  it('--junit: well-formed XML, one testcase per user, failures listing the problems', () => {
    const xml = renderJunit(r);
    const doc = parseXml(xml);
    expect(doc.name).toBe('testsuites');
    const users = doc.children.find((c) => c.attrs.name === 'acm2 verify: users')!;
    const cases = users.children.filter((c) => c.name === 'testcase');
    expect(cases).toHaveLength(3);
    expect(users.attrs).toMatchObject({ tests: '3', failures: '1' });
    const failing = cases.filter((c) => c.children.some((x) => x.name === 'failure'));
    expect(failing.map((c) => c.attrs.name)).toEqual([`user ${f.victim}`]);
    const failure = failing[0]!.children.find((x) => x.name === 'failure')!;
    expect(failure.attrs.type).toBe('foreign_user_row');
    expect(failure.text).toContain('foreign_user_row');
    const orphans = doc.children.find((c) => c.attrs.name === 'acm2 verify: data dir')!;
    expect(orphans.children[0]!.children[0]!.name).toBe('failure');
    expect(orphans.children[0]!.children[0]!.text).toContain('user_98.db');
    // With --user no orphan scan ran: that testcase is skipped, not reported as passed.
    const only = parseXml(renderJunit({ ...r, orphans: [] }, { orphanScan: false }));
    const dataDir = only.children.find((c) => c.attrs.name === 'acm2 verify: data dir')!;
    expect(dataDir.attrs).toMatchObject({ tests: '1', failures: '0', skipped: '1' });
    expect(dataDir.children[0]!.children.map((x) => x.name)).toEqual(['skipped']);
  });
});

describe('renderJunit: outcome and text of each testcase', () => {
  const one = (problems: Array<Pick<Problem, 'code' | 'severity' | 'message'> & { path?: string }>): VerifyResult => ({
    ok: false,
    checked: 1,
    failed: 1,
    users: [{ id: 1, ok: false, problems: problems.map((p) => ({ userId: 1, ...p })) }],
    orphans: [],
    durationMs: 1,
  });
  const kindOf = (r: VerifyResult) => {
    const doc = parseXml(renderJunit(r));
    const users = doc.children.find((c) => c.attrs.name === 'acm2 verify: users')!;
    return { kinds: users.children[0]!.children.map((x) => x.name), users: users.attrs, all: doc.attrs };
  };
  const busy = { code: 'db_busy' as const, severity: 'warning' as const, message: 'user_1.db is locked by another process' };
  const waiting = { code: 'not_ready' as const, severity: 'warning' as const, message: 'not seeded yet: seed job #1 (v1) is running' };
  const missing = { code: 'file_missing' as const, severity: 'error' as const, message: 'gone' };

  it('a finding is a failure even when part of the user could not be checked; a busy DB with warnings is an error; warnings alone are skipped', () => {
    expect(kindOf(one([busy, missing]))).toEqual({ kinds: ['failure'], users: expect.objectContaining({ failures: '1', errors: '0', skipped: '0' }), all: expect.objectContaining({ failures: '1', errors: '0', skipped: '0' }) });
    expect(kindOf(one([busy, waiting]))).toEqual({ kinds: ['error'], users: expect.objectContaining({ failures: '0', errors: '1', skipped: '0' }), all: expect.objectContaining({ failures: '0', errors: '1', skipped: '0' }) });
    expect(kindOf(one([waiting, { ...waiting, message: 'again' }]))).toEqual({ kinds: ['skipped'], users: expect.objectContaining({ failures: '0', errors: '0', skipped: '1' }), all: expect.objectContaining({ failures: '0', errors: '0', skipped: '1' }) });
  });

  it('a lone UTF-16 surrogate (XML 1.0 has no character for it) is written escaped, like a control character; a pair is kept', () => {
    // JSON.parse turns a stored "\ud800" into one, and a message may quote the value.
    const odd = 'doc \ud800x, \udfff and \udbff\ud83d\ude00 \u001b';
    const shown = 'doc \\ud800x, \\udfff and \\udbff\ud83d\ude00 \\x1b';
    const [failure, error, skipped] = [one([{ ...missing, message: odd, path: `user_1/${odd}` }]), one([{ ...busy, message: odd }]), one([{ ...waiting, message: odd }])].map((r) => {
      const xml = renderJunit(r);
      expect(xml).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/);
      return parseXml(xml).children[0]!.children[0]!.children[0]!;
    }) as [XmlNode, XmlNode, XmlNode];
    expect(failure.text).toBe(`[error] file_missing: ${shown} (path user_1/${shown})`);
    expect(error).toMatchObject({ name: 'error', attrs: { message: shown }, text: `[warning] db_busy: ${shown}` });
    expect(skipped).toMatchObject({ name: 'skipped', attrs: { message: shown }, text: `[warning] not_ready: ${shown}` });
  });
});

interface XmlNode {
  name: string;
  attrs: Record<string, string>;
  children: XmlNode[];
  text: string;
}

/** A strict little XML reader (elements, attributes, text, entities): enough to prove well-formedness. */
function parseXml(xml: string): XmlNode {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const decode = (s: string) => {
    expect(s, 'raw & or < in text').not.toMatch(/&(?!(amp|lt|gt|quot|apos|#\d+);)|</);
    return s.replace(/&(amp|lt|gt|quot|apos|#\d+);/g, (_m, e: string) => ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" })[e] ?? String.fromCharCode(Number(e.slice(1))));
  };
  const re = /<(\/?)([A-Za-z_][\w.-]*)((?:\s+[\w.-]+="[^"]*")*)\s*(\/?)>|([^<]+)/gy;
  const root: XmlNode = { name: '#root', attrs: {}, children: [], text: '' };
  const stack = [root];
  let m: RegExpExecArray | null;
  while ((m = re.exec(body))) {
    const top = stack[stack.length - 1]!;
    if (m[5] !== undefined) {
      top.text += decode(m[5]);
      continue;
    }
    if (m[1]) {
      expect(m[2], 'mismatched close tag').toBe(top.name);
      stack.pop();
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of m[3]!.matchAll(/([\w.-]+)="([^"]*)"/g)) attrs[a[1]!] = decode(a[2]!);
    const node: XmlNode = { name: m[2]!, attrs, children: [], text: '' };
    top.children.push(node);
    if (!m[4]) stack.push(node);
  }
  expect(re.lastIndex === 0 || re.lastIndex === body.length, 'unparsed XML left').toBe(true);
  expect(stack, 'unclosed elements').toHaveLength(1);
  expect(root.children.filter((c) => c.name)).toHaveLength(1);
  expect(root.text.trim()).toBe('');
  return root.children[0]!;
}

describe('end to end: the built binary', () => {
  // test/global-setup.ts builds dist/ (npm run build) before the suites.
  beforeAll(() => {
    expect(existsSync(path.join(REPO, 'dist', 'core', 'verify.js'))).toBe(true);
  });

  const bin = (f: Fleet, ...args: string[]) =>
    execa('node', [path.join(REPO, 'bin', 'acm2.js'), ...args, '--data-dir', f.world.dataDir, '--master', f.world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });

  it('exits 0 on a clean fleet and 1 with one document on stdout when a user is broken; --junit writes the report', async () => {
    const f = await fleet();
    const clean = await bin(f, 'verify', '--json', '--concurrency', '2');
    expect(clean.stderr).toBe('');
    expect(clean.exitCode).toBe(0);
    const good = JSON.parse(clean.stdout) as VerifyResult;
    expectValid(good);
    expect(good).toMatchObject({ ok: true, checked: 3, failed: 0 });

    unlinkSync(seededFile(f, /logs\/run\.log$/));
    const junit = path.join(f.world.dataDir, '..', `${path.basename(f.world.dataDir)}-verify.xml`);
    const broken = await bin(f, 'verify', '--json', '--deep', '--concurrency', '3', '--junit', junit);
    expect(broken.exitCode).toBe(1);
    const bad = JSON.parse(broken.stdout) as VerifyResult;
    expectValid(bad);
    expect(bad).toMatchObject({ ok: false, checked: 3, failed: 1 });
    expect([...codesOf(bad, f.victim)]).toEqual(['file_missing']);
    const doc = parseXml(readFileSync(junit, 'utf8'));
    expect(doc.children[0]!.attrs).toMatchObject({ tests: '3', failures: '1' });
    rmSync(junit, { force: true });

    const human = await bin(f, 'verify', '--user', String(f.victim), '--no-color');
    expect(human.exitCode).toBe(1);
    expect(human.stdout).toContain('file_missing');

    const usage = await bin(f, 'verify', '--shard', '3/2', '--json');
    expect(usage.exitCode).toBe(2);
    expect(JSON.parse(usage.stdout)).toMatchObject({ error: { code: 'usage' } });
  }, 60_000);

  it('--junit: a broken user is a <failure>, a locked one an <error>, a queued one <skipped>; the counts are the testcases\' (exit 1 still)', async () => {
    const f = await fleet();
    const [locked, broken, ready] = f.ids as [number, number, number];
    const pending = (await createUser({ ...f.deps, lockTimeoutMs: 5000 }, { email: 'dan@example.com', username: 'dan', async: true })).user.id;
    unlinkSync(seededFile(f, /logs\/run\.log$/));
    const junit = path.join(f.world.dataDir, '..', `${path.basename(f.world.dataDir)}-kinds.xml`);
    const release = await holdLocks([userDbPath(f.world.dataDir, locked)]);
    let r: Awaited<ReturnType<typeof bin>>;
    try {
      r = await bin(f, 'verify', '--json', '--junit', junit);
    } finally {
      await release();
    }
    expect(r.exitCode, r.stderr).toBe(1);
    expect((JSON.parse(r.stdout) as VerifyResult).users.map((u) => [u.id, u.problems.map((p) => `${p.code}/${p.severity}`)])).toEqual([
      [locked, ['db_busy/warning']],
      [broken, ['file_missing/error']],
      [ready, []],
      [pending, ['not_ready/warning']],
    ]);
    const doc = parseXml(readFileSync(junit, 'utf8'));
    rmSync(junit, { force: true });
    const users = doc.children.find((c) => c.attrs.name === 'acm2 verify: users')!;
    const kinds = Object.fromEntries(users.children.map((c) => [c.attrs.name, c.children.map((x) => x.name)]));
    expect(kinds).toEqual({ [`user ${locked}`]: ['error'], [`user ${broken}`]: ['failure'], [`user ${ready}`]: [], [`user ${pending}`]: ['skipped'] });
    const of = (id: number) => users.children.find((c) => c.attrs.name === `user ${id}`)!.children[0]!;
    // Why it was not checked is what a dashboard shows first.
    expect(of(locked).attrs).toMatchObject({ type: 'db_busy', message: expect.stringMatching(/is locked by another process .*so it was not checked/) });
    expect(of(pending).attrs.message).toMatch(/^not seeded yet: seed job #\d+ \(v1\) is pending$/);
    expect(users.attrs).toMatchObject({ tests: '4', failures: '1', errors: '1', skipped: '1' });
    expect(doc.attrs).toMatchObject({ tests: '5', failures: '1', errors: '1', skipped: '1' });
  }, 60_000);

  // A real full file system (a 64 KiB tmpfs): root can mount one, as in CI, which must run this.
  it.skipIf(!CAN_MOUNT_TMPFS && process.env.CI !== 'true')('--junit on a full disk: exit 3, and the earlier report is left whole (no empty file, no temp file)', async () => {
    const f = await fleet();
    await withTmpfs('64k', async (full) => {
      const junit = path.join(full, 'verify.xml');
      writeFileSync(junit, '<testsuites/>\n');
      // Fill the file system to the last block.
      const fd = openSync(path.join(full, 'filler'), 'w');
      try {
        for (;;) writeSync(fd, Buffer.alloc(4096));
      } catch (e) {
        expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC');
      } finally {
        closeSync(fd);
      }
      const r = await bin(f, 'verify', '--junit', junit);
      expect(r.exitCode, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/disk full while writing .*verify\.xml/);
      expect(readFileSync(junit, 'utf8')).toBe('<testsuites/>\n');
      expect(readdirSync(full).sort()).toEqual(['filler', 'verify.xml']);
    });
  }, 60_000);

  it('--junit with a legal name near the 255-byte limit writes the report (its temp file is not named after it)', async () => {
    const f = await fleet();
    const dir = tmpDir('acm2-junit-long-');
    try {
      const junit = path.join(dir, `${'r'.repeat(245)}.xml`);
      const r = await bin(f, 'verify', '--junit', junit);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(parseXml(readFileSync(junit, 'utf8')).children[0]!.attrs).toMatchObject({ tests: '3' });
      expect(readdirSync(dir)).toEqual([path.basename(junit)]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('--junit through a symlink writes the file it points to (made if new) and leaves the link a link', async () => {
    const f = await fleet();
    const dir = tmpDir('acm2-junit-link-');
    try {
      mkdirSync(path.join(dir, 'out'));
      mkdirSync(path.join(dir, 'ci'));
      const link = path.join(dir, 'ci', 'report.xml');
      symlinkSync('../out/report.xml', link);
      for (let run = 0; run < 2; run++) {
        const r = await bin(f, 'verify', '--junit', link);
        expect(r.exitCode, r.stderr).toBe(0);
        expect(lstatSync(link).isSymbolicLink()).toBe(true);
        expect(parseXml(readFileSync(path.join(dir, 'out', 'report.xml'), 'utf8')).children[0]!.attrs).toMatchObject({ tests: '3', failures: '0' });
        expect(readdirSync(path.join(dir, 'ci'))).toEqual(['report.xml']);
        expect(readdirSync(path.join(dir, 'out'))).toEqual(['report.xml']);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('replacing worker threads as they age (here after every user) changes no verdict', async () => {
    const f = await fleet();
    unlinkSync(seededFile(f, /logs\/run\.log$/));
    const inThread = await bin(f, 'verify', '--json', '--concurrency', '1');
    const recycled = await execa(
      'node',
      [path.join(REPO, 'bin', 'acm2.js'), 'verify', '--json', '--concurrency', '2', '--data-dir', f.world.dataDir, '--master', f.world.masterUrl, '--seeds', pkg.seedsDir],
      { reject: false, env: { ACM2_VERIFY_WORKER_USERS: '1' } },
    );
    expect(recycled.stderr).toBe('');
    expect(recycled.exitCode).toBe(1);
    const strip = (r: VerifyResult) => ({ ...r, durationMs: 0 });
    expect(strip(JSON.parse(recycled.stdout) as VerifyResult)).toEqual(strip(JSON.parse(inThread.stdout) as VerifyResult));
    expect([...codesOf(JSON.parse(recycled.stdout) as VerifyResult, f.victim)]).toEqual(['file_missing']);
  }, 60_000);
});
