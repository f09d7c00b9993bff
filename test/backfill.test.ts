// Backfill over a legacy fleet: one run brings every healthy user up to date and reports exactly
// the broken ones; a second run changes nothing; no row is ever lost (a bad migration is undone);
// SIGKILL + --resume equals an uninterrupted run; an unreachable master changes nothing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { corruptIndex, corruptTable, frozenSource, killMidBackup, snapshotTree, sqliteWorld, tmpDir, walkFiles, type World } from './helpers/env.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { seedUser } from '../src/core/seed-user.js';
import { createAcm2Db } from '../src/fixtures/source.js';
import { verifyUsers } from '../src/core/verify.js';
import { backfillKilledAtCommit, buildLegacyFleet, EXPECTED, fleetPackage, HEALTHY, type Fleet, type FleetKind } from './helpers/legacy-fleet.js';
import { runBackfill, type BackfillDeps, type BackfillOptions, type BackfillResult } from '../src/core/backfill.js';
import { backfillJson, renderBackfill } from '../src/ui/backfill.js';
import { lockUserFile, tryLockNamed } from '../src/core/user-lock.js';
import { countRows, migrateSafely } from '../src/core/migrate-safe.js';
import { pendingMigrations, userMigrations } from '../src/userdb/user-db.js';
import { toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';
import { UnavailableError } from '../src/errors.js';
import type { MasterDb } from '../src/master/types.js';
import type { Migration } from '../src/migrations.js';
import { DIALECTS } from './helpers/mysql.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));

const env = fleetPackage();

const deps = (f: Fleet, extra: Partial<BackfillDeps> = {}): BackfillDeps => ({ master: f.master, dataDir: f.dataDir, pkg: env.pkg.pkg, saveEveryMs: 50, ...extra });
const backfill = (f: Fleet, opts: BackfillOptions = {}, extra: Partial<BackfillDeps> = {}) => runBackfill(deps(f, extra), opts);

/** sha256 of every file in the data dir except the master and the tool's private .acm2/. */
function hashTree(dataDir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of walkFiles(dataDir)) {
    if (rel.startsWith('master.db') || rel.split(path.sep)[0] === '.acm2') continue;
    out[rel] = createHash('sha256').update(readFileSync(path.join(dataDir, rel))).digest('hex');
  }
  return out;
}

function directCheck(dataDir: string, id: number) {
  const db = new Database(userDbPath(dataDir, id), { fileMustExist: true });
  try {
    const meta = db.prepare(`SELECT seed_status, seed_version FROM user_meta WHERE user_id = ?`).get(id) as { seed_status: string; seed_version: string } | undefined;
    return {
      status: meta?.seed_status ?? null,
      version: meta?.seed_version ?? null,
      pending: pendingMigrations(db).map((m) => m.name),
      fk: (db.prepare(`PRAGMA foreign_key_check`).all() as unknown[]).length,
    };
  } finally {
    db.close();
  }
}

function counts(dataDir: string, id: number): Record<string, number> {
  const db = new Database(userDbPath(dataDir, id), { fileMustExist: true });
  try {
    return countRows(db);
  } finally {
    db.close();
  }
}

function byKind(f: Fleet, kinds: FleetKind[]): number[] {
  return f.users.filter((u) => kinds.includes(u.kind)).map((u) => u.id);
}

const verifyModule = path.join(REPO, 'src/core/verify.ts');

describe('a legacy fleet of 1,000+ users', () => {
  let fleet: Fleet;
  let release: () => Promise<void>;
  let before: Map<number, Record<string, number>>;
  let plan: BackfillResult;
  let first: BackfillResult;
  const mix: Partial<Record<FleetKind, number>> = {
    legacy: 300,
    acm2_ready: 200,
    drift_runs: 200,
    drift_presets: 150,
    drift_later: 138,
    missing: 3,
    presets_only: 3,
    acm2_seeded: 3,
    ready: 3,
    corrupt: 1,
    locked: 1,
  };

  beforeAll(async () => {
    fleet = await buildLegacyFleet(mix, env.pkg.pkg);
    release = await fleet.holdLocks();
    before = new Map();
    for (const u of fleet.users) if (HEALTHY(u.kind) && u.kind !== 'missing') before.set(u.id, counts(fleet.dataDir, u.id));
    const untouched = hashTree(fleet.dataDir);
    const privateFiles = walkFiles(toolDir(fleet.dataDir));
    plan = await backfill(fleet, { dryRun: true, batchSize: 200 });
    expect(hashTree(fleet.dataDir)).toEqual(untouched);
    expect(walkFiles(toolDir(fleet.dataDir))).toEqual(privateFiles);
    expect(await fleet.master.getBackfill('default')).toBeUndefined();
    first = await backfill(fleet, { concurrency: 2, batchSize: 200 });
  }, 120_000);
  afterAll(async () => {
    await release?.();
    await fleet?.cleanup();
  });

  it('has at least 1,000 users of every kind', () => {
    expect(fleet.users.length).toBeGreaterThanOrEqual(1000);
    expect(new Set(fleet.users.map((u) => u.kind)).size).toBe(Object.keys(mix).length);
  });

  it('dry run: plans the right action per user and writes nothing (not even progress)', async () => {
    expect(plan.dryRun).toBe(true);
    const want: Record<string, number> = {};
    for (const u of fleet.users) want[EXPECTED[u.kind]] = (want[EXPECTED[u.kind]] ?? 0) + 1;
    expect(plan.counts).toEqual(want);
    expect(plan.users).toHaveLength(1000);
    expect(plan.usersOmitted).toBe(fleet.users.length - 1000);
    for (const u of plan.users) expect(u.action, `user ${u.id} (${fleet.kindOf(u.id)})`).toBe(EXPECTED[fleet.kindOf(u.id)]);
    expect(plan.failures.map((f) => f.id).sort((a, b) => a - b)).toEqual(byKind(fleet, ['corrupt', 'locked']));
  });

  it('one run brings every healthy user to ready, current schema, no FK violation', async () => {
    for (const u of fleet.users) {
      if (!HEALTHY(u.kind)) continue;
      const c = directCheck(fleet.dataDir, u.id);
      expect(c, `user ${u.id} (${u.kind})`).toMatchObject({ status: 'ready', pending: [], fk: 0 });
      const legacy = ['legacy', 'drift_runs', 'drift_presets', 'drift_later', 'acm2_ready'].includes(u.kind);
      expect(c.version, `user ${u.id} (${u.kind})`).toBe(legacy ? 'legacy' : env.pkg.pkg.version);
    }
    const items = await fleet.master.backfillItems('default');
    expect(items).toHaveLength(fleet.users.length);
    for (const it of items) expect(it.outcome, `user ${it.userId} (${fleet.kindOf(it.userId)})`).toBe(EXPECTED[fleet.kindOf(it.userId)]);
    expect(first.stopped).toBeUndefined();
    expect((await fleet.master.getBackfill('default'))?.status).toBe('done');
  });

  it('reports exactly the corrupt and the locked user, with their reasons', () => {
    const failed = first.failures.map((f) => [f.id, f.code]).sort((a, b) => Number(a[0]) - Number(b[0]));
    expect(failed).toEqual([...byKind(fleet, ['corrupt']).map((id) => [id, 'corrupt']), ...byKind(fleet, ['locked']).map((id) => [id, 'locked'])].sort((a, b) => Number(a[0]) - Number(b[0])));
    for (const f of first.failures) expect(f.reason.length).toBeGreaterThan(10);
    expect(first.counts.fail).toBe(2);
  });

  it('loses no row: every table of every legacy DB has as many rows or more', () => {
    for (const [id, was] of before) {
      const now = counts(fleet.dataDir, id);
      for (const [t, n] of Object.entries(was)) expect(now[t] ?? -1, `user ${id} (${fleet.kindOf(id)}) table ${t}`).toBeGreaterThanOrEqual(n);
    }
  });

  it('keeps a backup of every migrated DB under .acm2/backups/', () => {
    const migrated = fleet.users.filter((u) => ['legacy', 'acm2_ready', 'acm2_seeded', 'drift_runs', 'drift_presets', 'drift_later', 'presets_only'].includes(u.kind));
    for (const u of migrated.slice(0, 50)) {
      const dir = toolDir(fleet.dataDir, 'backups', `user_${u.id}`);
      const files = readdirSync(dir).filter((n) => n.endsWith('.db'));
      expect(files.length, `user ${u.id}`).toBe(1);
      const b = new Database(path.join(dir, files[0]!), { readonly: true });
      expect(countRows(b)).toEqual(before.get(u.id));
      b.close();
    }
  });

  it('is verify-clean for every healthy user (when verify exists)', async () => {
    if (!existsSync(verifyModule)) return;
    const mod = (await import(/* @vite-ignore */ pathToUrl(verifyModule))) as { verifyUsers?: Function };
    if (typeof mod.verifyUsers !== 'function') return;
    const healthy = fleet.users.filter((u) => HEALTHY(u.kind)).map((u) => u.id);
    const res = (await mod.verifyUsers({ master: fleet.master, dataDir: fleet.dataDir, seedsDir: env.pkg.seedsDir }, { users: healthy })) as {
      users: Array<{ id: number; ok: boolean; problems: Array<{ code: string; message: string }> }>;
    };
    const bad = res.users.filter((u) => !u.ok).map((u) => ({ id: u.id, kind: fleet.kindOf(u.id), problems: u.problems.slice(0, 3).map((p) => `${p.code}: ${p.message}`) }));
    expect(bad).toEqual([]);
  });

  it('a second backfill changes nothing: byte-identical DBs and files', async () => {
    const was = hashTree(fleet.dataDir);
    const second = await backfill(fleet, { concurrency: 2, batchSize: 200 });
    expect(hashTree(fleet.dataDir)).toEqual(was);
    expect(second.counts).toEqual({ ok: fleet.users.length - 2, fail: 2 });
  });
});

