// Moves ACM2's old global `logs/{run_id}/` folders into the owning user's run folder,
// `user_{id}/runs/{run_id}/logs/`, file by file, never overwriting and safe to rerun after a crash.

import { fsyncPath, processAlive } from '../durable.js';
import { pidIsOfHere, whereAmI } from './worker-name.js';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  rmdirSync,
  rmSync,
  unlinkSync,
} from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { resolveInside, toolDir, userDbEntryProblem, userDbPath, userRoot, type UserId } from '../userdb/paths.js';

export interface LegacyRunMove {
  runId: string;
  userId: UserId;
  /** Files now in the owner's logs folder that came from the global folder (this run or an earlier one). */
  files: number;
  bytes: number;
}

export interface LegacyLogClash {
  runId: string;
  userId: UserId;
  /** Relative to the user's root: the file that was already there and stays as it is. */
  existing: string;
  /** Relative to the user's root: where the incoming file went instead. */
  keptAs: string;
}

export interface LegacyLogsResult {
  dryRun: boolean;
  dir: string;
  /** Run folders found in the global logs dir. */
  runs: number;
  /** Runs at least one file of which was (or, in a dry run, would be) placed in the owner's folder. */
  moved: LegacyRunMove[];
  clashes: LegacyLogClash[];
  /** Run ids no checked user's DB holds: left in place. */
  unowned: string[];
  /** Run ids more than one user's DB holds: left in place (a person must decide). */
  ambiguous: Array<{ runId: string; userIds: UserId[] }>;
  /**
   * Entries that are not plain files or folders (symlinks, sockets), a run folder that is one of
   * them included (by its name): left in place.
   */
  skipped: string[];
  /**
   * Runs left in place because a folder on the way to their new place is a symlink or not a
   * folder (`path`, relative to the user's root): moving through it could land outside the
   * user's root, or onto the very file being moved, and delete it.
   */
  refused: Array<{ runId: string; userId: UserId; path: string }>;
  /** Users whose DB could not be read, so a run they own may be reported unowned. */
  uncheckedUsers: UserId[];
  /** Runs left in place because another process held their owner's lock (a seed, or another backfill moving them): run again. */
  busy: Array<{ runId: string; userId: UserId }>;
}

/** Run ids in the global logs dir: every sub-folder name (sorted). */
export function listLegacyRuns(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort();
}

/** Which of `candidates` this user's DB holds in `runs` (empty when it has no DB or no runs table). */
export function runsOwnedBy(dataDir: string, userId: UserId, candidates: Set<string>, busyTimeoutMs = 250): string[] {
  const file = userDbPath(dataDir, userId);
  // A symlink may lead to another DB altogether, which would not make its runs this user's.
  const odd = userDbEntryProblem(dataDir, userId);
  if (odd) throw new Error(odd);
  if (!existsSync(file)) return [];
  // Read-write but only read: a read-only connection would leave -wal/-shm beside a WAL DB.
  const db = new Database(file, { fileMustExist: true, timeout: busyTimeoutMs });
  try {
    const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'`).get();
    if (!has) return [];
    const out: string[] = [];
    for (const [id] of db.prepare(`SELECT id FROM runs`).raw(true).iterate() as Iterable<[unknown]>) {
      if (candidates.has(String(id))) out.push(String(id));
    }
    return out;
  } finally {
    db.close();
  }
}

export interface MoveLegacyLogsInput {
  dir: string;
  dataDir: string;
  /** run id -> the users whose DB holds it. */
  owners: Map<string, UserId[]>;
  uncheckedUsers?: UserId[];
  dryRun?: boolean;
  /** Copy + fsync + remove instead of a hard link (what happens across file systems); tests use it. */
  forceCopy?: boolean;
  /** Runs whose one owner is outside this pass's users (another shard's): left alone, not reported. */
  elsewhere?: Set<string>;
  /** Test hook: runs after a file is copied to staging, before the copy is checked and placed. */
  afterCopy?: (from: string) => void;
  /**
   * Takes the owner's lock before its run is moved (undefined: held elsewhere, the run is left
   * for later), so two passes at once never work on one run folder. Not taken on a dry run.
   */
  lockOwner?: (userId: UserId) => Promise<{ release(): Promise<void> } | undefined>;
}

