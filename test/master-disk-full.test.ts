// The embedded master on a full disk: SQLite's "database or disk is full" (SQLITE_FULL) from any
// master call is exit 3 naming the master file (SPEC §2), never an internal error (exit 70).
import { afterAll, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { tmpDir } from './helpers/env.js';
import { openMaster } from '../src/master/factory.js';
import { parseMasterUrl } from '../src/config.js';
import { isAcm2Error } from '../src/errors.js';

const dir = tmpDir('acm2-master-full-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('embedded master, disk full', () => {
  it('a write the disk cannot hold is exit 3 (disk_full) naming the master, and commits nothing', async () => {
    const file = path.join(dir, 'master.db');
    const master = await openMaster(parseMasterUrl(`sqlite:${file}`));
    try {
      // What a full file system does to SQLite, without one: the file may not grow any more.
      const db = (master as unknown as { db: Database.Database }).db;
      db.pragma(`max_page_count = ${Number(db.pragma('page_count', { simple: true }))}`);
      const before = await master.countUsers();
      let err: unknown;
      let made = 0;
      for (let i = 0; i < 500 && err === undefined; i++) {
        try {
          await master.createUser({ username: `u${i}`, email: `u${i}@example.com`, wordpressUserId: null, keyHash: 'x'.repeat(2000), keyPrefix: 'acm2_abc', keyName: 'default', seedVersion: 'v1' });
          made++;
        } catch (e) {
          err = e;
        }
      }
      expect(err).toBeDefined();
      expect(isAcm2Error(err)).toBe(true);
      expect(err).toMatchObject({ exitCode: 3, code: 'disk_full' });
      expect((err as Error).message).toContain(file);
      // The failed transaction left no user behind (a user without its key and job).
      expect(await master.countUsers()).toBe(before + made);
    } finally {
      await master.close();
    }
  });
});