describe('no row is ever lost', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await buildLegacyFleet({ legacy: 2, drift_runs: 1, drift_later: 1 }, env.pkg.pkg);
  });
  afterAll(async () => fleet?.cleanup());

  const bad = (name: string, sql: string): Migration[] => [...userMigrations(), { id: userMigrations().length + 1, name, sql, checksum: createHash('sha256').update(sql).digest('hex') }];

  it('user seed of a drifted ACM2 DB repairs it as backfill would (backup, proven counts), never half way', async () => {
    const own = await buildLegacyFleet({ drift_runs: 1 }, env.pkg.pkg);
    try {
      const id = own.users[0]!.id;
      const was = counts(own.dataDir, id);
      const r = await seedOneUser({ master: own.master, dataDir: own.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 }, String(id), {});
      expect(r.seed, JSON.stringify(r.seed)).toMatchObject({ status: 'ready' });
      const db = new Database(userDbPath(own.dataDir, id), { readonly: true });
      try {
        expect(db.prepare(`SELECT 1 FROM pragma_table_info('runs') WHERE name = 'preset_id'`).get()).toBeDefined();
        expect(pendingMigrations(db)).toEqual([]);
      } finally {
        db.close();
      }
      // Every row the user had is still there (the package's rows were added beside them).
      const now = counts(own.dataDir, id);
      for (const [t, n] of Object.entries(was)) expect(now[t], t).toBeGreaterThanOrEqual(n);
      expect(readdirSync(toolDir(own.dataDir, 'backups', `user_${id}`)).filter((n) => n.endsWith('.db'))).toHaveLength(1);
    } finally {
      await own.cleanup();
    }
  });

  it('a migration that fills the disk (SQLite: database or disk is full) stops the run as disk_full, the DB rolled back', async () => {
    const own = await buildLegacyFleet({ legacy: 3 }, env.pkg.pkg);
    try {
      const was = hashTree(own.dataDir);
      const r = await backfill(own, {}, { migrations: bad('0099_fills_disk', `PRAGMA max_page_count = 1; CREATE TABLE big (x BLOB); INSERT INTO big VALUES (randomblob(100000));`) });
      expect(r.stopped).toBe('disk_full');
      expect(r.counts).toEqual({ fail: 1 });
      expect(r.failures[0]).toMatchObject({ code: 'disk_full' });
      for (const [rel, sha] of Object.entries(was)) if (rel.startsWith('user_')) expect(hashTree(own.dataDir)[rel], rel).toBe(sha);
    } finally {
      await own.cleanup();
    }
  });

  it("a DB holding another user's data under this id is left alone, never adopted or marked ready", async () => {
    const own = await buildLegacyFleet({ legacy: 2 }, env.pkg.pkg);
    try {
      // User 2's DB is a copy of user 1's (a restore to the wrong id), with one more run of its own.
      copyFileSync(userDbPath(own.dataDir, 1), userDbPath(own.dataDir, 2));
      const before = readFileSync(userDbPath(own.dataDir, 2));
      const r = await backfill(own, { userIds: [2] });
      expect(r.counts).toEqual({ fail: 1 });
      expect(r.failures[0]).toMatchObject({ code: 'foreign_data', reason: expect.stringMatching(/holds another user's data \(user_meta of user 1|presets of user 1/) });
      expect(readFileSync(userDbPath(own.dataDir, 2)).equals(before)).toBe(true);
    } finally {
      await own.cleanup();
    }
  });

  it('a migration that would drop rows is rolled back and the user failed, backup kept', async () => {
    const ids = fleet.users.map((u) => u.id);
    const was = hashTree(fleet.dataDir);
    const wasCounts = new Map(ids.map((id) => [id, counts(fleet.dataDir, id)]));
    const r = await backfill(fleet, {}, { migrations: bad('0099_bad_drop', `DELETE FROM contents WHERE content_type = 'input_document'`) });
    expect(r.counts).toEqual({ fail: ids.length });
    for (const f of r.failures) {
      expect(f.code).toBe('rows_vanished');
      expect(f.reason).toMatch(/contents 2 -> 1/);
      expect(f.reason).toMatch(/rolled back/);
    }
    expect(hashTree(fleet.dataDir)).toEqual(was);
    for (const id of ids) {
      expect(counts(fleet.dataDir, id)).toEqual(wasCounts.get(id));
      expect(readdirSync(toolDir(fleet.dataDir, 'backups', `user_${id}`)).filter((n) => n.endsWith('.db'))).toHaveLength(1);
    }
  });

  it('a migration that commits on its own and then drops rows is undone from the backup', async () => {
    const ids = fleet.users.map((u) => u.id);
    const wasCounts = new Map(ids.map((id) => [id, counts(fleet.dataDir, id)]));
    const r = await backfill(fleet, {}, { migrations: bad('0099_bad_commit', `COMMIT; DELETE FROM presets;`) });
    expect(r.counts).toEqual({ fail: ids.length });
    for (const f of r.failures) expect(f.reason).toMatch(/restored from the backup/);
    for (const id of ids) {
      expect(counts(fleet.dataDir, id)).toEqual(wasCounts.get(id));
      // Back to the state before the attempt: not even the ledger or the drift repairs remain.
      const db = new Database(userDbPath(fleet.dataDir, id), { readonly: true });
      expect(db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'acm2_migrations'`).get()).toBeUndefined();
      db.close();
    }
    // The real migrations then go through.
    const ok = await backfill(fleet);
    expect(ok.counts).toEqual({ meta_legacy: ids.length });
  });

  it('a backup a kill -9 cut short (its copy and the journal SQLite keeps beside it) is removed by the next migration; finished ones stay', async () => {
    const own = await buildLegacyFleet({ legacy: 1 }, env.pkg.pkg);
    try {
      const dir = toolDir(own.dataDir, 'backups', 'user_1');
      mkdirSync(dir, { recursive: true });
      const finished = path.join(dir, 'user_1-20260101T000000Z-aaaaaa.db');
      copyFileSync(userDbPath(own.dataDir, 1), finished);
      // A WAL DB being copied through SQLite's backup API when the process is killed.
      const big = path.join(own.dataDir, 'big.db');
      const partial = path.join(dir, 'user_1-20260101T000001Z-bbbbbb.db.partial');
      killMidBackup(big, partial);
      expect(readdirSync(dir).sort()).toEqual([path.basename(finished), path.basename(partial), `${path.basename(partial)}-journal`]);
      const r = await backfill(own, { userIds: [1] });
      expect(r.counts).toEqual({ meta_legacy: 1 });
      const left = readdirSync(dir);
      expect(left.filter((n) => n.includes('.partial'))).toEqual([]);
      expect(left).toContain(path.basename(finished));
      expect(left).toContain(path.basename(r.users[0]!.backup!));
    } finally {
      await own.cleanup();
    }
  });

  it('the human output says where the backups of migrated DBs are, and a backup put back is the DB as it was', () => {
    const own = buildLegacyFleet({ legacy: 2, ready: 1 }, env.pkg.pkg);
    return own.then(async (f) => {
      try {
        const id = byKind(f, ['legacy'])[1]!;
        const was = counts(f.dataDir, id);
        const r = spawnSync(process.execPath, [BIN, 'backfill', '--data-dir', f.dataDir, '--master', f.masterUrl, '--seeds', env.pkg.seedsDir], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
        expect(r.status, r.stderr).toBe(0);
        const dir = toolDir(f.dataDir, 'backups');
        expect(r.stdout).toContain(`Each of the 2 DBs migrated was backed up first, in ${path.join(dir, 'user_<id>')}/`);
        const json = spawnSync(process.execPath, [BIN, 'backfill', '--json', '--data-dir', f.dataDir, '--master', f.masterUrl, '--seeds', env.pkg.seedsDir], { encoding: 'utf8' });
        expect(JSON.parse(json.stdout)).toMatchObject({ backups: null, counts: { ok: 3 } });
        // The backup under that folder, put back as the output says, is the user's DB before the backfill.
        const [name] = readdirSync(path.join(dir, `user_${id}`));
        copyFileSync(path.join(dir, `user_${id}`, name!), userDbPath(f.dataDir, id));
        expect(counts(f.dataDir, id)).toEqual(was);
        expect(directCheck(f.dataDir, id)).toMatchObject({ status: null, fk: 0 });
      } finally {
        await f.cleanup();
      }
    });
  });

  it("a seed beside the user's own rows never deletes one that a UNIQUE index of the DB says clashes with a package row", async () => {
    const own = await buildLegacyFleet({ presets_only: 1 }, env.pkg.pkg);
    try {
      const seedDb = new Database(path.join(env.pkg.pkg.dir, 'seed.db'), { readonly: true, fileMustExist: true });
      const name = seedDb.prepare(`SELECT name FROM contents ORDER BY name LIMIT 1`).pluck().get() as string;
      seedDb.close();
      // The user's own document is named as one of the package's (ACM2's own seeding copied the
      // same library in), and this DB (a later ACM2's) has names unique per user.
      const db = new Database(userDbPath(own.dataDir, 1));
      db.prepare(`UPDATE contents SET name = ? WHERE content_type = 'input_document'`).run(name);
      db.exec(`CREATE UNIQUE INDEX ux_contents_user_name ON contents (user_id, name)`);
      const mine = db.prepare(`SELECT * FROM contents ORDER BY id`).all();
      db.close();
      const r = await backfill(own);
      const after = new Database(userDbPath(own.dataDir, 1), { readonly: true });
      try {
        for (const row of mine as Array<{ id: string }>) expect(after.prepare(`SELECT * FROM contents WHERE id = ?`).get(row.id), row.id).toEqual(row);
      } finally {
        after.close();
      }
      expect(r.counts).toEqual({ fail: 1 });
      expect(r.failures[0]).toMatchObject({ code: 'seed_failed', reason: expect.stringMatching(/UNIQUE constraint failed: contents\.user_id, contents\.name/) });
      expect(directCheck(own.dataDir, 1).status).not.toBe('ready');
    } finally {
      await own.cleanup();
    }
  });

  it('user seed <id> of such a DB is refused the same way: before anything is adopted, migrated or backed up, and at once (no retries)', async () => {
    const own = await buildLegacyFleet({ drift_later: 1 }, env.pkg.pkg);
    try {
      const db = new Database(userDbPath(own.dataDir, 1));
      db.exec(`DELETE FROM tasks; DELETE FROM runs;`);
      db.close();
      const was = readFileSync(userDbPath(own.dataDir, 1));
      const r = await seedOneUser({ master: own.master, dataDir: own.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 }, '1', {});
      expect(r.seed).toMatchObject({ status: 'failed', error: expect.stringMatching(/has presets\.output_destination NOT NULL without a default \(added by a later ACM2\), so the seed's rows cannot be written; nothing was changed/) });
      expect(r.seed.retry).toBeUndefined();
      expect(readFileSync(userDbPath(own.dataDir, 1)).equals(was)).toBe(true);
      expect(existsSync(toolDir(own.dataDir, 'backups', 'user_1'))).toBe(false);
    } finally {
      await own.cleanup();
    }
  });

  it('a later ACM2 DB that needs a seed but has a NOT NULL column without default the seed cannot fill is refused in one sentence, untouched', async () => {
    const own = await buildLegacyFleet({ drift_later: 2 }, env.pkg.pkg);
    try {
      // User 1: presets but no run (so a seed beside them); user 2 has both (ready as legacy, no seed).
      const db = new Database(userDbPath(own.dataDir, 1));
      db.exec(`DELETE FROM tasks; DELETE FROM runs;`);
      db.close();
      const was = readFileSync(userDbPath(own.dataDir, 1));
      const reason = /^schema drift needs a table rebuild: presets\.output_destination is NOT NULL without a default \(added by a later ACM2\), so the seed's rows cannot be written; left alone$/;
      const plan = await backfill(own, { dryRun: true });
      expect(plan.users.map((u) => [u.id, u.action, u.code])).toEqual([
        [1, 'fail', 'schema_unrepairable'],
        [2, 'meta_legacy', undefined],
      ]);
      const r = await backfill(own);
      expect(r.counts).toEqual({ fail: 1, meta_legacy: 1 });
      expect(r.failures).toEqual([{ id: 1, action: 'fail', code: 'schema_unrepairable', reason: expect.stringMatching(reason) }]);
      expect(readFileSync(userDbPath(own.dataDir, 1)).equals(was)).toBe(true);
      expect(existsSync(toolDir(own.dataDir, 'backups', 'user_1'))).toBe(false);
      expect(directCheck(own.dataDir, 2)).toMatchObject({ status: 'ready', version: 'legacy', pending: [] });
    } finally {
      await own.cleanup();
    }
  });

  it("a seed that rewrites seeded rows (backfill finishing a failed seed, --force) leaves the user's rows that reference them: no ON DELETE action runs", async () => {
    const own = await buildLegacyFleet({ ready: 2 }, env.pkg.pkg);
    try {
      // A table of the user's (or of a later ACM2) whose foreign keys act on delete.
      const notes = (id: number) => {
        const db = new Database(userDbPath(own.dataDir, id), { readonly: true });
        try {
          return db.prepare(`SELECT id, preset_id, content_id FROM my_notes ORDER BY id`).all();
        } finally {
          db.close();
        }
      };
      const before = new Map<number, unknown[]>();
      for (const id of [1, 2]) {
        const db = new Database(userDbPath(own.dataDir, id));
        db.exec(`CREATE TABLE my_notes (id INTEGER PRIMARY KEY,
                   preset_id VARCHAR(36) REFERENCES presets (id) ON DELETE CASCADE,
                   content_id VARCHAR(36) REFERENCES contents (id) ON DELETE SET NULL);
                 INSERT INTO my_notes (preset_id, content_id) SELECT p.id, (SELECT id FROM contents ORDER BY id LIMIT 1) FROM presets p;`);
        // User 2: a seed of its version that failed part way (as a --force stopped by an error leaves it).
        if (id === 2) db.exec(`UPDATE user_meta SET seed_status = 'failed'`);
        db.close();
        before.set(id, notes(id));
        expect(before.get(id)!.length).toBeGreaterThan(0);
      }
      const r = await backfill(own, { userIds: [2] });
      expect(r.counts).toEqual({ seed: 1 });
      expect(directCheck(own.dataDir, 2).status).toBe('ready');
      expect(notes(2)).toEqual(before.get(2));
      const forced = await seedOneUser({ master: own.master, dataDir: own.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 }, '1', { force: true });
      expect(forced.seed).toMatchObject({ status: 'ready' });
      expect(notes(1)).toEqual(before.get(1));
    } finally {
      await own.cleanup();
    }
  });

  /**
   * User 1 of `own` made a 100k-task WAL DB, and ACM2 serving it: a write that waits while a
   * migration holds the DB (from the moment its backup has its name) and commits as soon as it is let in.
   */
  async function acm2WaitingOnMigration(own: { dataDir: string }) {
    const file = userDbPath(own.dataDir, 1);
    // ACM2's DBs are in WAL mode; 100k tasks make the count after the rollback take a while.
    const setup = new Database(file);
    setup.pragma('journal_mode = WAL');
    const task = setup.prepare(
      `INSERT INTO tasks (id, created_at, run_id, document_id, model_name, iteration, status, progress, input_tokens, output_tokens)
       SELECT 'task-' || ?, created_at, run_id, document_id, model_name, 1, 'completed', 100, 0, 0 FROM tasks LIMIT 1`,
    );
    setup.transaction(() => {
      for (let i = 0; i < 100_000; i++) task.run(i);
    })();
    setup.close();
    // ACM2 serving the user: a write that waits while the migration holds the DB (from the moment
    // its backup has its name) and commits as soon as it is let in.
    const acm2 = spawn(
      process.execPath,
      [
        '-e',
        `const D = require('better-sqlite3'); const fs = require('fs'); const [file, dir] = process.argv.slice(1);
         process.stdout.write('ready\\n');
         for (;;) { try { if (fs.readdirSync(dir).some((n) => n.endsWith('.db'))) break; } catch {} }
         const d = new D(file); d.pragma('busy_timeout = 0');
         for (;;) { try { d.exec('BEGIN IMMEDIATE'); break; } catch {} }
         d.exec("INSERT INTO usage_stats (id, user_id, date, provider, model_id, total_tokens, prompt_tokens, completion_tokens, total_cost, run_count, created_at) VALUES ('written-by-acm2', 1, '2026-11-29', 'openai', 'o4-mini', 10, 5, 5, 0.01, 1, '2026-11-29 01:00:00.000000')");
         d.exec('COMMIT'); d.close();`,
        file,
        toolDir(own.dataDir, 'backups', 'user_1'),
      ],
      { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = new Promise<number | null>((r) => acm2.once('exit', (code) => r(code)));
    await new Promise<void>((r) => acm2.stdout!.once('data', () => r()));
    return { file, exited };
  }

  /** ACM2's write went in, every row is there, and nothing of the failed migration stayed. */
  async function expectAcm2WriteKept(file: string, exited: Promise<number | null>) {
    expect(await exited).toBe(0);
    const db = new Database(file, { readonly: true });
    try {
      expect(db.prepare(`SELECT id FROM usage_stats`).pluck().all()).toEqual(['written-by-acm2']);
      expect(db.prepare(`SELECT COUNT(*) FROM tasks`).pluck().get()).toBe(100_001);
      expect(db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'acm2_migrations'`).get()).toBeUndefined();
    } finally {
      db.close();
    }
  }

  it('a failed migration of a DB ACM2 writes to meanwhile keeps what ACM2 wrote once the lock was free: undone under the lock, nothing restored', async () => {
    const own = await buildLegacyFleet({ legacy: 1 }, env.pkg.pkg);
    try {
      const { file, exited } = await acm2WaitingOnMigration(own);
      // A migration that fails after a while (the lock held all along).
      const slow = `CREATE TEMP TABLE slow AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c; INSERT INTO no_such_table VALUES (1);`;
      const r = await backfill(own, {}, { migrations: bad('0099_fails_slowly', slow) });
      await expectAcm2WriteKept(file, exited);
      expect(r.failures).toEqual([expect.objectContaining({ code: 'migration_error', reason: expect.stringMatching(/rolled back, nothing changed \(backup kept at /) })]);
    } finally {
      await own.cleanup();
    }
  }, 60_000);

  it('a migration whose transaction SQLite ends itself (a full disk) restores nothing over what ACM2 wrote once the lock was free', async () => {
    const own = await buildLegacyFleet({ legacy: 1 }, env.pkg.pkg);
    try {
      const { file, exited } = await acm2WaitingOnMigration(own);
      // A migration that fills the disk after a while: SQLite rolls the whole transaction back
      // itself (the savepoint goes with it), and the lock is free from that instant.
      const full = `CREATE TEMP TABLE slow AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c;
                    CREATE TABLE acm2_fill (x BLOB); PRAGMA max_page_count = 1; INSERT INTO acm2_fill VALUES (randomblob(1000000));`;
      const r = await backfill(own, {}, { migrations: bad('0099_fills_disk_slowly', full) });
      await expectAcm2WriteKept(file, exited);
      expect(r.stopped).toBe('disk_full');
      // Which of the two is said depends on whether ACM2's write got in before the check (it waits
      // for the lock): either way nothing was restored over it (checked above).
      expect(r.failures).toEqual([
        expect.objectContaining({
          code: 'disk_full',
          reason: expect.stringMatching(/ACM2 wrote to the DB since, so nothing was restored over that: check the user with acm2 verify --user 1 \(backup|rolled back, nothing changed \(backup kept at /),
        }),
      ]);
    } finally {
      await own.cleanup();
    }
  }, 60_000);
});

describe('a seeded user whose DB lost part of its schema (an index dropped by hand)', () => {
  it('has it put back by backfill, with a backup, and verify agrees', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const u = await createUser(deps, { email: 'noindex@example.com', username: 'noindex' });
      const db = new Database(userDbPath(w.dataDir, u.user.id));
      db.exec('DROP INDEX ix_documents_user_id');
      db.close();
      const before = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir });
      expect(before.users[0]!.problems.map((p) => p.code)).toEqual(['schema_outdated']);
      const plan = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { dryRun: true });
      expect(plan.users).toEqual([expect.objectContaining({ id: u.user.id, action: 'migrate', steps: ['repair: create index ix_documents_user_id'] })]);
      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {});
      expect(r.counts).toEqual({ migrate: 1 });
      expect(r.users[0]!.backup).toBeDefined();
      const after = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir });
      expect(after.users[0]!.problems).toEqual([]);
      expect((await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {})).counts).toEqual({ ok: 1 });
    } finally {
      await w.cleanup();
    }
  });
});