/**
 * Move every owned run folder. Per file: link the file to its new name (link refuses to replace
 * an existing file), fsync, then remove the old name; across file systems, copy to staging,
 * fsync, link into place, then remove. A crash leaves the file at the old name, the new name, or
 * both with identical bytes; a rerun sees the identical copy and just removes the old name.
 */
export async function moveLegacyLogs(input: MoveLegacyLogsInput): Promise<LegacyLogsResult> {
  const dir = path.resolve(input.dir);
  const runs = listLegacyRuns(dir);
  const res: LegacyLogsResult = {
    dryRun: Boolean(input.dryRun),
    dir,
    runs: runs.length,
    moved: [],
    clashes: [],
    unowned: [],
    ambiguous: [],
    skipped: [],
    refused: [],
    uncheckedUsers: input.uncheckedUsers ?? [],
    busy: [],
  };
  // A run folder that is a symlink (or a socket, a FIFO) is no run listLegacyRuns gives, and
  // following it could move files from anywhere: it stays, and is said to, as inside a run.
  // Plain files beside the run folders are ACM2's own global logs, not a run's: not reported.
  for (const e of readdirSync(dir, { withFileTypes: true })) if (!e.isDirectory() && !e.isFile()) res.skipped.push(e.name);
  res.skipped.sort();
  // Each run copies through a staging folder of its own; leftovers of crashed runs are copies
  // whose source still exists, removed once old enough not to belong to a live run elsewhere.
  const stagingRoot = toolDir(input.dataDir, 'staging', 'legacy-logs');
  const staging = path.join(stagingRoot, `${process.pid}.${randomBytes(3).toString('hex')}@${whereAmI()}`);
  if (!input.dryRun) removeStaleStaging(stagingRoot);
  for (const runId of runs) {
    if (input.elsewhere?.has(runId)) continue;
    const owners = [...new Set(input.owners.get(runId) ?? [])].sort((a, b) => a - b);
    if (owners.length === 0) {
      res.unowned.push(runId);
      continue;
    }
    if (owners.length > 1) {
      res.ambiguous.push({ runId, userIds: owners });
      continue;
    }
    const userId = owners[0]!;
    // Nothing in it to move (only entries that stay, as a symlinked log left by an earlier pass):
    // its owner's lock is not taken, so a seed holding it does not make a rerun report the run
    // busy and exit 1 for work there is none of. What stays is reported skipped, as moveRun does.
    const src = path.join(dir, runId);
    if (!existsSync(src)) continue; // moved by another pass since the listing
    const stays: string[] = [];
    if (walk(src, stays, dir).length === 0) {
      res.skipped.push(...stays);
      try {
        // Empty folders a pass cut short left (all its files placed): removed as moveRun would.
        if (!input.dryRun) removeEmptyDirs(src);
      } catch {
        /* something appeared meanwhile: the next pass looks again */
      }
      continue;
    }
    const lock = input.dryRun || !input.lockOwner ? undefined : await input.lockOwner(userId);
    if (input.lockOwner && !input.dryRun && !lock) {
      res.busy.push({ runId, userId });
      continue;
    }
    try {
      // Under the lock: another pass may have moved this run while this one waited for it.
      if (!existsSync(path.join(dir, runId))) continue;
      moveRun(input, res, dir, runId, userId, staging);
    } finally {
      await lock?.release();
    }
  }
  if (!input.dryRun && existsSync(staging)) rmSync(staging, { recursive: true, force: true });
  return res;
}

