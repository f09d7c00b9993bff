// One seeder per user. On MySQL: GET_LOCK held on a dedicated connection. On the embedded
// master: an exclusive SQLite transaction on a per-user lock file, which the OS releases
// when the holder dies, so a crash never leaves a stale lock behind.

import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, existsSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { threadId } from 'node:worker_threads';
import type { MasterDb, UserLock } from '../master/types.js';
import { toolDir, type UserId } from '../userdb/paths.js';
import { classifyFsError, UnavailableError } from '../errors.js';
import { isBusy } from './migrate-safe.js';
import { pidIsOfHere, STALE_ELSEWHERE_MS, whereAmI } from './worker-name.js';
import { canWrite, processAlive } from '../durable.js';

export async function lockUser(master: MasterDb, dataDir: string, userId: UserId, timeoutMs: number): Promise<UserLock> {
  const lock = master.capabilities.advisoryLocks ? await master.acquireUserLock(userId, timeoutMs) : await waitForFileLock(dataDir, userId, timeoutMs);
  if (!lock) throw lockTimeout(userId, timeoutMs);
  return lock;
}

/**
 * The lock file, tried every 50 ms until the deadline: waiting in SQLite's busy handler would
 * block the event loop, so a Ctrl-C (and everything else) would wait as long as the lock does.
 */
async function waitForFileLock(dataDir: string, userId: UserId, timeoutMs: number): Promise<UserLock | undefined> {
  const deadline = Date.now() + Math.max(0, timeoutMs);
  for (;;) {
    const lock = lockUserFile(dataDir, userId, 0);
    const left = deadline - Date.now();
    if (lock || left <= 0) return lock;
    await new Promise((r) => setTimeout(r, Math.min(50, left)));
  }
}

export function lockTimeout(userId: UserId, timeoutMs: number): UnavailableError {
  return new UnavailableError(`user ${userId} is being seeded by another process (lock still held after ${Math.round(timeoutMs / 1000)}s)`, 'lock_timeout');
}

/** Try once without waiting; undefined when someone else holds it (used by --pending to skip). */
export async function tryLockUser(master: MasterDb, dataDir: string, userId: UserId): Promise<UserLock | undefined> {
  return master.capabilities.advisoryLocks ? master.acquireUserLock(userId, 0) : lockUserFile(dataDir, userId, 0);
}

/** The embedded master's per-user lock; exported for tests that hold it from another process. */
export function lockUserFile(dataDir: string, userId: UserId, timeoutMs: number): UserLock | undefined {
  return lockFile(dataDir, `user_${userId}`, timeoutMs);
}

/**
 * Take a named lock without waiting (`backfill:default`): GET_LOCK on MySQL, a lock file in the
 * data dir on the embedded master. Undefined when another process holds it.
 */
export async function tryLockNamed(master: MasterDb, dataDir: string, key: string): Promise<UserLock | undefined> {
  return master.capabilities.advisoryLocks ? master.acquireNamedLock(key, 0) : lockFile(dataDir, key.replace(/[^A-Za-z0-9._-]/g, '_'), 0);
}

