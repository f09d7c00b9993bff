// Seeding under contention, on both masters: many seeders of one user make one seed, and many
// worker processes draining the queue run each job exactly once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { frozenSource, sqliteWorld, tmpDir, type FrozenSource } from './helpers/env.js';
import { readyButIncomplete } from './helpers/complete.js';
import { DIALECTS, type TestMaster } from './helpers/mysql.js';
import { createUser, drainQueue } from '../src/core/users.js';
import { thisPidSpace } from '../src/core/worker-name.js';
import { toolDir, userDbPath } from '../src/userdb/paths.js';
import { lockUserFile, tryLockUser } from '../src/core/user-lock.js';
import { cpSync, readdirSync, rmSync } from 'node:fs';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;
beforeAll(() => {
  pkg = frozenSource();
});
afterAll(() => pkg.cleanup());

function cli(args: string[], dataDir: string, url: string) {
  return run(process.execPath, [BIN, ...args, '--data-dir', dataDir, '--master', url, '--seeds', pkg.seedsDir, '--json'], {
    env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4' },
    // A drain that never ends (a --watch that misses its --limit) must not outlive the test.
    timeout: 90_000,
  }).then(
    (r) => ({ code: 0, out: JSON.parse(r.stdout) as Record<string, any> }),
    (e: { code: number; stdout: string }) => ({ code: e.code, out: JSON.parse(e.stdout || '{}') as Record<string, any> }),
  );
}

