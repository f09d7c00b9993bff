// Durable file writes: data and directory entries reach the disk before a later step (a rename,
// a commit) depends on them. Shared by freeze, seeding, migrations and the log mover.

import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

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
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    if (opts.fsync !== false) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { bytes: buf.length, sha256: createHash('sha256').update(buf).digest('hex') };
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
