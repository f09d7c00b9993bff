// A seeder that loses its user's lock stops before the next step another holder could collide
// with, and leaves only what a crashed attempt leaves, which the next seed adopts or removes.
// On MySQL the lock lives on a connection: killing that connection frees it server-side.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { frozenSource, tmpDir, walkFiles, type FrozenSource } from './helpers/env.js';
import { readyButIncomplete } from './helpers/complete.js';
import { DIALECTS, type TestMaster } from './helpers/mysql.js';
import { createUser, drainQueue } from '../src/core/users.js';
import { lockUser } from '../src/core/user-lock.js';
import { seedUserAsync } from '../src/core/seed-user.js';
import { mysqlLockName } from '../src/master/mysql-master.js';
import { parseMasterUrl, type MasterUrl } from '../src/config.js';
import { toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
beforeAll(() => {
  pkg = frozenSource();
});
afterAll(() => pkg.cleanup());

function staging(dataDir: string, userId: number): string[] {
  const dir = toolDir(dataDir, 'staging');
  return existsSync(dir) ? readdirSync(dir).filter((n) => n.startsWith(`user_${userId}-`)) : [];
}

function sha(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

for (const dialect of DIALECTS) {
  describe.skipIf(dialect.skip)(`a lost user lock (${dialect.name})`, () => {
    let tm: TestMaster;
    let dataDir: string;
    beforeAll(async () => {
      dialect.ready();
      tm = await dialect.open();
      dataDir = tmpDir('acm2-lock-lost-');
    });
    afterAll(async () => {
      await tm?.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    });
    const deps = () => ({ master: tm.master, dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 });

    it('a held lock says so; once released it does not', async () => {
      const lock = await lockUser(tm.master, dataDir, 41, 1000);
      await expect(lock.check()).resolves.toBeUndefined();
      await lock.release();
      await expect(lock.check()).rejects.toMatchObject({ code: 'lock_lost' });
    });

    if (dialect.name !== 'mysql') return;

    /** The id of the connection holding user `id`'s lock, asked from outside. */
    async function holder(id: number): Promise<number> {
      const db = (parseMasterUrl(tm.url) as Extract<MasterUrl, { kind: 'mysql' }>).database;
      const rows = await tm.query(`SELECT IS_USED_LOCK(?) AS c`, [mysqlLockName('acm2:', db, `:user:${id}`)]);
      const c = Number(rows[0]?.c);
      expect(c).toBeGreaterThan(0);
      return c;
    }
    /** KILL a connection, finished before this returns (a seed step cannot await). */
    function killNow(connection: number): void {
      execFileSync(process.execPath, ['--input-type=module', '-e', `import m from 'mysql2/promise'; const c = await m.createConnection(process.argv[1]); await c.query('KILL CONNECTION ${connection}'); await c.end();`, tm.url], { cwd: REPO });
    }

    it('lost during a drain (the connection reset): the job is retried with its attempt given back', async () => {
      const u = (await createUser(deps(), { email: 'blip@example.com', username: 'blip', async: true })).user.id;
      const lockName = mysqlLockName('acm2:', (parseMasterUrl(tm.url) as Extract<MasterUrl, { kind: 'mysql' }>).database, `:user:${u}`);
      let killed = false;
      // A seed step cannot await: the holder is found and killed by a child process, finished before this returns.
      const onStep = (step: string) => {
        if (step !== 'db_staged' || killed) return;
        killed = true;
        const script = `import m from 'mysql2/promise'; const c = await m.createConnection(process.argv[1]); const [r] = await c.query('SELECT IS_USED_LOCK(?) AS c', [process.argv[2]]); await c.query('KILL CONNECTION ' + Number(r[0].c)); await c.end();`;
        execFileSync(process.execPath, ['--input-type=module', '-e', script, tm.url, lockName], { cwd: REPO });
      };
      const base = process.env.ACM2_RETRY_BASE_MS;
      process.env.ACM2_RETRY_BASE_MS = '0';
      try {
        // The retry is due at once (backoff 0 here): the same drain takes it again and seeds the user.
        const r = await drainQueue({ ...deps(), onStep }, { lanes: 1 });
        expect(killed).toBe(true);
        expect(r).toMatchObject({ claimed: 2, done: 1, retrying: 1, failed: 0 });
        // One attempt in all: the one the lost lock cut short was given back.
        expect(await tm.master.latestJob(u)).toMatchObject({ status: 'done', attempts: 1 });
        expect(readyButIncomplete(dataDir, u, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
      } finally {
        if (base === undefined) delete process.env.ACM2_RETRY_BASE_MS;
        else process.env.ACM2_RETRY_BASE_MS = base;
      }
    });

    it('lost before the build is named: nothing becomes visible, and the next seed converges', async () => {
      const u = (await createUser(deps(), { email: 'early@example.com', username: 'early', async: true })).user.id;
      const lock = await lockUser(tm.master, dataDir, u, 1000);
      killNow(await holder(u));
      await expect(seedUserAsync({ dataDir, userId: u, pkg: pkg.pkg, lock })).rejects.toMatchObject({ code: 'lock_lost', message: expect.stringContaining(`user ${u}`) });
      await lock.release();
      expect(existsSync(userDbPath(dataDir, u))).toBe(false);
      expect(existsSync(userRoot(dataDir, u)) ? walkFiles(userRoot(dataDir, u)) : []).toEqual([]);

      const again = await run(process.execPath, [BIN, 'user', 'seed', String(u), '--data-dir', dataDir, '--master', tm.url, '--seeds', pkg.seedsDir, '--json']);
      expect(JSON.parse(again.stdout).seed).toMatchObject({ status: 'ready', outcome: 'seeded' });
      expect(readyButIncomplete(dataDir, u, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
      expect(staging(dataDir, u)).toEqual([]);
    });

    it('lost after the files are written: no link; the next seed adopts the build and its files', async () => {
      const u = (await createUser(deps(), { email: 'late@example.com', username: 'late', async: true })).user.id;
      const lock = await lockUser(tm.master, dataDir, u, 1000);
      const connection = await holder(u);
      const seed = seedUserAsync({ dataDir, userId: u, pkg: pkg.pkg, lock, onStep: (s) => s === 'files_staged' && killNow(connection) });
      await expect(seed).rejects.toMatchObject({ code: 'lock_lost' });
      await lock.release();
      expect(existsSync(userDbPath(dataDir, u))).toBe(false);
      expect(staging(dataDir, u).filter((n) => n.endsWith('.db'))).toHaveLength(1);
      const written = walkFiles(userRoot(dataDir, u)).sort();
      expect(written).toHaveLength(pkg.pkg.manifest.files.length);

      const again = await run(process.execPath, [BIN, 'user', 'seed', String(u), '--data-dir', dataDir, '--master', tm.url, '--seeds', pkg.seedsDir, '--json']);
      expect(JSON.parse(again.stdout).seed.status).toBe('ready');
      expect(readyButIncomplete(dataDir, u, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
      // The adopted map named the same files: none left over, none new.
      expect(walkFiles(userRoot(dataDir, u)).sort()).toEqual(written);
      expect(staging(dataDir, u)).toEqual([]);
      const verify = await run(process.execPath, [BIN, 'verify', '--user', String(u), '--data-dir', dataDir, '--master', tm.url, '--seeds', pkg.seedsDir, '--json']);
      expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true, failed: 0 });
    });

    it('lost before a forced reseed of a ready user: its DB and files are not touched', async () => {
      const u = (await createUser(deps(), { email: 'ready@example.com', username: 'ready' })).user.id;
      const db = userDbPath(dataDir, u);
      const before = { db: sha(db), files: walkFiles(userRoot(dataDir, u)).sort() };
      const lock = await lockUser(tm.master, dataDir, u, 1000);
      killNow(await holder(u));
      await expect(seedUserAsync({ dataDir, userId: u, pkg: pkg.pkg, lock, force: true })).rejects.toMatchObject({ code: 'lock_lost' });
      await lock.release();
      expect({ db: sha(db), files: walkFiles(userRoot(dataDir, u)).sort() }).toEqual(before);
    });

    it('lost after a forced reseed rewrote the files: nothing is committed', async () => {
      const u = (await createUser(deps(), { email: 'forced@example.com', username: 'forced' })).user.id;
      const db = userDbPath(dataDir, u);
      const before = sha(db);
      const lock = await lockUser(tm.master, dataDir, u, 1000);
      const connection = await holder(u);
      const seed = seedUserAsync({ dataDir, userId: u, pkg: pkg.pkg, lock, force: true, onStep: (s) => s === 'files_staged' && killNow(connection) });
      await expect(seed).rejects.toMatchObject({ code: 'lock_lost' });
      await lock.release();
      // Its map was persisted (the same ids again) and the user marked in_progress, as any
      // reseed does first; the rows and `ready` were not written.
      const Database = (await import('better-sqlite3')).default;
      const h = new Database(db, { readonly: true });
      const meta = h.prepare(`SELECT seed_status FROM user_meta WHERE user_id = ?`).get(u);
      const state = h.prepare(`SELECT status FROM acm2_seed_state`).all();
      h.close();
      expect(meta).toEqual({ seed_status: 'in_progress' });
      expect(state).toEqual([{ status: 'in_progress' }]);
      expect(sha(db)).not.toBe(before);
      const again = await run(process.execPath, [BIN, 'user', 'seed', String(u), '--data-dir', dataDir, '--master', tm.url, '--seeds', pkg.seedsDir, '--json']);
      expect(JSON.parse(again.stdout).seed.status).toBe('ready');
      expect(readyButIncomplete(dataDir, u, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
    });
  });
}