describe('a ready user whose seed was killed between linking its DB into place and removing the staged name', () => {
  it("has that second name dropped by the next backfill (not by a dry run, nor by another shard's), the DB kept", async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const u = await createUser(deps, { email: 'alias@example.com', username: 'alias' });
      const id = u.user.id;
      const staging = toolDir(w.dataDir, 'staging');
      mkdirSync(staging, { recursive: true });
      // What the kill leaves: the live DB under its staged name too. A whole build that is another
      // file (a crashed attempt's) is the next seed's to adopt, not the backfill's to drop.
      const alias = path.join(staging, `user_${id}-${env.pkg.pkg.version}-0a1b2c.db`);
      const build = path.join(staging, `user_${id}-${env.pkg.pkg.version}-3d4e5f.db`);
      linkSync(userDbPath(w.dataDir, id), alias);
      copyFileSync(userDbPath(w.dataDir, id), build);
      const dbBytes = readFileSync(userDbPath(w.dataDir, id));

      const plan = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { dryRun: true });
      expect(plan.counts).toEqual({ ok: 1 });
      expect(existsSync(alias)).toBe(true);
      await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { shard: { index: (id + 1) % 2, count: 2 } });
      expect(existsSync(alias)).toBe(true);

      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {});
      expect(r.counts).toEqual({ ok: 1 });
      expect(existsSync(alias)).toBe(false);
      expect(existsSync(build)).toBe(true);
      expect(readFileSync(userDbPath(w.dataDir, id))).toEqual(dbBytes);
      expect(statSync(userDbPath(w.dataDir, id)).nlink).toBe(1);
    } finally {
      await w.cleanup();
    }
  });

  it('keeps a staged DB that a symlink user_{id}.db leads to: that is the one copy, not a second name', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const u = await createUser(deps, { email: 'onecopy@example.com', username: 'onecopy' });
      const id = u.user.id;
      const staged = path.join(toolDir(w.dataDir, 'staging'), `user_${id}-${env.pkg.pkg.version}-0a1b2c.db`);
      mkdirSync(path.dirname(staged), { recursive: true });
      renameSync(userDbPath(w.dataDir, id), staged);
      symlinkSync(staged, userDbPath(w.dataDir, id));
      await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {});
      expect(existsSync(staged)).toBe(true);
    } finally {
      await w.cleanup();
    }
  });
});

