// Read commands on a read-only place (a read-only mount or backup snapshot of the data dir, a CI
// user that may not write it): ACM2 keeps its DBs in WAL mode, and a WAL DB closed cleanly has no
// -shm file, which SQLite cannot create there. verify's verdicts must be those of the writable
// original, not db_corrupt; user show/list and diff must read the DB as well.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { openForReading } from '../src/userdb/user-db.js';
import { thisPidSpace } from '../src/core/worker-name.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { CAN_MOUNT_TMPFS, frozenSource, readOnlyView, snapshotTree, sqliteWorld, tmpDir, withTmpfs, type FrozenSource, type World } from './helpers/env.js';
import { createUser, userStatus } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

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

  it('the built CLI with the default master in that data dir: read commands work, write commands exit 3, nothing changes', async () => {
    const dataDir = tmpDir('acm2-ro-cli-');
    const cli = (dir: string, ...args: string[]) =>
      execa('node', [BIN, '--data-dir', dir, '--seeds', pkg.seedsDir, ...args], { reject: false, env: { ACM2_BCRYPT_ROUNDS: '4' } });
    try {
      for (const n of ['ann', 'ben']) expect((await cli(dataDir, 'user', 'create', '--email', `${n}@example.com`, '--username', n)).exitCode).toBe(0);
      for (const id of [1, 2]) {
        const db = new Database(userDbPath(dataDir, id));
        db.pragma('journal_mode = WAL');
        db.close();
      }
      // The master is WAL too, and no process has it open: no -shm beside it.
      expect(existsSync(path.join(dataDir, 'master.db-shm'))).toBe(false);
      const before = snapshotTree(dataDir);
      const view = readOnlyView(dataDir);
      if (!view) return expect(process.env.CI).not.toBe('true');
      try {
        const v = await cli(view.path, 'verify', '--json');
        expect(v.exitCode, v.stderr).toBe(0);
        expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, checked: 2 });
        for (const args of [['user', 'list', '--json'], ['user', 'show', '1'], ['diff', '--user', '2'], ['backfill', '--dry-run']]) {
          const r = await cli(view.path, ...args);
          expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        }
        // A temp folder that cannot hold the private copies is the environment (exit 3), not
        // every user's DB corrupt; with two threads as with one.
        for (const threads of ['1', '2']) {
          const noTmp = await execa('node', [BIN, '--data-dir', view.path, '--seeds', pkg.seedsDir, 'verify', '--concurrency', threads], { reject: false, env: { TMPDIR: view.path } });
          expect(noTmp.exitCode, noTmp.stderr).toBe(3);
          expect(noTmp.stderr).toMatch(/into the temp folder .* \(EROFS\); set TMPDIR to a folder with room/);
        }
        const create = await cli(view.path, 'user', 'create', '--email', 'cat@example.com', '--username', 'cat');
        expect(create.exitCode).toBe(3);
        expect(create.stderr).toMatch(/master\.db is read-only here/);
        expect((await cli(view.path, 'user', 'seed', '1', '--force')).exitCode).toBe(3);
      } finally {
        view.undo();
      }
      expect(snapshotTree(dataDir)).toEqual(before);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  // chmod 0400 on master.db (or another account's master in a shared data dir): SQLite opens it
  // read-only, but makes its -wal and -shm beside it, even for a read-only connection, and one that
  // cannot write the DB never removes them. As root (which ignores file modes) it runs as nobody.
  it('a master file that may not be written: read commands read it, write commands exit 3, nothing appears beside it', async () => {
    const parent = tmpDir('acm2-ro-file-');
    const dataDir = path.join(parent, 'data');
    const seeds = path.join(parent, 'seeds');
    const master = path.join(dataDir, 'master.db');
    const root = process.getuid?.() === 0;
    const NOBODY = 65534;
    const cli = (dir: string, ...args: string[]) =>
      execa(process.execPath, [BIN, '--data-dir', dir, '--seeds', seeds, ...args], {
        reject: false,
        cwd: parent,
        env: { ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '', ACM2_DATA_DIR: '', HOME: parent },
        ...(root ? { uid: NOBODY, gid: NOBODY } : {}),
      });
    try {
      cpSync(pkg.seedsDir, seeds, { recursive: true });
      spawnSync('chmod', ['-R', 'a+rX', parent]);
      mkdirSync(dataDir, { mode: 0o700 });
      if (root) spawnSync('chown', [`${NOBODY}:${NOBODY}`, dataDir]);
      for (const n of ['ann', 'ben']) expect((await cli(dataDir, 'user', 'create', '--email', `${n}@example.com`, '--username', n)).exitCode).toBe(0);
      chmodSync(master, 0o400);
      expect(existsSync(`${master}-wal`) || existsSync(`${master}-shm`)).toBe(false);
      // Lock files aside (backfill makes its own in .acm2/locks/ before it opens the master).
      const tree = (dir: string) => Object.fromEntries(Object.entries(snapshotTree(dir)).filter(([f]) => !f.startsWith('.acm2/locks/')));
      const before = tree(dataDir);
      const reads = async () => {
        const list = await cli(dataDir, 'user', 'list', '--json');
        expect(list.exitCode, list.stderr).toBe(0);
        const v = await cli(dataDir, 'verify', '--json');
        expect(v.exitCode, v.stderr).toBe(0);
        expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, checked: 2 });
        expect((await cli(dataDir, 'user', 'show', '1')).exitCode).toBe(0);
        return (JSON.parse(list.stdout) as { users: { username: string }[] }).users.map((u) => u.username);
      };
      expect(await reads()).toEqual(['ann', 'ben']);
      for (const args of [['user', 'create', '--email', 'cat@example.com', '--username', 'cat'], ['user', 'seed', '1', '--force'], ['backfill']]) {
        const r = await cli(dataDir, ...args);
        expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(3);
        expect(r.stderr).toMatch(/master\.db is read-only here/);
      }
      expect(readdirSync(dataDir).filter((f) => f.startsWith('master.db'))).toEqual(['master.db']);
      expect(tree(dataDir)).toEqual(before);

      // A -wal that is there holds committed data: it is read, and left as it was, with no -shm made.
      chmodSync(master, 0o600);
      const copy = path.join(parent, 'copy');
      const db = new Database(master);
      try {
        db.pragma('wal_autocheckpoint = 0');
        db.prepare(`UPDATE users SET username = 'bea' WHERE username = 'ben'`).run();
        // A crash's image: the DB and its -wal as they are while the writer has them open.
        cpSync(dataDir, copy, { recursive: true });
      } finally {
        db.close();
      }
      const copied = path.join(copy, 'master.db');
      rmSync(`${copied}-shm`);
      chmodSync(copied, 0o400);
      if (root) spawnSync('chown', ['-R', `${NOBODY}:${NOBODY}`, copy]);
      const wal = snapshotTree(copy)['master.db-wal'];
      expect(wal?.length).toBeGreaterThan(0);
      const list = await cli(copy, 'user', 'list', '--json');
      expect(list.exitCode, list.stderr).toBe(0);
      expect((JSON.parse(list.stdout) as { users: { username: string }[] }).users.map((u) => u.username)).toEqual(['ann', 'bea']);
      expect(snapshotTree(copy)['master.db-wal']).toBe(wal);
      expect(existsSync(`${copied}-shm`)).toBe(false);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  }, 60_000);

  it('private copies a killed process left are removed by the next one that makes a copy; others are left alone', async () => {
    const w = await sqliteWorld();
    worlds.push(w);
    const { user } = await createUser({ master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'dee@example.com', username: 'dee' });
    const wal = new Database(userDbPath(w.dataDir, user.id));
    wal.pragma('journal_mode = WAL');
    wal.close();
    const tmp = tmpDir('acm2-tmpdir-');
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = tmp;
    const gone = spawn(process.execPath, ['-e', '0']);
    await new Promise((r) => gone.once('exit', r));
    const space = thisPidSpace() || 'x';
    const dead = path.join(tmp, `acm2-read-${gone.pid}.${space}-aaaaaa`);
    const live = path.join(tmp, `acm2-read-${process.ppid}.${space}-bbbbbb`);
    const elsewhere = path.join(tmp, `acm2-read-${gone.pid}.0badc0de.1-cccccc`);
    for (const d of [dead, live, elsewhere]) mkdirSync(d);
    const view = readOnlyView(w.dataDir);
    try {
      if (!view) return expect(process.env.CI).not.toBe('true');
      try {
        openForReading(userDbPath(view.path, user.id)).close();
      } finally {
        view.undo();
      }
      expect(readdirSync(tmp).sort()).toEqual([path.basename(live), path.basename(elsewhere)].sort());
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it.skipIf(!CAN_MOUNT_TMPFS && process.env.CI !== 'true')('a data dir that turns read-only while a process runs: verify asks again and reads a copy, not db_corrupt', () =>
    withTmpfs('16m', async (mnt) => {
      const w = await sqliteWorld();
      worlds.push(w);
      const deps = { master: w.master, dataDir: path.join(mnt, 'data'), seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      const { user } = await createUser(deps, { email: 'eve@example.com', username: 'eve' });
      const wal = new Database(userDbPath(deps.dataDir, user.id));
      wal.pragma('journal_mode = WAL');
      wal.close();
      // This process learns the data dir is writable (it is asked once per folder per process).
      expect((await verifyUsers(deps, { users: [user.id], concurrency: 1 })).ok).toBe(true);
      for (const f of ['-wal', '-shm']) rmSync(`${userDbPath(deps.dataDir, user.id)}${f}`, { force: true });
      // Then the file system is remounted read-only (as after disk errors).
      expect(spawnSync('mount', ['-o', 'remount,ro', mnt]).status).toBe(0);
      try {
        const r = await verifyUsers(deps, { users: [user.id], concurrency: 1 });
        expect(r.users[0]!.problems).toEqual([]);
      } finally {
        spawnSync('mount', ['-o', 'remount,rw', mnt]);
      }
    }),
  );
});