for (const dialect of DIALECTS) {
  describe.skipIf(dialect.skip)(`seeding under contention (${dialect.name})`, () => {
    let tm: TestMaster;
    let dataDir: string;
    beforeAll(async () => {
      dialect.ready();
      tm = await dialect.open();
      dataDir = tmpDir('acm2-conc-');
    });
    afterAll(async () => {
      await tm?.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    });

    it('8 simultaneous `user seed` of one user produce exactly one seed', async () => {
      const u = await createUser({ master: tm.master, dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 30_000 }, { email: 'one@example.com', username: 'one', async: true });
      const results = await Promise.all(Array.from({ length: 8 }, () => cli(['user', 'seed', String(u.user.id)], dataDir, tm.url)));
      for (const r of results) expect(r.code).toBe(0);
      const outcomes = results.map((r) => r.out.seed.outcome).sort();
      expect(outcomes.filter((o) => o === 'seeded')).toHaveLength(1);
      expect(outcomes.filter((o) => o === 'already_ready')).toHaveLength(7);
      const db = new Database(userDbPath(dataDir, u.user.id), { readonly: true });
      const contents = (db.prepare(`SELECT COUNT(*) AS n FROM contents`).get() as { n: number }).n;
      const mapped = (db.prepare(`SELECT COUNT(*) AS n FROM acm2_id_map WHERE kind = 'contents'`).get() as { n: number }).n;
      db.close();
      expect(contents).toBe(pkg.source.contentIds.length);
      expect(mapped).toBe(pkg.source.contentIds.length);
      expect(readyButIncomplete(dataDir, u.user.id, pkg.pkg.manifest.files.length).problems).toEqual([]);
    });

    it('a job leased to a worker that died is taken over by the next drain at once; a live holder’s is not', async () => {
      const deps = { master: tm.master, dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 30_000 };
      const dead = await createUser(deps, { email: 'orphan@example.com', username: 'orphan', async: true });
      const live = await createUser(deps, { email: 'held@example.com', username: 'held', async: true });
      const justKilled = await createUser(deps, { email: 'killed@example.com', username: 'killed', async: true });
      // Two claimed a minute ago with a ten-minute lease: one worker (on another host) was killed,
      // its user lock gone with it; the other still holds its user's lock. The third was claimed
      // a moment ago by a process of this host that is gone (a drain right after a kill -9).
      const T = Date.now() - 60_000;
      const a = await tm.master.claimJobForUser(dead.user.id, 'elsewhere:999999:dead', 10 * 60_000, T);
      const b = await tm.master.claimJobForUser(live.user.id, 'host:1:alive', 10 * 60_000, T);
      const gone = spawn(process.execPath, ['-e', '0']);
      const gonePid = gone.pid!;
      await new Promise((r) => gone.once('exit', r));
      const c = await tm.master.claimJobForUser(justKilled.user.id, `${hostname()}:${gonePid}:x:${thisPidSpace()}`, 10 * 60_000);
      // The same host name and pid in another pid space (a container with host networking): its
      // pid says nothing here, so a young claim of it is left alone.
      const container = await createUser(deps, { email: 'container@example.com', username: 'container', async: true });
      const e = await tm.master.claimJobForUser(container.user.id, `${hostname()}:${gonePid}:x:0badc0de.1`, 10 * 60_000);
      expect(a && b && c && e).toBeTruthy();
      const held = await tryLockUser(tm.master, dataDir, live.user.id);
      try {
        const r = await cli(['user', 'seed', '--pending'], dataDir, tm.url);
        expect(r.code, JSON.stringify(r.out)).toBe(0);
        expect(await tm.master.latestJob(dead.user.id)).toMatchObject({ id: a!.id, status: 'done' });
        expect(readyButIncomplete(dataDir, dead.user.id, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
        expect(await tm.master.latestJob(justKilled.user.id)).toMatchObject({ id: c!.id, status: 'done' });
        expect(await tm.master.latestJob(container.user.id)).toMatchObject({ id: e!.id, status: 'running' });
        expect(await tm.master.latestJob(live.user.id)).toMatchObject({ id: b!.id, status: 'running', lockedBy: 'host:1:alive' });
      } finally {
        await held?.release();
      }
      expect(await tm.master.finishJob(b!.id, 'host:1:alive', { status: 'done' })).toBe(true);
      expect(await tm.master.finishJob(e!.id, `${hostname()}:${gonePid}:x:0badc0de.1`, { status: 'done' })).toBe(true);
    });

    it('4 worker processes draining 200 jobs run each exactly once', async () => {
      const deps = { master: tm.master, dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 30_000 };
      const ids: number[] = [];
      for (let i = 0; i < 200; i++) ids.push((await createUser(deps, { email: `q${i}@example.com`, username: `q${i}`, async: true })).user.id);
      const workers = await Promise.all(Array.from({ length: 4 }, () => cli(['user', 'seed', '--pending', '--concurrency', '1'], dataDir, tm.url)));
      for (const w of workers) expect(w.code).toBe(0);
      const done = workers.reduce((a, w) => a + w.out.done, 0);
      const claimed = workers.reduce((a, w) => a + w.out.claimed, 0);
      expect(done).toBe(200);
      expect(claimed).toBe(200);
      // every worker took a share: the queue really was shared
      expect(workers.filter((w) => w.out.done > 0).length).toBeGreaterThan(1);
      const jobs = await tm.query(`SELECT user_id, status, attempts FROM acm2_seed_jobs WHERE user_id >= ?`, [ids[0]]);
      expect(jobs).toHaveLength(200);
      for (const j of jobs) expect([j.status, Number(j.attempts)]).toEqual(['done', 1]);
      for (const id of ids) expect(readyButIncomplete(dataDir, id, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
    });

    it('--limit holds across drainer threads and across --watch rounds', async () => {
      const deps = { master: tm.master, dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 30_000 };
      const queue = async (prefix: string, n: number) => {
        const ids: number[] = [];
        for (let i = 0; i < n; i++) ids.push((await createUser(deps, { email: `${prefix}${i}@example.com`, username: `${prefix}${i}`, async: true })).user.id);
        return ids;
      };
      const pendingAmong = async (ids: number[]) =>
        (await tm.query(`SELECT user_id FROM acm2_seed_jobs WHERE status = 'pending' AND user_id >= ? AND user_id <= ?`, [ids[0], ids.at(-1)])).length;

      const first = await queue('l', 12);
      const once = await cli(['user', 'seed', '--pending', '--limit', '5', '--concurrency', '3'], dataDir, tm.url);
      expect(once.code).toBe(0);
      expect(once.out).toMatchObject({ claimed: 5, done: 5 });
      expect(await pendingAmong(first)).toBe(7);
      expect((await cli(['user', 'seed', '--pending'], dataDir, tm.url)).out).toMatchObject({ done: 7 });

      // --watch: 2 jobs now, 4 more once its first round has found the queue empty (rounds are
      // a second apart); it takes exactly 5 in all, then stops.
      const before = await queue('w', 2);
      const watcher = cli(['user', 'seed', '--pending', '--watch', '--limit', '5', '--concurrency', '2'], dataDir, tm.url);
      const doneAmong = async (ids: number[]) => (await tm.query(`SELECT user_id FROM acm2_seed_jobs WHERE status = 'done' AND user_id IN (?, ?)`, ids)).length;
      for (let i = 0; i < 2000 && (await doneAmong(before)) < 2; i++) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 300));
      const later = await queue('x', 4);
      const watched = await watcher;
      expect(watched.code).toBe(0);
      expect(watched.out).toMatchObject({ claimed: 5, done: 5, interrupted: false });
      expect(await pendingAmong([...before, ...later])).toBe(1);
      expect((await cli(['user', 'seed', '--pending'], dataDir, tm.url)).out).toMatchObject({ done: 1 });
    }, 120_000);

    it('SIGTERM stops a drain: jobs in flight finish, none is left running, the rest stay queued; a second run drains them', async () => {
      const deps = { master: tm.master, dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 30_000 };
      const ids: number[] = [];
      for (let i = 0; i < 150; i++) ids.push((await createUser(deps, { email: `t${i}@example.com`, username: `t${i}`, async: true })).user.id);
      const child = spawn(process.execPath, [BIN, 'user', 'seed', '--pending', '--concurrency', '1', '--data-dir', dataDir, '--master', tm.url, '--seeds', pkg.seedsDir, '--json'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
      const doneJobs = async () => Number((await tm.query(`SELECT COUNT(*) AS n FROM acm2_seed_jobs WHERE user_id >= ? AND status = 'done'`, [ids[0]]))[0]!.n);
      for (let i = 0; i < 4000 && (await doneJobs()) < 3; i++) await new Promise((r) => setTimeout(r, 5));
      child.kill('SIGTERM');
      const { code, signal } = await exited;
      expect(signal).toBeNull();
      expect(code).toBe(1);
      const out = JSON.parse(stdout) as { done: number; claimed: number; interrupted: boolean };
      expect(out.interrupted).toBe(true);
      const jobs = await tm.query(`SELECT user_id, status FROM acm2_seed_jobs WHERE user_id >= ?`, [ids[0]]);
      const byStatus = (st: string) => jobs.filter((j) => j.status === st).map((j) => Number(j.user_id));
      expect(byStatus('running')).toEqual([]);
      expect(byStatus('done')).toHaveLength(out.done);
      expect(byStatus('pending').length, 'the drain stopped before the queue was empty').toBeGreaterThan(0);
      expect(byStatus('done').length + byStatus('pending').length).toBe(150);
      for (const id of byStatus('done')) expect(readyButIncomplete(dataDir, id, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });

      const again = await cli(['user', 'seed', '--pending', '--concurrency', '2'], dataDir, tm.url);
      expect(again.code).toBe(0);
      expect(again.out).toMatchObject({ done: byStatus('pending').length, interrupted: false });
      for (const id of ids) expect(readyButIncomplete(dataDir, id, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
    }, 120_000);
  });
}

describe('the embedded master\'s per-user lock file', () => {
  it('excludes a second holder until released, and taking it writes no -journal file', async () => {
    const dir = tmpDir('acm2-lockfile-');
    try {
      const held = lockUserFile(dir, 7, 0);
      expect(held).toBeDefined();
      expect(lockUserFile(dir, 7, 0)).toBeUndefined();
      const other = lockUserFile(dir, 8, 0); // another user's lock is independent
      expect(other).toBeDefined();
      await other!.release();
      // A journal file created and deleted on every lock would churn one inode per seeded user.
      expect(readdirSync(toolDir(dir, 'locks')).filter((n) => n.endsWith('-journal'))).toEqual([]);
      await held!.release();
      const again = lockUserFile(dir, 7, 0);
      expect(again).toBeDefined();
      await again!.release();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Whether another process can take user `id`'s lock file in `dataDir` right now. */
function otherProcessTakes(dataDir: string, id: number): boolean {
  const mod = new URL('../dist/core/user-lock.js', import.meta.url).href;
  const script = `import { lockUserFile } from ${JSON.stringify(mod)}; process.stdout.write(lockUserFile(process.argv[1], ${id}, 0) ? 'taken' : 'busy');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, dataDir], { encoding: 'utf8' });
  if (r.stdout !== 'taken' && r.stdout !== 'busy') throw new Error(`lock probe failed: ${r.stderr}`);
  return r.stdout === 'taken';
}

describe('the per-user lock file, tried again by the process holding it', () => {
  it('a second try in the same process is refused and leaves the lock held against other processes', async () => {
    const dir = tmpDir('acm2-lockself-');
    try {
      const held = lockUserFile(dir, 7, 0)!;
      expect(otherProcessTakes(dir, 7)).toBe(false);
      // Another lane or worker thread of this process (a second queued job of the same user).
      expect(lockUserFile(dir, 7, 0)).toBeUndefined();
      expect(otherProcessTakes(dir, 7), 'the holder lost its lock to its own second try').toBe(false);
      await held.release();
      expect(otherProcessTakes(dir, 7)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a drain whose second lane claims another job of the user being seeded keeps that user locked', async () => {
    const world = await sqliteWorld();
    const v2 = frozenSource({}, 'v2');
    try {
      cpSync(path.join(v2.seedsDir, 'v2'), path.join(pkg.seedsDir, 'v2'), { recursive: true });
      const probes: boolean[] = [];
      const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      // Two jobs of one user due at once: its v1 job queued by create, and a v2 one.
      const { user } = await createUser(deps, { email: 'two@example.com', username: 'two', async: true });
      await world.master.enqueueSeedJob(user.id, 'v2');
      const r = await drainQueue(
        {
          ...deps,
          // While the first lane seeds (it holds the user's lock), after the second lane tried the lock.
          onStep: (step) => {
            if (step === 'linked' || step === 'committed') probes.push(otherProcessTakes(world.dataDir, user.id));
          },
        },
        { lanes: 2 },
      );
      expect(r.skipped, 'the second lane met the user locked').toBeGreaterThanOrEqual(1);
      expect(probes.length).toBeGreaterThan(0);
      expect(probes, 'another process could take the user while it was being seeded').not.toContain(true);
    } finally {
      rmSync(path.join(pkg.seedsDir, 'v2'), { recursive: true, force: true });
      v2.cleanup();
      await world.cleanup();
    }
  });
});
