// `diff`: what differs between a user and its package (the package rendered through the user's
// ID map), two packages (rows matched by source id) or two users (each mapped back to package ids).
// Differences are data; only bad input (unknown version or user, wrong combination, an entry that is
// not the user's own file or folder) or a user DB that cannot be read now (locked, a hot journal) is an error.

import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readlinkSync, type Stats } from 'node:fs';
import path from 'node:path';
import { assertVersionName } from '../config.js';
import { UnavailableError, UsageError } from '../errors.js';
import type { MasterDb } from '../master/types.js';
import { canonicalJson, walkTree } from '../seed/canonical.js';
import { loadPackage, manifestTables, readPackageRows, type SeedPackage } from '../seed/package.js';
import { bytesAsText, preparePackage, renderCell, SEED_TABLES, type Cell } from '../seed/prepared.js';
import { DocIndex, isUuid, tokenize, type Template } from '../seed/remap.js';
import { isBusy, isCorrupt } from './migrate-safe.js';
import { resolveUser } from './users.js';
import { readMeta } from './seed-user.js';
import { newerMigrations, openForReading, readAgainIfReadOnly } from '../userdb/user-db.js';
import { newerToolError } from '../migrations.js';
import { entryKind, userDbEntryProblem, userDbPath, userRoot, type UserId } from '../userdb/paths.js';

export interface TableDiff {
  added: string[];
  removed: string[];
  changed: Array<{ id: string; fields: string[] }>;
}

export interface FilesDiff {
  added: string[];
  removed: string[];
  changed: string[];
}

export type DiffSide = { kind: 'package'; version: string } | { kind: 'user'; userId: number; seedVersion: string };

export interface DiffResult {
  equal: boolean;
  /** What was compared: left is the reference ("removed" = only there), right the other ("added"). */
  left: DiffSide;
  right: DiffSide;
  tables: Record<string, TableDiff>;
  files: FilesDiff;
  /**
   * User vs package: the rows and files the user's seeds of other versions made (versions are
   * additive), which are that version's and not the user's own: left out of the comparison,
   * counted here per version (`diff --user <id> --seed-version <v>` compares them). Absent when none.
   */
  otherVersions?: Record<string, { rows: number; files: number }>;
}

export type DiffRequest =
  | { kind: 'user-package'; user: string; seedVersion?: string }
  | { kind: 'packages'; a: string; b: string }
  | { kind: 'users'; a: string; b: string };

/**
 * Which of the three forms the arguments name (SPEC §5), or a UsageError.
 * `seedVersionFlag` is the flag as given; `seedVersion` also counts SEED_VERSION, which applies
 * to the user-vs-package form only (it must not make `diff v1 v2` a usage error).
 */
export function planDiff(input: { versions: string[]; users: string[]; seedVersionFlag?: string; seedVersion?: string }): DiffRequest {
  const { versions, users } = input;
  const forms = "give '--user <id> [--seed-version <v>]', '<versionA> <versionB>' or '--user <a> --user <b>'";
  if (users.length === 0) {
    if (versions.length !== 2) throw new UsageError(`diff needs two seed versions, or users: ${forms}`);
    if (input.seedVersionFlag !== undefined) throw new UsageError(`--seed-version does not apply when comparing two versions: ${forms}`);
    return { kind: 'packages', a: assertVersionName(versions[0]!), b: assertVersionName(versions[1]!) };
  }
  if (versions.length > 0) throw new UsageError(`diff takes either versions or --user, not both: ${forms}`);
  if (users.length === 1) {
    const v = input.seedVersionFlag ?? input.seedVersion;
    return { kind: 'user-package', user: users[0]!, seedVersion: v === undefined ? undefined : assertVersionName(v) };
  }
  if (users.length > 2) throw new UsageError(`diff compares at most two users (got ${users.length}): ${forms}`);
  if (input.seedVersionFlag !== undefined) throw new UsageError(`--seed-version does not apply when comparing two users (each is compared through its own ID map): ${forms}`);
  return { kind: 'users', a: users[0]!, b: users[1]! };
}

