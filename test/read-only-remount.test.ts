// A data dir that turns read-only while a process runs (remounted after disk errors): this process
// asked once whether the folder may be written, and was told yes. Every reader of user DBs (the
// backfill planner, diff, user show; verify has its own test in read-only-read) must ask again and
// read the sound WAL DB from a copy, never report it unreadable until the next process.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { mkdirSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { CAN_MOUNT_TMPFS, frozenSource, sqliteWorld, withTmpfs, type FrozenSource, type World } from './helpers/env.js';
import { createUser, userStatus, type UserDeps } from '../src/core/users.js';
import { planUser } from '../src/core/backfill.js';
import { diffUserWithPackage } from '../src/core/diff.js';
import { forgetWritable, userMigrations } from '../src/userdb/user-db.js';
import { userDbPath } from '../src/userdb/paths.js';
import { isAcm2Error } from '../src/errors.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
const worlds: World[] = [];
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 2 });
});
afterAll(async () => {
  for (const w of worlds) await w.cleanup();
  pkg.cleanup();
});

/** A ready user seeded into <mnt>/data whose DB ACM2 has since put in WAL mode (closed cleanly). */
async function walUserOn(mnt: string): Promise<{ w: World; deps: UserDeps; user: { id: number } }> {
  const w = await sqliteWorld();
  worlds.push(w);
  const deps: UserDeps = { master: w.master, dataDir: path.join(mnt, 'data'), seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
  const { user } = await createUser(deps, { email: 'eve@example.com', username: 'eve' });
  const wal = new Database(userDbPath(deps.dataDir, user.id));
  wal.pragma('journal_mode = WAL');
  wal.close();
  return { w, deps, user };
}

/**
 * The user's DB as ACM2 leaves it (WAL, closed cleanly: no -wal, no -shm), after `read` ran in a
 * process that was told the data dir is writable; then the file system goes read-only.
 */
async function remountedAfter(mnt: string, deps: UserDeps, id: number, read: () => unknown, check: () => Promise<void> | void): Promise<void> {
  const file = userDbPath(deps.dataDir, id);
  // This process asks again (the folder is writable now) and remembers the answer.
  forgetWritable(deps.dataDir);
  await read();
  for (const f of ['-wal', '-shm']) rmSync(`${file}${f}`, { force: true });
  expect(spawnSync('mount', ['-o', 'remount,ro', mnt]).status).toBe(0);
  try {
    await check();
  } finally {
    expect(spawnSync('mount', ['-o', 'remount,rw', mnt]).status).toBe(0);
  }
}

describe('a data dir remounted read-only mid-process', () => {
  it.skipIf(!CAN_MOUNT_TMPFS && process.env.CI !== 'true')('backfill planning, diff and user show ask again and read a copy, not an unreadable DB', () =>
    withTmpfs('16m', async (mnt) => {
      const { w, deps, user } = await walUserOn(mnt);
      const ctx = { dataDir: deps.dataDir, busyTimeoutMs: 250, migrations: userMigrations() };
      const plan = () => planUser(ctx, user.id);
      const diff = () => diffUserWithPackage(deps, user.id);
      const show = async () => userStatus(deps, (await w.master.getUser(user.id))!);

      // Each reader, on the writable dir first: what it says there is what it must say after.
      const planned = plan();
      expect(planned).toMatchObject({ action: 'ok' });
      expect(diff().equal).toBe(true);
      expect(await show()).toMatchObject({ status: 'ready', db: { seedStatus: 'ready' } });

      await remountedAfter(mnt, deps, user.id, plan, () => {
        expect(plan()).toEqual(planned);
      });
      await remountedAfter(mnt, deps, user.id, diff, () => {
        expect(diff().equal).toBe(true);
      });
      await remountedAfter(mnt, deps, user.id, show, async () => {
        const s = await show();
        expect(s.db.error).toBeUndefined();
        expect(s).toMatchObject({ status: 'ready', db: { seedStatus: 'ready' } });
      });
    }),
  );
});

describe('a data dir remounted read-only mid-process, the temp folder on the same file system', () => {
  it.skipIf(!CAN_MOUNT_TMPFS && process.env.CI !== 'true')('user show says the temp folder cannot hold the copy (exit 3 naming it), never that the sound user DB failed', () =>
    withTmpfs('16m', async (mnt) => {
      const { w, deps, user } = await walUserOn(mnt);
      const tmp = path.join(mnt, 'tmp');
      mkdirSync(tmp);
      const saved = process.env.TMPDIR;
      process.env.TMPDIR = tmp;
      try {
        const show = async () => userStatus(deps, (await w.master.getUser(user.id))!);
        expect(await show()).toMatchObject({ status: 'ready' });
        await remountedAfter(mnt, deps, user.id, show, async () => {
          const err = await show().catch((e: unknown) => e);
          expect(isAcm2Error(err) && [err.exitCode, err.code], JSON.stringify(err)).toEqual([3, 'read_only']);
          expect((err as Error).message).toContain(tmp);
          expect((err as Error).message).toContain('TMPDIR');
        });
      } finally {
        if (saved === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = saved;
      }
    }),
  );
});
