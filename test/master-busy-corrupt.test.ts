// The embedded master held locked past the wait by another process (SQLITE_BUSY), or corrupt
// (SQLITE_CORRUPT): each is exit 3 in one sentence naming the master file (SPEC §2), never an
// internal error; a backfill stopped by a busy master saves its progress once the master can be
// written, and one stopped by a corrupt master writes nothing more into it.

import { describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { snapshotTree } from './helpers/env.js';
import { buildLegacyFleet, fleetPackage, type Fleet } from './helpers/legacy-fleet.js';
import { runBackfill } from '../src/core/backfill.js';
import { createUser, drainQueue, userStatus } from '../src/core/users.js';
import { isAcm2Error } from '../src/errors.js';
import type { MasterDb } from '../src/master/types.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));

const env = fleetPackage();

/** Another process in a long write on the master: BEGIN IMMEDIATE held until killed. */
async function holdMaster(file: string): Promise<{ release(): void; child: ChildProcess }> {
  const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec('BEGIN IMMEDIATE'); process.stdout.write('held\\n'); setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['-e', script, file], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`master holder exited early (${code})`)));
  });
  return { child, release: () => void child.kill('SIGKILL') };
}

/**
 * The embedded master's wait on another process's lock (15 s), made short so the tests do not
 * sit through it; the SQLITE_BUSY at its end is SQLite's own, from a lock another process holds.
 */
function shortWait(master: MasterDb, ms = 300): void {
  (master as unknown as { db: Database.Database }).db.pragma(`busy_timeout = ${ms}`);
}

const masterFile = (f: Fleet) => path.join(f.dataDir, 'master.db');

function backfillRecord(f: Fleet): { status: string; cursor_id: number } | undefined {
  const db = new Database(masterFile(f), { readonly: true });
  try {
    return db.prepare(`SELECT status, cursor_id FROM acm2_backfill_runs WHERE name = 'default'`).get() as { status: string; cursor_id: number } | undefined;
  } finally {
    db.close();
  }
}

describe('embedded master locked past the wait', () => {
  it('backfill: another process takes the master mid-run: exit 3 master_busy naming it, progress saved, --resume finishes', async () => {
    const f = await buildLegacyFleet({ legacy: 8, missing: 4 }, env.pkg.pkg);
    let holder: Awaited<ReturnType<typeof holdMaster>> | undefined;
    try {
      shortWait(f.master);
      // The holder lets go as soon as the backfill has met its lock once: the final progress save
      // then finds the master writable again, as after a long ACM2 write.
      const watched = new Proxy(f.master, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            const r = (v as (...a: unknown[]) => unknown).apply(target, args);
            return r instanceof Promise
              ? r.catch((e: unknown) => {
                  holder?.release();
                  throw e;
                })
              : r;
          };
        },
      }) as MasterDb;
      let seen = 0;
      const err = await runBackfill(
        {
          master: watched,
          dataDir: f.dataDir,
          pkg: env.pkg.pkg,
          saveEveryMs: 0,
          onUser: async () => {
            if (++seen === 4) holder = await holdMaster(masterFile(f));
          },
        },
        {},
      ).catch((e: unknown) => e);
      expect(holder, 'the lock was never taken').toBeDefined();
      expect(isAcm2Error(err) && [err.exitCode, err.code]).toEqual([3, 'master_busy']);
      const message = (err as Error).message;
      expect(message).toContain(masterFile(f));
      expect(message).toMatch(/locked by another process past the wait \(SQLITE_BUSY\).*--resume/);
      // The run stopped early, and its progress record was saved once the lock was gone.
      const rec = backfillRecord(f);
      expect(rec?.status).toBe('interrupted');
      expect(rec!.cursor_id).toBeGreaterThanOrEqual(4);
      expect(rec!.cursor_id).toBeLessThan(12);
      expect(message).toContain(`progress is saved up to user ${rec!.cursor_id}`);

      const r = await runBackfill({ master: f.master, dataDir: f.dataDir, pkg: env.pkg.pkg }, { resume: true });
      expect(r.resumed).toBe(true);
      expect(r.failures).toEqual([]);
      expect(backfillRecord(f)).toMatchObject({ status: 'done', cursor_id: 12 });
    } finally {
      holder?.release();
      await f.cleanup();
    }
  }, 60_000);

  it('backfill started while another process holds the master: exit 3 master_busy, nothing changed', async () => {
    const f = await buildLegacyFleet({ legacy: 2, missing: 1 }, env.pkg.pkg);
    const holder = await holdMaster(masterFile(f));
    try {
      shortWait(f.master);
      const before = snapshotTree(f.dataDir);
      const err = await runBackfill({ master: f.master, dataDir: f.dataDir, pkg: env.pkg.pkg }, {}).catch((e: unknown) => e);
      expect(isAcm2Error(err) && [err.exitCode, err.code]).toEqual([3, 'master_busy']);
      expect((err as Error).message).toContain(masterFile(f));
      // The users' DBs and files are as they were (the lock file of the run aside).
      const after = snapshotTree(f.dataDir);
      const users = (t: Record<string, string>) => Object.fromEntries(Object.entries(t).filter(([k]) => /^user_/.test(k)));
      expect(users(after)).toEqual(users(before));
    } finally {
      holder.release();
      await f.cleanup();
    }
  }, 60_000);

  it('user seed --pending while another process holds the master: exit 3 master_busy naming it', async () => {
    const f = await buildLegacyFleet({}, env.pkg.pkg);
    try {
      await createUser({ master: f.master, dataDir: f.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'ann@example.com', username: 'ann', async: true });
      const holder = await holdMaster(masterFile(f));
      try {
        shortWait(f.master);
        const err = await drainQueue({ master: f.master, dataDir: f.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 1000 }, {}).catch((e: unknown) => e);
        expect(isAcm2Error(err) && [err.exitCode, err.code]).toEqual([3, 'master_busy']);
        expect((err as Error).message).toContain(masterFile(f));
      } finally {
        holder.release();
      }
    } finally {
      await f.cleanup();
    }
  }, 60_000);

  it('user seed --pending, the master held from its first claim: waits out the busy wait once, not once per lane', async () => {
    const f = await buildLegacyFleet({}, env.pkg.pkg);
    try {
      const deps = { master: f.master, dataDir: f.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      for (const u of ['ann', 'bob']) await createUser(deps, { email: `${u}@example.com`, username: u, async: true });
      const holder = await holdMaster(masterFile(f));
      try {
        shortWait(f.master);
        let claims = 0;
        const counted = new Proxy(f.master, {
          get(target, prop, receiver) {
            const v = Reflect.get(target, prop, receiver) as unknown;
            if (prop === 'claimJob') claims++;
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          },
        }) as MasterDb;
        const err = await drainQueue({ ...deps, master: counted }, { lanes: 4 }).catch((e: unknown) => e);
        expect(isAcm2Error(err) && [err.exitCode, err.code]).toEqual([3, 'master_busy']);
        // The embedded master blocks the thread for the whole wait: a lane per wait would make the
        // operator sit through four of them (a minute) under a message that says one.
        expect(claims).toBe(1);
      } finally {
        holder.release();
      }
    } finally {
      await f.cleanup();
    }
  }, 60_000);
});