describe('a seeded user whose DB lost a column by hand, planned after a user whose DB is whole', () => {
  it('gets the column back: the planner does not take its schema for the whole one it saw first', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      await createUser(deps, { email: 'whole@example.com', username: 'whole' });
      const u = await createUser(deps, { email: 'nocolumn@example.com', username: 'nocolumn' });
      const db = new Database(userDbPath(w.dataDir, u.user.id));
      db.exec('ALTER TABLE contents DROP COLUMN description');
      db.close();
      // One planner, so the whole DB's schema is seen (and remembered) first.
      const plan = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { dryRun: true, concurrency: 1 });
      expect(plan.users.find((p) => p.id === u.user.id)).toMatchObject({ action: 'migrate', steps: ['repair: add column contents.description'] });
      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { concurrency: 1 });
      expect(r.counts).toEqual({ ok: 1, migrate: 1 });
      const after = new Database(userDbPath(w.dataDir, u.user.id), { readonly: true });
      expect((after.prepare(`SELECT name FROM pragma_table_info('contents')`).pluck().all() as string[])).toContain('description');
      after.close();
    } finally {
      await w.cleanup();
    }
  });
});

describe('users complete with another version than the package backfill seeds with', () => {
  it('are left so, and the summary says how many and what would move them', async () => {
    const w = await sqliteWorld();
    const v2 = frozenSource({ sourceDocs: 1 }, 'v2');
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      await createUser(deps, { email: 'old1@example.com', username: 'old1' });
      await createUser(deps, { email: 'old2@example.com', username: 'old2' });
      // One whose schema backfill also repairs: still left with its version, and counted so.
      const repaired = (await createUser(deps, { email: 'old3@example.com', username: 'old3' })).user.id;
      const db = new Database(userDbPath(w.dataDir, repaired));
      db.exec('ALTER TABLE contents DROP COLUMN description');
      db.close();
      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: v2.pkg }, { concurrency: 1 });
      expect(r.counts).toEqual({ ok: 2, migrate: 1 });
      expect(r).toMatchObject({ seedVersion: 'v2', readyWithOtherVersion: 3 });
      expect(renderBackfill(r)).toContain("3 of them are complete with another seed version than v2 and were left so: backfill completes users, it does not move them between versions (acm2 user seed <id> --seed-version v2 adds v2's rows and files beside theirs).");
      const same = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {});
      expect(same.readyWithOtherVersion).toBe(0);
      expect(renderBackfill(same)).not.toContain('another seed version');
    } finally {
      await w.cleanup();
      v2.cleanup();
    }
  });
});

describe('users complete with another version, some of them seeded with the backfill\'s version before', () => {
  it('are counted apart: for those a seed of that version only makes them ready with it again', async () => {
    const w = await sqliteWorld();
    const v2 = frozenSource({ sourceDocs: 1 }, 'v2');
    try {
      const v1Deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const v2Deps = { ...v1Deps, seedsDir: v2.seedsDir };
      await createUser(v1Deps, { email: 'stayed@example.com', username: 'stayed' });
      // Seeded v1, then moved on to v2: v1's record says it was seeded to the end.
      const moved = (await createUser(v1Deps, { email: 'moved@example.com', username: 'moved' })).user.id;
      expect((await seedOneUser(v2Deps, String(moved), {})).seed).toMatchObject({ status: 'ready', outcome: 'seeded', seedVersion: 'v2' });
      // Only ever v2.
      const fresh = (await createUser(v2Deps, { email: 'fresh@example.com', username: 'fresh' })).user.id;

      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { dryRun: true });
      expect(r.counts).toEqual({ ok: 3 });
      expect(r).toMatchObject({ seedVersion: 'v1', readyWithOtherVersion: 2, readyWithOtherVersionSeededBefore: 1 });
      expect(backfillJson(r)).toMatchObject({ readyWithOtherVersion: 2, readyWithOtherVersionSeededBefore: 1 });
      expect(renderBackfill(r)).toContain(
        "2 of them are complete with another seed version than v1 and were left so: backfill completes users, it does not move them between versions (acm2 user seed <id> --seed-version v1 adds v1's rows and files beside theirs); 1 of them was seeded with v1 before, and for it the same command only makes it ready with v1 again, adding nothing.",
      );
      // Only the user that had v1 before: the note makes no claim of adding rows.
      const one = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, { dryRun: true, userIds: [moved] });
      expect(one).toMatchObject({ readyWithOtherVersion: 1, readyWithOtherVersionSeededBefore: 1 });
      expect(renderBackfill(one)).toContain(
        '1 of them is complete with another seed version than v1 and was left so: backfill completes users, it does not move them between versions; it was seeded with v1 before, so acm2 user seed <id> --seed-version v1 makes it ready with v1 again, adding nothing.',
      );
      expect(renderBackfill(one)).not.toContain('beside theirs');
      // What the notes say is what the seed does.
      const files = snapshotTree(userRoot(w.dataDir, moved));
      expect((await seedOneUser(v1Deps, String(moved), { seedVersion: 'v1' })).seed).toMatchObject({ outcome: 'already_ready', readyAgain: { from: 'v2' } });
      expect(snapshotTree(userRoot(w.dataDir, moved))).toEqual(files);
      expect((await seedOneUser(v1Deps, String(fresh), { seedVersion: 'v1' })).seed).toMatchObject({ outcome: 'seeded' });
    } finally {
      await w.cleanup();
      v2.cleanup();
    }
  });
});

describe('a user whose seed job failed for good', () => {
  it('is seeded by backfill and its job says done again (verify agrees)', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const u = await createUser(deps, { email: 'gaveup@example.com', username: 'gaveup', async: true });
      const T = Date.now();
      const job = await w.master.claimJob('w', 1000, T);
      expect(await w.master.finishJob(job!.id, 'w', { status: 'failed', error: 'ENOSPC' }, T + 1)).toBe(true);
      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {});
      expect(r.counts).toEqual({ seed: 1 });
      expect(await w.master.latestJob(u.user.id)).toMatchObject({ status: 'done', seedVersion: env.pkg.pkg.version });
      const v = await verifyUsers({ master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir });
      expect(v.users).toEqual([{ id: u.user.id, ok: true, problems: [] }]);
    } finally {
      await w.cleanup();
    }
  });
});