export interface DiffDeps {
  /** Needed for the user forms only. */
  master?: MasterDb;
  dataDir: string;
  seedsDir: string;
  /** How long to wait for a user DB another process holds locked before giving up (default 5 s). */
  busyTimeoutMs?: number;
}

export async function runDiff(deps: DiffDeps, req: DiffRequest): Promise<DiffResult> {
  switch (req.kind) {
    case 'packages':
      return diffPackages(deps.seedsDir, req.a, req.b);
    case 'user-package':
      return diffUserWithPackage(deps, await userOf(deps, req.user), req.seedVersion);
    case 'users':
      return diffUsers(deps, await userOf(deps, req.a), await userOf(deps, req.b));
    default: {
      const never: never = req;
      throw new Error(`unknown diff form ${JSON.stringify(never)}`);
    }
  }
}

async function userOf(deps: DiffDeps, ref: string): Promise<UserId> {
  if (!deps.master) throw new Error('diff: a user form needs the master');
  return (await resolveUser(deps.master, ref, deps.dataDir)).id;
}

// ---------------------------------------------------------------------------------------------
// The three forms

/** Two packages, rows matched by id (= source id), files by path and sha256. */
export function diffPackages(seedsDir: string, a: string, b: string): DiffResult {
  const pa = loadPackage(seedsDir, a);
  const pb = loadPackage(seedsDir, b);
  const tables = [...new Set([...manifestTables(pa.manifest), ...manifestTables(pb.manifest)])];
  return compare({ kind: 'package', version: a }, packageSnapshot(pa), { kind: 'package', version: b }, packageSnapshot(pb), tables);
}

/**
 * A user against a package: the package's rows and files rendered through the user's ID map (as
 * seeding wrote them) against the user's. Rows and files the user created show as added; ids
 * are the user's. With no map for the named version, the map of the user's own version is used,
 * so ids that both versions share still line up.
 */
export function diffUserWithPackage(deps: Pick<DiffDeps, 'dataDir' | 'seedsDir' | 'busyTimeoutMs'>, userId: UserId, seedVersion?: string): DiffResult {
  const user = openUser(deps.dataDir, userId, deps.busyTimeoutMs);
  try {
    const version = seedVersion ?? user.meta?.seed_version;
    if (version === undefined) throw new UsageError(`user ${userId} has no user_meta, so its seed version is unknown: give --seed-version`, 'no_seed_version');
    if (version === 'legacy') throw new UsageError(`user ${userId} is a legacy user (not seeded from a package): give --seed-version to compare it with one`, 'no_seed_version');
    const pkg = loadPackage(deps.seedsDir, version);
    const maps = user.maps();
    const mapVersion = maps.has(version) ? version : user.meta?.seed_version;
    const map = mapVersion === undefined ? undefined : maps.get(mapVersion);
    if (!map) throw new UsageError(`user ${userId} has no ID map for ${version}${user.meta ? ` or ${user.meta.seed_version}` : ''}: it was not seeded from a package`, 'no_id_map');
    const left = renderedPackageSnapshot(pkg, map);
    // What the user's seeds of other versions made is theirs, not rows or files the user created:
    // left out here (each is compared with its own version), and counted.
    const others = otherVersionsOf(user, maps, mapVersion!);
    const right = user.snapshot(undefined, others);
    const r = compare({ kind: 'package', version }, left, { kind: 'user', userId, seedVersion: user.meta?.seed_version ?? version }, right, [...SEED_TABLES]);
    const counted = Object.entries(others.counts).filter(([, c]) => c.rows + c.files > 0);
    return counted.length > 0 ? { ...r, otherVersions: Object.fromEntries(counted) } : r;
  } finally {
    user.close();
  }
}

