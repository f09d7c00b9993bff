// otherOwners, the check that a user DB holds no other user's rows, reads past one failure only:
// a table without user_id (an older ACM2's). A DB it cannot read (a corrupt page, a lock another
// process holds) makes it throw, so the check never passes for want of reading.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { copyFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { corruptIndex, frozenSource, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { otherOwners } from '../src/core/schema-work.js';
import { userDbPath } from '../src/userdb/paths.js';
import { listTables, openSqlite } from '../src/userdb/user-db.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
let world: World;
let userId: number;
let scratch: string;

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  userId = (await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'o@example.com', username: 'o' })).user.id;
  scratch = tmpDir('acm2-owners-');
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

/** A copy of the seeded user's DB, to damage. */
function copyOfUserDb(name: string): string {
  const file = path.join(scratch, name);
  copyFileSync(userDbPath(world.dataDir, userId), file);
  return file;
}

const owners = (file: string) => {
  const db = openSqlite(file, { busyTimeoutMs: 0 });
  try {
    return otherOwners(db, new Set(listTables(db)), userId);
  } finally {
    db.close();
  }
};

describe('otherOwners', () => {
  it('finds no other owner in a seeded user DB', () => {
    expect(owners(copyOfUserDb('clean.db'))).toEqual([]);
  });

  it('throws on a corrupt user_meta instead of passing the DB', () => {
    const file = copyOfUserDb('torn.db');
    // The owner is read through user_meta's user_id index (it covers the query): that page is torn.
    corruptIndex(file, 'ix_user_meta_user_id');
    expect(() => owners(file)).toThrow(expect.objectContaining({ code: expect.stringMatching(/^SQLITE_CORRUPT/) }));
  });

  it('throws on a DB another connection holds locked instead of passing it', () => {
    const file = copyOfUserDb('locked.db');
    const db = openSqlite(file, { busyTimeoutMs: 0 });
    // The tables are listed (and the schema read) before the lock is taken: the owners' reads meet it.
    const tables = new Set(listTables(db));
    const holder = new Database(file);
    holder.exec('BEGIN EXCLUSIVE');
    try {
      expect(() => otherOwners(db, tables, userId)).toThrow(expect.objectContaining({ code: expect.stringMatching(/^SQLITE_BUSY/) }));
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
      db.close();
    }
  });

  it('still reads past a table without user_id (an older ACM2 schema)', () => {
    const file = copyOfUserDb('legacy.db');
    const db = new Database(file);
    db.exec(`DROP TABLE user_meta; CREATE TABLE user_meta (id TEXT PRIMARY KEY); ALTER TABLE runs RENAME TO runs_old; CREATE TABLE runs (id TEXT PRIMARY KEY)`);
    db.close();
    expect(owners(file)).toEqual([]);
  });
});