describe('users whose DB fails quick_check', () => {
  it('are failed at once, named with the remedy, their seed job not left to retry, and their DBs left byte for byte', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      // An ACM2-created DB whose seed never finished (backfill adopts and migrates it first), and
      // a DB the tool seeded whose seed stopped part way (backfill seeds it again): each with a
      // seed job queued, and an index page torn that nothing backfill plans with reads.
      const [adopt, stopped] = [(await createUser(deps, { email: 'qc-adopt@example.com', username: 'qc-adopt', async: true })).user.id, (await createUser(deps, { email: 'qc-stopped@example.com', username: 'qc-stopped', async: true })).user.id];
      const legacy = createAcm2Db(userDbPath(w.dataDir, adopt));
      legacy.prepare(`INSERT INTO user_meta (id, user_id, seed_status, seed_version, created_at) VALUES ('m', ?, 'in_progress', ?, '2026-01-12 09:30:00')`).run(adopt, env.pkg.pkg.version);
      legacy.close();
      seedUser({ dataDir: w.dataDir, userId: stopped, pkg: env.pkg.pkg });
      const db = new Database(userDbPath(w.dataDir, stopped));
      db.prepare(`UPDATE user_meta SET seed_status = 'in_progress'`).run();
      db.close();
      for (const id of [adopt, stopped]) corruptIndex(userDbPath(w.dataDir, id), 'ix_documents_user_id');
      const before = [adopt, stopped].map((id) => readFileSync(userDbPath(w.dataDir, id)));

      const r = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg }, {});
      expect(r.counts).toEqual({ fail: 2 });
      const escaped = (id: number) => userDbPath(w.dataDir, id).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      expect(r.failures).toEqual([
        {
          id: adopt,
          action: 'seed',
          code: 'corrupt',
          reason: expect.stringMatching(
            new RegExp(`^${escaped(adopt)} is corrupt \\(quick_check failed before migrating: .*\\): nothing was changed; restore it from a backup \\(the tool keeps its migration backups in .*user_${adopt}\\) or move it aside, then run: acm2 backfill --user ${adopt}$`),
          ),
        },
        // The seed's finding, with the backfill's rerun: a seed of the user alone would skip what else backfill does.
        {
          id: stopped,
          action: 'seed',
          code: 'corrupt',
          reason: expect.stringMatching(
            new RegExp(`^${escaped(stopped)} is corrupt \\(quick_check: .*\\): nothing was seeded and it was left alone; restore it from a backup \\(the tool keeps its migration backups in .*user_${stopped}\\) or move it aside, then run: acm2 backfill --user ${stopped}$`),
          ),
        },
      ]);
      // The job backfill ran is failed for good, not queued for a retry with backoff.
      expect(await w.master.latestJob(stopped)).toMatchObject({ status: 'failed', attempts: 1 });
      expect([adopt, stopped].map((id) => readFileSync(userDbPath(w.dataDir, id)))).toEqual(before);
    } finally {
      await w.cleanup();
    }
  });
});

describe('a user whose DB SQLite calls corrupt while backfill writes to it', () => {
  it('fails with code corrupt, named with the remedy, and the DB left as it was', async () => {
    const own = await buildLegacyFleet({ legacy: 1 }, env.pkg.pkg);
    try {
      expect((await backfill(own, { userIds: [1] })).counts).toEqual({ meta_legacy: 1 });
      // Current, with presets and runs and no user_meta row: backfill writes the legacy row on
      // its own, into a user_meta whose table page is torn (its index, which planning reads, is whole).
      const file = userDbPath(own.dataDir, 1);
      const db = new Database(file);
      db.prepare(`DELETE FROM user_meta`).run();
      db.close();
      corruptTable(file, 'user_meta');
      const before = readFileSync(file);

      const r = await backfill(own, { userIds: [1] });
      expect(r.failures).toEqual([
        {
          id: 1,
          action: 'meta_legacy',
          code: 'corrupt',
          reason: expect.stringMatching(
            new RegExp(
              `^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is corrupt \\(database disk image is malformed\\): left alone; restore it from a backup \\(the tool keeps its migration backups in .*user_1\\) or move it aside, then run: acm2 backfill --user 1$`,
            ),
          ),
        },
      ]);
      expect(readFileSync(file)).toEqual(before);
    } finally {
      await own.cleanup();
    }
  });
});

describe('a user deleted from the master while backfill runs', () => {
  it('gets no DB or files again: it is left alone', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const a = await createUser(deps, { email: 'first@example.com', username: 'first', async: true });
      const b = await createUser(deps, { email: 'second@example.com', username: 'second', async: true });
      const r = await runBackfill(
        {
          master: w.master,
          dataDir: w.dataDir,
          pkg: env.pkg.pkg,
          // ACM2 deletes the second user after the page holding both was read.
          onUser: (rep) => {
            if (rep.id !== a.user.id) return;
            const d = new Database(path.join(w.dataDir, 'master.db'));
            d.pragma('foreign_keys = OFF');
            for (const t of ['api_keys', 'acm2_seed_jobs']) d.prepare(`DELETE FROM ${t} WHERE user_id = ?`).run(b.user.id);
            d.prepare(`DELETE FROM users WHERE id = ?`).run(b.user.id);
            d.close();
          },
        },
        {},
      );
      expect(r.users.map((u) => [u.id, u.outcome])).toEqual([
        [a.user.id, 'seed'],
        [b.user.id, 'ok'],
      ]);
      expect(existsSync(userDbPath(w.dataDir, b.user.id))).toBe(false);
      expect(existsSync(path.join(w.dataDir, `user_${b.user.id}`))).toBe(false);
    } finally {
      await w.cleanup();
    }
  });
});

