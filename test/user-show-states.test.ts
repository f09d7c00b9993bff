// `acm2 user show` / `acm2 user list` of users in states an end-to-end run met: a user DB held
// locked by another process (ACM2 writing), a ready user whose latest job is a failed --force, and
// a user whose `user_{id}` is a plain file instead of its folder.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { frozenSource, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser, listUserStatuses, userStatus, type UserStatus } from '../src/core/users.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
let world: World;
let flags: string;
const holders: ChildProcess[] = [];

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  flags = tmpDir('acm2-held-');
});
afterAll(async () => {
  for (const h of holders) h.kill('SIGKILL');
  await world.cleanup();
  pkg.cleanup();
  rmSync(flags, { recursive: true, force: true });
});

const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 });
const cli = (args: string[], json = true) =>
  execa(process.execPath, [path.join(REPO, 'bin', 'acm2.js'), ...args, ...(json ? ['--json'] : []), '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], {
    reject: false,
    env: { NO_COLOR: '1' },
  });

async function readyUser(name: string): Promise<number> {
  const u = await createUser(deps(), { email: `${name}@example.com`, username: name });
  expect(u.seed.status).toBe('ready');
  return u.user.id;
}

/**
 * ACM2 in a long write on the user's (rollback-journal) DB in another process: BEGIN EXCLUSIVE
 * keeps readers out too, as a write that spilled its cache does. Held until the process is killed
 * (or releaseAfterMs after it took the lock); returns once the lock is held.
 */