/** One owned run's files into its owner's logs folder (see moveLegacyLogs). */
function moveRun(input: MoveLegacyLogsInput, res: LegacyLogsResult, dir: string, runId: string, userId: UserId, staging: string): void {
  const root = userRoot(input.dataDir, userId);
  const src = path.join(dir, runId);
  const move: LegacyRunMove = { runId, userId, files: 0, bytes: 0 };
  const rels = walk(src, res.skipped, dir);
  // Every folder the files go to must be a plain folder under the root (or not exist yet).
  const bad = [...new Set(rels.map((rel) => path.join('runs', runId, 'logs', path.dirname(rel))))].map((d) => notPlainFolder(root, d)).find((b) => b !== undefined);
  if (bad !== undefined) {
    res.refused.push({ runId, userId, path: bad });
    return;
  }
  for (const rel of rels) {
    const from = path.join(src, rel);
    const bytes = lstatSync(from).size;
    const wanted = resolveInside(root, path.join('runs', runId, 'logs', rel));
    const placed = placeFile(from, wanted, Boolean(input.dryRun), Boolean(input.forceCopy), staging, input.afterCopy);
    if (placed === undefined) {
      res.skipped.push(path.relative(dir, from));
      continue;
    }
    if (placed !== wanted) res.clashes.push({ runId, userId, existing: path.relative(root, wanted), keptAs: path.relative(root, placed) });
    move.files++;
    move.bytes += bytes;
  }
  if (!input.dryRun) removeEmptyDirs(src);
  // A run with nothing (left) to move is no move: on a rerun, a folder holding only what stays
  // (a symlinked log, say) would otherwise read "moved 1 (0 files)" every time. What stays is
  // already reported where it belongs (skipped).
  if (move.files > 0) res.moved.push(move);
}

/**
 * The first of root and the folders of `rel` under it that exists and is a symlink or not a
 * folder (relative to root, '.' for the root itself), or undefined when all are plain folders
 * or do not exist yet.
 */
function notPlainFolder(root: string, rel: string): string | undefined {
  let at = root;
  for (const part of ['', ...path.normalize(rel).split(path.sep).filter((p) => p !== '' && p !== '.')]) {
    at = part === '' ? root : path.join(at, part);
    let st;
    try {
      st = lstatSync(at);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    if (st.isSymbolicLink() || !st.isDirectory()) return path.relative(root, at) || '.';
  }
  return undefined;
}

const STALE_STAGING_MS = 10 * 60 * 1000;
/** A pass's staging folder: `<pid>.<random>@<host>+<pid space>` (see whereAmI). */
const STAGING_NAME = /^(\d+)\.[0-9a-f]+@(.+)$/;

/**
 * Staging folders of passes that are gone: at once when their maker, a process of this pid
 * space, no longer runs (a kill -9 mid-copy: its copies would otherwise outlive the rerun that
 * finished the move); any other (another host's, a name made by an older acm2) once it is old
 * enough not to belong to a live pass.
 */
function removeStaleStaging(root: string): void {
  if (!existsSync(root)) return;
  for (const name of readdirSync(root)) {
    const p = path.join(root, name);
    try {
      const m = STAGING_NAME.exec(name);
      const gone = m !== null && pidIsOfHere(m[2]!) && Number(m[1]) !== process.pid && !processAlive(Number(m[1]));
      if (gone || Date.now() - lstatSync(p).mtimeMs > STALE_STAGING_MS) rmSync(p, { recursive: true, force: true });
    } catch {
      /* gone already */
    }
  }
}

/** Plain files under dir (relative, sorted); anything else is reported and left alone. */
function walk(dir: string, skipped: string[], base: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const r = rel ? path.join(rel, e.name) : e.name;
    // A name that is not UTF-8 comes back with U+FFFD in it and names no entry: it cannot be
    // moved by that name, so it stays and is reported (before any file of the run is moved).
    if (e.name.includes('\uFFFD') && !lstatSync(path.join(dir, r), { throwIfNoEntry: false })) skipped.push(path.relative(base, path.join(dir, r)));
    else if (e.isDirectory()) out.push(...walk(dir, skipped, base, r));
    else if (e.isFile()) out.push(r);
    else skipped.push(path.relative(base, path.join(dir, r)));
  }
  return out;
}

/**
 * Put `from` at `wanted`, or beside it under a suffixed name when another file is there.
 * Returns where the bytes end up, or undefined for a file left in place. An identical file
 * already in either place means an earlier run got that far: the old name is simply removed.
 */
function placeFile(from: string, wanted: string, dryRun: boolean, forceCopy: boolean, staging: string, afterCopy?: (from: string) => void): string | undefined {
  for (let k = 0; ; k++) {
    const target = k === 0 ? wanted : suffixed(wanted, k);
    if (!existsSync(target)) {
      // A file with another name elsewhere (a hard link: to a file outside, say) is not only a
      // log: linking it into the user's tree would hand the user that file, and chmod would
      // change it there too. It is left in place and reported. (An earlier run's own link,
      // stopped before the old name went, is found as the target above.)
      if (lstatSync(from).nlink > 1) return undefined;
      if (!dryRun) moveNoClobber(from, target, forceCopy, staging, afterCopy);
      return target;
    }
    if (sameBytes(from, target)) {
      if (!dryRun) {
        finishMode(from, target);
        unlinkSync(from);
        fsyncDir(path.dirname(from));
      }
      return target;
    }
  }
}