describe('after the commit', () => {
  const notes = (dir: string) => {
    const file = path.join(dir, 'user_9.db');
    const setup = new Database(file);
    setup.exec(`CREATE TABLE acm2_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL);
                CREATE TABLE notes (id INTEGER PRIMARY KEY, t TEXT); INSERT INTO notes (t) VALUES ('one'), ('two');`);
    setup.close();
    const sql = 'ALTER TABLE notes ADD COLUMN y TEXT';
    const migrations = [{ id: 1, name: '0001_notes_y', sql, checksum: createHash('sha256').update(sql).digest('hex') }];
    /** Migrate it (backfill's 250 ms wait), with ACM2 doing `afterCommit` as soon as the commit lets it. */
    const migrate = (afterCommit: () => void) => migrateSafely({ dbPath: file, backupDir: path.join(dir, 'backups'), label: 'user_9', migrations, busyTimeoutMs: 250, afterCommit });
    return { file, migrate };
  };

  it('ACM2 in another process cannot write to a rollback-journal DB while it is migrated, and nothing it wrote is lost', async () => {
    const dir = tmpDir('acm2-during-migration-');
    try {
      const { file } = notes(dir);
      const sql = 'ALTER TABLE notes ADD COLUMN y TEXT';
      // ACM2 (another process: POSIX locks are per process) tries to add a note, without waiting.
      const acm2Writes = () =>
        spawnSync(
          process.execPath,
          ['-e', `const D = require('better-sqlite3'); const d = new D(process.argv[1], { timeout: 0 }); try { d.exec("INSERT INTO notes (t) VALUES ('by ACM2')"); process.stdout.write('wrote'); } catch (e) { process.stdout.write(e.code); }`, file],
          { cwd: REPO, encoding: 'utf8' },
        ).stdout;
      const during: string[] = [];
      const r = await migrateSafely({
        dbPath: file,
        backupDir: path.join(dir, 'backups'),
        label: 'user_9',
        migrations: [{ id: 1, name: '0001_notes_y', sql, checksum: createHash('sha256').update(sql).digest('hex') }],
        busyTimeoutMs: 250,
        extra: () => {
          during.push(acm2Writes());
          return [];
        },
      });
      expect(during).toEqual(['SQLITE_BUSY']);
      expect(r.failure).toBeUndefined();
      expect(acm2Writes()).toBe('wrote');
      const db = new Database(file, { readonly: true });
      expect(db.prepare(`SELECT t FROM notes ORDER BY id`).pluck().all()).toEqual(['one', 'two', 'by ACM2']);
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rows ACM2 deletes once the migration committed are not a failure, and nothing is restored over them', async () => {
    const dir = tmpDir('acm2-after-commit-');
    try {
      const { file, migrate } = notes(dir);
      // A user deletes two notes and writes a new one.
      const r = await migrate(() => {
        const acm2 = new Database(file);
        acm2.exec(`DELETE FROM notes; INSERT INTO notes (t) VALUES ('written by ACM2 after the commit');`);
        acm2.close();
      });
      expect(r.failure).toBeUndefined();
      expect(r.ok).toBe(true);
      const db = new Database(file, { readonly: true });
      expect(db.prepare(`SELECT t, y FROM notes ORDER BY id`).all()).toEqual([{ t: 'written by ACM2 after the commit', y: null }]);
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a check that cannot run once the migration committed restores nothing: ACM2 may have written by then', async () => {
    const dir = tmpDir('acm2-after-commit-');
    let acm2: Database.Database | undefined;
    try {
      const { file, migrate } = notes(dir);
      // ACM2 writes a row and is still committing (its lock held) when the check comes.
      const r = await migrate(() => {
        acm2 = new Database(file);
        acm2.exec(`BEGIN EXCLUSIVE; INSERT INTO notes (t) VALUES ('written by ACM2 after the commit');`);
      });
      acm2!.exec('COMMIT');
      acm2!.close();
      expect(r.ok).toBe(false);
      expect(r.failure).toMatchObject({ code: 'locked', restoredFrom: 'committed' });
      expect(r.failure!.message).toMatch(/after the migration committed/);
      const db = new Database(file, { readonly: true });
      expect(db.prepare(`SELECT t FROM notes ORDER BY id`).pluck().all()).toEqual(['one', 'two', 'written by ACM2 after the commit']);
      expect(db.prepare(`SELECT name FROM acm2_migrations`).pluck().all()).toEqual(['0001_notes_y']);
      db.close();
      expect(r.backupPath && existsSync(r.backupPath)).toBe(true);
    } finally {
      if (acm2?.open) acm2.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('stopping and resuming', () => {
  const mix: Partial<Record<FleetKind, number>> = { legacy: 50, drift_runs: 35, drift_presets: 30, acm2_ready: 25, drift_later: 20, missing: 3, presets_only: 3, ready: 2 };

  /** Per-user state to compare two fleets by (ids and backups differ; structure must not). */
  async function finalState(f: Fleet) {
    const items = new Map((await f.master.backfillItems('default')).map((i) => [i.userId, i.outcome]));
    return f.users.map((u) => {
      const c = directCheck(f.dataDir, u.id);
      return { id: u.id, outcome: items.get(u.id), status: c.status, version: c.version, pending: c.pending, rows: counts(f.dataDir, u.id) };
    });
  }

  let reference: Fleet;
  let referenceState: Awaited<ReturnType<typeof finalState>>;
  beforeAll(async () => {
    reference = await buildLegacyFleet(mix, env.pkg.pkg);
    const r = await backfill(reference, { batchSize: 50 });
    expect(r.failures).toEqual([]);
    referenceState = await finalState(reference);
  }, 60_000);
  afterAll(async () => reference?.cleanup());

  const cli = (f: Fleet, ...args: string[]) => [BIN, 'backfill', '--data-dir', f.dataDir, '--master', f.masterUrl, '--seeds', env.pkg.seedsDir, ...args];

  function itemCount(f: Fleet): number {
    const db = new Database(path.join(f.dataDir, 'master.db'), { readonly: true, fileMustExist: true });
    try {
      db.pragma('busy_timeout = 5000');
      return (db.prepare(`SELECT COUNT(*) AS n FROM acm2_backfill_items WHERE outcome <> 'running'`).get() as { n: number }).n;
    } finally {
      db.close();
    }
  }

  it('SIGKILL halfway through the built CLI, then --resume: the same final state as an uninterrupted run', async () => {
    const f = await buildLegacyFleet(mix, env.pkg.pkg);
    try {
      const child = spawn(process.execPath, cli(f, '--quiet', '--batch-size', '50', '--concurrency', '2'), { stdio: 'ignore' });
      const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_c, sig) => r(sig)));
      // A quarter, not a half: on a loaded machine the child may run far between two polls.
      const quarter = Math.floor(f.users.length / 4);
      for (let i = 0; i < 3000 && itemCount(f) < quarter; i++) await new Promise((r) => setTimeout(r, 5));
      child.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      const done = itemCount(f);
      expect(done).toBeGreaterThan(0);
      expect(done).toBeLessThan(f.users.length);
      const progress = await f.master.getBackfill('default');
      expect(progress?.status).toBe('running');

      const resumed = spawnSync(process.execPath, cli(f, '--json', '--resume', '--batch-size', '50'), { encoding: 'utf8' });
      expect(resumed.status, resumed.stderr).toBe(0);
      const doc = JSON.parse(resumed.stdout) as { counts: Record<string, number>; resumed: boolean; failures: unknown[] };
      expect(doc.resumed).toBe(true);
      expect(doc.failures).toEqual([]);
      expect(Object.values(doc.counts).reduce((a, n) => a + n, 0)).toBe(f.users.length);
      expect(await finalState(f)).toEqual(referenceState);
    } finally {
      await f.cleanup();
    }
  }, 60_000);

  it('a user an earlier attempt left half done keeps that attempt\'s outcome when --resume finishes it', async () => {
    const f = await buildLegacyFleet({ legacy: 1 }, env.pkg.pkg);
    try {
      const db = userDbPath(f.dataDir, 1);
      chmodSync(db, 0o644);
      const first = await backfill(f);
      expect(first.users[0]).toMatchObject({ id: 1, outcome: 'meta_legacy' });
      expect(first.users[0]!.steps.some((s) => /permission|mode/.test(s))).toBe(true);
      // As if that run had been killed after the migrate-and-meta commit, before the permissions
      // step: its write-ahead item says 'running' with the plan, its progress is still running.
      chmodSync(db, 0o644);
      await f.master.recordBackfillItem('default', { userId: 1, outcome: 'running', reason: 'meta_legacy' });
      await f.master.saveBackfill({ name: 'default', status: 'running', cursor: 0, options: JSON.stringify({ users: null, shard: null, limit: null }), counts: {} });
      const resumed = await backfill(f, { resume: true });
      expect(resumed.resumed).toBe(true);
      expect(resumed.users[0]).toMatchObject({ id: 1, action: 'meta_legacy', outcome: 'meta_legacy' });
      expect(resumed.users[0]!.steps[0]).toBe('begun by an earlier attempt of this backfill');
      expect(statSync(db).mode & 0o777).toBe(0o600);
      expect((await f.master.backfillItems('default')).find((i) => i.userId === 1)?.outcome).toBe('meta_legacy');
    } finally {
      await f.cleanup();
    }
  });

  it('never changes the mode of a file hard-linked from outside the user\'s tree (a chmod would change that file too)', async () => {
    const f = await buildLegacyFleet({ ready: 1 }, env.pkg.pkg);
    try {
      // A file of someone else's (0644), with a second name inside user_1/: one inode, two paths
      // (a hard link cannot cross file systems, so it sits beside the user's folder).
      const shared = path.join(f.dataDir, 'shared.txt');
      writeFileSync(shared, 'not the user\'s\n', { mode: 0o644 });
      chmodSync(shared, 0o644);
      linkSync(shared, path.join(userRoot(f.dataDir, 1), 'shared.txt'));
      // A loose file of the user's own beside it, which backfill does tighten.
      const own = path.join(userRoot(f.dataDir, 1), 'own.txt');
      writeFileSync(own, 'mine\n', { mode: 0o644 });
      chmodSync(own, 0o644);
      const r = await backfill(f);
      expect(r.failures).toEqual([]);
      expect(statSync(own).mode & 0o777).toBe(0o600);
      expect(statSync(shared).mode & 0o777).toBe(0o644);
      // Nothing left that backfill would do: a second run finds the user ok.
      const again = await backfill(f);
      expect(again.users[0]).toMatchObject({ id: 1, outcome: 'ok' });
      expect(statSync(shared).mode & 0o777).toBe(0o644);
      // verify still names it, and says why backfill leaves it.
      const v = await verifyUsers({ master: f.master, dataDir: f.dataDir, seedsDir: env.pkg.seedsDir }, { users: [1] });
      const perm = v.users[0]!.problems.filter((p) => p.code === 'bad_permissions');
      expect(perm).toEqual([expect.objectContaining({ path: 'user_1/shared.txt', message: expect.stringMatching(/2 hard links.*backfill leaves it/) })]);
    } finally {
      await f.cleanup();
    }
  });

  it('a full disk stops the backfill at the first user it hits; --resume goes on once there is space', async () => {
    const f = await buildLegacyFleet({ missing: 4 }, env.pkg.pkg);
    try {
      const full = () => {
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      };
      const r = await backfill(f, {}, { onSeedStep: (s) => (s === 'files_staged' ? full() : undefined) });
      expect(r.stopped).toBe('disk_full');
      expect(r.counts).toEqual({ fail: 1 });
      expect(r.failures).toEqual([expect.objectContaining({ code: 'disk_full', reason: expect.stringMatching(/^disk full while writing/) })]);
      expect(renderBackfill(r)).toContain('Stopped: the disk is full');
      // --json: exit 3, so the document carries `error` as every error does, beside the summary.
      expect(backfillJson(r)).toMatchObject({ stopped: 'disk_full', error: { code: 'disk_full', message: expect.stringMatching(/^the disk is full \(user 1: disk full while writing .*--resume/) } });
      // The user the full disk stopped is not done: progress stays below it, its item says 'running'.
      expect((await f.master.getBackfill('default'))?.cursor).toBe(0);
      expect((await f.master.backfillItems('default')).map((i) => [i.userId, i.outcome])).toEqual([[1, 'running']]);
      // Once there is space, --resume seeds it too (it used to replay the old failure, and could
      // stop again on a disk that now had room), and a second --resume finds nothing left.
      const rest = await backfill(f, { resume: true });
      expect(rest.stopped).toBeUndefined();
      expect(rest.counts).toEqual({ seed: 4 });
      expect(rest.failures).toEqual([]);
      const again = await backfill(f, { resume: true });
      expect(again.resumedFinished).toMatch(/^\d{4}-/);
      expect(again.counts).toEqual({});
      expect(backfillJson(rest)).not.toHaveProperty('error');
      expect((await backfill(f)).counts).toEqual({ ok: 4 });
    } finally {
      await f.cleanup();
    }
  });

  it('a DB the tool seeded that lost its user_meta row gets its seed version back, not legacy', async () => {
    const f = await buildLegacyFleet({ missing: 1 }, env.pkg.pkg);
    try {
      expect((await backfill(f)).counts).toEqual({ seed: 1 });
      const file = userDbPath(f.dataDir, 1);
      const db = new Database(file);
      db.prepare(`DELETE FROM user_meta`).run();
      // The user's own edits to seeded rows and files are theirs: putting user_meta back keeps them.
      db.prepare(`UPDATE presets SET name = 'renamed by the user'`).run();
      db.close();
      const doc = readdirSync(userRoot(f.dataDir, 1), { recursive: true, withFileTypes: true }).find((e) => e.isFile() && e.name.endsWith('.md'))!;
      const docPath = path.join(doc.parentPath, doc.name);
      writeFileSync(docPath, 'edited by the user\n');
      // It has a preset and a run, as a legacy DB has, but also the tool's record of a whole seed.
      const r = await backfill(f);
      expect(r.users[0]).toMatchObject({ id: 1, action: 'seed', outcome: 'seed' });
      const check = new Database(file, { readonly: true });
      expect(check.prepare(`SELECT seed_status, seed_version FROM user_meta`).all()).toEqual([{ seed_status: 'ready', seed_version: env.pkg.pkg.version }]);
      expect(check.prepare(`SELECT name FROM presets`).pluck().all()).toEqual(['renamed by the user']);
      check.close();
      expect(readFileSync(docPath, 'utf8')).toBe('edited by the user\n');
      const v = await verifyUsers({ master: f.master, dataDir: f.dataDir, seedsDir: env.pkg.seedsDir }, { users: [1] });
      // Only the user's own edit of a seeded file is left to see.
      expect(v.users[0]!.problems.map((p) => p.code)).toEqual(['file_size_mismatch']);
    } finally {
      await f.cleanup();
    }
  });

  it('--resume retries a user an earlier version recorded as failed on a full disk, rather than replay it', async () => {
    const f = await buildLegacyFleet({ missing: 2 }, env.pkg.pkg);
    try {
      // What tools before this fix saved: the full-disk failure as user 2's final item, above the cursor.
      await f.master.recordBackfillItems('default', [{ userId: 2, outcome: 'fail', reason: '[disk_full] disk full while writing user 2' }]);
      await f.master.saveBackfill({ name: 'default', status: 'interrupted', cursor: 0, options: JSON.stringify({ users: null, shard: null, limit: null }), counts: {} });
      const r = await backfill(f, { resume: true });
      expect(r.stopped).toBeUndefined();
      expect(r.counts).toEqual({ seed: 2 });
      expect(r.failures).toEqual([]);
    } finally {
      await f.cleanup();
    }
  });

  it('--resume retries a user 212fe2d and earlier stopped on a full disk, whose cursor they moved past it', async () => {
    const f = await buildLegacyFleet({ missing: 4 }, env.pkg.pkg);
    try {
      // What 212fe2d saved when the disk filled at user 2: user 1 done, user 2 a final failure, and
      // the cursor at 2 (users 3 and 4 not reached).
      await backfill(f, { userIds: [1] });
      await f.master.resetBackfill('default');
      await f.master.recordBackfillItems('default', [
        { userId: 1, outcome: 'seed', reason: null },
        { userId: 2, outcome: 'fail', reason: "[disk_full] disk full while writing user 2's data" },
      ]);
      await f.master.saveBackfill({ name: 'default', status: 'interrupted', cursor: 2, options: JSON.stringify({ users: null, shard: null, limit: null }), counts: { seed: 1, fail: 1 } });
      const r = await backfill(f, { resume: true });
      expect(r.stopped).toBeUndefined();
      expect(r.failures).toEqual([]);
      expect(r.counts).toEqual({ seed: 4 });
      expect(existsSync(path.join(f.dataDir, 'user_2.db'))).toBe(true);
      expect((await backfill(f)).counts).toEqual({ ok: 4 });
    } finally {
      await f.cleanup();
    }
  });

  it('--resume of a backfill that had finished says so, goes over only users added since, and counts only them', async () => {
    const f = await buildLegacyFleet({ legacy: 2, corrupt: 1 }, env.pkg.pkg);
    try {
      const first = await backfill(f);
      expect(first.counts).toEqual({ meta_legacy: 2, fail: 1 });
      const again = await backfill(f, { resume: true });
      expect(again.resumed).toBe(true);
      expect(again.resumedFinished).toMatch(/^\d{4}-/);
      // Not this run's: the earlier counts and the earlier failure (which a run without --resume retries).
      expect(again.counts).toEqual({});
      expect(again.failures).toEqual([]);
      expect(renderBackfill(again)).toContain("The backfill 'default' had already finished");
    } finally {
      await f.cleanup();
    }
  });

  it('--resume with no saved progress of that name (another shard\'s, a first run) goes over every user and says there was nothing to resume', async () => {
    const f = await buildLegacyFleet({ legacy: 3 }, env.pkg.pkg);
    try {
      expect((await backfill(f, { shard: { index: 0, count: 3 } })).counts).toEqual({ meta_legacy: 1 });
      // A mistyped shard: nothing of shard-1-of-3 was saved, so it starts there from the beginning.
      const other = await backfill(f, { resume: true, shard: { index: 1, count: 3 } });
      expect(other).toMatchObject({ resumed: false, nothingToResume: true, counts: { meta_legacy: 1 } });
      expect(backfillJson(other)).toMatchObject({ resumed: false, nothingToResume: true });
      expect(renderBackfill(other)).toContain("No progress of a backfill 'shard-1-of-3' was saved, so --resume had nothing to resume: it went over every user from the start");
      // The shard that did run resumes as before, without that note.
      const same = await backfill(f, { resume: true, shard: { index: 0, count: 3 } });
      expect(same.resumed).toBe(true);
      expect(renderBackfill(same)).not.toContain('nothing to resume');
      expect(backfillJson(same)).toMatchObject({ nothingToResume: false });
    } finally {
      await f.cleanup();
    }
  });

  it('SIGINT: users in flight finish, progress is saved, exit 1 with a hint; --resume completes', async () => {
    const f = await buildLegacyFleet(mix, env.pkg.pkg);
    try {
      const child = spawn(process.execPath, cli(f, '--batch-size', '50'), { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      child.stdout!.on('data', (d) => (stdout += String(d)));
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      for (let i = 0; i < 3000 && itemCount(f) < 30; i++) await new Promise((r) => setTimeout(r, 5));
      child.kill('SIGINT');
      expect(await exited).toBe(1);
      expect(stdout).toMatch(/--resume/);
      const p = await f.master.getBackfill('default');
      expect(p?.status).toBe('interrupted');
      expect(p!.cursor).toBeLessThan(f.users.length);
      const r = spawnSync(process.execPath, cli(f, '--json', '--resume'), { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(await finalState(f)).toEqual(referenceState);
    } finally {
      await f.cleanup();
    }
  }, 60_000);

  /** A queued user whose backfill seed committed, the backfill killed (SIGKILL) before the master heard of it. */
  async function killedAfterCommit(w: World, name: string) {
    const { user } = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 10_000 }, { email: `${name}@example.com`, username: name, async: true });
    const killed = backfillKilledAtCommit(w.masterUrl, w.dataDir, env.pkg.seedsDir);
    expect(killed.signal, killed.stderr).toBe('SIGKILL');
    expect(directCheck(w.dataDir, user.id).status).toBe('ready');
    return user;
  }

  it('stopped at once between a seed and closing its job (a second Ctrl-C, a lost SSH session): --resume closes that job', async () => {
    const w = await sqliteWorld();
    try {
      // The backfill's seed of the user commits, and the process dies before the master hears of it.
      const user = await killedAfterCommit(w, 'cut');
      expect((await w.master.latestJob(user.id))?.status).toBe('running');

      const resumed = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg, saveEveryMs: 50 }, { resume: true });
      expect(resumed.users).toMatchObject([{ id: user.id, outcome: 'seed', steps: ['done by an earlier attempt of this backfill'] }]);
      // Not left running (user show and list: pending) until a drain comes by after its lease, and
      // verify then failing the fleet with job_state_mismatch.
      expect(await w.master.latestJob(user.id)).toMatchObject({ status: 'done', lockedBy: null });
    } finally {
      await w.cleanup();
    }
  }, 60_000);

  it('--resume of a user the stopped attempt seeded, while another seeder holds its lock: done, not failed user_busy', async () => {
    const w = await sqliteWorld();
    try {
      const user = await killedAfterCommit(w, 'held');
      // A seeder (a drain that took the job over, a direct user seed) holds the user's lock right now.
      const held = lockUserFile(w.dataDir, user.id, 0)!;
      expect(held).toBeDefined();
      try {
        const resumed = await runBackfill({ master: w.master, dataDir: w.dataDir, pkg: env.pkg.pkg, saveEveryMs: 50 }, { resume: true });
        // The user is ready: the resume has nothing to do for it, and the lock's holder closes the job.
        expect(resumed.failures).toEqual([]);
        expect(resumed.users).toMatchObject([{ id: user.id, outcome: 'seed', steps: ['done by an earlier attempt of this backfill'] }]);
      } finally {
        await held.release();
      }
    } finally {
      await w.cleanup();
    }
  }, 60_000);

  it('a statement the master refuses (a grant missing) is reported as that, not as the master lost', async () => {
    const f = await buildLegacyFleet({ legacy: 3 }, env.pkg.pkg);
    try {
      const denied = new UnavailableError("MySQL master mysql://ci@db:3306/m refused user 'ci' a statement acm2 needs: INSERT command denied (ER_TABLEACCESS_DENIED_ERROR); grant it, or use an account that has it", 'master_access_denied');
      const narrow = new Proxy(f.master, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => (prop === 'recordBackfillItem' ? Promise.reject(denied) : (v as (...a: unknown[]) => unknown).apply(target, args));
        },
      }) as MasterDb;
      const err = await runBackfill({ ...deps(f), master: narrow }, {}).catch((e: unknown) => e);
      expect(err).toBe(denied);
      // The master still answers the statements it allows: the progress was saved for --resume.
      expect(await f.master.getBackfill('default')).toMatchObject({ status: 'interrupted', cursor: 0 });
    } finally {
      await f.cleanup();
    }
  });

  it('a master that refuses a statement and then goes away is reported as gone, and not asked again', async () => {
    const f = await buildLegacyFleet({ legacy: 3 }, env.pkg.pkg);
    try {
      const denied = new UnavailableError("MySQL master refused user 'ci' a statement acm2 needs (ER_TABLEACCESS_DENIED_ERROR)", 'master_access_denied');
      const gone = new UnavailableError('cannot reach MySQL master at db:3306 (ECONNRESET)', 'master_unreachable');
      let refused = false;
      let callsAfterGone = 0;
      const flaky = new Proxy(f.master, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            if (prop === 'close') return (v as (...a: unknown[]) => unknown).apply(target, args);
            if (refused) {
              callsAfterGone++;
              return Promise.reject(gone);
            }
            if (prop === 'recordBackfillItem') {
              refused = true;
              return Promise.reject(denied);
            }
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      }) as MasterDb;
      const err = await runBackfill({ ...deps(f), master: flaky }, {}).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'master_unreachable', message: expect.stringMatching(/lost the master .*ECONNRESET/) });
      // The save after the refusal found the master gone; nothing asked it again after that.
      expect(callsAfterGone).toBe(1);
    } finally {
      await f.cleanup();
    }
  });

  it('an embedded master whose disk fills at the last save is disk_full naming the master, not a lost master', async () => {
    const f = await buildLegacyFleet({ missing: 2 }, env.pkg.pkg);
    try {
      const full = new UnavailableError(`disk full while writing the master ${f.master.display} (SQLITE_FULL)`, 'disk_full');
      const filling = new Proxy(f.master, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            if (prop === 'saveBackfill' && (args[0] as { status: string }).status !== 'running') return Promise.reject(full);
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      }) as MasterDb;
      const err = await runBackfill({ ...deps(f), master: filling }, {}).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as UnavailableError).code).toBe('disk_full');
      expect((err as Error).message).toContain('disk full while writing the master');
    } finally {
      await f.cleanup();
    }
  });

  it('the master going away mid-run: exit 3 with a clear message, and --resume completes later', async () => {
    const f = await buildLegacyFleet(mix, env.pkg.pkg);
    try {
      let calls = 0;
      const flaky = new Proxy(f.master, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            if (prop === 'recordBackfillItem' && ++calls > 60) return Promise.reject(new UnavailableError('cannot reach MySQL master at db:3306 (ECONNRESET)', 'master_unreachable'));
            if (calls > 60 && prop !== 'close') return Promise.reject(new UnavailableError('cannot reach MySQL master at db:3306 (ECONNRESET)', 'master_unreachable'));
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      }) as MasterDb;
      const err = await runBackfill({ ...deps(f), master: flaky }, { concurrency: 2, batchSize: 50 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as UnavailableError).exitCode).toBe(3);
      expect((err as Error).message).toMatch(/lost the master .*ECONNRESET.*--resume/);
      // Nothing is half-done: every user is either untouched or fully ready.
      for (const u of f.users) {
        if (!existsSync(userDbPath(f.dataDir, u.id))) continue;
        const c = directCheck(f.dataDir, u.id);
        if (c.status === 'ready' && u.kind !== 'ready' && u.kind !== 'acm2_ready') expect(c.pending, `user ${u.id}`).toEqual([]);
      }
      const r = await backfill(f, { resume: true, batchSize: 50 });
      expect(r.resumed).toBe(true);
      expect(r.failures).toEqual([]);
      const state = await finalState(f);
      // Users the lost master never heard about report what a redo found ('ok'); their data is the same.
      expect(state.map(({ outcome: _o, ...s }) => s)).toEqual(referenceState.map(({ outcome: _o, ...s }) => s));
    } finally {
      await f.cleanup();
    }
  }, 60_000);
});

