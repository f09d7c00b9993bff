// diff: a fresh user equals its package; one edit is exactly one change; rows and files a user
// created are added; two users match through their maps (a log that is not UTF-8 too); v1 vs a
// v2 frozen from a modified source shows exactly the modifications; symlinks and other entries
// under a user's folder count; bad arguments and odd entries are usage errors (exit 2), a locked
// DB or a hot journal is the environment (exit 3), never "corrupt".

import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser, resolveUser, seedOneUser, userStatus } from '../src/core/users.js';
import { freezeSeed } from '../src/core/freeze.js';
import { generateSource } from '../src/fixtures/source.js';
import { planDiff, runDiff, type DiffRequest, type DiffResult } from '../src/core/diff.js';
import { renderDiff } from '../src/ui/diff.js';
import { UnavailableError, UsageError } from '../src/errors.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

const require = createRequire(import.meta.url);

process.env.ACM2_BCRYPT_ROUNDS = '4';
const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
let world: World;
let ann: number;
let ben: number;
const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir });
const diff = (req: DiffRequest) => runDiff(deps(), req);
let made = 0;
/** A fresh seeded user of its own, so a test may break it without touching the others. */
const newUser = async (seedVersion?: string) => {
  const name = `u${++made}x`;
  return (await createUser({ ...deps(), lockTimeoutMs: 5000 }, { email: `${name}@example.com`, username: name, seedVersion })).user.id;
};
const runOf = (id: number) => withDb(id, (db) => (db.prepare(`SELECT id FROM runs`).get() as { id: string }).id);

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 2 });
  world = await sqliteWorld();
  const d = { ...deps(), lockTimeoutMs: 5000 };
  ann = (await createUser(d, { email: 'ann@example.com', username: 'ann' })).user.id;
  ben = (await createUser(d, { email: 'ben@example.com', username: 'ben' })).user.id;
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
});

