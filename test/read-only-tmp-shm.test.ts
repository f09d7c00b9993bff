// A temp folder with room for a private read copy but not for the -shm SQLite makes beside it at
// the first read: the temp folder is named (exit 3, disk_full), not the read-only DB.
import { describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { copyFileSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { openForReading, userMigrations } from '../src/userdb/user-db.js';
import { planUser } from '../src/core/backfill.js';
import { CAN_MOUNT_TMPFS, readOnlyView, tmpDir, withTmpfs } from './helpers/env.js';

/** A data dir holding user_1.db in WAL mode with its -wal but no -shm (as a killed writer leaves it). */
function walWithoutShm(dir: string): { file: string; copyBytes: number } {
  const file = path.join(dir, 'user_1.db');
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('wal_autocheckpoint = 0');
  db.exec('CREATE TABLE t (x)');
  db.exec('INSERT INTO t VALUES (1)');
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
  return { file, copyBytes: statSync(file).size + statSync(`${file}-wal`).size };
}

/**
 * A read-only view of a data dir holding that DB, and TMPDIR on a tmpfs with room for the DB's
 * private copy and a little more, not for its 32 KiB -shm: `fn` gets the view's path.
 */
async function withTmpTooSmallForShm(prefix: string, fn: (dataDir: string) => void): Promise<void> {
  const dir = tmpDir(prefix);
  try {
    const { copyBytes } = walWithoutShm(dir);
    const view = readOnlyView(dir)!;
    const saved = process.env.TMPDIR;
    try {
      await withTmpfs(`${Math.ceil((copyBytes + 20_000) / 4096) * 4}k`, (tmp) => {
        process.env.TMPDIR = tmp;
        fn(view.path);
      });
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
      view.undo();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(!CAN_MOUNT_TMPFS)('private read copy in a temp folder too small for its -shm', () => {
  it('is a temp-folder problem naming TMPDIR, thrown by openForReading', async () => {
    await withTmpTooSmallForShm('acm2-shm-src-', (dataDir) => {
      let err: unknown;
      try {
        openForReading(path.join(dataDir, 'user_1.db')).close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeDefined();
      expect((err as Error).message).toMatch(/into the temp folder .*set TMPDIR to a folder with room/);
      expect((err as { code?: string }).code).toBe('disk_full');
    });
  });

  it("stops backfill's planning as disk_full (exit 3), not as one failed user after another", async () => {
    await withTmpTooSmallForShm('acm2-shm-plan-', (dataDir) => {
      const plan = planUser({ dataDir, busyTimeoutMs: 250, migrations: userMigrations() }, 1);
      expect(plan.action).toBe('fail');
      expect(plan.failure?.code).toBe('disk_full');
      expect(plan.failure?.reason).toMatch(/set TMPDIR to a folder with room/);
    });
  });
});