/** Two users, each mapped back to package (source) ids through its own map; reported ids are source ids. */
export function diffUsers(deps: Pick<DiffDeps, 'dataDir' | 'busyTimeoutMs'>, a: UserId, b: UserId): DiffResult {
  const ua = openUser(deps.dataDir, a, deps.busyTimeoutMs);
  try {
    const ub = openUser(deps.dataDir, b, deps.busyTimeoutMs);
    try {
      const side = (u: UserHandle): [DiffSide, Snapshot] => {
        const version = u.meta?.seed_version;
        const maps = u.maps();
        const map = version === undefined ? undefined : maps.get(version);
        if (!version || !map) throw new UsageError(`user ${u.id} has no ID map for its seed version (${version ?? 'no user_meta'}): it cannot be matched with another user`, 'no_id_map');
        // The user's seeds of other versions (versions are additive) are mapped back too, each
        // under its version's name, so two users with the same seeds match on all of them.
        const others = [...maps].filter(([v]) => v !== version);
        return [{ kind: 'user', userId: u.id, seedVersion: version }, u.snapshot(reverseMap(map, others))];
      };
      const [la, sa] = side(ua);
      const [lb, sb] = side(ub);
      return compare(la, sa, lb, sb, [...SEED_TABLES]);
    } finally {
      ub.close();
    }
  } finally {
    ua.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: table -> id -> column -> canonical value, and file path -> sha256

interface Snapshot {
  tables: Map<string, Map<string, Map<string, string>>>;
  files: Map<string, string>;
  /**
   * A user's: per table, what a row inserted without naming a column gets there (its declared
   * default), for the columns whose default is a plain literal. A column the other side's rows
   * do not have (ACM2 added it to this DB since the package was cut, as an ALTER TABLE ADD COLUMN
   * does) is compared with that: the seed wrote the default there, it is no change of the row.
   */
  defaults?: Map<string, Map<string, string>>;
}

/** user_id as compared: "the owner" for a package row and for a user's own row, else its value. */
const OWNER = canonicalJson('<the user>');

/**
 * A row's fields as compared. `owner` is the user whose row it is (undefined for a package's):
 * user_id is compared as "is it the owner's", since the ids differ by design but a row that
 * names another user is gone from this user's ACM2.
 */
function rowOf(columns: string[], values: unknown[], owner?: number): Map<string, string> {
  const out = new Map<string, string>();
  columns.forEach((c, i) => {
    const v = values[i];
    out.set(c, c === 'user_id' && (owner === undefined || (v !== null && Number(v) === owner)) ? OWNER : canonicalJson(v));
  });
  return out;
}

function packageSnapshot(pkg: SeedPackage): Snapshot {
  const tables = new Map<string, Map<string, Map<string, string>>>();
  for (const [t, rows] of Object.entries(readPackageRows(pkg))) {
    const m = new Map<string, Map<string, string>>();
    for (const r of rows) m.set(String(r.id), rowOf(Object.keys(r), Object.values(r)));
    tables.set(t, m);
  }
  return { tables, files: new Map(pkg.manifest.files.map((f) => [f.path, f.sha256])) };
}

/** Render a tokenised text, leaving identifiers the map does not know as they are. */
function renderLoose(t: Template, map: ReadonlyMap<string, string>): string {
  let out = t.lits[0]!;
  for (let i = 0; i < t.toks.length; i++) out += (map.get(t.toks[i]!) ?? t.toks[i]!) + t.lits[i + 1]!;
  return out;
}

function renderedPackageSnapshot(pkg: SeedPackage, map: ReadonlyMap<string, string>): Snapshot {
  const prepared = preparePackage(pkg);
  const tables = new Map<string, Map<string, Map<string, string>>>();
  for (const t of prepared.tables) {
    const m = new Map<string, Map<string, string>>();
    for (const r of t.rows) {
      const values = r.map((v: Cell) => renderCell(v, renderLoose, map));
      m.set(String(values[t.idIndex]), rowOf(t.columns, values));
    }
    tables.set(t.name, m);
  }
  const shaOf = new Map(pkg.manifest.files.map((f) => [f.path, f.sha256]));
  const files = new Map<string, string>();
  for (const f of prepared.files) files.set(renderLoose(f.path, map), f.text ? sha256(Buffer.from(renderLoose(f.text, map), f.latin1 ? 'latin1' : 'utf8')) : shaOf.get(f.sourcePath)!);
  return { tables, files };
}

interface UserHandle {
  id: UserId;
  meta: ReturnType<typeof readMeta>;
  /** Every seed version the user has an ID map for: version -> (source id -> this user's id). */
  maps(): Map<string, Map<string, string>>;
  /** Every seed version's list of seeded files: version -> paths under the user's folder. */
  seededFiles(): Map<string, Set<string>>;
  /**
   * The user's seed tables and files; with a translator, every identifier it knows is rewritten;
   * rows and files `skip` names are left out (and counted in it).
   */
  snapshot(translate?: Translator, skip?: Skip): Snapshot;
  close(): void;
}

/** Rows (by the user's id) and files (by path) to leave out of a snapshot, with what each leaving out counts to. */
interface Skip {
  rows: Map<string, string>;
  files: Map<string, string>;
  counts: Record<string, { rows: number; files: number }>;
}

/**
 * The rows and files the user's seeds of versions other than `version` made and `version`'s did
 * not: the targets of their ID maps (rows) and their seeded-file lists (files).
 */
function otherVersionsOf(user: UserHandle, maps: Map<string, Map<string, string>>, version: string): Skip {
  const own = maps.get(version)!;
  const ownTargets = new Set(own.values());
  const files = user.seededFiles();
  const ownFiles = files.get(version) ?? new Set<string>();
  const skip: Skip = { rows: new Map(), files: new Map(), counts: {} };
  for (const [v, m] of maps) {
    if (v === version) continue;
    skip.counts[v] = { rows: 0, files: 0 };
    for (const t of m.values()) if (!ownTargets.has(t) && !skip.rows.has(t)) skip.rows.set(t, v);
  }
  for (const [v, paths] of files) {
    if (v === version) continue;
    skip.counts[v] ??= { rows: 0, files: 0 };
    for (const p of paths) if (!ownFiles.has(p) && !skip.files.has(p)) skip.files.set(p, v);
  }
  return skip;
}

interface Translator {
  text(s: string): string;
}

function openUser(dataDir: string, id: UserId, busyTimeoutMs = 5000): UserHandle {
  const file = userDbPath(dataDir, id);
  // A symlink may lead anywhere, and opening a FIFO waits for a writer for ever: only the file itself is read.
  const odd = userDbEntryProblem(dataDir, id);
  if (odd) throw new UsageError(`${odd}: diff did not open it`, 'db_not_file');
  if (!existsSync(file)) throw new UsageError(`user ${id} has no database (${file} does not exist)`, 'db_missing');
  const root = userFolder(dataDir, id);
  let open: Database.Database;
  try {
    // A data dir that turned read-only since this process last asked is read from a copy.
    open = readAgainIfReadOnly(file, () => {
      const db = openForReading(file, { timeout: busyTimeoutMs });
      try {
        // One snapshot for every read of this user (ACM2 may be writing to it meanwhile).
        db.exec('BEGIN');
        db.prepare(`SELECT count(*) FROM sqlite_master`).get();
        return db;
      } catch (e) {
        db.close();
        throw e;
      }
    });
  } catch (e) {
    throw unreadableDb(id, file, e, busyTimeoutMs);
  }
  // A DB a newer acm2 migrated may keep its ID map or seeded rows in a form this tool does not
  // know: compared the old way, it would show differences that are not there (or hide some).
  const newer = newerMigrations(open);
  if (newer.length > 0) {
    open.close();
    throw newerToolError(`user ${id}'s database ${file}`, newer, 'schema_newer', 'this acm2 did not compare it');
  }
  // Damage past the first pages shows only when a read reaches it: every read of this DB reports
  // it as the user's DB being unreadable (db_corrupt: exit 2), as opening it does, never as a bug.
  const reading = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      throw isCorrupt(e) || isBusy(e) ? unreadableDb(id, file, e, busyTimeoutMs) : e;
    }
  };
  const has = (t: string) => open.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(t) !== undefined;
  let meta: ReturnType<typeof readMeta>;
  try {
    meta = reading(() => (has('user_meta') ? readMeta(open, id) : undefined));
  } catch (e) {
    open.close();
    throw e;
  }
  const handle: UserHandle = {
    id,
    meta,
    maps() {
      const out = new Map<string, Map<string, string>>();
      if (!has('acm2_id_map')) return out;
      for (const [v, s, t] of open.prepare(`SELECT seed_version, source_id, target_id FROM acm2_id_map ORDER BY seed_version`).raw(true).iterate() as Iterable<[string, string, string]>) {
        let m = out.get(v);
        if (!m) out.set(v, (m = new Map()));
        m.set(s, t);
      }
      return out;
    },
    seededFiles() {
      const out = new Map<string, Set<string>>();
      if (!has('acm2_seed_files')) return out;
      for (const [v, p] of open.prepare(`SELECT seed_version, path FROM acm2_seed_files`).raw(true).iterate() as Iterable<[string, string]>) {
        let s = out.get(v);
        if (!s) out.set(v, (s = new Set()));
        s.add(p);
      }
      return out;
    },
    snapshot(translate, skip) {
      const tr = (v: unknown) => (!translate ? v : typeof v === 'string' ? translate.text(v) : Buffer.isBuffer(v) ? translateBytes(v, translate) : v);
      const tables = new Map<string, Map<string, Map<string, string>>>();
      const defaults = new Map<string, Map<string, string>>();
      for (const t of SEED_TABLES) {
        const m = new Map<string, Map<string, string>>();
        if (has(t)) {
          const d = new Map<string, string>();
          for (const c of open.prepare(`PRAGMA table_info(${t})`).all() as Array<{ name: string; dflt_value: string | null }>) {
            const v = literalDefault(c.dflt_value);
            if (v !== undefined) d.set(c.name, canonicalJson(v));
          }
          defaults.set(t, d);
          const stmt = open.prepare(`SELECT * FROM ${t} ORDER BY id`).raw(true);
          const cols = stmt.columns().map((c) => c.name);
          const idIx = cols.indexOf('id');
          for (const r of stmt.iterate() as Iterable<unknown[]>) {
            const other = skip?.rows.get(String(r[idIx]));
            if (other !== undefined) {
              skip!.counts[other]!.rows++;
              continue;
            }
            const values = r.map(tr);
            m.set(String(values[idIx]), rowOf(cols, values, id));
          }
        }
        tables.set(t, m);
      }
      const files = new Map<string, string>();
      if (root !== undefined) {
        for (const e of walkTree(root, { live: true })) {
          if (e.kind === 'dir') continue;
          const other = skip?.files.get(e.rel);
          if (other !== undefined) {
            skip!.counts[other]!.files++;
            continue;
          }
          // ACM2 may remove a file (a run deleted) between the walk and this read: it is gone.
          const print = entryFingerprint(path.join(root, ...e.rel.split('/')), e.kind, translate);
          if (print !== undefined) files.set(translate ? translate.text(e.rel) : e.rel, print);
        }
      }
      return { tables, files, defaults };
    },
    close: () => open.close(),
  };
  return {
    ...handle,
    maps: () => reading(() => handle.maps()),
    seededFiles: () => reading(() => handle.seededFiles()),
    snapshot: (translate, skip) => reading(() => handle.snapshot(translate, skip)),
  };
}