function withDb<T>(id: number, fn: (db: Database.Database) => T): T {
  const db = new Database(userDbPath(world.dataDir, id));
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/** Every table and file list empty except those named. */
function expectOnlyDiff(r: DiffResult, expected: { tables?: Record<string, Partial<DiffResult['tables'][string]>>; files?: Partial<DiffResult['files']> }): void {
  expect(r.equal).toBe(false);
  for (const [t, d] of Object.entries(r.tables)) expect(d, t).toEqual({ added: [], removed: [], changed: [], ...(expected.tables?.[t] ?? {}) });
  expect(r.files).toEqual({ added: [], removed: [], changed: [], ...(expected.files ?? {}) });
}

function expectEqual(r: DiffResult): void {
  expect(r.equal).toBe(true);
  for (const d of Object.values(r.tables)) expect(d).toEqual({ added: [], removed: [], changed: [] });
  expect(r.files).toEqual({ added: [], removed: [], changed: [] });
}

describe('user vs package (through the ID map)', () => {
  it('a freshly seeded user equals its package', async () => {
    const r = await diff({ kind: 'user-package', user: String(ann) });
    expectEqual(r);
    expect(r.left).toEqual({ kind: 'package', version: 'v1' });
    expect(r.right).toEqual({ kind: 'user', userId: ann, seedVersion: 'v1' });
    expect(Object.keys(r.tables).sort()).toEqual(['artifacts', 'contents', 'documents', 'presets', 'runs', 'tasks']);
    expectEqual(await diff({ kind: 'user-package', user: 'ben@example.com', seedVersion: 'v1' }));
  });

  it('one edited field shows as exactly that change; a user-created row and file as added; a removed file as removed', async () => {
    const content = withDb(ann, (db) => {
      const c = db.prepare(`SELECT id FROM contents ORDER BY id LIMIT 1`).get() as { id: string };
      db.prepare(`UPDATE contents SET name = 'renamed by ann' WHERE id = ?`).run(c.id);
      db.prepare(
        `INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('ann-own', ?, '2026-02-01 00:00:00.000000', 'mine', 'input_document', 'x', '{}', '[]', 0)`,
      ).run(ann);
      return c.id;
    });
    let r = await diff({ kind: 'user-package', user: String(ann) });
    expectOnlyDiff(r, { tables: { contents: { added: ['ann-own'], changed: [{ id: content, fields: ['name'] }] } } });

    const run = withDb(ann, (db) => (db.prepare(`SELECT id FROM runs`).get() as { id: string }).id);
    const runDir = path.join(userRoot(world.dataDir, ann), 'runs', run);
    const seeded = withDb(ann, (db) => db.prepare(`SELECT path FROM acm2_seed_files ORDER BY path`).all() as { path: string }[]);
    const log = seeded.find((s) => s.path.endsWith('logs/run.log'))!.path;
    const report = seeded.find((s) => s.path.endsWith('reports/report.html'))!.path;
    unlinkSync(path.join(userRoot(world.dataDir, ann), log));
    writeFileSync(path.join(userRoot(world.dataDir, ann), report), '<html>edited</html>');
    mkdirSync(path.join(runDir, 'extra'), { recursive: true });
    writeFileSync(path.join(runDir, 'extra', 'notes.md'), 'mine');
    r = await diff({ kind: 'user-package', user: String(ann) });
    expectOnlyDiff(r, {
      tables: { contents: { added: ['ann-own'], changed: [{ id: content, fields: ['name'] }] } },
      files: { added: [`runs/${run}/extra/notes.md`], removed: [log], changed: [report] },
    });
    const text = renderDiff(r, { color: false });
    expect(text).toContain(`~ ${content}  name`);
    expect(text).toContain('+ ann-own');
    expect(text).toContain(`- ${log}`);
    // The ids and paths shown are ann's own, and the note says so.
    expect(text).toContain(`(row ids and paths are user ${ann}'s own (its acm2_id_map pairs each with the package's); ids its map does not cover are the package's)`);
    expect(text).not.toContain("are the package's;");
    expect(withDb(ann, (db) => db.prepare(`SELECT count(*) FROM acm2_id_map WHERE target_id = ?`).pluck().get(content))).toBe(1);
    expect(text).toContain(`~ runs/${run}/`);
  });
});

describe('a column ACM2 added to a user DB since the package was cut', () => {
  it('holding its default is no change (as seeding wrote it), against the package and another user; another value is', async () => {
    const u = await newUser();
    withDb(u, (db) => db.exec(`ALTER TABLE presets ADD COLUMN output_note TEXT; ALTER TABLE runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0`));
    expectEqual(await diff({ kind: 'user-package', user: String(u) }));
    expectEqual(await diff({ kind: 'users', a: String(ben), b: String(u) }));
    expectEqual(await diff({ kind: 'users', a: String(u), b: String(ben) }));
    const run = runOf(u);
    withDb(u, (db) => db.prepare(`UPDATE runs SET retries = 2 WHERE id = ?`).run(run));
    expectOnlyDiff(await diff({ kind: 'user-package', user: String(u) }), { tables: { runs: { changed: [{ id: run, fields: ['retries'] }] } } });
    // Between users, the run is named by the package's id.
    const source = withDb(u, (db) => db.prepare(`SELECT source_id FROM acm2_id_map WHERE target_id = ?`).pluck().get(run)) as string;
    expectOnlyDiff(await diff({ kind: 'users', a: String(ben), b: String(u) }), { tables: { runs: { changed: [{ id: source, fields: ['retries'] }] } } });
  });
});

describe('user vs user (both mapped back to package ids)', () => {
  it('two users seeded from one package are equal although they share no id; an edit shows under its package id', async () => {
    const d = { ...deps(), lockTimeoutMs: 5000 };
    const cy = (await createUser(d, { email: 'cy@example.com', username: 'cy' })).user.id;
    const dee = (await createUser(d, { email: 'dee@example.com', username: 'dee' })).user.id;
    const r = await diff({ kind: 'users', a: String(cy), b: String(dee) });
    expectEqual(r);

    const { target, source } = withDb(dee, (db) => {
      const m = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE kind = 'presets'`).get() as { source_id: string; target_id: string };
      db.prepare(`UPDATE presets SET description = 'changed', iterations = 9 WHERE id = ?`).run(m.target_id);
      return { target: m.target_id, source: m.source_id };
    });
    expect(target).not.toBe(source);
    expectOnlyDiff(await diff({ kind: 'users', a: String(cy), b: String(dee) }), { tables: { presets: { changed: [{ id: source, fields: ['description', 'iterations'] }] } } });
  });

  it('the note says whose ids are shown: the package’s for seeded rows, the user’s own for rows it created', async () => {
    const a = await newUser();
    const b = await newUser();
    const { target, source } = withDb(b, (db) => {
      const m = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE kind = 'presets'`).get() as { source_id: string; target_id: string };
      db.prepare(`UPDATE presets SET description = 'changed' WHERE id = ?`).run(m.target_id);
      db.prepare(
        `INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('b-own', ?, '2026-02-01 00:00:00.000000', 'mine', 'input_document', 'x', '{}', '[]', 0)`,
      ).run(b);
      return { target: m.target_id, source: m.source_id };
    });
    const r = await diff({ kind: 'users', a: String(a), b: String(b) });
    expectOnlyDiff(r, { tables: { presets: { changed: [{ id: source, fields: ['description'] }] }, contents: { added: ['b-own'] } } });
    const text = renderDiff(r, { color: false });
    expect(text).toContain(`~ ${source}  description`);
    expect(text).not.toContain(target);
    expect(text).toContain(
      "(seeded rows and files are named by the package's ids (each user's own mapped back through its acm2_id_map; those of a user's seed of another version than its current one as '<version>:<id>'); rows and files a user created keep that user's ids)",
    );
    expect(text).not.toContain("are the package's;");
  });

  it('two users seeded from a package whose log is Latin-1 (not UTF-8) and names ids are equal', async () => {
    // A source whose run has a log in Latin-1 naming the run and a task, frozen as its own version.
    const src = generateSource(path.join(pkg.root, 'latin1-source'), { seed: 3 });
    const bytes = Buffer.from(`caf\u00e9 r\u00e9sum\u00e9 run ${src.runId} task ${src.taskIds[0]!}\n`, 'latin1');
    writeFileSync(path.join(src.filesDir, 'runs', src.runId, 'logs', 'latin1.log'), bytes);
    freezeSeed({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v1-latin1', seedsDir: pkg.seedsDir, renderReport: true });
    const a = await newUser('v1-latin1');
    const b = await newUser('v1-latin1');
    // Each user's copy names that user's own ids and is still not UTF-8.
    const copy = readFileSync(path.join(userRoot(world.dataDir, b), 'runs', runOf(b), 'logs', 'latin1.log'));
    expect(copy.includes(Buffer.from(src.runId))).toBe(false);
    expect(copy.includes(Buffer.from(runOf(b)))).toBe(true);
    expect(copy.toString('utf8')).toContain('\uFFFD');

    expectEqual(await diff({ kind: 'users', a: String(a), b: String(b) }));
    expectEqual(await diff({ kind: 'user-package', user: String(b) }));
    // An edit to that log still shows, under the package's path.
    writeFileSync(path.join(userRoot(world.dataDir, b), 'runs', runOf(b), 'logs', 'latin1.log'), Buffer.concat([copy, Buffer.from('\xff more\n', 'latin1')]));
    expectOnlyDiff(await diff({ kind: 'users', a: String(a), b: String(b) }), { files: { changed: [`runs/${src.runId}/logs/latin1.log`] } });
  });
});

describe('what ids alone would hide', () => {
  it('a row given to another user shows as a changed user_id, against the package and against another user', async () => {
    const d = { ...deps(), lockTimeoutMs: 5000 };
    const eve = (await createUser(d, { email: 'eva@example.com', username: 'eva' })).user.id;
    const fay = (await createUser(d, { email: 'fay@example.com', username: 'fay' })).user.id;
    const { target, source } = withDb(fay, (db) => {
      const m = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE kind = 'contents' ORDER BY source_id LIMIT 1`).get() as { source_id: string; target_id: string };
      db.prepare(`UPDATE contents SET user_id = 999 WHERE id = ?`).run(m.target_id);
      return { target: m.target_id, source: m.source_id };
    });
    expectOnlyDiff(await diff({ kind: 'user-package', user: String(fay) }), { tables: { contents: { changed: [{ id: target, fields: ['user_id'] }] } } });
    expectOnlyDiff(await diff({ kind: 'users', a: String(eve), b: String(fay) }), { tables: { contents: { changed: [{ id: source, fields: ['user_id'] }] } } });
  });

  it('a package id left unmapped in one user does not pass for the other user’s mapped copy', async () => {
    const d = { ...deps(), lockTimeoutMs: 5000 };
    const gus = (await createUser(d, { email: 'gus@example.com', username: 'gus' })).user.id;
    const hal = (await createUser(d, { email: 'hal@example.com', username: 'hal' })).user.id;
    const run = withDb(hal, (db) => {
      const m = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE kind = 'runs'`).get() as { source_id: string; target_id: string };
      db.prepare(`UPDATE runs SET results_summary = replace(results_summary, ?, ?) WHERE id = ?`).run(m.target_id, m.source_id, m.target_id);
      return m.source_id;
    });
    expectOnlyDiff(await diff({ kind: 'users', a: String(gus), b: String(hal) }), { tables: { runs: { changed: [{ id: run, fields: ['results_summary'] }] } } });
  });
});

describe('package vs package (rows matched by source id)', () => {
  it('v1 vs itself is equal; v1 vs a v2 frozen from a modified source shows exactly the modifications', async () => {
    expectEqual(await diff({ kind: 'packages', a: 'v1', b: 'v1' }));
    const src = pkg.source;
    const edited = src.contentIds.find((id) => !src.sourceDocIds.includes(id))!;
    const added = randomUUID();
    const db = new Database(src.dbPath);
    db.pragma('foreign_keys = OFF');
    db.prepare(`UPDATE contents SET body = body || ' (revised)' WHERE id = ?`).run(edited);
    db.prepare(
      `INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES (?, ?, '2026-02-01 00:00:00.000000', 'new guide', 'template_fragment', 'hello', '{}', '[]', 0)`,
    ).run(added, src.userId);
    db.close();
    freezeSeed({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v2', seedsDir: pkg.seedsDir, renderReport: true });

    const r = await diff({ kind: 'packages', a: 'v1', b: 'v2' });
    expect(r.left).toEqual({ kind: 'package', version: 'v1' });
    expectOnlyDiff(r, { tables: { contents: { added: [added], changed: [{ id: edited, fields: ['body'] }] } } });
    // The other direction is the mirror image.
    expectOnlyDiff(await diff({ kind: 'packages', a: 'v2', b: 'v1' }), { tables: { contents: { removed: [added], changed: [{ id: edited, fields: ['body'] }] } } });
    // A v1 user compared with v2 lines up through its v1 map: the same two content differences.
    const fresh = (await createUser({ ...deps(), lockTimeoutMs: 5000 }, { email: 'eve@example.com', username: 'eve', seedVersion: 'v1' })).user.id;
    const u = await diff({ kind: 'user-package', user: String(fresh), seedVersion: 'v2' });
    const targetOf = withDb(fresh, (d) => (d.prepare(`SELECT target_id FROM acm2_id_map WHERE source_id = ?`).get(edited) as { target_id: string }).target_id);
    expectOnlyDiff(u, { tables: { contents: { removed: [added], changed: [{ id: targetOf, fields: ['body'] }] } } });
  });
});

describe('a user seeded from two versions (versions are additive)', () => {
  it('two users seeded alike from v1 and then another version are equal; against one package, the other version’s rows and files are left out and counted, not shown as the user’s own', async () => {
    const src = pkg.source;
    freezeSeed({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'vb', seedsDir: pkg.seedsDir, renderReport: true });
    const d = { ...deps(), lockTimeoutMs: 5000 };
    const x = await newUser('v1');
    const y = await newUser('v1');
    for (const u of [x, y]) expect((await seedOneUser(d, String(u), { seedVersion: 'vb' })).seed.status).toBe('ready');
    const v1Rows = Object.values(pkg.pkg.manifest.tables).reduce((n, t) => n + t.rows, 0);
    const v1Files = pkg.pkg.manifest.files.length;

    expectEqual(await diff({ kind: 'users', a: String(x), b: String(y) }));
    const r = await diff({ kind: 'user-package', user: String(x) });
    expectEqual(r);
    expect(r.otherVersions).toEqual({ v1: { rows: v1Rows, files: v1Files } });
    expect(renderDiff(r, { color: false })).toContain(`(left out, as not user ${x}'s own: ${v1Rows} rows and ${v1Files} files its seed of v1 made (acm2 diff --user ${x} --seed-version v1 compares them))`);

    // An edit to x's copy of a v1 row is that row's change, under its version's name between users.
    const { source, target } = withDb(x, (db) => {
      const m = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE seed_version = 'v1' AND kind = 'contents' ORDER BY source_id LIMIT 1`).get() as { source_id: string; target_id: string };
      db.prepare(`UPDATE contents SET name = 'edited v1 copy' WHERE id = ?`).run(m.target_id);
      return { source: m.source_id, target: m.target_id };
    });
    expectOnlyDiff(await diff({ kind: 'users', a: String(y), b: String(x) }), { tables: { contents: { changed: [{ id: `v1:${source}`, fields: ['name'] }] } } });
    expectOnlyDiff(await diff({ kind: 'user-package', user: String(x), seedVersion: 'v1' }), { tables: { contents: { changed: [{ id: target, fields: ['name'] }] } } });
    expectEqual(await diff({ kind: 'user-package', user: String(x) }));
  });
});

describe('what is under the user folder, as it is', () => {
  it('symlinks and FIFOs under the user folder show as added or changed, and are never followed', async () => {
    const u = await newUser();
    const other = await newUser();
    const run = runOf(u);
    const runDir = path.join(userRoot(world.dataDir, u), 'runs', run);
    const log = path.join(runDir, 'logs', 'run.log');
    symlinkSync('/etc/passwd', path.join(runDir, 'generated', 'notes.md'));
    symlinkSync('/etc', path.join(runDir, 'logs', 'escape'));
    // A seeded file replaced by a symlink to a copy with the same bytes is still a change.
    writeFileSync(path.join(runDir, 'run.log.copy'), readFileSync(log));
    unlinkSync(log);
    symlinkSync('../run.log.copy', log);
    expect(spawnSync('mkfifo', [path.join(runDir, 'pipe')]).status).toBe(0);
    const added = ['generated/notes.md', 'logs/escape', 'pipe', 'run.log.copy'];
    expectOnlyDiff(await diff({ kind: 'user-package', user: String(u) }), { files: { added: added.map((p) => `runs/${run}/${p}`), changed: [`runs/${run}/logs/run.log`] } });
    // Against another user, through the maps: the same entries, under the package's run folder.
    const pkgRun = withDb(u, (db) => db.prepare(`SELECT source_id FROM acm2_id_map WHERE target_id = ?`).pluck().get(run) as string);
    expectOnlyDiff(await diff({ kind: 'users', a: String(other), b: String(u) }), { files: { added: added.map((p) => `runs/${pkgRun}/${p}`), changed: [`runs/${pkgRun}/logs/run.log`] } });
  });

  it("a user folder that is a symlink is refused, not followed (exit 2)", async () => {
    const u = await newUser();
    const twin = await newUser();
    const root = userRoot(world.dataDir, u);
    // The folder moved aside and a symlink put in its place: following it would say "no differences".
    renameSync(root, `${root}.moved`);
    symlinkSync(`${root}.moved`, root);
    try {
      await expect(diff({ kind: 'user-package', user: String(u) })).rejects.toMatchObject({ exitCode: 2, message: `user ${u}'s folder ${root} is a symlink to ${root}.moved, not a folder: diff compares only the folder itself and does not follow it` });
      await expect(diff({ kind: 'users', a: String(twin), b: String(u) })).rejects.toBeInstanceOf(UsageError);
    } finally {
      unlinkSync(root);
      renameSync(`${root}.moved`, root);
    }
    expectEqual(await diff({ kind: 'user-package', user: String(u) }));
  });

  it('a user folder that is a regular file is one clear usage error (exit 2), not a crash', async () => {
    const u = await newUser();
    const root = userRoot(world.dataDir, u);
    renameSync(root, `${root}.moved`);
    writeFileSync(root, 'x');
    try {
      const e = await diff({ kind: 'user-package', user: String(u) }).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(UsageError);
      expect(e).toMatchObject({ exitCode: 2, message: `user ${u}'s folder ${root} is a regular file, not a folder: diff compares only the folder itself and does not follow it` });
    } finally {
      unlinkSync(root);
      renameSync(`${root}.moved`, root);
    }
  });

  it('a user DB that is a symlink or a FIFO is not opened (exit 2)', async () => {
    const u = await newUser();
    const twin = await newUser();
    const file = userDbPath(world.dataDir, u);
    renameSync(file, `${file}.moved`);
    try {
      // The DB moved aside and a symlink to it left in its place: read through, it would say "no differences".
      symlinkSync(`${file}.moved`, file);
      await expect(diff({ kind: 'user-package', user: String(u) })).rejects.toMatchObject({ exitCode: 2, code: 'db_not_file', message: `${file} is a symlink, not the user's own database file: diff did not open it` });
      unlinkSync(file);
      // Opening a FIFO would wait for a writer for ever.
      expect(spawnSync('mkfifo', [file]).status).toBe(0);
      await expect(diff({ kind: 'users', a: String(twin), b: String(u) })).rejects.toMatchObject({ exitCode: 2, code: 'db_not_file', message: `${file} is a FIFO, not the user's own database file: diff did not open it` });
    } finally {
      rmSync(file, { force: true });
      renameSync(`${file}.moved`, file);
    }
    expectEqual(await diff({ kind: 'user-package', user: String(u) }));
  });
});

describe('a user DB that cannot be read now', () => {
  it('locked by another process past the wait: unavailable (exit 3, db_busy), not corrupt', async () => {
    const u = await newUser();
    const file = userDbPath(world.dataDir, u);
    // ACM2 in the middle of a long write: an exclusive lock on the rollback-journal DB.
    const holder = new Database(file);
    holder.exec('BEGIN EXCLUSIVE');
    holder.prepare(`UPDATE contents SET name = name`).run();
    try {
      const e = await runDiff({ ...deps(), busyTimeoutMs: 200 }, { kind: 'user-package', user: String(u) }).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(UnavailableError);
      expect(e).toMatchObject({
        exitCode: 3,
        code: 'db_busy',
        message: `user ${u}'s database ${file} is in use: another process held it locked for more than 0.2 s; try again when it is done`,
      });
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
    expectEqual(await diff({ kind: 'user-package', user: String(u) }));
  });

  it('a hot journal left by a killed writer: unavailable (exit 3), left for a read-write open such as user show to roll back', async () => {
    const u = await newUser();
    const file = userDbPath(world.dataDir, u);
    // A writer killed with its transaction spilled to the file: the journal is hot.
    const r = spawnSync(process.execPath, [
      '-e',
      `const D = require(${JSON.stringify(require.resolve('better-sqlite3'))}); const db = new D(${JSON.stringify(file)}); db.pragma('cache_size = 1'); db.exec('BEGIN'); db.prepare("UPDATE contents SET body = body || hex(randomblob(20000))").run(); process.kill(process.pid, 'SIGKILL');`,
    ]);
    expect(r.signal).toBe('SIGKILL');
    expect(existsSync(`${file}-journal`)).toBe(true);
    const before = readFileSync(file);
    const e = await diff({ kind: 'user-package', user: String(u) }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(UnavailableError);
    expect(e).toMatchObject({
      exitCode: 3,
      code: 'db_hot_journal',
      message: `user ${u}'s database ${file} has a hot journal (a writer was interrupted mid-transaction), which diff does not roll back: any read-write open does, such as 'acm2 user show ${u}'; then try again`,
    });
    // diff wrote nothing; what the message says to run does roll it back, and diff then reads the user.
    expect(existsSync(`${file}-journal`)).toBe(true);
    expect(readFileSync(file).equals(before)).toBe(true);
    expect((await userStatus({ master: world.master, dataDir: world.dataDir }, await resolveUser(world.master, String(u)))).status).toBe('ready');
    expect(existsSync(`${file}-journal`)).toBe(false);
    expectEqual(await diff({ kind: 'user-package', user: String(u) }));
  });

  it('a DB that is not a database is still db_corrupt (exit 2)', async () => {
    const u = await newUser();
    const fd = openSync(userDbPath(world.dataDir, u), 'r+');
    writeSync(fd, Buffer.alloc(100, 0x5a), 0, 100, 0);
    closeSync(fd);
    await expect(diff({ kind: 'user-package', user: String(u) })).rejects.toMatchObject({ exitCode: 2, code: 'db_corrupt' });
  });

  it('a DB damaged past its first page is db_corrupt (exit 2) in every form, not an internal error', async () => {
    const u = await newUser();
    const file = userDbPath(world.dataDir, u);
    // Page 1 (the schema) stays sound, so the DB opens; the table pages after it are garbage.
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(16384, 0x67), 0, 16384, 4096);
    closeSync(fd);
    await expect(diff({ kind: 'user-package', user: String(u) })).rejects.toMatchObject({ exitCode: 2, code: 'db_corrupt' });
    await expect(diff({ kind: 'users', a: String(ann), b: String(u) })).rejects.toMatchObject({ exitCode: 2, code: 'db_corrupt' });
  });
});

describe('arguments', () => {
  const usage = (fn: () => unknown) => {
    expect(fn).toThrow(UsageError);
    try {
      fn();
    } catch (e) {
      expect((e as UsageError).exitCode).toBe(2);
    }
  };

  it('plans the three forms and refuses every other combination', () => {
    expect(planDiff({ versions: ['v1', 'v2'], users: [] })).toEqual({ kind: 'packages', a: 'v1', b: 'v2' });
    expect(planDiff({ versions: ['v1', 'v2'], users: [], seedVersion: 'v1' })).toEqual({ kind: 'packages', a: 'v1', b: 'v2' });
    expect(planDiff({ versions: [], users: ['4'], seedVersion: 'v3' })).toEqual({ kind: 'user-package', user: '4', seedVersion: 'v3' });
    expect(planDiff({ versions: [], users: ['4', '5'] })).toEqual({ kind: 'users', a: '4', b: '5' });
    usage(() => planDiff({ versions: [], users: [] }));
    usage(() => planDiff({ versions: ['v1'], users: [] }));
    usage(() => planDiff({ versions: ['v1', 'v2', 'v3'], users: [] }));
    usage(() => planDiff({ versions: ['v1', 'v2'], users: [], seedVersionFlag: 'v1' }));
    usage(() => planDiff({ versions: ['v1'], users: ['4'] }));
    usage(() => planDiff({ versions: [], users: ['4', '5', '6'] }));
    usage(() => planDiff({ versions: [], users: ['4', '5'], seedVersionFlag: 'v1' }));
    usage(() => planDiff({ versions: ['../x', 'v1'], users: [] }));
  });

  it('an unknown version or user is a usage error', async () => {
    await expect(diff({ kind: 'packages', a: 'v1', b: 'nope' })).rejects.toMatchObject({ exitCode: 2, message: expect.stringContaining("unknown seed version 'nope'") });
    await expect(diff({ kind: 'user-package', user: '4242' })).rejects.toMatchObject({ exitCode: 2, code: 'unknown_user' });
    await expect(diff({ kind: 'user-package', user: String(ben), seedVersion: 'nope' })).rejects.toMatchObject({ exitCode: 2 });
    await expect(diff({ kind: 'users', a: String(ben), b: 'nobody@example.com' })).rejects.toMatchObject({ exitCode: 2, code: 'unknown_user' });
  });

  it('an id the master lacks whose DB is in the data dir is named an orphan, not just unknown', async () => {
    const orphan = 4343;
    copyFileSync(path.join(world.dataDir, `user_${ben}.db`), path.join(world.dataDir, `user_${orphan}.db`));
    try {
      const e = (await diff({ kind: 'user-package', user: String(orphan) }).catch((x: unknown) => x)) as Error;
      expect(e).toMatchObject({ exitCode: 2, code: 'unknown_user' });
      expect(e.message).toBe(`no user with id ${orphan} in the master, but ${path.join(world.dataDir, `user_${orphan}.db`)} is there: an orphan (no master user owns it; acm2 verify lists orphans, and nothing in acm2 removes them)`);
    } finally {
      rmSync(path.join(world.dataDir, `user_${orphan}.db`));
    }
    // An id with nothing of its own here stays plainly unknown.
    await expect(diff({ kind: 'user-package', user: '4242' })).rejects.toThrow(/^no user with id 4242 in the master$/);
  });
});

describe('end to end: the built binary', () => {
  const bin = (...args: string[]) =>
    execa('node', [path.join(REPO, 'bin', 'acm2.js'), 'diff', ...args, '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });

  it('exits 0 when equal, 1 when different (one JSON document), 2 on bad arguments', async () => {
    const same = await bin('--user', String(ben), '--json');
    expect(same.exitCode).toBe(0);
    expect(JSON.parse(same.stdout)).toMatchObject({ equal: true });

    withDb(ben, (db) => db.prepare(`UPDATE runs SET title = 'renamed'`).run());
    const differs = await bin('--user', String(ben), '--json');
    expect(differs.exitCode).toBe(1);
    const doc = JSON.parse(differs.stdout) as DiffResult;
    expect(doc.equal).toBe(false);
    expect(doc.tables.runs!.changed).toEqual([{ id: expect.any(String), fields: ['title'] }]);
    const human = await bin('--user', String(ben), '--no-color');
    expect(human.exitCode).toBe(1);
    expect(human.stdout).toContain('runs: 0 added, 0 removed, 1 changed');

    expect((await bin('v1', 'v1')).exitCode).toBe(0);
    const bad = await bin('v1', '--json');
    expect(bad.exitCode).toBe(2);
    expect(JSON.parse(bad.stdout)).toMatchObject({ error: { code: 'usage' } });
    expect((await bin('v1', 'zz')).exitCode).toBe(2);
    expect((await bin('--user', '4242')).exitCode).toBe(2);
  });
});

