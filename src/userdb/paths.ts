// Every per-user path is derived here from the user id, and nowhere else.
// Anything that would resolve outside the user's root is refused.

import { lstatSync, type Stats } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../errors.js';

export type UserId = number;

/** Parse a user id given on the command line or read from a file name. */
export function parseUserId(raw: string | number): UserId {
  const s = String(raw).trim();
  if (!/^[1-9][0-9]{0,15}$/.test(s)) throw new UsageError(`'${s}' is not a valid user id (expected a positive integer)`, 'bad_user_id');
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new UsageError(`'${s}' is not a valid user id (too large)`, 'bad_user_id');
  return n;
}

export function userDbPath(dataDir: string, id: UserId): string {
  return path.join(path.resolve(dataDir), `user_${id}.db`);
}

export function userRoot(dataDir: string, id: UserId): string {
  return path.join(path.resolve(dataDir), `user_${id}`);
}

export function userRunsDir(dataDir: string, id: UserId): string {
  return path.join(userRoot(dataDir, id), 'runs');
}

/** Tool-private area: staging, locks, backups. ACM2 never reads it. */
export function toolDir(dataDir: string, ...parts: string[]): string {
  return path.join(path.resolve(dataDir), '.acm2', ...parts);
}

/**
 * Resolve a relative path (as stored in a package or the seeded-files list) under the user's
 * root. Refuses absolute paths, `..` segments and anything that leaves the root.
 */
export function resolveUnderUser(dataDir: string, id: UserId, rel: string): string {
  return resolveInside(userRoot(dataDir, id), rel);
}

/**
 * How folder a lies to folder b, both absolute and resolved the same way (real paths): the same
 * folder, inside it, holding it, or undefined when they are apart.
 */
export function folderOverlap(a: string, b: string): 'is' | 'is inside' | 'holds' | undefined {
  const inside = (x: string, y: string) => x === y || x.startsWith(y.endsWith(path.sep) ? y : y + path.sep);
  if (a === b) return 'is';
  if (inside(a, b)) return 'is inside';
  if (inside(b, a)) return 'holds';
  return undefined;
}

export function resolveInside(root: string, rel: string): string {
  if (path.isAbsolute(rel) || rel.split(/[\\/]/).some((seg) => seg === '..') || rel.includes('\0')) {
    throw new UsageError(`path '${rel}' would leave ${root}`, 'path_escape');
  }
  const full = path.resolve(root, rel);
  const relBack = path.relative(root, full);
  if (relBack.startsWith('..') || path.isAbsolute(relBack)) throw new UsageError(`path '${rel}' would leave ${root}`, 'path_escape');
  return full;
}

/** Matches the names ACM2 uses in the data dir; returns the user id or undefined. */
export function userIdFromEntry(name: string): { id: UserId; kind: 'db' | 'dir' } | undefined {
  const m = /^user_([1-9][0-9]{0,15})(\.db)?$/.exec(name);
  if (!m) return undefined;
  return { id: Number(m[1]), kind: m[2] ? 'db' : 'dir' };
}

/** What an entry is, for a message: "a plain file", "a FIFO", "a dangling symlink" (undefined)… */
export function entryKind(st: Stats | undefined): string {
  if (!st) return 'a dangling symlink';
  if (st.isFile()) return 'a plain file';
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isSymbolicLink()) return 'a symlink';
  return 'a device';
}

/**
 * Why the user's DB entry must not be opened or written through, or undefined when it is a
 * regular file of its own (or absent). A symlink may lead outside the data dir (a seed would
 * write there) and opening a FIFO waits for a writer for ever.
 */
export function userDbEntryProblem(dataDir: string, id: UserId): string | undefined {
  const file = userDbPath(dataDir, id);
  let st: Stats;
  try {
    st = lstatSync(file);
  } catch {
    return undefined;
  }
  if (st.isFile()) return undefined;
  return `${file} is ${entryKind(st)}, not the user's own database file`;
}

/**
 * Why the seed cannot write the user's files under `user_{id}/`, or undefined when it is a real
 * folder (or absent): a plain file, FIFO, socket or device there, or a symlink (to a file, a
 * folder or nothing), which the seed never writes through. Only an operator can clear it.
 * Errors other than "not there" (EIO, EACCES) are thrown as they are: they may pass.
 */
export function userRootProblem(dataDir: string, id: UserId): string | undefined {
  const root = userRoot(dataDir, id);
  const st = lstatSync(root, { throwIfNoEntry: false });
  if (!st || st.isDirectory()) return undefined;
  return `${root} is ${entryKind(st)}, not the user's folder`;
}

/**
 * Why `.acm2/<sub>` must not be used, or undefined when each part is a real folder (or absent):
 * a symlinked part would have staging's removals and renames happen wherever it leads.
 */
export function toolDirProblem(dataDir: string, sub: string): string | undefined {
  for (const dir of [toolDir(dataDir), toolDir(dataDir, sub)]) {
    let st: Stats;
    try {
      st = lstatSync(dir);
    } catch {
      return undefined;
    }
    if (!st.isDirectory()) return `${dir} is ${entryKind(st)}, not a folder of the tool's own`;
  }
  return undefined;
}
