// What a kill -9 can leave in <data-dir>/.acm2/ is removed by a later run once its maker is
// provably gone, never while a live process (of this host, or another) may still be using it.
// The embedded master's user lock file is made under a temporary name and linked into place: a
// kill between the two leaves that temp in .acm2/locks/. A backup (a migration's, --force's) is
// written as `.partial` and renamed when whole: a kill mid-copy leaves the `.partial`.
import { describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { fileWorld, killMidBackup, runCli } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { backupStem } from '../src/core/migrate-safe.js';
import { toolDir, userDbPath } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const USER_LOCK = new URL('../dist/core/user-lock.js', import.meta.url).href;

const env = fileWorld({ sourceDocs: 1 });

const deps = () => ({ master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 });

const acm2 = (args: string[]) => runCli(env.world.dataDir, env.pkg.seedsDir, args);

/**
 * A process that makes a lock temp for `lockFile` exactly as the lock's maker does (its naming
 * function, O_EXCL, 0600), prints its name, then either dies by SIGKILL there (as a kill -9
 * between the temp and its link leaves it) or stays alive, mid-lock, until killed.
 */
async function makeTemp(lockFile: string, then: 'die' | 'live'): Promise<{ temp: string; child: ChildProcess }> {
  const code = `
    import { closeSync, constants, openSync } from 'node:fs';
    import { lockTempName } from ${JSON.stringify(USER_LOCK)};
    const made = lockTempName(${JSON.stringify(lockFile)});
    closeSync(openSync(made, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600));
    process.stdout.write(made + '\\n', () => {
      if (${JSON.stringify(then)} === 'die') process.kill(process.pid, 'SIGKILL');
      else setInterval(() => undefined, 1000);
    });`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  if (then === 'die') {
    const [, signal] = (await once(child, 'exit')) as [number | null, string | null];
    expect(signal).toBe('SIGKILL');
  } else {
    while (!out.includes('\n')) await once(child.stdout!, 'data');
  }
  const temp = out.trim();
  expect(existsSync(temp)).toBe(true);
  return { temp, child };
}

/** The same temp name as `temp`, with its maker's whereabouts (`@host+pid space`) swapped or dropped. */
function madeElsewhere(temp: string, where: string | undefined): string {
  const renamed = temp.replace(/@[^/]*\.new$/, where === undefined ? '.new' : `@${where}.new`);
  expect(renamed).not.toBe(temp);
  writeFileSync(renamed, '', { mode: 0o600 });
  return renamed;
}

function hoursAgo(file: string, hours: number): void {
  const t = new Date(Date.now() - hours * 3600_000);
  utimesSync(file, t, t);
}

describe('lock temps left in .acm2/locks by a kill -9', () => {
  it('removes a dead maker’s temp (and hour-old ones of makers it cannot check); keeps a live one, and recent ones made elsewhere', async () => {
    const u = await createUser(deps(), { email: 'locks@example.com', username: 'locks' });
    const id = u.user.id;
    const locks = toolDir(env.world.dataDir, 'locks');
    const lockFile = path.join(locks, `user_${id}.lock`);
    expect(existsSync(lockFile)).toBe(true);

    const dead = await makeTemp(lockFile, 'die');
    const live = await makeTemp(lockFile, 'live');
    try {
      // Another host's, or another container's of this host name: its pid says nothing here.
      const otherHostRecent = madeElsewhere(dead.temp, 'other-host+0badc0de.4026531836');
      const otherHostOld = madeElsewhere(dead.temp.replace(/\.[0-9a-f]{8}@/, '.0000aaaa@'), 'other-host+0badc0de.4026531836');
      hoursAgo(otherHostOld, 2);
      // Made before temps recorded their whereabouts: no telling whose pid it is.
      const unnamedRecent = madeElsewhere(dead.temp.replace(/\.[0-9a-f]{8}@/, '.0000bbbb@'), undefined);
      const unnamedOld = madeElsewhere(dead.temp.replace(/\.[0-9a-f]{8}@/, '.0000cccc@'), undefined);
      hoursAgo(unnamedOld, 2);
      // Some other file in the folder is none of this sweep's business, however old.
      const other = path.join(locks, 'notes.new');
      writeFileSync(other, 'keep');
      hoursAgo(other, 2);

      // Any command that takes a lock: a second seed of the (ready) user.
      const r = await acm2(['user', 'seed', String(id)]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);

      const left = readdirSync(locks).sort();
      expect(left).toEqual([path.basename(lockFile), path.basename(live.temp), path.basename(otherHostRecent), path.basename(unnamedRecent), 'notes.new'].sort());
      expect(left).not.toContain(path.basename(dead.temp));
      expect(left).not.toContain(path.basename(otherHostOld));
      expect(left).not.toContain(path.basename(unnamedOld));
    } finally {
      live.child.kill('SIGKILL');
      await once(live.child, 'exit').catch(() => undefined);
    }
  });
});

describe('backups a kill -9 cut short in .acm2/backups', () => {
  it('are removed by the next seed of the user (under its lock), even when it needs no migration or backup of its own; whole ones stay', async () => {
    const u = await createUser(deps(), { email: 'torn@example.com', username: 'torn' });
    const id = u.user.id;
    const label = `user_${id}`;
    const dir = toolDir(env.world.dataDir, 'backups', label);
    const finished = `${backupStem(dir, label, new Date(Date.now() - 86400_000))}.db`;
    copyFileSync(userDbPath(env.world.dataDir, id), finished);
    // A migration's backup of a WAL DB through SQLite's backup API, the process killed mid-copy:
    // the copy and the journal SQLite keeps beside it.
    const big = path.join(env.world.dataDir, 'big.db');
    const partial = `${backupStem(dir, label, new Date())}.db.partial`;
    killMidBackup(big, partial);
    // --force's backup folder, killed before its rename.
    const forceTorn = `${backupStem(dir, `${label}-force`, new Date())}.partial`;
    mkdirSync(path.join(forceTorn, label), { recursive: true });
    writeFileSync(path.join(forceTorn, `${label}.db`), 'half');
    expect(readdirSync(dir).sort()).toEqual([path.basename(finished), path.basename(partial), `${path.basename(partial)}-journal`, path.basename(forceTorn)].sort());

    // The user is ready and current: this seed migrates nothing and backs nothing up.
    const r = await acm2(['user', 'seed', String(id)]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('already ready');
    expect(readdirSync(dir)).toEqual([path.basename(finished)]);
  });
});

describe('user show: what the kept backups take', () => {
  it('counts the whole backups and their bytes (a --force folder summed), never a .partial; says nothing when there are none', async () => {
    const u = await createUser(deps(), { email: 'kept@example.com', username: 'kept' });
    const id = u.user.id;
    const label = `user_${id}`;
    const none = JSON.parse((await acm2(['user', 'show', String(id), '--json'])).stdout);
    expect(none.backups).toEqual({ dir: toolDir(env.world.dataDir, 'backups', label), count: 0, bytes: 0 });
    expect((await acm2(['user', 'show', String(id)])).stdout).not.toContain('backups');

    const dir = toolDir(env.world.dataDir, 'backups', label);
    writeFileSync(`${backupStem(dir, label, new Date())}.db`, Buffer.alloc(3000));
    const force = backupStem(dir, `${label}-force`, new Date());
    mkdirSync(path.join(force, label, 'docs'), { recursive: true });
    writeFileSync(path.join(force, `${label}.db`), Buffer.alloc(1000));
    writeFileSync(path.join(force, label, 'docs', 'a.md'), Buffer.alloc(24));
    writeFileSync(path.join(force, 'manifest.json'), Buffer.alloc(100));
    // Half-written (its maker may be at work): not a backup, not counted.
    writeFileSync(`${backupStem(dir, label, new Date())}.db.partial`, Buffer.alloc(5000));

    const shown = JSON.parse((await acm2(['user', 'show', String(id), '--json'])).stdout);
    expect(shown.backups).toEqual({ dir, count: 2, bytes: 4124 });
    const text = await acm2(['user', 'show', String(id)]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^backups +${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(2 kept, [^)]*\\bdelete old ones yourself\\)$`, 'm'));
  });
});
