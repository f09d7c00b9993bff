// Seeding: complete remap, isolation, every reference resolves, idempotence, force, co-existing rows.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { cpSync, readFileSync, existsSync, writeFileSync, statSync, rmSync } from 'node:fs';
import { generateSource, pyJsonDumps, pyJsonLoads } from '../src/fixtures/source.js';
import { freezeSeed } from '../src/core/freeze.js';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { frozenSource, sqliteWorld, tmpDir, walkFiles, type FrozenSource, type World } from './helpers/env.js';
import { createUser, listUserStatuses, seedOneUser, userStatus } from '../src/core/users.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';
import { render, safeDocId, type Template } from '../src/seed/remap.js';
import { renderDrain, renderSeed } from '../src/ui/users.js';
import { preparePackage } from '../src/seed/prepared.js';
import { loadPackage } from '../src/seed/package.js';
import { fileURLToPath } from 'node:url';
import { verifyUsers } from '../src/core/verify.js';
import { diffUserWithPackage, diffUsers } from '../src/core/diff.js';
import { parseMasterUrl } from '../src/config.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
let world: World;

beforeAll(async () => {
  pkg = frozenSource({ models: ['openai:o4-mini', 'openrouter:meta-llama/llama-3'], sourceDocs: 2, legacyCombinedFolder: true });
  world = await sqliteWorld();
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
});

const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 });

/** Every identifier in the package: its rows' ids and the doc ids the source used. */
function packageIds(): string[] {
  const s = pkg.source;
  return [...s.contentIds, s.presetId, s.runId, ...s.taskIds, ...s.artifactIds, ...s.docIds, ...s.docIds.map(safeDocId)];
}

function dumpUser(id: number) {
  const db = new Database(userDbPath(world.dataDir, id), { readonly: true });
  try {
    const tables = ['contents', 'documents', 'presets', 'runs', 'tasks', 'artifacts', 'user_meta'];
    const rows: Record<string, Record<string, unknown>[]> = {};
    for (const t of tables) rows[t] = db.prepare(`SELECT * FROM ${t}`).all() as Record<string, unknown>[];
    return rows;
  } finally {
    db.close();
  }
}

function allText(id: number, withMeta = true): string {
  const rows = dumpUser(id);
  if (!withMeta) delete (rows as Partial<typeof rows>).user_meta;
  const root = userRoot(world.dataDir, id);
  const files = walkFiles(root);
  return [JSON.stringify(rows), files.join('\n'), ...files.map((f) => readFileSync(path.join(root, f), 'utf8'))].join('\n');
}