/**
 * The mode moveNoClobber gives a placed log (0600), given to one an earlier pass placed and was
 * killed before its chmod: otherwise the log stays as the global folder had it (0644 as ACM2
 * writes), which verify reports and only a second backfill would fix. Not a file that shares its
 * inode with a path other than the old name (a chmod would change that path's file too).
 */
function finishMode(from: string, target: string): void {
  const st = lstatSync(target);
  if ((st.mode & 0o777) === 0o600) return;
  const f = lstatSync(from);
  const ours = st.ino === f.ino && st.dev === f.dev ? st.nlink === 2 : st.nlink === 1;
  if (!ours) return;
  chmodSync(target, 0o600);
  fsyncPath(target);
}

/** run.log -> run.legacy.log, run.legacy-2.log, …; fpf_x.log likewise; no extension -> name.legacy. */
export function suffixed(file: string, k: number): string {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const dot = base.lastIndexOf('.');
  const tag = k === 1 ? '.legacy' : `.legacy-${k}`;
  return path.join(dir, dot > 0 ? `${base.slice(0, dot)}${tag}${base.slice(dot)}` : `${base}${tag}`);
}

function moveNoClobber(from: string, to: string, forceCopy: boolean, staging: string, afterCopy?: (from: string) => void): void {
  mkdirSync(path.dirname(to), { recursive: true, mode: 0o700 });
  let linked = false;
  if (!forceCopy) {
    try {
      linkSync(from, to);
      linked = true;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EMLINK') throw e;
    }
  }
  if (!linked) {
    mkdirSync(staging, { recursive: true, mode: 0o700 });
    const tmp = path.join(staging, `${randomBytes(6).toString('hex')}.tmp`);
    // A log still being written (ACM2 appending to a run's log) may grow while it is copied: the
    // copy is placed only once the file did not change across it, so no appended line is lost.
    for (let attempt = 1; ; attempt++) {
      const before = lstatSync(from);
      copyFileSync(from, tmp);
      fsyncPath(tmp);
      afterCopy?.(from);
      const after = lstatSync(from);
      if (after.size === before.size && after.mtimeMs === before.mtimeMs && lstatSync(tmp).size === after.size) break;
      if (attempt >= 5) {
        unlinkSync(tmp);
        throw new Error(`${from} kept changing while it was copied (5 tries): it is still being written; it is left in place`);
      }
    }
    linkSync(tmp, to);
    unlinkSync(tmp);
  }
  chmodSync(to, 0o600);
  fsyncPath(to);
  fsyncDir(path.dirname(to));
  unlinkSync(from);
  fsyncDir(path.dirname(from));
}

function sameBytes(a: string, b: string): boolean {
  const sa = lstatSync(a);
  const sb = lstatSync(b);
  if (!sb.isFile() || sa.size !== sb.size) return false;
  // The same inode under two names: an earlier run linked it and stopped before removing the
  // old name. With one name only, both paths reach one entry: never "the same bytes elsewhere".
  if (sa.ino === sb.ino && sa.dev === sb.dev) {
    if (sa.nlink < 2) throw new Error(`${a} and ${b} are one file reached by two paths; it is left in place`);
    return true;
  }
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const ba = Buffer.alloc(64 * 1024);
    const bb = Buffer.alloc(64 * 1024);
    for (;;) {
      const na = readSync(fa, ba, 0, ba.length, null);
      const nb = readSync(fb, bb, 0, bb.length, null);
      if (na !== nb) return false;
      if (na === 0) return true;
      if (!ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

function removeEmptyDirs(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeEmptyDirs(path.join(dir, e.name));
  if (readdirSync(dir).length === 0) rmdirSync(dir);
}


function fsyncDir(dir: string): void {
  try {
    fsyncPath(dir);
  } catch {
    /* some file systems refuse fsync on a directory; the rename/link is still ordered */
  }
}
