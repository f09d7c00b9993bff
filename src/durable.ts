// Durable file writes: data and directory entries reach the disk before a later step (a rename,
// a commit) depends on them. Shared by freeze, seeding, migrations and the log mover.

import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { execFile, execFileSync } from 'node:child_process';

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

/** Above this many files one syncfs(2) of the file system beats an fsync per file. */
export const SYNCFS_THRESHOLD = 16;

/**
 * Make many freshly written files durable. Each fsync on ext4 forces a journal commit, so for
 * many files one `sync -f` (syncfs of the file system holding them) is far cheaper and gives
 * the same guarantee; it falls back to fsync per file where `sync -f` is not available.
 */
export function syncFiles(files: string[], anyPathOnSameFs: string): void {
  if (files.length >= SYNCFS_THRESHOLD) {
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

/**
 * syncFiles plus folders, without blocking the thread: one `sync -f` for many files, else every
 * fsync issued together on the thread pool (the journal commits them as a group).
 */
export async function syncFilesAsync(files: string[], dirs: string[]): Promise<void> {
  const paths = [...dirs];
  if (files.length >= SYNCFS_THRESHOLD) {
    const done = await new Promise<boolean>((resolve) => execFile('sync', ['-f', files[0]!], (err) => resolve(!err)));
    if (!done) paths.push(...files);
  } else paths.push(...files);
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