describe('user create + seed', () => {
  let a: Awaited<ReturnType<typeof createUser>>;
  let b: Awaited<ReturnType<typeof createUser>>;
  beforeAll(async () => {
    a = await createUser(deps(), { email: 'ada@example.com', username: 'ada' });
    b = await createUser(deps(), { email: 'bob@example.com', username: 'bob' });
  });

  it('creates a ready user with every package row and file', () => {
    expect(a.seed.status).toBe('ready');
    expect(a.user.seedStatus).toBe('ready');
    const rows = dumpUser(a.user.id);
    expect(rows.user_meta).toHaveLength(1);
    expect(rows.user_meta[0]).toMatchObject({ user_id: a.user.id, seed_status: 'ready', seed_version: 'v1' });
    expect(rows.contents.length).toBe(pkg.source.contentIds.length);
    expect(rows.runs).toHaveLength(1);
    expect(rows.tasks.length).toBe(pkg.source.taskIds.length);
    expect(rows.artifacts.length).toBe(pkg.source.artifactIds.length);
    expect(walkFiles(userRoot(world.dataDir, a.user.id)).length).toBe(pkg.pkg.manifest.files.length);
  });

  it('leaves no package identifier anywhere: columns, JSON, file names, file contents', () => {
    const text = allText(a.user.id);
    for (const id of packageIds()) expect(text, id).not.toContain(id);
    // the 8-hex suffix of every source id is gone too (doc ids are rebuilt from the new ids)
    for (const s of pkg.source.sourceDocIds) expect(text).not.toContain(`${s.slice(-8)}.`);
  });

  it('gives two users no shared identifier', () => {
    const ra = dumpUser(a.user.id);
    const rb = dumpUser(b.user.id);
    const idsA = new Set(Object.values(ra).flat().map((r) => r.id));
    for (const r of Object.values(rb).flat()) expect(idsA.has(r.id)).toBe(false);
    const ta = allText(a.user.id);
    const runB = rb.runs[0]!.id as string;
    expect(ta).not.toContain(runB);
  });

  it('sets user_id on every row that has the column', () => {
    const rows = dumpUser(a.user.id);
    for (const t of ['contents', 'presets', 'runs', 'user_meta']) for (const r of rows[t]!) expect(r.user_id, t).toBe(a.user.id);
  });

  it('keeps every reference resolving', () => {
    const rows = dumpUser(a.user.id);
    const contentIds = new Set(rows.contents.map((r) => r.id));
    const preset = rows.presets.find((p) => p.id === rows.runs[0]!.preset_id)!;
    expect(preset).toBeTruthy();
    expect(preset.github_connection_id).toBeNull();
    for (const col of ['generation_instructions_id', 'single_eval_instructions_id', 'pairwise_eval_instructions_id', 'eval_criteria_id', 'combine_instructions_id'])
      if (preset[col] !== null) expect(contentIds.has(preset[col]), col).toBe(true);
    for (const id of JSON.parse(String(preset.documents)) as string[]) expect(contentIds.has(id)).toBe(true);
    const run = rows.runs[0]!;
    const taskIds = new Set(rows.tasks.map((t) => t.id));
    for (const t of rows.tasks) expect(t.run_id).toBe(run.id);
    for (const art of rows.artifacts) expect(taskIds.has(art.task_id)).toBe(true);
    const summary = JSON.parse(String(run.results_summary)) as Record<string, any>;
    const runDir = path.join(userRoot(world.dataDir, a.user.id), 'runs', String(run.id));
    expect(existsSync(runDir)).toBe(true);
    for (const [sid, sdr] of Object.entries(summary.source_doc_results as Record<string, any>)) {
      expect(contentIds.has(sid)).toBe(true);
      for (const d of sdr.generated_docs) {
        const docId = d.doc_id ?? d.id;
        expect(docId.split('.')[0]).toBe(sid.slice(-8));
        expect(existsSync(path.join(runDir, 'generated', `${safeDocId(docId)}.md`)), docId).toBe(true);
      }
      for (const docId of Object.keys(sdr.single_eval_results ?? {})) expect(existsSync(path.join(runDir, 'generated', `${safeDocId(docId)}.md`))).toBe(true);
      for (const r of sdr.pairwise_results?.results ?? []) {
        expect(existsSync(path.join(runDir, 'generated', `${safeDocId(r.doc_id_1)}.md`))).toBe(true);
        expect(existsSync(path.join(runDir, 'generated', `${safeDocId(r.doc_id_2)}.md`))).toBe(true);
      }
    }
    for (const g of summary.generated_docs) expect(existsSync(path.join(runDir, 'generated', `${safeDocId(g.id)}.md`))).toBe(true);
  });

  it('records every seeded file with its size and sha256, and uses 0600/0700 modes', () => {
    const db = new Database(userDbPath(world.dataDir, a.user.id), { readonly: true });
    const files = db.prepare(`SELECT path, bytes FROM acm2_seed_files`).all() as { path: string; bytes: number }[];
    db.close();
    expect(files.length).toBe(pkg.pkg.manifest.files.length);
    for (const f of files) {
      const st = statSync(path.join(userRoot(world.dataDir, a.user.id), f.path));
      expect(st.size).toBe(f.bytes);
      expect(st.mode & 0o777).toBe(0o600);
    }
    expect(statSync(userRoot(world.dataDir, a.user.id)).mode & 0o777).toBe(0o700);
    expect(statSync(userDbPath(world.dataDir, a.user.id)).mode & 0o777).toBe(0o600);
    // The embedded master holds e-mails and key hashes: 0600 too, and so its WAL (same mode).
    const master = (parseMasterUrl(world.masterUrl) as { file: string }).file;
    for (const f of [master, `${master}-wal`]) if (f === master || existsSync(f)) expect(statSync(f).mode & 0o777, f).toBe(0o600);
  });

  it('stores an API key that an independent bcrypt (libxcrypt via Python crypt) accepts', async () => {
    expect(a.apiKey).toMatch(/^acm2_[A-Za-z0-9_-]{32}$/);
    const [key] = await world.master.apiKeysFor(a.user.id);
    expect(key!.keyPrefix).toBe(a.apiKey.slice(0, 12));
    expect(key!.keyHash).toMatch(/^\$2b\$/);
    const check = (k: string) =>
      execFileSync('python3', ['-W', 'ignore', '-c', 'import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])', k, key!.keyHash]).toString().trim();
    expect(check(a.apiKey)).toBe('True');
    // Another last character (the key's own may be 'x': that made this test fail 1 time in 64).
    expect(check(`${a.apiKey.slice(0, -1)}${a.apiKey.endsWith('x') ? 'y' : 'x'}`)).toBe('False');
  });

  it('is idempotent: a second seed changes nothing', async () => {
    const before = allText(a.user.id);
    const r = await seedOneUser(deps(), String(a.user.id), {});
    expect(r.seed.outcome).toBe('already_ready');
    expect(allText(a.user.id)).toBe(before);
  });

  it('--force restores seeded rows and files with the same ids, leaving the user’s own rows alone', async () => {
    const dbFile = userDbPath(world.dataDir, a.user.id);
    const root = userRoot(world.dataDir, a.user.id);
    const before = allText(a.user.id, false);
    const db = new Database(dbFile);
    const c = db.prepare(`SELECT id FROM contents ORDER BY id LIMIT 1`).get() as { id: string };
    db.prepare(`UPDATE contents SET name = 'edited' WHERE id = ?`).run(c.id);
    db.prepare(`INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('mine-1', ?, '2026-01-01 00:00:00.000000', 'mine', 'input_document', 'x', '{}', '[]', 0)`).run(a.user.id);
    db.close();
    const seeded = walkFiles(root)[0]!;
    writeFileSync(path.join(root, seeded), 'damaged');
    const r = await seedOneUser(deps(), 'ada@example.com', { force: true });
    expect(r.seed.outcome).toBe('restored');
    const after = dumpUser(a.user.id);
    expect(after.contents.find((x) => x.id === c.id)!.name).not.toBe('edited');
    expect(after.contents.find((x) => x.id === 'mine-1')).toBeTruthy();
    const db2 = new Database(dbFile);
    db2.prepare(`DELETE FROM contents WHERE id = 'mine-1'`).run();
    db2.close();
    expect(allText(a.user.id, false)).toBe(before);
  });

  it('adds seed rows beside rows a DB already holds, never emptying it', async () => {
    const u = await createUser(deps(), { email: 'cy@example.com', username: 'cy', async: true });
    const db = new Database(userDbPath(world.dataDir, u.user.id));
    db.exec(readFileSync(new URL('../migrations/user/0001_acm2_schema.sql', import.meta.url), 'utf8'));
    db.prepare(`INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('own-1', ?, '2026-01-01 00:00:00.000000', 'own', 'input_document', 'x', '{}', '[]', 0)`).run(u.user.id);
    db.close();
    const r = await seedOneUser(deps(), String(u.user.id), {});
    expect(r.seed.status).toBe('ready');
    const rows = dumpUser(u.user.id);
    expect(rows.contents.find((x) => x.id === 'own-1')).toBeTruthy();
    expect(rows.contents.length).toBe(pkg.source.contentIds.length + 1);
  });

  it('user show/list: a ready user whose DB became unreadable is failed (with why), not missing', async () => {
    const u = await createUser(deps(), { email: 'dee@example.com', username: 'dee' });
    expect((await userStatus(deps(), (await world.master.getUser(u.user.id))!)).status).toBe('ready');
    writeFileSync(userDbPath(world.dataDir, u.user.id), 'not a database, but long enough to have a header that SQLite will reject outright');
    const s = await userStatus(deps(), (await world.master.getUser(u.user.id))!);
    expect(s).toMatchObject({ status: 'failed', db: { present: true, error: expect.stringMatching(/not a database/) }, lastError: expect.stringMatching(/user DB unreadable/) });
    const failed: number[] = [];
    for await (const x of listUserStatuses(deps(), { status: 'failed' })) failed.push(x.id);
    expect(failed).toContain(u.user.id);
  });

  it('user show/list: a ready user whose DB another process holds locked is not failed or missing', async () => {
    const u = await createUser(deps(), { email: 'eve@example.com', username: 'eve' });
    const holder = new Database(userDbPath(world.dataDir, u.user.id));
    holder.exec('BEGIN EXCLUSIVE');
    holder.prepare(`UPDATE user_meta SET updated_at = updated_at`).run();
    try {
      const s = await userStatus({ ...deps(), busyTimeoutMs: 100 }, (await world.master.getUser(u.user.id))!);
      expect(s).toMatchObject({ status: 'ready', db: { present: true, error: expect.stringMatching(/locked/) } });
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
  });
});

describe('seeded values keep their storage class (the bundled v1: a 190 KB results_summary)', () => {
  it('stores every value as the package does (TEXT stays TEXT), the big JSON equal to its rendering', async () => {
    const seedsDir = fileURLToPath(new URL('../seed-packages', import.meta.url));
    const v1 = preparePackage(loadPackage(seedsDir, 'v1'));
    const runs = v1.tables.find((t) => t.name === 'runs')!;

    const w = await sqliteWorld();
    try {
      const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: 'bulk@example.com', username: 'bulk' });
      expect(u.seed.status).toBe('ready');
      const db = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
      const pk = new Database(path.join(seedsDir, 'v1', 'seed.db'), { readonly: true });
      try {
        const map = new Map((db.prepare(`SELECT source_id, target_id FROM acm2_id_map`).raw(true).all() as [string, string][]).map(([s, t]) => [s, t]));
        for (const t of v1.tables) {
          for (const c of t.columns) {
            if (c === 'user_id') continue; // NULL in the package, the user's id once seeded
            const kinds = (d: Database.Database) => (d.prepare(`SELECT typeof(${c}) AS k, COUNT(*) AS n FROM ${t.name} GROUP BY 1 ORDER BY 1`).all() as { k: string; n: number }[]);
            expect(kinds(db), `${t.name}.${c}`).toEqual(kinds(pk));
          }
        }
        const tpl = runs.rows[0]![runs.columns.indexOf('results_summary')] as Template;
        const stored = db.prepare(`SELECT results_summary FROM runs`).pluck().get();
        expect(stored).toBe(render(tpl, map));
      } finally {
        db.close();
        pk.close();
      }
    } finally {
      await w.cleanup();
    }
  });
});

