// `user list --json` streams its one document; an error half way (here: the temp folder a
// read-only data dir's WAL DBs are read through fills up) ends that document, holding the error
// beside the users listed so far, instead of writing a second document after a torn first.
import Database from 'better-sqlite3';
import { copyFileSync, existsSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { CAN_MOUNT_TMPFS, frozenSource, readOnlyView, sqliteWorld, withTmpfs } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { userDbPath } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

/** Put the DB in WAL mode with a -wal and no -shm, as ACM2 leaves it when killed. */
function walWithoutShm(file: string): void {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('wal_autocheckpoint = 0');
  db.prepare(`UPDATE contents SET name = name`).run();
  copyFileSync(file, `${file}.keep`);
  copyFileSync(`${file}-wal`, `${file}-wal.keep`);
  db.close();
  copyFileSync(`${file}.keep`, file);
  copyFileSync(`${file}-wal.keep`, `${file}-wal`);
  rmSync(`${file}.keep`);
  rmSync(`${file}-wal.keep`);
  rmSync(`${file}-shm`, { force: true });
}

describe.skipIf(!CAN_MOUNT_TMPFS)('user list --json stopped half way', () => {
  it('is still one JSON document: the users listed so far and the error (exit 3)', async () => {
    const pkg = frozenSource();
    const world = await sqliteWorld();
    try {
      const d = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      for (const n of ['ann', 'ben', 'cy']) await createUser(d, { email: `${n}@example.com`, username: n });
      await world.master.close();
      walWithoutShm(userDbPath(world.dataDir, 2));
      const master = path.join(world.dataDir, 'master.db');
      expect(existsSync(`${master}-shm`)).toBe(false);
      const view = readOnlyView(world.dataDir)!;
      try {
        // Room for the master's private copy and its -shm, not for user 2's copy as well.
        await withTmpfs(`${Math.ceil((statSync(master).size + 80_000) / 4096) * 4}k`, async (tmp) => {
          const r = await execa('node', [BIN, 'user', 'list', '--json', '--data-dir', view.path, '--seeds', pkg.seedsDir], { reject: false, env: { TMPDIR: tmp } });
          expect(r.exitCode, r.stderr).toBe(3);
          const doc = JSON.parse(r.stdout) as { users: Array<{ id: number }>; error: { code: string; message: string } };
          expect(doc.users.map((u) => u.id)).toEqual([1]);
          expect(doc.error.code).toBe('disk_full');
          expect(doc.error.message).toMatch(/user_2\.db .*set TMPDIR to a folder with room/);
        });
      } finally {
        view.undo();
      }
    } finally {
      rmSync(world.dataDir, { recursive: true, force: true });
      pkg.cleanup();
    }
  });
});