/**
 * Why the user's DB could not be read, as the error to report. Only SQLite's word that the file
 * is not a database (or is damaged) is corruption; a lock held past the wait and a hot journal
 * are the environment, and a later run may succeed (SPEC §2: exit 3).
 */
function unreadableDb(id: UserId, file: string, e: unknown, busyTimeoutMs: number): Error {
  const code = String((e as { code?: unknown }).code ?? '');
  if (isBusy(e)) return new UnavailableError(`user ${id}'s database ${file} is in use: another process held it locked for more than ${busyTimeoutMs / 1000} s; try again when it is done`, 'db_busy', { cause: e });
  // A writer killed mid-transaction left its journal, which only a read-write open rolls back
  // (diff reads only, and so does not); userStatus opens read-write for exactly this.
  if (/^SQLITE_READONLY_(ROLLBACK|RECOVERY)/.test(code) || (code === 'SQLITE_READONLY' && existsSync(`${file}-journal`))) {
    return new UnavailableError(
      `user ${id}'s database ${file} has a hot journal (a writer was interrupted mid-transaction), which diff does not roll back: any read-write open does, such as 'acm2 user show ${id}'; then try again`,
      'db_hot_journal',
      { cause: e },
    );
  }
  if (isCorrupt(e)) return new UsageError(`user ${id}'s database ${file} is not a readable SQLite database (${(e as Error).message}); run 'acm2 verify --user ${id}'`, 'db_corrupt', { cause: e });
  return new UnavailableError(`cannot read user ${id}'s database ${file} (${(e as Error).message})`, 'db_unreadable', { cause: e });
}