describe('selection and limits', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await buildLegacyFleet({ legacy: 6, corrupt: 3, acm2_ready: 3 }, env.pkg.pkg);
  });
  afterAll(async () => fleet?.cleanup());

  it('--user, --shard and --limit pick the users; an unknown --user is refused', async () => {
    expect((await backfill(fleet, { dryRun: true, userIds: [2, 5] })).users.map((u) => u.id)).toEqual([2, 5]);
    expect((await backfill(fleet, { dryRun: true, shard: { index: 1, count: 3 } })).users.map((u) => u.id)).toEqual([1, 4, 7, 10]);
    expect((await backfill(fleet, { dryRun: true, limit: 4, batchSize: 3 })).users.map((u) => u.id)).toEqual([1, 2, 3, 4]);
    await expect(backfill(fleet, { userIds: [999] })).rejects.toThrow(/no user with id 999/);
  });

  it('a --user run while a full backfill is stopped leaves the progress its --resume continues from', async () => {
    const r = await backfill(fleet, { maxErrors: 1 });
    expect(r.stopped).toBe('max_errors');
    const saved = await fleet.master.getBackfill('default');
    const one = await backfill(fleet, { userIds: [fleet.users[fleet.users.length - 1]!.id] });
    expect(one.name).toBe('default-users');
    expect(await fleet.master.getBackfill('default')).toEqual(saved);
    const rest = await backfill(fleet, { resume: true });
    expect(rest).toMatchObject({ name: 'default', resumed: true });
    expect(Object.values(rest.counts).reduce((a, n) => a + (n ?? 0), 0)).toBe(fleet.users.length);
  });

  it('--max-errors stops early and --resume goes on from there', async () => {
    const r = await backfill(fleet, { maxErrors: 1 });
    expect(r.stopped).toBe('max_errors');
    expect(r.failures).toHaveLength(1);
    const done = Object.values(r.counts).reduce((a, n) => a + (n ?? 0), 0);
    expect(done).toBeLessThan(fleet.users.length);
    const rest = await backfill(fleet, { resume: true });
    expect(rest.resumed).toBe(true);
    expect(rest.counts.fail).toBe(3);
    expect(Object.values(rest.counts).reduce((a, n) => a + (n ?? 0), 0)).toBe(fleet.users.length);
    expect(rest.failures.map((f) => f.id).sort((a, b) => a - b)).toEqual(byKind(fleet, ['corrupt']));
  });

  it('the CLI: --dry-run --json is one document with the plan; the human form has the summary table', () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [BIN, 'backfill', '--data-dir', fleet.dataDir, '--master', fleet.masterUrl, '--seeds', env.pkg.seedsDir, ...args], { encoding: 'utf8' });
    const r = cli('--dry-run', '--json', '--user', '1', '--user', '2');
    expect(r.status, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(Object.keys(doc).slice(0, 3)).toEqual(['dryRun', 'counts', 'users']);
    expect(doc).toMatchObject({ dryRun: true, failures: [{ id: 2, code: 'corrupt' }] });
    expect(typeof doc.durationMs).toBe('number');
    const users = doc.users as Array<Record<string, unknown>>;
    expect(users.map((u) => u.id)).toEqual([1, 2]);
    expect(['ok', 'meta_legacy']).toContain(users[0]!.action); // depends on whether the tests above ran
    expect(users[1]).toMatchObject({ action: 'fail', outcome: 'fail', code: 'corrupt' });
    expect(users[1]!.reason).toMatch(/^\/.*\/user_2\.db is corrupt \(file is not a database\): left alone; restore it from a backup \(the tool keeps its migration backups in .*user_2\) or move it aside, then run: acm2 backfill --user 2$/);
    const human = cli('--dry-run', '--no-color', '--user', '2');
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/dry run/);
    expect(human.stdout).toMatch(/fail — failed/);
    expect(human.stdout).toMatch(/user 2 \[corrupt\]/);
  });

  it('a dry run against a master that was never set up says so (exit 2) and creates nothing', () => {
    const empty = path.join(fleet.dataDir, 'never-used');
    const r = spawnSync(process.execPath, [BIN, 'backfill', '--dry-run', '--data-dir', empty, '--master', `sqlite:${path.join(fleet.dataDir, 'blank.db')}`, '--seeds', env.pkg.seedsDir], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/the master sqlite:.*blank\.db does not exist/);
    expect(existsSync(empty)).toBe(false);
    expect(existsSync(path.join(fleet.dataDir, 'blank.db'))).toBe(false);
  });

  it('a resume with other options is refused', async () => {
    await backfill(fleet, { maxErrors: 1, userIds: [1, 2, 3] });
    await expect(backfill(fleet, { resume: true, userIds: [1, 2] })).rejects.toThrow(/other options/);
    await backfill(fleet, { maxErrors: 1 });
    await expect(backfill(fleet, { resume: true, limit: 5 })).rejects.toThrow(/other options/);
  });

  it('a second backfill of the same shard while one runs is refused (exit 3) and leaves its progress alone; other shards and dry runs go ahead', async () => {
    await backfill(fleet, { maxErrors: 1 });
    const before = await fleet.master.getBackfill('default');
    const held = await tryLockNamed(fleet.master, fleet.dataDir, 'backfill:default');
    expect(held).toBeDefined();
    try {
      const refused = await backfill(fleet, {}).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(refused).toMatchObject({ exitCode: 3, message: expect.stringMatching(/another `acm2 backfill` is running against this master/) });
      await expect(backfill(fleet, { resume: true })).rejects.toThrow(/another `acm2 backfill` is running/);
      expect(await fleet.master.getBackfill('default')).toEqual(before);
      expect((await backfill(fleet, { dryRun: true })).dryRun).toBe(true);
      expect((await backfill(fleet, { shard: { index: 0, count: 2 } })).name).toBe('shard-0-of-2');
    } finally {
      await held!.release();
    }
    expect((await backfill(fleet, { resume: true })).resumed).toBe(true);
  });
});

