// `user seed <id> --force` restores the seeded rows and files to the package state (SPEC): what it
// overwrites (a preset the user tuned, a doc they changed) is kept first, in a backup under
// .acm2/backups/, named in the output, so a --force on the wrong user can be undone.
import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import { CAN_MOUNT_TMPFS, fileWorld, runCli, snapshotTree, withTmpfs } from './helpers/env.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { seedUser, seedUserAsync } from '../src/core/seed-user.js';
import { toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

const env = fileWorld({ sourceDocs: 2 });

const deps = () => ({ master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 });

const acm2 = (args: string[]) => runCli(env.world.dataDir, env.pkg.seedsDir, args);

/** The user renames the seeded preset and rewrites one seeded generated doc; returns what the package had. */
function editUser(dataDir: string, id: number): { presetName: string; doc: string; docBytes: Buffer } {
  const db = new Database(userDbPath(dataDir, id));
  try {
    const presetName = db.prepare(`SELECT name FROM presets WHERE user_id = ?`).pluck().get(id) as string;
    expect(db.prepare(`UPDATE presets SET name = 'my tuned preset' WHERE user_id = ?`).run(id).changes).toBe(1);
    const doc = db.prepare(`SELECT path FROM acm2_seed_files WHERE path LIKE '%/generated/%' ORDER BY path LIMIT 1`).pluck().get() as string;
    expect(doc).toBeTruthy();
    const abs = path.join(userRoot(dataDir, id), doc);
    const docBytes = readFileSync(abs);
    writeFileSync(abs, 'my own rewrite of this doc\n');
    return { presetName, doc, docBytes };
  } finally {
    db.close();
  }
}

function backupsOf(dataDir: string, id: number): string[] {
  const dir = toolDir(dataDir, 'backups', `user_${id}`);
  return existsSync(dir) ? readdirSync(dir).filter((n) => n.startsWith(`user_${id}-force-`)) : [];
}

function presetName(dbFile: string, id: number): string {
  const db = new Database(dbFile, { readonly: true });
  try {
    return db.prepare(`SELECT name FROM presets WHERE user_id = ?`).pluck().get(id) as string;
  } finally {
    db.close();
  }
}

describe('user seed --force over a user who edited seeded rows and files', () => {
  it('keeps the edited row and the edited file in a backup, then puts the live data back at the package state', async () => {
    const u = await createUser(deps(), { email: 'tuned@example.com', username: 'tuned' });
    const id = u.user.id;
    const before = editUser(env.world.dataDir, id);
    // Not a seeded file: --force leaves it alone, and the backup has no need of it.
    const own = path.join(userRoot(env.world.dataDir, id), 'notes.md');
    writeFileSync(own, 'mine');

    const r = await seedOneUser(deps(), String(id), { force: true });
    expect(r.seed).toMatchObject({ status: 'ready', outcome: 'restored' });
    const backup = r.seed.backup!;
    expect(backup).toMatch(new RegExp(`/\\.acm2/backups/user_${id}/user_${id}-force-\\d{8}T\\d{6}Z-[0-9a-f]{6}$`));
    expect(backupsOf(env.world.dataDir, id)).toEqual([path.basename(backup)]);

    // The backup: the whole DB as it was (the tuned preset), and the edited doc as it was, only it.
    expect(presetName(path.join(backup, `user_${id}.db`), id)).toBe('my tuned preset');
    expect(readFileSync(path.join(backup, `user_${id}`, before.doc), 'utf8')).toBe('my own rewrite of this doc\n');
    expect(readdirSync(backup).sort()).toEqual(['manifest.json', `user_${id}`, `user_${id}.db`]);
    const manifest = JSON.parse(readFileSync(path.join(backup, 'manifest.json'), 'utf8'));
    expect(manifest).toMatchObject({ userId: id, seedVersion: 'v1', files: [before.doc], rows: [{ table: 'presets' }] });
    expect(statSync(path.join(backup, `user_${id}.db`)).mode & 0o777).toBe(0o600);
    expect(statSync(backup).mode & 0o777).toBe(0o700);

    // The live data: at the package state again; the user's own file untouched.
    expect(presetName(userDbPath(env.world.dataDir, id), id)).toBe(before.presetName);
    expect(readFileSync(path.join(userRoot(env.world.dataDir, id), before.doc))).toEqual(before.docBytes);
    expect(readFileSync(own, 'utf8')).toBe('mine');
  });

  it('keeps no backup when the seeded rows and files are already at the package state', async () => {
    const u = await createUser(deps(), { email: 'untouched@example.com', username: 'untouched' });
    const r = await seedOneUser(deps(), String(u.user.id), { force: true });
    expect(r.seed).toMatchObject({ status: 'ready', outcome: 'restored' });
    expect(r.seed.backup).toBeUndefined();
    expect(backupsOf(env.world.dataDir, u.user.id)).toEqual([]);
  });

  it('rewrites no seeded file already at the package state: a second --force leaves each as it was (SPEC 6.5)', async () => {
    const u = await createUser(deps(), { email: 'twice@example.com', username: 'twice' });
    const id = u.user.id;
    const before = editUser(env.world.dataDir, id);
    await seedOneUser(deps(), String(id), { force: true });
    const root = userRoot(env.world.dataDir, id);
    const db = new Database(userDbPath(env.world.dataDir, id), { readonly: true });
    const seeded = db.prepare(`SELECT path FROM acm2_seed_files`).pluck().all() as string[];
    db.close();
    expect(seeded.length).toBeGreaterThan(1);
    const look = () => Object.fromEntries(seeded.map((p) => {
      const st = statSync(path.join(root, p), { bigint: true });
      return [p, { ino: st.ino, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, sha256: createHash('sha256').update(readFileSync(path.join(root, p))).digest('hex') }];
    }));
    const first = look();
    // The edited doc was restored by the first --force (the package's bytes again).
    expect(readFileSync(path.join(root, before.doc))).toEqual(before.docBytes);
    // A rewrite of the same bytes would still change each file's mtime (and, for a moment,
    // truncate a file ACM2 may be serving).
    await new Promise((r) => setTimeout(r, 20));
    const again = await seedOneUser(deps(), String(id), { force: true });
    expect(again.seed).toMatchObject({ status: 'ready', outcome: 'restored' });
    expect(again.seed.backup).toBeUndefined();
    expect(look()).toEqual(first);
  });

  it('a deleted seeded row or file is only added back: nothing of the user is lost, so no backup', async () => {
    const u = await createUser(deps(), { email: 'deleted@example.com', username: 'deleted' });
    const id = u.user.id;
    const db = new Database(userDbPath(env.world.dataDir, id));
    const doc = db.prepare(`SELECT path FROM acm2_seed_files WHERE path LIKE '%/generated/%' ORDER BY path LIMIT 1`).pluck().get() as string;
    // A content row nothing references (ACM2 enforces its foreign keys).
    const deletable = (db.prepare(`SELECT id FROM contents WHERE user_id = ? ORDER BY id DESC`).pluck().all(id) as string[]).find((c) => {
      try {
        return db.prepare(`DELETE FROM contents WHERE id = ?`).run(c).changes === 1;
      } catch {
        return false;
      }
    });
    expect(deletable).toBeTruthy();
    db.close();
    rmSync(path.join(userRoot(env.world.dataDir, id), doc));
    const r = await seedOneUser(deps(), String(id), { force: true });
    expect(r.seed.status).toBe('ready');
    expect(r.seed.backup).toBeUndefined();
    expect(existsSync(path.join(userRoot(env.world.dataDir, id), doc))).toBe(true);
  });

  it('removes a half-written backup a crash left, never a whole one', async () => {
    const u = await createUser(deps(), { email: 'leftover@example.com', username: 'leftover' });
    const id = u.user.id;
    const dir = toolDir(env.world.dataDir, 'backups', `user_${id}`);
    const torn = path.join(dir, `user_${id}-force-20200101T000000Z-abcdef.partial`);
    mkdirSync(path.join(torn, `user_${id}`), { recursive: true });
    writeFileSync(path.join(torn, `user_${id}.db`), 'half');
    editUser(env.world.dataDir, id);
    const r = await seedOneUser(deps(), String(id), { force: true });
    expect(existsSync(torn)).toBe(false);
    expect(backupsOf(env.world.dataDir, id)).toEqual([path.basename(r.seed.backup!)]);
    editUser(env.world.dataDir, id);
    const again = await seedOneUser(deps(), String(id), { force: true });
    expect(backupsOf(env.world.dataDir, id).sort()).toEqual([path.basename(r.seed.backup!), path.basename(again.seed.backup!)].sort());
  });

  it('says where the backup is, in the text output and in --json (seed.backup)', async () => {
    const u = await createUser(deps(), { email: 'cli-force@example.com', username: 'cli-force' });
    const id = u.user.id;
    editUser(env.world.dataDir, id);
    const text = await acm2(['user', 'seed', String(id), '--force']);
    expect(text.code).toBe(0);
    const [dir] = backupsOf(env.world.dataDir, id);
    expect(text.stdout).toContain(`What --force overwrote (the DB, and the seeded files that differed) is kept in ${path.join(toolDir(env.world.dataDir, 'backups', `user_${id}`), dir!)}`);
    editUser(env.world.dataDir, id);
    const json = await acm2(['user', 'seed', String(id), '--force', '--json']);
    expect(json.code).toBe(0);
    const doc = JSON.parse(json.stdout);
    expect(doc.seed).toMatchObject({ status: 'ready', outcome: 'restored', backup: expect.stringContaining(`/.acm2/backups/user_${id}/user_${id}-force-`) });
    expect(existsSync(path.join(doc.seed.backup, `user_${id}.db`))).toBe(true);
    // Nothing to restore: no backup, and no field.
    const same = JSON.parse((await acm2(['user', 'seed', String(id), '--force', '--json'])).stdout);
    expect(same.seed.backup).toBeUndefined();
  });
});

describe('a full disk while --force keeps its backup (a real 4 MiB tmpfs)', () => {
  it.skipIf(!CAN_MOUNT_TMPFS && process.env.CI !== 'true')('is disk_full (exit 3), the user stays ready with its edits, no half backup is left', () =>
    withTmpfs('4m', async (mnt) => {
      const dir = path.join(mnt, 'data');
      mkdirSync(dir);
      seedUser({ dataDir: dir, userId: 1, pkg: env.pkg.pkg });
      const edited = editUser(dir, 1);
      const before = snapshotTree(dir);
      const filler = path.join(mnt, 'filler');
      try {
        writeFileSync(filler, Buffer.alloc(8 << 20));
      } catch (e) {
        expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      await expect(seedUserAsync({ dataDir: dir, userId: 1, pkg: env.pkg.pkg, force: true })).rejects.toMatchObject({
        exitCode: 3,
        code: 'disk_full',
        message: expect.stringMatching(/^disk full while keeping a backup of user 1's .* before --force: nothing was changed/),
      });
      rmSync(filler);
      // Nothing changed: every file byte for byte (the DB too: still ready, still tuned), no backup.
      expect(snapshotTree(dir)).toEqual(before);
      expect(backupsOf(dir, 1)).toEqual([]);
      const db = new Database(userDbPath(dir, 1), { readonly: true });
      expect(db.prepare(`SELECT seed_status FROM user_meta`).pluck().get()).toBe('ready');
      db.close();
      // With room again, --force goes through, backup first.
      const r = await seedUserAsync({ dataDir: dir, userId: 1, pkg: env.pkg.pkg, force: true });
      expect(r.backup).toMatchObject({ rows: 1, files: 1 });
      expect(readFileSync(path.join(r.backup!.path, 'user_1', edited.doc), 'utf8')).toBe('my own rewrite of this doc\n');
      expect(readFileSync(path.join(userRoot(dir, 1), edited.doc))).toEqual(edited.docBytes);
    }));
});
