// Read commands on a read-only place (a read-only mount or backup snapshot of the data dir, a CI
// user that may not write it): ACM2 keeps its DBs in WAL mode, and a WAL DB closed cleanly has no
// -shm file, which SQLite cannot create there. verify's verdicts must be those of the writable
// original, not db_corrupt; user show/list and diff must read the DB as well.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import { frozenSource, readOnlyView, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser, userStatus } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath } from '../src/userdb/paths.js';

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

describe('read commands on a read-only data dir', () => {
  it('verify and user show read WAL user DBs without their -shm file: same verdicts as on the writable original', async () => {
    const w = await sqliteWorld();
    worlds.push(w);
    const deps = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const ids: number[] = [];
    for (const n of ['ann', 'ben']) ids.push((await createUser(deps, { email: `${n}@example.com`, username: n })).user.id);
    // (A read-only connection leaves -wal and -shm files behind: the read-write open below removes them.)
    const original = await verifyUsers(deps, { concurrency: 1 });
    expect(original.ok).toBe(true);
    // What ACM2 does to its DBs: WAL mode; closed cleanly, no -wal or -shm file is left.
    for (const id of ids) {
      const db = new Database(userDbPath(w.dataDir, id));
      expect(db.pragma('journal_mode = WAL', { simple: true })).toBe('wal');
      db.close();
      expect(existsSync(`${userDbPath(w.dataDir, id)}-shm`)).toBe(false);
    }

    const view = readOnlyView(w.dataDir);
    // No way to make a read-only place here (root without mount): CI, as root with mount, must run it.
    if (!view) return expect(process.env.CI).not.toBe('true');
    try {
      // The master stays where it is (the world holds it open); only the user DBs are read-only.
      const r = await verifyUsers({ ...deps, dataDir: view.path }, { concurrency: 1, users: ids });
      expect(r.users.flatMap((u) => u.problems)).toEqual([]);
      expect(r.ok).toBe(true);
      for (const id of ids) {
        const s = await userStatus({ master: w.master, dataDir: view.path }, (await w.master.getUser(id))!);
        expect(s.db.error).toBeUndefined();
        expect(s.status).toBe('ready');
      }
      for (const id of ids) expect(existsSync(`${userDbPath(view.path, id)}-shm`)).toBe(false);
    } finally {
      view.undo();
    }
  });
});
