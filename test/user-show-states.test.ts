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
import { createUser, userStatus } from '../src/core/users.js';
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
 * keeps readers out too, as a write that spilled its cache does. Held until the process is killed;
 * returns once the lock is held.
 */
async function holdLocked(file: string): Promise<ChildProcess> {
  const flag = path.join(flags, `${path.basename(file)}-held`);
  const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec('BEGIN EXCLUSIVE'); require('fs').writeFileSync(process.argv[2], ''); setInterval(() => {}, 1000);`;
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
    // user list's last-error column gives the job's reason too, not an empty cell.
    const listed = (await cli(['user', 'list'], false)).stdout.split('\n').find((l) => l.includes('force-failed-shown@'));
    expect(listed).toMatch(new RegExp(`job #\\d+ failed: \\S*user_${id}`));
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
