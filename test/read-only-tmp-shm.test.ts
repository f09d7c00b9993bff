// A temp folder with room for a private read copy but not for the -shm SQLite makes beside it at
// the first read: the temp folder is named (exit 3, disk_full), not the read-only DB.
import { describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { copyFileSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { openForReading } from '../src/userdb/user-db.js';
import { CAN_MOUNT_TMPFS, readOnlyView, tmpDir, withTmpfs } from './helpers/env.js';

describe.skipIf(!CAN_MOUNT_TMPFS)('private read copy in a temp folder too small for its -shm', () => {
  it('is a temp-folder problem naming TMPDIR, thrown by openForReading', async () => {
    const dir = tmpDir('acm2-shm-src-');
    try {
      const file = path.join(dir, 'user_1.db');
      const db = new Database(file);
      db.pragma('journal_mode = WAL');
      db.pragma('wal_autocheckpoint = 0');
      db.exec('CREATE TABLE t (x)');
      db.exec('INSERT INTO t VALUES (1)');
      // Keep the -wal (as a killed writer leaves it) and lose the -shm: copy them aside.
      const keep = tmpDir('acm2-shm-keep-');
      copyFileSync(file, path.join(keep, 'user_1.db'));
      copyFileSync(`${file}-wal`, path.join(keep, 'user_1.db-wal'));
      db.close();
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir);
      copyFileSync(path.join(keep, 'user_1.db'), file);
      copyFileSync(path.join(keep, 'user_1.db-wal'), `${file}-wal`);
      rmSync(keep, { recursive: true, force: true });
      expect(existsSync(`${file}-shm`)).toBe(false);
      const copyBytes = statSync(file).size + statSync(`${file}-wal`).size;
      const view = readOnlyView(dir)!;
      const saved = process.env.TMPDIR;
      try {
        // Room for the copy and a little more, not for a 32 KiB -shm.
        await withTmpfs(`${Math.ceil((copyBytes + 20_000) / 4096) * 4}k`, (tmp) => {
          process.env.TMPDIR = tmp;
          let err: unknown;
          try {
            openForReading(path.join(view.path, 'user_1.db')).close();
          } catch (e) {
            err = e;
          }
          expect(err).toBeDefined();
          expect((err as Error).message).toMatch(/into the temp folder .*set TMPDIR to a folder with room/);
          expect((err as { code?: string }).code).toBe('disk_full');
        });
      } finally {
        if (saved === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = saved;
        view.undo();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