describe('a package file that is not UTF-8', () => {
  it('has its identifiers remapped byte for byte, every other byte kept', async () => {
    const root = tmpDir('acm2-latin1-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      // A torn UTF-8 sequence in an FPF log that names the run (as a crashed writer leaves it).
      const log = walkFiles(source.filesDir).find((f) => f.endsWith('.log'))!;
      const abs = path.join(source.filesDir, log);
      writeFileSync(abs, Buffer.concat([readFileSync(abs), Buffer.from(`run ${source.runId} \xe2\x80\n`, 'latin1')]));
      const seedsDir = path.join(root, 'seeds');
      freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: source.runId, version: 'v9', seedsDir, setCurrent: true });
      const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: 't@example.com', username: 't' });
      expect(u.seed.status).toBe('ready');
      const db = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
      const runId = db.prepare(`SELECT id FROM runs`).pluck().get() as string;
      const seeded = db.prepare(`SELECT path FROM acm2_seed_files WHERE source_path = ?`).pluck().get(log.split(path.sep).join('/')) as string;
      db.close();
      const bytes = readFileSync(path.join(userRoot(w.dataDir, u.user.id), seeded));
      const text = bytes.toString('latin1');
      expect(text).not.toContain(source.runId);
      expect(text.endsWith(`run ${runId} \xe2\x80\n`)).toBe(true);
      expect(bytes.length).toBe(readFileSync(abs).length);
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('UUID-shaped text that is no identifier of the package', () => {
  it('is kept as it is (a citation URL), in rows and files, while the package ids around it (in capitals too) are remapped', async () => {
    const root = tmpDir('acm2-foreign-uuid-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      const FOREIGN = '3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f';
      const url = `https://www.congress.gov/crs-product/${FOREIGN}`;
      const db = new Database(source.dbPath);
      db.prepare(`UPDATE contents SET body = body || ? WHERE id = ?`).run(`\nSee ${url} (source ${source.sourceDocIds[0]}, run ${source.runId.toUpperCase()}).`, source.sourceDocIds[0]);
      db.close();
      const md = walkFiles(source.filesDir).find((f) => f.endsWith('.md') && f.includes('generated'))!;
      const abs = path.join(source.filesDir, md);
      writeFileSync(abs, `${readFileSync(abs, 'utf8')}\nCited: ${url} in run ${source.runId}\n`);
      const seedsDir = path.join(root, 'seeds');
      freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: source.runId, version: 'v9', seedsDir, setCurrent: true });
      for (const who of ['a', 'b']) {
        const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: `${who}@example.com`, username: who });
        expect(u.seed.status).toBe('ready');
        const udb = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
        const bodies = udb.prepare(`SELECT body FROM contents WHERE body LIKE '%congress.gov%'`).pluck().all() as string[];
        const runId = udb.prepare(`SELECT id FROM runs`).pluck().get() as string;
        const seeded = udb.prepare(`SELECT path FROM acm2_seed_files WHERE source_path = ?`).pluck().get(md.split(path.sep).join('/')) as string;
        const mapped = udb.prepare(`SELECT COUNT(*) FROM acm2_id_map WHERE source_id = ?`).pluck().get(FOREIGN);
        udb.close();
        expect(bodies).toHaveLength(1);
        expect(bodies[0]).toContain(url);
        expect(bodies[0]).not.toContain(source.sourceDocIds[0]);
        // The run id in capitals is the same id: this user's run id, in capitals.
        expect(bodies[0]).toContain(`, run ${runId.toUpperCase()}).`);
        expect(mapped).toBe(0);
        const text = readFileSync(path.join(userRoot(w.dataDir, u.user.id), seeded), 'utf8');
        expect(text.endsWith(`Cited: ${url} in run ${runId}\n`)).toBe(true);
        expect(runId).not.toBe(source.runId);
      }
      const v = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(v.users.flatMap((x) => x.problems)).toEqual([]);

      // A user seeded by an older tool, which remapped the foreign UUID and mapped it as 'uuid':
      // verify does not call the URL a leak, and a reseed drops the stale entry.
      const old = new Database(userDbPath(w.dataDir, 1));
      old.prepare(`INSERT INTO acm2_id_map (seed_version, kind, source_id, target_id) VALUES ('v9', 'uuid', ?, ?)`).run(FOREIGN, '0ff0c0de-0000-4000-8000-000000000000');
      old.close();
      const again = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { users: [1], deep: true });
      expect(again.users[0]!.problems).toEqual([]);
      const forced = await seedOneUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, '1', { force: true });
      expect(forced.seed.status).toBe('ready');
      const after = new Database(userDbPath(w.dataDir, 1), { readonly: true });
      expect(after.prepare(`SELECT COUNT(*) FROM acm2_id_map WHERE source_id = ?`).pluck().get(FOREIGN)).toBe(0);
      after.close();
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('an id right after an escape ending in a letter or digit (JSON \n, \u201c; URL %2F, %22)', () => {
  it('is remapped in rows and files, and verify --deep finds one put back', async () => {
    const root = tmpDir('acm2-escaped-id-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      const S = source.sourceDocIds[0]!;
      const R = source.runId;
      const D = source.docIds.find((d) => !d.startsWith('combined.'))!;
      const db = new Database(source.dbPath);
      const row = db.prepare(`SELECT results_summary FROM runs WHERE id = ?`).get(R) as { results_summary: string };
      // ACM2 keeps traceback.format_exc() in results_summary.errors, written by json.dumps (ASCII-escaped).
      const summary = pyJsonLoads(row.results_summary) as Record<string, unknown>;
      summary.errors = [`Traceback (most recent call last):\n${S}\n\t${D} failed`, `Winner \u201c${D}\u201d of ${R}`];
      db.prepare(`UPDATE runs SET results_summary = ? WHERE id = ?`).run(pyJsonDumps(summary), R);
      db.prepare(`UPDATE contents SET body = body || ? WHERE id = ?`).run(`\n[report](/api/files?path=runs%2F${R}%2Freports%2Freport.html&src=%22${S}%22)`, S);
      db.close();
      const runDir = path.join(source.filesDir, 'runs', R);
      writeFileSync(path.join(runDir, 'logs', 'run.log'), `${readFileSync(path.join(runDir, 'logs', 'run.log'), 'utf8')}GET /api/files?path=runs%2F${R}%2Fgenerated%2F${encodeURIComponent(safeDocId(D))}.md 200\n`);
      writeFileSync(path.join(runDir, 'logs', 'events.jsonl'), `${JSON.stringify({ msg: `done\n${S}` })}\n`);
      const seedsDir = path.join(root, 'seeds');
      freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: R, version: 'v9', seedsDir, setCurrent: true });
      const ids = [...source.contentIds, source.presetId, R, ...source.taskIds, ...source.artifactIds, ...source.docIds];
      const users: number[] = [];
      for (const who of ['a', 'b']) {
        const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: `${who}@example.com`, username: who });
        expect(u.seed.status).toBe('ready');
        users.push(u.user.id);
        const udb = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
        const rows = ['contents', 'presets', 'runs', 'tasks', 'artifacts'].map((t) => JSON.stringify(udb.prepare(`SELECT * FROM ${t}`).all()));
        const errors = (JSON.parse(udb.prepare(`SELECT results_summary FROM runs`).pluck().get() as string) as { errors: string[] }).errors;
        udb.close();
        const uroot = userRoot(w.dataDir, u.user.id);
        const files = walkFiles(uroot);
        const text = [...rows, files.join('\n'), ...files.map((f) => readFileSync(path.join(uroot, f), 'utf8'))].join('\n');
        for (const id of ids) expect(text, id).not.toContain(id);
        expect(errors[0]).toMatch(/^Traceback \(most recent call last\):\n[0-9a-f-]{36}\n\t[0-9a-f]{8}\.[0-9a-f]{4}\.fpf\.1\.openai_o4-mini failed$/);
      }
      const clean = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(clean.users.flatMap((x) => x.problems)).toEqual([]);
      // One put back after a newline escape (rows) and after %2F (a text file): verify says so.
      const udb = new Database(userDbPath(w.dataDir, users[0]!));
      udb.prepare(`UPDATE runs SET results_summary = replace(results_summary, '"errors": [', ?)`).run(`"errors": ["x\\n${S}", `);
      const run = udb.prepare(`SELECT id FROM runs`).pluck().get() as string;
      udb.close();
      writeFileSync(path.join(userRoot(w.dataDir, users[0]!), 'runs', run, 'logs', 'note.txt'), `GET /x?path=runs%2F${R}\n`, { mode: 0o600 });
      const leaked = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      const problems = leaked.users.find((x) => x.id === users[0])!.problems;
      expect(problems.filter((p) => p.code === 'seed_id_leaked').map((p) => p.table ?? p.path)).toEqual(['runs', expect.stringMatching(/logs\/note\.txt$/)]);
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("the source user's folder in a path to the package's run", () => {
  it("becomes each seeded user's own folder (ACM2's 'Saved generated content to data/user_{id}/runs/…' log line)", async () => {
    const root = tmpDir('acm2-user-dir-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      const doc = source.docIds.find((d) => !d.startsWith('combined.'))!;
      const line = (uid: number | string, run: string, d: string) => `Pipeline [x]: Saved generated content to data/user_${uid}/runs/${run}/generated/${safeDocId(d)}.md\n`;
      const log = path.join(source.filesDir, 'runs', source.runId, 'logs', 'run.log');
      writeFileSync(log, `${readFileSync(log, 'utf8')}${line(source.userId, source.runId, doc)}not a run path: user_${source.userId}/notes and xuser_${source.userId}/runs/${source.runId}\n`);
      const seedsDir = path.join(root, 'seeds');
      freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: source.runId, version: 'v9', seedsDir, setCurrent: true });
      const ids: number[] = [];
      for (const who of ['a', 'b']) {
        const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: `${who}@example.com`, username: who });
        expect(u.seed.status, JSON.stringify(u.seed)).toBe('ready');
        const id = u.user.id;
        ids.push(id);
        const udb = new Database(userDbPath(w.dataDir, id), { readonly: true });
        const runId = udb.prepare(`SELECT id FROM runs`).pluck().get() as string;
        const newDoc = udb.prepare(`SELECT target_id FROM acm2_id_map WHERE source_id = ?`).pluck().get(doc) as string;
        udb.close();
        const text = readFileSync(path.join(userRoot(w.dataDir, id), 'runs', runId, 'logs', 'run.log'), 'utf8');
        expect(text).toContain(line(id, runId, newDoc));
        // Only a folder on the way to the package's run is the source user's: other text stays.
        expect(text).toContain(`not a run path: user_${source.userId}/notes and xuser_${source.userId}/runs/${runId}\n`);
      }
      expect(ids[0]).not.toBe(source.userId);
      const clean = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(clean.users.flatMap((x) => x.problems)).toEqual([]);
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('a user seeded whole whose user_meta row is gone', () => {
  it('gets the row back, ready, rewriting none of its rows or files, and says what it wrote', async () => {
    const w = await sqliteWorld();
    try {
      const d = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      const u = await createUser(d, { email: 'lost-meta@example.com', username: 'lost-meta' });
      expect(u.seed?.status).toBe('ready');
      const db = new Database(userDbPath(w.dataDir, u.user.id));
      db.prepare(`DELETE FROM user_meta`).run();
      db.prepare(`UPDATE presets SET name = 'the user’s own name'`).run();
      db.close();
      const r = (await seedOneUser(d, String(u.user.id), {})).seed;
      expect(r).toMatchObject({ status: 'ready', outcome: 'already_ready', seedVersion: pkg.pkg.version, readyAgain: { from: null } });
      expect(renderSeed(r, u.user.id)).toMatch(new RegExp(`^User ${u.user.id} is ready with ${pkg.pkg.version} again: its user_meta row was missing and is written back; `));
      const after = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
      expect(after.prepare(`SELECT seed_status || ' ' || seed_version FROM user_meta`).pluck().get()).toBe(`ready ${pkg.pkg.version}`);
      expect(after.prepare(`SELECT name FROM presets`).pluck().all()).toEqual(['the user’s own name']);
      after.close();
    } finally {
      await w.cleanup();
    }
  });
});

describe('seeding a version the user had before, after it moved to another (CURRENT rolled back)', () => {
  it('rewrites none of the user’s edits to that version’s rows and files without --force; --force restores them', async () => {
    const v2 = frozenSource({ sourceDocs: 1 }, 'v2');
    const w = await sqliteWorld();
    const seeds = tmpDir('acm2-two-versions-');
    try {
      cpSync(pkg.seedsDir, seeds, { recursive: true });
      cpSync(path.join(v2.seedsDir, 'v2'), path.join(seeds, 'v2'), { recursive: true });
      const d = { master: w.master, dataDir: w.dataDir, seedsDir: seeds, lockTimeoutMs: 5000 };
      const u = await createUser(d, { email: 'back@example.com', username: 'back', seedVersion: 'v1' });
      expect(u.seed?.status).toBe('ready');
      // The user edits a v1 content row and a v1 log.
      const db = new Database(userDbPath(w.dataDir, u.user.id));
      const contentId = db.prepare(`SELECT target_id FROM acm2_id_map WHERE seed_version = 'v1' AND kind = 'contents' LIMIT 1`).pluck().get() as string;
      db.prepare(`UPDATE contents SET body = 'USER EDIT' WHERE id = ?`).run(contentId);
      const log = db.prepare(`SELECT path FROM acm2_seed_files WHERE seed_version = 'v1' AND path LIKE '%/logs/%' LIMIT 1`).pluck().get() as string;
      db.close();
      writeFileSync(path.join(userRoot(w.dataDir, u.user.id), log), 'the user’s own log line\n');
      expect((await seedOneUser(d, String(u.user.id), { seedVersion: 'v2' })).seed).toMatchObject({ status: 'ready', outcome: 'seeded' });
      const back = await seedOneUser(d, String(u.user.id), { seedVersion: 'v1' });
      expect(back.seed).toMatchObject({ status: 'ready', outcome: 'already_ready', seedVersion: 'v1', readyAgain: { from: 'v2' } });
      // It wrote user_meta, so it does not say it did nothing.
      expect(renderSeed(back.seed, u.user.id)).toBe(
        `User ${u.user.id} is ready with v1 again: its user_meta named v2 and now names v1; its v1 rows and files were in place from an earlier seed, so none was rewritten (--force restores them to the package).`,
      );
      const after = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
      expect(after.prepare(`SELECT body FROM contents WHERE id = ?`).pluck().get(contentId)).toBe('USER EDIT');
      expect(after.prepare(`SELECT seed_status || ' ' || seed_version FROM user_meta`).pluck().get()).toBe('ready v1');
      after.close();
      expect(readFileSync(path.join(userRoot(w.dataDir, u.user.id), log), 'utf8')).toBe('the user’s own log line\n');
      // Still on v2, damage to the v1 copy is found: it stays the user's seed.
      const stay = (await seedOneUser(d, String(u.user.id), { seedVersion: 'v2' })).seed;
      expect(stay).toMatchObject({ status: 'ready', outcome: 'already_ready', seedVersion: 'v2', readyAgain: { from: 'v1' } });
      // Asked again, there is nothing to do, and it says so.
      const same = (await seedOneUser(d, String(u.user.id), { seedVersion: 'v2' })).seed;
      expect(same.readyAgain).toBeUndefined();
      expect(renderSeed(same, u.user.id)).toBe(`User ${u.user.id} is already ready with v2; nothing to do.`);
      rmSync(path.join(userRoot(w.dataDir, u.user.id), log));
      const v = await verifyUsers(d, { users: [u.user.id] });
      expect(v.users[0]!.problems.map((p) => [p.code, p.path])).toEqual([['file_missing', `user_${u.user.id}/${log}`]]);
      expect((await seedOneUser(d, String(u.user.id), { seedVersion: 'v1' })).seed).toMatchObject({ outcome: 'already_ready', seedVersion: 'v1' });
      // Asked for, --force restores them (same ids).
      expect((await seedOneUser(d, String(u.user.id), { seedVersion: 'v1', force: true })).seed).toMatchObject({ status: 'ready', outcome: 'restored' });
      const forced = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
      expect(forced.prepare(`SELECT body FROM contents WHERE id = ?`).pluck().get(contentId)).not.toBe('USER EDIT');
      forced.close();
    } finally {
      await w.cleanup();
      v2.cleanup();
      rmSync(seeds, { recursive: true, force: true });
    }
  });
});

describe('a drain\'s failure lines', () => {
  it('say a job failed for good was not retried, whether its attempts ran out or it needs an operator at its first', () => {
    const text = renderDrain({
      claimed: 2,
      done: 0,
      retrying: 1,
      failed: 1,
      skipped: 0,
      failures: [
        { userId: 4, jobId: 9, error: 'user_4 is a plain file, not the user\'s folder', final: true },
        { userId: 5, jobId: 10, error: 'disk hiccup', final: false },
      ],
    });
    expect(text).toMatch(/user 4 \(job 9\): user_4 is a plain file, not the user's folder \[job failed: not retried\]/);
    expect(text).toMatch(/user 5 \(job 10\): disk hiccup$/m);
    expect(text).not.toMatch(/no attempts left/);
  });
});

describe('identifiers only free text names', () => {
  it('remaps a failed iteration\'s doc named only in logs, a truncated error\'s id, and does not warn about an id in capitals', async () => {
    const root = tmpDir('acm2-freetext-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      const S = source.sourceDocIds[0]!;
      const failedDoc = `${S.slice(-8)}.77aa.fpf.2.openai_o4-mini`;
      const logs = path.join(source.filesDir, 'runs', source.runId, 'logs');
      // The failed iteration wrote no doc and no results_summary entry: only its FPF log and run.log name it.
      writeFileSync(path.join(logs, `fpf_${S}.fpf.2.openai_o4-mini.log`), `doc_id=${failedDoc}\nerror: rate limited`);
      writeFileSync(path.join(logs, 'run.log'), `${readFileSync(path.join(logs, 'run.log'), 'utf8')}ERROR Generation failed for ${failedDoc}: RateLimitError\n`);
      const error = `FPF generation failed for source ${S} in run ${source.runId}: timeout`.slice(0, 100);
      const db = new Database(source.dbPath);
      db.prepare(`UPDATE tasks SET status = 'failed', error_message = ? WHERE id = ?`).run(error, source.taskIds[0]);
      db.prepare(`UPDATE tasks SET error_message = ? WHERE id = ?`).run(`retried by RUN ${source.runId.toUpperCase()}`, source.taskIds[1]);
      db.close();
      const seedsDir = path.join(root, 'seeds');
      const frozen = freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: source.runId, version: 'v9', seedsDir, setCurrent: true });
      expect(frozen.warnings).toEqual([]);
      const texts: string[] = [];
      for (const email of ['f1@example.com', 'f2@example.com']) {
        const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email, username: email.slice(0, 2) });
        expect(u.seed.status).toBe('ready');
        const udb = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
        const rows = JSON.stringify(['contents', 'presets', 'runs', 'tasks', 'artifacts'].map((t) => udb.prepare(`SELECT * FROM ${t}`).all()));
        udb.close();
        const uroot = userRoot(w.dataDir, u.user.id);
        const files = walkFiles(uroot);
        texts.push([rows, ...files, ...files.map((f) => readFileSync(path.join(uroot, f), 'utf8'))].join('\n'));
      }
      for (const text of texts) {
        expect(text).not.toContain(`${S.slice(-8)}.77aa.`);
        expect(text).not.toContain(S.slice(0, 13));
        expect(text.toLowerCase()).not.toContain(source.runId.slice(0, 13));
        expect(text).toMatch(/[0-9a-f]{8}\.[0-9a-f]{4}\.fpf\.2\.openai_o4-mini: RateLimitError/);
      }
      // Each user's copy of the failed doc is its own.
      const heads = texts.map((t) => /doc_id=([0-9a-f]{8}\.[0-9a-f]{4}\.)fpf\.2/.exec(t)![1]);
      expect(heads[0]).not.toBe(heads[1]);
      // The cut-short ids and free-text heads the ID map now holds are no rows: verify --deep finds both users whole.
      const v = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(v.users.flatMap((u) => u.problems.map((p) => `${u.id} ${p.code}: ${p.message}`))).toEqual([]);
      // And each maps back to the package, and to the other, through its ID map: no difference.
      const ids = v.users.map((u) => u.id);
      for (const id of ids) expect(diffUserWithPackage({ dataDir: w.dataDir, seedsDir }, id).equal).toBe(true);
      expect(diffUsers({ dataDir: w.dataDir }, ids[0]!, ids[1]!).equal).toBe(true);
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('a package id in a BLOB cell (bytes SQLite keeps in a TEXT column)', () => {
  it('is remapped, the cell stays a BLOB, and verify --deep finds one put back', async () => {
    const root = tmpDir('acm2-id-blob-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      const S = source.sourceDocIds[0]!;
      const R = source.runId;
      const db = new Database(source.dbPath);
      db.prepare(`UPDATE contents SET description = ? WHERE id = ?`).run(Buffer.from(`from run ${R}`), S);
      db.prepare(`UPDATE runs SET error_message = ? WHERE id = ?`).run(Buffer.concat([Buffer.from([0xff, 0]), Buffer.from(` source ${S}`)]), R);
      db.close();
      const seedsDir = path.join(root, 'seeds');
      freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: R, version: 'v9', seedsDir, setCurrent: true });
      const users: number[] = [];
      const blobs: Buffer[][] = [];
      for (const who of ['b1', 'b2']) {
        const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: `${who}@example.com`, username: who });
        expect(u.seed.status).toBe('ready');
        users.push(u.user.id);
        const udb = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
        const desc = udb.prepare(`SELECT description FROM contents WHERE typeof(description) = 'blob'`).pluck().all() as Buffer[];
        const err = udb.prepare(`SELECT error_message FROM runs WHERE typeof(error_message) = 'blob'`).pluck().all() as Buffer[];
        const newRun = udb.prepare(`SELECT id FROM runs`).pluck().get() as string;
        udb.close();
        expect(desc).toEqual([Buffer.from(`from run ${newRun}`)]);
        expect(err).toHaveLength(1);
        expect(err[0]!.subarray(0, 2)).toEqual(Buffer.from([0xff, 0]));
        expect(err[0]!.toString('latin1')).toMatch(/^.. source [0-9a-f-]{36}$/s);
        expect(err[0]!.toString('latin1')).not.toContain(S);
        blobs.push([...desc, ...err]);
      }
      expect(blobs[0]![1]!.equals(blobs[1]![1]!)).toBe(false);
      const v = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(v.users.flatMap((u) => u.problems.map((p) => `${u.id} ${p.code}: ${p.message}`))).toEqual([]);
      for (const id of users) expect(diffUserWithPackage({ dataDir: w.dataDir, seedsDir }, id).equal).toBe(true);
      expect(diffUsers({ dataDir: w.dataDir }, users[0]!, users[1]!).equal).toBe(true);
      // The package's id put back in a BLOB: verify --deep says so.
      const udb = new Database(userDbPath(w.dataDir, users[0]!));
      udb.prepare(`UPDATE runs SET error_message = ?`).run(Buffer.from(`run ${R}`));
      udb.close();
      const leaked = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(leaked.users.find((x) => x.id === users[0])!.problems.map((p) => `${p.code} ${p.table}`)).toEqual(['seed_id_leaked runs']);
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('a package id written as a bare part of itself', () => {
  it('is remapped in rows, files and file names (run_id[:8], …S8, uuid.hex), and verify --deep finds one put back', async () => {
    const root = tmpDir('acm2-id-part-');
    const w = await sqliteWorld();
    try {
      const source = generateSource(path.join(root, 'source'), {});
      const S = source.sourceDocIds[0]!;
      const R = source.runId;
      const hex = R.replace(/-/g, '');
      const line = `[run ${R.slice(0, 8)}] source \u2026${S.slice(-8)} done, trace ${hex}`;
      const db = new Database(source.dbPath);
      db.prepare(`UPDATE runs SET error_message = ? WHERE id = ?`).run(line, R);
      db.close();
      const runDir = path.join(source.filesDir, 'runs', R);
      writeFileSync(path.join(runDir, 'logs', 'run.log'), `${readFileSync(path.join(runDir, 'logs', 'run.log'), 'utf8')}${line}\n`);
      writeFileSync(path.join(runDir, 'logs', `${R.slice(0, 8)}.log`), `${line}\n`);
      const seedsDir = path.join(root, 'seeds');
      freezeSeed({ sourceDb: source.dbPath, sourceFiles: source.filesDir, presetId: source.presetId, runId: R, version: 'v9', seedsDir, setCurrent: true });
      const texts: string[] = [];
      const users: number[] = [];
      for (const who of ['p1', 'p2']) {
        const u = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir, lockTimeoutMs: 5000 }, { email: `${who}@example.com`, username: who });
        expect(u.seed.status).toBe('ready');
        users.push(u.user.id);
        const udb = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
        const rows = JSON.stringify(['contents', 'presets', 'runs', 'tasks', 'artifacts'].map((t) => udb.prepare(`SELECT * FROM ${t}`).all()));
        udb.close();
        const uroot = userRoot(w.dataDir, u.user.id);
        const files = walkFiles(uroot);
        texts.push([rows, ...files, ...files.map((f) => readFileSync(path.join(uroot, f), 'utf8'))].join('\n'));
      }
      for (const text of texts) {
        for (const part of [R.slice(0, 8), S.slice(-8), hex]) expect(text, part).not.toContain(part);
        expect(text).toMatch(/\[run [0-9a-f]{8}\] source \u2026[0-9a-f]{8} done, trace [0-9a-f]{32}/);
      }
      expect(texts[0]!.match(/\[run ([0-9a-f]{8})\]/)![1]).not.toBe(texts[1]!.match(/\[run ([0-9a-f]{8})\]/)![1]);
      const v = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(v.users.flatMap((u) => u.problems.map((p) => `${u.id} ${p.code}: ${p.message}`))).toEqual([]);
      for (const id of users) expect(diffUserWithPackage({ dataDir: w.dataDir, seedsDir }, id).equal).toBe(true);
      expect(diffUsers({ dataDir: w.dataDir }, users[0]!, users[1]!).equal).toBe(true);
      // One put back in a row: verify --deep says so.
      const udb = new Database(userDbPath(w.dataDir, users[0]!));
      udb.prepare(`UPDATE runs SET error_message = ?`).run(`[run ${R.slice(0, 8)}] failed`);
      udb.close();
      const leaked = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir }, { deep: true });
      expect(leaked.users.find((x) => x.id === users[0])!.problems.map((p) => `${p.code} ${p.table}`)).toEqual(['seed_id_leaked runs']);
    } finally {
      await w.cleanup();
      rmSync(root, { recursive: true, force: true });
    }
  });
});