function lockFile(dataDir: string, name: string, timeoutMs: number): UserLock | undefined {
  const dir = toolDir(dataDir, 'locks');
  const file = path.join(dir, `${name}.lock`);
  let db: Database.Database;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (!swept.has(dir)) {
      swept.add(dir);
      removeDeadLockTemps(dir);
    }
    makeLockFile(file);
    db = new Database(file);
  } catch (e) {
    // A data dir on a read-only mount or snapshot, or one this user may not write: exit 3.
    const known = classifyFsError(e, `the lock ${name} in ${dir}`);
    if (known) throw known;
    // Node's recursive mkdir says ENOENT, not EROFS, for a folder it cannot create on a read-only mount.
    if (!canWrite(dataDir)) throw new UnavailableError(`cannot create the lock ${file}: the data dir ${dataDir} is read-only here (${(e as NodeJS.ErrnoException).code})`, 'read_only', { cause: e });
    // SQLite cannot open a path longer than its limit (~512 bytes), which the OS took.
    if ((e as { code?: unknown }).code === 'SQLITE_CANTOPEN') {
      throw new UnavailableError(`cannot open the lock file ${file} (SQLITE_CANTOPEN${file.length > 500 ? `: its path is ${file.length} characters, more than SQLite opens; use a shorter --data-dir` : ''})`, 'lock_unavailable', { cause: e });
    }
    throw e;
  }
  const deadline = Date.now() + Math.max(0, timeoutMs);
  const waitAtMost = () => db.pragma(`busy_timeout = ${Math.max(0, Math.round(deadline - Date.now()))}`);
  try {
    // The lock file holds no data: with the journal in memory, taking the lock creates and
    // deletes no -journal file (the OS lock on the .lock file is what excludes other holders).
    // Setting it reads the file, so it waits for a holder too.
    waitAtMost();
    db.pragma('journal_mode = MEMORY');
    waitAtMost();
    db.exec('BEGIN EXCLUSIVE');
  } catch (e) {
    db.close();
    if (isBusy(e)) return undefined;
    throw e;
  }
  // The lock lives as long as this object: a dropped (garbage-collected) connection releases it.
  return {
    async release() {
      try {
        db.exec('ROLLBACK');
      } finally {
        db.close();
      }
    },
    // The OS holds the lock as long as this connection is open in this process.
    async check() {
      if (!db.open || !db.inTransaction) throw new UnavailableError(`the lock ${name} is no longer held`, 'lock_lost');
    },
  };
}

/**
 * Create the lock file 0600 (like every file the tool writes; SQLite would make it 0644 under the
 * usual umask) without ever opening the lock file itself outside SQLite. The OS lock is a POSIX
 * lock, owned by the process: closing any descriptor of the file in this process drops it, so an
 * open-and-close here, made by a second lane or thread of a process whose other lane holds this
 * lock (two queued jobs of one user), would free the user for every other process while that lane
 * still seeds it. So a new file is made under a name of its own and linked into place.
 */
function makeLockFile(file: string): void {
  if (existsSync(file)) {
    // One this process may not write (a read-only mount or snapshot): said as before, without an open.
    accessSync(file, constants.W_OK);
    return;
  }
  const made = lockTempName(file);
  try {
    closeSync(openSync(made, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600));
  } catch (e) {
    // Named as the lock file it was to become.
    if ((e as NodeJS.ErrnoException).path === made) (e as NodeJS.ErrnoException).path = file;
    throw e;
  }
  try {
    linkSync(made, file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  } finally {
    rmSync(made, { force: true });
  }
}

/**
 * The name a lock file is made under before its link into place: its maker's pid, thread and
 * whereabouts (whereAmI), so a later process can tell one left by a killed maker.
 */
export function lockTempName(file: string): string {
  return `${file}.${process.pid}.${threadId}.${randomBytes(4).toString('hex')}@${whereAmI()}.new`;
}

/** A lock temp: `<name>.lock.<pid>.<thread>.<random>[@<where>].new` (before `@<where>`, just the pid). */
const LOCK_TEMP = /^.+\.lock\.(\d+)\.\d+\.[0-9a-f]+(?:@(.+))?\.new$/;

/** Locks folders this process has already swept (once each: a folder holds a file per user ever seeded). */
const swept = new Set<string>();

/**
 * Remove lock temps (see makeLockFile) whose maker was killed between creating one and removing
 * it: empty files nothing else removes. A temp lives for the instants between its open and the
 * unlink after its link, so one is abandoned when its maker, a process of this pid space, no
 * longer runs, or (any maker: another host's or container's pid says nothing here, nor does a
 * name without whereabouts, made before they were recorded) when it is an hour old. Removing a
 * live maker's temp would only fail its link (ENOENT), never let two processes hold one lock:
 * the lock is the OS lock on the `.lock` file, which this never touches. Best effort: a folder
 * this process may not change is the lock's own error to report.
 */
function removeDeadLockTemps(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const name of names) {
    const m = LOCK_TEMP.exec(name);
    if (!m) continue;
    const full = path.join(dir, name);
    try {
      const st = lstatSync(full);
      if (!st.isFile()) continue;
      const pid = Number(m[1]);
      const gone = m[2] !== undefined && pidIsOfHere(m[2]) && pid !== process.pid && !processAlive(pid);
      if (gone || now - st.mtimeMs > STALE_ELSEWHERE_MS) rmSync(full, { force: true });
    } catch {
      /* removed by another process first, or not ours to remove here */
    }
  }
}