/**
 * The user's folder, or undefined when there is none. Anything but a real folder there is
 * refused: a symlink is never followed (it may lead out of the data dir), and a file is no tree.
 */
function userFolder(dataDir: string, id: UserId): string | undefined {
  const root = userRoot(dataDir, id);
  let st: Stats;
  try {
    st = lstatSync(root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  if (st.isDirectory()) return root;
  const what = st.isSymbolicLink() ? `a symlink to ${readlinkSync(root)}` : st.isFile() ? 'a regular file' : entryKind(st);
  throw new UsageError(`user ${id}'s folder ${root} is ${what}, not a folder: diff compares only the folder itself and does not follow it`, 'not_a_folder');
}

/**
 * What a user's entry is compared by: a regular file by its sha256 (as the package lists its
 * files), other entries by what they are. A package holds only regular files, and no sha256
 * equals "symlink -> …" or "other", so such an entry at a seeded path shows as changed.
 */
function entryFingerprint(abs: string, kind: 'file' | 'symlink' | 'other', translate?: Translator): string | undefined {
  if (kind === 'other') return 'other';
  let target: string | undefined;
  let buf: Buffer;
  try {
    if (kind === 'symlink') target = readlinkSync(abs);
    else buf = readFileSync(abs);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  if (target !== undefined) return `symlink -> ${translate ? translate.text(target) : target}`;
  buf = buf!;
  if (!translate) return sha256(buf);
  return sha256(translateBytes(buf, translate));
}

/**
 * Bytes (a file, a BLOB cell) with the ids back, as seeding rendered them (preparePackage,
 * renderCell): UTF-8 text as UTF-8, anything else byte for byte as latin1, so the ids in a log
 * that is not UTF-8 are mapped back too.
 */
function translateBytes(buf: Buffer, translate: Translator): Buffer {
  const { text, encoding } = bytesAsText(buf);
  return Buffer.from(translate.text(text), encoding);
}

/**
 * This user's ids back to package ids: UUIDs by value, doc ids (and their safe forms) by head. A
 * package id found in the user's data as it is (never remapped) becomes a marker, so it cannot
 * pass for the other user's correctly mapped copy of it. The ids of the user's seeds of `others`
 * versions go back to their package ids named with their version (`v1:<id>`): each version's
 * copy is a row of its own, and a package's ids are shared by every version frozen from its source.
 */
function reverseMap(map: Map<string, string>, others: Array<[string, Map<string, string>]> = []): Translator {
  const back = new Map<string, string>();
  for (const [s, t] of map) back.set(t, s);
  for (const [v, m] of others) for (const [s, t] of m) if (!back.has(t)) back.set(t, `${v}:${s}`);
  const all = [map, ...others.map(([, m]) => m)];
  for (const m of all) for (const s of m.keys()) if (!back.has(s)) back.set(s, `<package id ${s} left unmapped>`);
  const docs = new DocIndex(all.flatMap((m) => [...m.values(), ...m.keys()]).filter((t) => !isUuid(t)));
  // Every UUID on either side: a bare part of one (`[run 746301ce]`, seeding's 'uuid_part') is a token only of a known id.
  const uuids = new Set(all.flatMap((m) => [...m.values(), ...m.keys()]).filter(isUuid).map((u) => u.toLowerCase()));
  return { text: (s) => renderLoose(tokenize(s, docs, uuids), back) };
}

/**
 * The value a column's declared default (PRAGMA table_info's dflt_value, SQL text) gives, when it
 * is a plain literal (no default is NULL); undefined for an expression, which is not evaluated.
 */
function literalDefault(sql: string | null): unknown {
  if (sql === null) return null;
  const s = sql.trim();
  if (/^null$/i.test(s)) return null;
  if (/^true$/i.test(s)) return 1;
  if (/^false$/i.test(s)) return 0;
  if (/^[+-]?\d+$/.test(s)) return Number.isSafeInteger(Number(s)) ? Number(s) : undefined;
  if (/^[+-]?(\d+\.\d*|\.\d+|\d+)(e[+-]?\d+)?$/i.test(s)) return Number(s);
  const q = /^'((?:[^']|'')*)'$/s.exec(s);
  return q ? q[1]!.replace(/''/g, "'") : undefined;
}

