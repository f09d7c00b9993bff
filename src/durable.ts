// Durable file writes: data and directory entries reach the disk before a later step (a rename,
// a commit) depends on them. Shared by freeze, seeding, migrations and the log mover.

import { createHash } from 'node:crypto';
import { accessSync, closeSync, constants, fsyncSync, lstatSync, openSync, statSync, writeSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { execFileSync, spawn } from 'node:child_process';

export interface DurableWrite {
  bytes: number;
  sha256: string;
}

/**
 * Write bytes and fsync them. `exclusive` refuses an existing file (packages are never
 * overwritten); otherwise the file is replaced, which callers only do for files they made.
 */
export function writeFileDurable(
  file: string,
  data: string | Uint8Array,
  opts: { mode?: number; exclusive?: boolean; /** false: the caller makes it durable with syncFiles */ fsync?: boolean } = {},
): DurableWrite {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const fd = openSync(file, opts.exclusive === false ? 'w' : 'wx', opts.mode ?? 0o644);
  try {
    writeAll(fd, buf);
    if (opts.fsync !== false) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { bytes: buf.length, sha256: createHash('sha256').update(buf).digest('hex') };
}

/** Write all of buf at the fd's position (writeSync may write less than asked). */
export function writeAll(fd: number, buf: Uint8Array): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/** fsync a file or a directory (a directory's fsync makes its entries, e.g. renames, durable). */
export function fsyncPath(p: string): void {
  const fd = openSync(p, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * syncfs flushes everything dirty on the file system, not only our files: ACM2_SYNCFS=0 turns it
 * off for hosts where the data dir shares a file system with a busy writer.
 */
export function syncfsAllowed(): boolean {
  return process.env.ACM2_SYNCFS !== '0';
}

/** Above this many files one syncfs(2) of the file system beats an fsync per file. */
export const SYNCFS_THRESHOLD = 16;

/**
 * Make many freshly written files durable. Each fsync on ext4 forces a journal commit, so for
 * many files one `sync -f` (syncfs of the file system holding them) is far cheaper and gives
 * the same guarantee; it falls back to fsync per file where `sync -f` is not available.
 */
export function syncFiles(files: string[], anyPathOnSameFs: string): void {
  if (files.length >= SYNCFS_THRESHOLD && syncfsAllowed()) {
    try {
      execFileSync('sync', ['-f', anyPathOnSameFs], { stdio: 'ignore' });
      return;
    } catch {
      /* no coreutils sync -f: fsync each file below */
    }
  }
  for (const f of files) fsyncPath(f);
}

/** At most this many fsyncs in flight (libuv's pool runs 4 at a time; the rest queue cheaply). */
const FSYNC_BATCH = 64;

/** From this many paths on, one syncfs through the helper beats an fsync per path. */
const HELPER_THRESHOLD = 4;

/**
 * syncFiles plus folders, without blocking the thread: for several paths one syncfs of their file
 * system (through a long-lived helper, shared by every caller waiting at that moment), else every
 * fsync issued together on the thread pool.
 */
export async function syncFilesAsync(files: string[], dirs: string[]): Promise<void> {
  const paths = [...files, ...dirs];
  if (paths.length === 0) return;
  if (paths.length >= HELPER_THRESHOLD && syncfsAllowed() && (await syncfsShared(paths[0]!))) return;
  for (let i = 0; i < paths.length; i += FSYNC_BATCH) {
    await Promise.all(
      paths.slice(i, i + FSYNC_BATCH).map(async (p) => {
        const fh = await open(p, 'r');
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      }),
    );
  }
}

// ---- syncfs through a helper -----------------------------------------------------------------
//
// Node has no syncfs(2). Spawning `sync -f` per barrier forks this whole process each time (v1
// seeding went from 0.69 s to 1.07 s that way); instead one small shell per thread runs `sync -f`
// for each path it reads, answering a line per request (~1.2 ms a round trip here, against ~15
// fsyncs, each a device flush, per seeded user). Callers that arrive while a syncfs runs wait for
// the next one, which covers their writes; callers that arrive before it starts share it.

interface Helper {
  request(p: string): Promise<boolean>;
}

let helper: Helper | undefined | null; // null: unavailable here (fall back to fsyncs)
/** Per file system (st_dev): the syncfs running, and the next one callers can still join. */
const fsRounds = new Map<number, { running?: Promise<boolean>; queued?: Promise<boolean> }>();
let rounds = 0;

/** syncfs rounds this thread has run, and whether the helper is usable (for tests). */
export function syncfsStats(): { rounds: number; available: boolean } {
  return { rounds, available: helper !== null };
}

function startHelper(): Helper | null {
  try {
    const child = spawn('sh', ['-c', 'while IFS= read -r p; do if sync -f -- "$p" 2>/dev/null; then echo ok; else echo err; fi; done'], {
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    const replies: Array<(ok: boolean) => void> = [];
    let buf = '';
    let dead = false;
    const fail = () => {
      dead = true;
      helper = null;
      for (const r of replies.splice(0)) r(false);
    };
    child.on('error', fail);
    child.on('exit', fail);
    child.stdin.on('error', fail);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        replies.shift()?.(line === 'ok');
      }
      if (replies.length === 0) idle();
    });
    // Idle, the helper must not keep the process (or a worker thread) alive.
    const idle = () => {
      child.unref();
      (child.stdout as unknown as { unref(): void }).unref();
      (child.stdin as unknown as { unref(): void }).unref();
    };
    idle();
    return {
      request(p: string) {
        if (dead) return Promise.resolve(false);
        child.ref();
        (child.stdout as unknown as { ref(): void }).ref();
        return new Promise<boolean>((resolve) => {
          replies.push(resolve);
          child.stdin.write(`${p}\n`);
        });
      },
    };
  } catch {
    return null;
  }
}

/**
 * One syncfs of the file system holding p, shared with every caller queued for the same round of
 * the same file system (a round of another one would not cover their files).
 */
function syncfsShared(p: string): Promise<boolean> {
  // The helper reads one path per line: a path with a line break cannot be sent intact.
  if (helper === null || /[\r\n]/.test(p)) return Promise.resolve(false);
  let dev: number;
  try {
    dev = statSync(p).dev;
  } catch {
    return Promise.resolve(false); // the fsync route reports what is wrong with the path
  }
  let fs = fsRounds.get(dev);
  if (!fs) fsRounds.set(dev, (fs = {}));
  const state = fs;
  if (state.queued) return state.queued;
  const before = state.running;
  const round = (async () => {
    await before; // always yields: `queued` is set below before this line runs on
    state.queued = undefined; // this round starts now: later callers need the next one
    helper ??= startHelper();
    rounds++;
    const r = helper ? helper.request(p) : Promise.resolve(false);
    state.running = r;
    const ok = await r;
    if (state.running === r) state.running = undefined;
    return ok;
  })();
  state.queued = round;
  return round;
}

/** Whether a process of this host with that pid exists (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** lstat, or undefined when there is nothing to look at (gone, unreadable). */
export function lstatOrUndefined(p: string): Stats | undefined {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
}

/** stat (through symlinks), or undefined when there is nothing to look at (gone, dangling, unreadable). */
export function statOrUndefined(p: string): Stats | undefined {
  try {
    return statSync(p);
  } catch {
    return undefined;
  }
}

/** Whether this process may read that file (false without the permission). */
export function canRead(file: string): boolean {
  try {
    accessSync(file, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** Whether this process may write in that folder (false on a read-only mount, or without the permission). */
export function canWrite(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