describe('embedded master in rollback-journal mode (restored from a VACUUM INTO copy) while another process writes it', () => {
  /** Another process's write on the master, BEGIN IMMEDIATE held for `ms`. Resolves once held. */
  async function holdFor(file: string, ms: number): Promise<ChildProcess> {
    const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec('BEGIN IMMEDIATE'); process.stdout.write('held\\n'); setTimeout(() => { d.exec('ROLLBACK'); d.close(); }, ${ms});`;
    const child = spawn(process.execPath, ['-e', script, file], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`master holder exited early (${code})`)));
    });
    return child;
  }
  const userList = (f: Fleet) =>
    new Promise<{ code: number | null; stdout: string; ms: number }>((resolve) => {
      const t0 = Date.now();
      const c = spawn(process.execPath, [BIN, 'user', 'list', '--json', '--data-dir', f.dataDir, '--master', f.masterUrl, '--seeds', env.pkg.seedsDir], { stdio: ['ignore', 'pipe', 'inherit'] });
      let stdout = '';
      c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      c.once('close', (code) => resolve({ code, stdout, ms: Date.now() - t0 }));
    });
  const journalMode = (file: string) => {
    const db = new Database(file);
    try {
      return db.pragma('journal_mode', { simple: true });
    } finally {
      db.close();
    }
  };

  it('a write of a moment is waited for, then the master is switched to WAL; one past the wait is exit 3 master_busy', async () => {
    const f = await buildLegacyFleet({ legacy: 1 }, env.pkg.pkg);
    let holder: ChildProcess | undefined;
    try {
      await f.master.close();
      spawnSync('sqlite3', [masterFile(f), 'PRAGMA journal_mode = DELETE;']);
      expect(journalMode(masterFile(f))).toBe('delete');
      holder = await holdFor(masterFile(f), 1500);
      const r = await userList(f);
      expect(r.code, r.stdout).toBe(0);
      expect(r.ms).toBeGreaterThan(1000);
      expect(journalMode(masterFile(f))).toBe('wal');

      spawnSync('sqlite3', [masterFile(f), 'PRAGMA journal_mode = DELETE;']);
      holder = await holdFor(masterFile(f), 60_000);
      const busy = await userList(f);
      expect(busy.code, busy.stdout).toBe(3);
      const err = (JSON.parse(busy.stdout) as { error: { code: string; message: string } }).error;
      expect(err.code).toBe('master_busy');
      expect(err.message).toContain(masterFile(f));
      expect(busy.ms).toBeGreaterThan(14_000);
    } finally {
      holder?.kill('SIGKILL');
      await f.cleanup();
    }
  }, 60_000);
});

describe('embedded master corrupt', () => {
  /** Overwrite the users table's root page with junk: the header and the other tables stay sound. */
  function corruptUsers(file: string): void {
    spawnSync('sqlite3', [file, 'PRAGMA wal_checkpoint(TRUNCATE);']);
    const db = new Database(file, { readonly: true });
    const [root, size] = [db.prepare(`SELECT rootpage FROM sqlite_master WHERE name = 'users'`).pluck().get() as number, db.pragma('page_size', { simple: true }) as number];
    db.close();
    const fd = openSync(file, 'r+');
    try {
      writeSync(fd, Buffer.alloc(size, 0x5a), 0, size, (root - 1) * size);
    } finally {
      closeSync(fd);
    }
  }

  it('backfill: exit 3 master_corrupt naming the master, and nothing more is written into it', async () => {
    const f = await buildLegacyFleet({ legacy: 3 }, env.pkg.pkg);
    try {
      await f.master.close();
      corruptUsers(masterFile(f));
      const r = spawnSync(process.execPath, [BIN, 'backfill', '--json', '--data-dir', f.dataDir, '--master', f.masterUrl, '--seeds', env.pkg.seedsDir], { encoding: 'utf8' });
      expect(r.status).toBe(3);
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      expect(doc.error.code).toBe('master_corrupt');
      expect(doc.error.message).toContain(masterFile(f));
      expect(doc.error.message).toMatch(/corrupt \(SQLITE_CORRUPT\).*restore it from a backup/);
      // The record the run began with is all it wrote: no 'interrupted' save into a damaged file.
      expect(backfillRecord(f)).toMatchObject({ status: 'running', cursor_id: 0 });
    } finally {
      await f.cleanup();
    }
  }, 60_000);

  it('verify and user list: exit 3 master_corrupt naming the master, not an internal error', async () => {
    const f = await buildLegacyFleet({ legacy: 2 }, env.pkg.pkg);
    try {
      await f.master.close();
      corruptUsers(masterFile(f));
      for (const cmd of [['verify'], ['user', 'list']]) {
        const r = spawnSync(process.execPath, [BIN, ...cmd, '--json', '--data-dir', f.dataDir, '--master', f.masterUrl, '--seeds', env.pkg.seedsDir], { encoding: 'utf8' });
        expect(r.status, `${cmd.join(' ')}: ${r.stdout}${r.stderr}`).toBe(3);
        const last = r.stdout.trim().split('\n').pop()!;
        expect(last, cmd.join(' ')).toContain('master_corrupt');
        expect(last, cmd.join(' ')).toContain(masterFile(f));
      }
    } finally {
      await f.cleanup();
    }
  }, 60_000);
});

describe('user seed --pending: the master locked past the wait once the user is seeded', () => {
  function job(f: Fleet): { id: number; status: string; attempts: number; last_error: string | null; locked_by: string | null } {
    const db = new Database(masterFile(f), { readonly: true });
    try {
      return db.prepare(`SELECT id, status, attempts, last_error, locked_by FROM acm2_seed_jobs ORDER BY id DESC LIMIT 1`).get() as ReturnType<typeof job>;
    } finally {
      db.close();
    }
  }

  it('stops with exit 3 master_busy, never records the seeded user as a failed attempt, and the next run marks the job done', async () => {
    const f = await buildLegacyFleet({}, env.pkg.pkg);
    let holder: Awaited<ReturnType<typeof holdMaster>> | undefined;
    try {
      const deps = { master: f.master, dataDir: f.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
      const { user } = await createUser(deps, { email: 'ann@example.com', username: 'ann', async: true });
      shortWait(f.master);
      // Another process takes the master's write lock as the drain is about to mark the job done,
      // and lets go as soon as the drain has met it once (a long ACM2 write).
      const watched = new Proxy(f.master, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function') return v;
          return async (...args: unknown[]) => {
            if (prop === 'finishJob' && (args[2] as { status: string }).status === 'done' && !holder) holder = await holdMaster(masterFile(f));
            try {
              return await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
            } catch (e) {
              holder?.release();
              throw e;
            }
          };
        },
      }) as MasterDb;
      const err = await drainQueue({ ...deps, master: watched }, { lanes: 1 }).catch((e: unknown) => e);
      expect(holder, 'the lock was never taken').toBeDefined();
      expect(isAcm2Error(err) && [err.exitCode, err.code], JSON.stringify(err)).toEqual([3, 'master_busy']);
      expect((err as Error).message).toContain(masterFile(f));
      // The seed itself worked: the job is not failed, nor an attempt burned with the master's error.
      const held = job(f);
      expect(held).toMatchObject({ status: 'running', attempts: 1, last_error: null });
      expect((await userStatus(deps, (await f.master.getUser(user.id))!)).db.seedStatus).toBe('ready');

      // The next run (the worker gone: its lease expired) closes the job without a failure.
      await f.master.expireLease(held.id, held.locked_by!);
      const r = await drainQueue(deps, { lanes: 1 });
      expect(r).toMatchObject({ claimed: 1, done: 1, failed: 0, retrying: 0, failures: [] });
      expect(job(f)).toMatchObject({ status: 'done', last_error: null });
    } finally {
      holder?.release();
      await f.cleanup();
    }
  }, 60_000);
});
