// diff: a fresh user equals its package; one edit is exactly one change; rows and files a user
// created are added; two users match through their maps; v1 vs a v2 frozen from a modified
// source shows exactly the modifications; bad arguments are usage errors (exit 2).

import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { mkdirSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { freezeSeed } from '../src/core/freeze.js';
import { planDiff, runDiff, type DiffRequest, type DiffResult } from '../src/core/diff.js';
import { renderDiff } from '../src/ui/diff.js';
import { UsageError } from '../src/errors.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
let world: World;
let ann: number;
let ben: number;
const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir });
const diff = (req: DiffRequest) => runDiff(deps(), req);

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
    expect(text).toContain("(row ids and paths are the package's; each user has its own ids for them, see acm2_id_map)");
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

