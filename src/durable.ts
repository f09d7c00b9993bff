// Durable file writes: data and directory entries reach the disk before a later step (a rename,
// a commit) depends on them. Shared by freeze, seeding, migrations and the log mover.

import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';

export interface DurableWrite {
  bytes: number;
  sha256: string;
}

/**
 * Write bytes and fsync them. `exclusive` refuses an existing file (packages are never
 * overwritten); otherwise the file is replaced, which callers only do for files they made.
 */
export function writeFileDurable(file: string, data: string | Uint8Array, opts: { mode?: number; exclusive?: boolean } = {}): DurableWrite {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const fd = openSync(file, opts.exclusive === false ? 'w' : 'wx', opts.mode ?? 0o644);
  try {
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
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