const mysqlDialect = DIALECTS.find((d) => d.name === 'mysql')!;

describe.skipIf(mysqlDialect.skip)('on a MySQL master', () => {
  it('the same backfill: keyset pages, GET_LOCK per user, items and progress in MySQL; a rerun changes nothing', async () => {
    mysqlDialect.ready();
    const fleet = await buildLegacyFleet({ legacy: 4, drift_runs: 2, missing: 1, presets_only: 1, corrupt: 1 }, env.pkg.pkg);
    const t = await mysqlDialect.open();
    try {
      for (const u of fleet.users) await t.query(`INSERT INTO users (id, username, email) VALUES (?, ?, ?)`, [u.id, `user${u.id}`, `user${u.id}@example.com`]);
      const r = await runBackfill({ master: t.master, dataDir: fleet.dataDir, pkg: env.pkg.pkg }, { concurrency: 2, batchSize: 3 });
      const want: Record<string, number> = {};
      for (const u of fleet.users) want[EXPECTED[u.kind]] = (want[EXPECTED[u.kind]] ?? 0) + 1;
      expect(r.counts).toEqual(want);
      expect((await t.master.backfillItems('default')).map((i) => [i.userId, i.outcome])).toEqual(fleet.users.map((u) => [u.id, EXPECTED[u.kind]]));
      expect(await t.master.getBackfill('default')).toMatchObject({ status: 'done', cursor: fleet.users.length });
      for (const u of fleet.users) if (HEALTHY(u.kind)) expect(directCheck(fleet.dataDir, u.id)).toMatchObject({ status: 'ready', pending: [], fk: 0 });
      const was = hashTree(fleet.dataDir);
      const again = await runBackfill({ master: t.master, dataDir: fleet.dataDir, pkg: env.pkg.pkg }, { concurrency: 2 });
      expect(again.counts).toEqual({ ok: fleet.users.length - 1, fail: 1 });
      expect(hashTree(fleet.dataDir)).toEqual(was);
      // One run per shard at a time, across hosts: the lock is GET_LOCK in MySQL, not a file.
      const other = await t.another();
      const held = await other.acquireNamedLock('backfill:default', 0);
      expect(held).toBeDefined();
      await expect(runBackfill({ master: t.master, dataDir: fleet.dataDir, pkg: env.pkg.pkg }, {})).rejects.toThrow(/another `acm2 backfill` is running/);
      await held!.release();
    } finally {
      await t.cleanup();
      await fleet.cleanup();
    }
  });
});

describe('the master unreachable from the start', () => {
  it('exit 3, one clear sentence, nothing on disk changed', async () => {
    const fleet = await buildLegacyFleet({ legacy: 3, missing: 1, drift_runs: 1 }, env.pkg.pkg);
    try {
      const was = snapshotTree(fleet.dataDir);
      const r = spawnSync(process.execPath, [BIN, 'backfill', '--data-dir', fleet.dataDir, '--master', 'mysql://root@127.0.0.1:1/x', '--seeds', env.pkg.seedsDir], { encoding: 'utf8' });
      expect(r.status).toBe(3);
      expect(r.stderr).toMatch(/cannot reach MySQL master at 127\.0\.0\.1:1/);
      expect(snapshotTree(fleet.dataDir)).toEqual(was);
    } finally {
      await fleet.cleanup();
    }
  });
});

function pathToUrl(p: string): string {
  return new URL(`file://${p}`).href;
}