/** UTF-8 text without NUL bytes, or undefined: the test preparePackage uses. */
function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Comparison

function compare(left: DiffSide, a: Snapshot, right: DiffSide, b: Snapshot, tableNames: string[]): DiffResult {
  const tables: Record<string, TableDiff> = {};
  for (const t of tableNames) tables[t] = compareRows(a.tables.get(t) ?? new Map(), b.tables.get(t) ?? new Map(), a.defaults?.get(t), b.defaults?.get(t));
  const files = compareFiles(a.files, b.files);
  const equal = Object.values(tables).every((d) => d.added.length + d.removed.length + d.changed.length === 0) && files.added.length + files.removed.length + files.changed.length === 0;
  return { equal, left, right, tables, files };
}

function compareRows(a: Map<string, Map<string, string>>, b: Map<string, Map<string, string>>, defaultsA?: Map<string, string>, defaultsB?: Map<string, string>): TableDiff {
  const out: TableDiff = { added: [], removed: [], changed: [] };
  // A column one side's rows lack stands for the default the other side's DB gives it (unknown
  // for a package, or for a default that is not a plain literal: then it differs, as before).
  const value = (r: Map<string, string>, c: string, otherDefaults?: Map<string, string>) => (r.has(c) ? r.get(c) : otherDefaults?.get(c));
  for (const id of a.keys()) if (!b.has(id)) out.removed.push(id);
  for (const [id, rb] of b) {
    const ra = a.get(id);
    if (!ra) {
      out.added.push(id);
      continue;
    }
    const fields = [...new Set([...ra.keys(), ...rb.keys()])].filter((c) => value(ra, c, defaultsB) !== value(rb, c, defaultsA)).sort();
    if (fields.length > 0) out.changed.push({ id, fields });
  }
  out.added.sort();
  out.removed.sort();
  out.changed.sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  return out;
}

function compareFiles(a: Map<string, string>, b: Map<string, string>): FilesDiff {
  const out: FilesDiff = { added: [], removed: [], changed: [] };
  for (const p of a.keys()) if (!b.has(p)) out.removed.push(p);
  for (const [p, h] of b) {
    if (!a.has(p)) out.added.push(p);
    else if (a.get(p) !== h) out.changed.push(p);
  }
  return { added: out.added.sort(), removed: out.removed.sort(), changed: out.changed.sort() };
}
