// Write commands where nothing may be written (a read-only mount or snapshot of the data dir, a
// master file SQLite opened read-only): exit 3 naming the place (SPEC §2), never exit 70.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { frozenSource, readOnlyView, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { lockUserFile } from '../src/core/user-lock.js';
import { isAcm2Error } from '../src/errors.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

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

describe('write commands on read-only places', () => {
  it('a write to a master SQLite opened read-only is exit 3 (read_only) naming the master, not an internal error', async () => {
    const w = await sqliteWorld();
    worlds.push(w);
    // What SQLite does when it opened the file read-only (a read-only mount): every write is SQLITE_READONLY.
    (w.master as unknown as { db: Database.Database }).db.pragma('query_only = ON');
    const err = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 1000 }, { email: 'ro@example.com', username: 'ro' }).catch((e: unknown) => e);
    expect(isAcm2Error(err)).toBe(true);
    expect(err).toMatchObject({ exitCode: 3, code: 'read_only' });
    expect((err as Error).message).toContain('master.db');
  });

  it('the seeder lock in a read-only data dir is exit 3 naming the lock folder, not an internal error', () => {
    const dataDir = tmpDir('acm2-ro-lock-');
    mkdirSync(path.join(dataDir, '.acm2', 'locks'), { recursive: true });
    const view = readOnlyView(dataDir);
    // No way to make a read-only place here (root without mount): CI, as root with mount, must run it.
    if (!view) return expect(process.env.CI).not.toBe('true');
    try {
      let err: unknown;
      try {
        lockUserFile(view.path, 1, 0);
      } catch (e) {
        err = e;
      }
      expect(isAcm2Error(err)).toBe(true);
      expect(err).toMatchObject({ exitCode: 3 });
      expect((err as Error).message).toContain(path.join(view.path, '.acm2', 'locks'));
    } finally {
      view.undo();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('user seed of a user in a read-only data dir is exit 3 and writes nothing', async () => {
    const w = await sqliteWorld();
    worlds.push(w);
    const deps = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 1000 };
    const u = await createUser(deps, { email: 'p@example.com', username: 'p', async: true });
    const view = readOnlyView(w.dataDir);
    if (!view) return expect(process.env.CI).not.toBe('true');
    try {
      const err = await seedOneUser({ ...deps, dataDir: view.path }, String(u.user.id), {}).catch((e: unknown) => e);
      expect(isAcm2Error(err)).toBe(true);
      expect(err).toMatchObject({ exitCode: 3 });
      expect((err as Error).message).toContain(view.path);
    } finally {
      view.undo();
    }
    // Nothing was written: no user DB, no folder.
    expect(existsSync(userDbPath(w.dataDir, u.user.id))).toBe(false);
    expect(existsSync(userRoot(w.dataDir, u.user.id))).toBe(false);
  });
});