async function holdLocked(file: string, releaseAfterMs?: number): Promise<ChildProcess> {
  const flag = path.join(flags, `${path.basename(file)}-held`);
  const until = releaseAfterMs === undefined ? `setInterval(() => {}, 1000)` : `setTimeout(() => process.exit(0), ${releaseAfterMs})`;
  const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec('BEGIN EXCLUSIVE'); require('fs').writeFileSync(process.argv[2], ''); ${until};`;
  const h = spawn(process.execPath, ['-e', script, file, flag], { cwd: REPO, stdio: 'ignore' });
  holders.push(h);
  for (let i = 0; !existsSync(flag); i++) {
    if (i > 2000) throw new Error('the holder never took the lock');
    await new Promise((r) => setTimeout(r, 10));
  }
  return h;
}

function release(h: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (h.exitCode !== null || h.signalCode !== null) return resolve();
    h.once('exit', () => resolve());
    h.kill('SIGKILL');
  });
}

describe('a user DB another process holds locked (BEGIN EXCLUSIVE)', () => {
  it('user show waits for it once, not once per read: the DB is given up on after one wait', async () => {
    const id = await readyUser('busy-once');
    const h = await holdLocked(userDbPath(world.dataDir, id));
    try {
      // Each busy wait lasts its whole timeout: two of them (the ledger read, then the next read)
      // take at least twice it, whatever the machine's speed. One is given a wide margin.
      const started = Date.now();
      const s = await userStatus({ master: world.master, dataDir: world.dataDir, busyTimeoutMs: 4000 }, (await world.master.getUser(id))!);
      const took = Date.now() - started;
      expect(took).toBeLessThan(8000);
      expect(s.db.error).toMatch(/locked/);
    } finally {
      await release(h);
    }
  }, 60_000);

  it('user show and user list say the DB is busy (not read just now) instead of an empty row', async () => {
    const id = await readyUser('busy-shown');
    const h = await holdLocked(userDbPath(world.dataDir, id));
    try {
      const shown = JSON.parse((await cli(['user', 'show', String(id)])).stdout) as { status: string; db: { busy?: boolean; error?: string } };
      // Its status is the master's word (the job is done): ready, not failed or missing.
      expect(shown).toMatchObject({ status: 'ready', db: { busy: true, error: expect.stringMatching(/locked by another process.*not read just now/) } });
      const human = await cli(['user', 'show', String(id)], false);
      expect(human.stdout).toMatch(/^db +\S+ \(locked by another process .*not read just now/m);
      expect(human.stdout).toMatch(/^files +\S+ \(the DB was busy, so its list of seeded files was not read just now\)/m);

      const listed = JSON.parse((await cli(['user', 'list'])).stdout) as { users: Array<{ id: number; db: { busy?: boolean } }> };
      expect(listed.users.find((u) => u.id === id)).toMatchObject({ db: { busy: true } });
      const table = (await cli(['user', 'list'], false)).stdout;
      const row = table.split('\n').find((l) => l.includes('busy-shown@example.com'));
      // Not "0 files": the count was not read.
      expect(row).toMatch(/ \? +│ DB busy \(locked by another process\): not read just now/);
    } finally {
      await release(h);
    }
    // Free again: read as usual, nothing left saying busy.
    const after = JSON.parse((await cli(['user', 'show', String(id)])).stdout) as { db: { busy?: boolean; error?: string }; seedVersion: string };
    expect(after.db.busy).toBeUndefined();
    expect(after.db.error).toBeUndefined();
    expect(after.seedVersion).toBe('v1');
  }, 90_000);
});

describe('user list over several user DBs held locked', () => {
  it('shares one wait among them: the listing ends well before one wait per locked DB, each locked row busy', async () => {
    const ids: number[] = [];
    for (let i = 1; i <= 5; i++) ids.push(await readyUser(`list-busy-${i}`));
    // The first, third and fifth locked: free users between them are read as usual.
    const locked = [ids[0]!, ids[2]!, ids[4]!];
    const held = await Promise.all(locked.map((id) => holdLocked(userDbPath(world.dataDir, id))));
    try {
      // Each CLI run with the default wait (5 s): one wait per locked DB would take 15 s or more.
      let started = Date.now();
      const json = await cli(['user', 'list']);
      expect(Date.now() - started).toBeLessThan(9000);
      expect(json.exitCode).toBe(0);
      const rows = (JSON.parse(json.stdout) as { users: UserStatus[] }).users.filter((u) => ids.includes(u.id));
      expect(rows.map((u) => u.id)).toEqual(ids);
      for (const u of rows) {
        if (!locked.includes(u.id)) {
          expect(u).toMatchObject({ status: 'ready', seedVersion: 'v1', db: { seedStatus: 'ready' } });
          expect(u.db.busy).toBeUndefined();
          expect(u.files.count).toBeGreaterThan(0);
          continue;
        }
        // Its status is the master's word; the DB was not read.
        expect(u).toMatchObject({ status: 'ready', seedVersion: null, db: { busy: true, error: expect.stringMatching(/^locked by another process .*not read just now/) } });
      }
      // The wait each row claims is the wait made: the first locked DB its 5 s, the others none.
      const errors = rows.filter((u) => u.db.busy).map((u) => u.db.error);
      expect(errors[0]).toMatch(/for more than 5 s, so it was not read just now: run this again shortly$/);
      for (const [i, e] of errors.slice(1).entries()) {
        expect(e).not.toMatch(/more than/);
        expect(e).toMatch(new RegExp(`not waited for .*acm2 user show ${locked[i + 1]} `));
      }

      started = Date.now();
      const text = await cli(['user', 'list'], false);
      expect(Date.now() - started).toBeLessThan(9000);
      for (const [i, id] of ids.entries()) {
        const row = text.stdout.split('\n').find((l) => l.includes(`list-busy-${i + 1}@example.com`));
        if (locked.includes(id)) expect(row).toMatch(/ \? +│ DB busy \(locked by another process\): not read just now/);
        else expect(row).toMatch(/│ ready +│ v1 +│ [^│]+│ [1-9]\d* +│ +│$/);
      }

      // user show (one user) still waits its whole wait for the DB.
      started = Date.now();
      const one = await userStatus({ master: world.master, dataDir: world.dataDir, busyTimeoutMs: 1000 }, (await world.master.getUser(locked[2]!))!);
      expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
      expect(one.db.error).toMatch(/for more than 1 s, so it was not read just now/);
    } finally {
      await Promise.all(held.map(release));
    }
  }, 120_000);

  it('takes the time waited for a DB that came free off the shared wait: a later locked DB gets only what is left', async () => {
    const ids: number[] = [];
    for (let i = 1; i <= 3; i++) ids.push(await readyUser(`list-wait-${i}`));
    // The first DB comes free after 2 s; the last stays locked. With a 3 s wait the listing has
    // about 1 s left for the last: it is waited for that long, not its own whole 3 s.
    const freed = await holdLocked(userDbPath(world.dataDir, ids[0]!), 2000);
    const held = await holdLocked(userDbPath(world.dataDir, ids[2]!));
    try {
      const started = Date.now();
      const rows: UserStatus[] = [];
      for await (const u of listUserStatuses({ master: world.master, dataDir: world.dataDir, busyTimeoutMs: 3000 } )) if (ids.includes(u.id)) rows.push(u);
      const took = Date.now() - started;
      expect(rows.map((u) => u.id)).toEqual(ids);
      expect(rows[0]).toMatchObject({ seedVersion: 'v1', db: { seedStatus: 'ready' } });
      expect(rows[1]).toMatchObject({ seedVersion: 'v1', db: { seedStatus: 'ready' } });
      expect(rows[2]).toMatchObject({ status: 'ready', db: { busy: true } });
      const waited = Number(/for more than ([\d.]+) s/.exec(rows[2]!.db.error ?? '')?.[1]);
      expect(waited).toBeGreaterThan(0);
      expect(waited).toBeLessThan(3);
      // Both waits together: about 3 s, where one whole wait each would be 5 s.
      expect(took).toBeLessThan(4500);
    } finally {
      await Promise.all([freed, held].map(release));
    }
  }, 60_000);
});

describe('a ready user whose latest job is a failed --force', () => {
  it('user show gives the job\'s error and does not word the closed job as if it will be retried', async () => {
    const id = await readyUser('force-failed-shown');
    const root = userRoot(world.dataDir, id);
    // Something in the way of the user's folder: the --force fails before changing anything.
    renameSync(root, `${root}.moved`);
    writeFileSync(root, 'in the way');
    expect((await cli(['user', 'seed', String(id), '--force'])).exitCode).toBe(1);
    rmSync(root);
    renameSync(`${root}.moved`, root);

    const shown = JSON.parse((await cli(['user', 'show', String(id)])).stdout) as { status: string; job: { status: string; lastError: string | null } };
    expect(shown).toMatchObject({ status: 'ready', job: { status: 'failed', lastError: expect.stringMatching(/is a plain file, not the user's folder/) } });
    const human = (await cli(['user', 'show', String(id)], false)).stdout;
    expect(human).toMatch(/^status +ready$/m);
    expect(human).toMatch(/^job +#\d+ failed after 1 attempt: closed, not retried$/m);
    expect(human).not.toMatch(/attempt 1\/5/);
    expect(human).toMatch(/^job error +.*is a plain file, not the user's folder/m);
    // user list's last-error column gives the job's reason too, not an empty cell, naming the
    // path from the data dir on: its 60 cells reach the reason however long the data dir's path.
    const listed = (await cli(['user', 'list'], false)).stdout.split('\n').find((l) => l.includes('force-failed-shown@'));
    expect(listed).toMatch(new RegExp(`job #\\d+ failed: user_${id} is a plain file`));
    expect(listed).not.toContain(world.dataDir);
  }, 60_000);
});

describe('a user whose user_{id} is a plain file', () => {
  it('user show says the folder is not a folder, not the seeded files the DB lists', async () => {
    const id = await readyUser('root-file-shown');
    const root = userRoot(world.dataDir, id);
    renameSync(root, `${root}.moved`);
    writeFileSync(root, 'in the way');
    try {
      const shown = JSON.parse((await cli(['user', 'show', String(id)])).stdout) as { rootProblem?: string };
      expect(shown.rootProblem).toBe(`${root} is a plain file, not the user's folder`);
      const human = (await cli(['user', 'show', String(id)], false)).stdout;
      const files = human.split('\n').find((l) => l.startsWith('files'));
      expect(files).toMatch(new RegExp(`is a plain file, not the user's folder, so none of the \\d+ seeded files the DB lists \\([^)]*\\) can be there: move it aside, then run: acm2 user seed ${id} --force`));
      expect(files).not.toMatch(/\(\d+ seeded files/);
    } finally {
      rmSync(root);
      renameSync(`${root}.moved`, root);
    }
    // Back in place: the usual line, no problem named.
    const again = JSON.parse((await cli(['user', 'show', String(id)])).stdout) as { rootProblem?: string };
    expect(again.rootProblem).toBeUndefined();
  }, 60_000);
});
