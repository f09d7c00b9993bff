// Reading and checking seed packages (SPEC §4): CURRENT, version lookup, the full integrity check
// every consumer runs before use, and the cheap listing. A package is immutable once frozen.

import Database from 'better-sqlite3';
import { existsSync, lstatSync, readdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { assertVersionName } from '../config.js';
import { PackageError, UnavailableError, UsageError } from '../errors.js';
import { resolveInside } from '../userdb/paths.js';
import { migrateUserDb } from '../userdb/user-db.js';
import { compareStrings, dumpTable, quoteIdent, readTableExact, sha256File, walkTree } from './canonical.js';
import {
  computePackageSha256,
  EXCLUDED_TABLES,
  manifestShapeProblems,
  PACKAGE_TABLES,
  type Manifest,
  type ManifestTable,
} from './manifest.js';

export type { Manifest, ManifestFile, ManifestTable } from './manifest.js';
export { PACKAGE_TABLES, EXCLUDED_TABLES, type PackageTable } from './manifest.js';

export interface SeedPackage {
  version: string;
  dir: string;
  manifest: Manifest;
  seedDbPath: string;
  filesDir: string;
}

export interface PackageCheck {
  version: string;
  ok: boolean;
  problems: string[];
}

export interface PackageListing {
  version: string;
  current: boolean;
  rows: number;
  files: number;
  bytes: number;
  packageSha256: string;
  createdAt: string;
  /**
   * Set when the version cannot be used as listed (its manifest cannot be read, its folder is a
   * symlink); the other fields are then zero/empty.
   */
  error?: string;
}

export const CURRENT_FILE = 'CURRENT';
export const MANIFEST_FILE = 'manifest.json';
export const SEED_DB_FILE = 'seed.db';
export const FILES_DIR = 'files';
const TOP_LEVEL = new Set([MANIFEST_FILE, SEED_DB_FILE, FILES_DIR]);

type ProblemKind = 'unknown' | 'incomplete' | 'malformed' | 'tampered' | 'unsafe';
interface Problem {
  kind: ProblemKind;
  text: string;
}

/** The version named in `<seedsDir>/CURRENT`. */
export function readCurrent(seedsDir: string): string {
  const file = path.join(seedsDir, CURRENT_FILE);
  let raw: string;
  try {
    raw = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      // The folder itself missing (a mistyped --seeds or ACM2_SEED_DIR) is said as every command says it.
      assertSeedsDir(seedsDir);
      throw new PackageError(`no seed version is CURRENT: ${file} does not exist (give --seed-version or SEED_VERSION, or freeze with --set-current)`, { cause: e });
    }
    throw new PackageError(`cannot read ${file} (${code ?? String(e)})`, { cause: e });
  }
  const v = raw.replace(/\r?\n$/, '');
  try {
    return assertVersionName(v);
  } catch (e) {
    throw new PackageError(`${file} does not hold a valid version name (found "${[...v].slice(0, 80).join('')}")`, { cause: e });
  }
}

/** An explicit version (validated) or, when none is given, the CURRENT one. */
export function resolveVersion(seedsDir: string, explicit?: string): string {
  return explicit !== undefined && explicit !== '' ? assertVersionName(explicit) : readCurrent(seedsDir);
}

/** resolveVersion, or undefined where it would throw (no readable CURRENT, a bad name): for a guess whose error is another step's to report. */
export function versionOrUndefined(seedsDir: string, explicit?: string): string | undefined {
  try {
    return resolveVersion(seedsDir, explicit);
  } catch {
    return undefined;
  }
}

/** Version folders in seedsDir (staging and other dot-folders ignored), in natural order. */
export function knownVersions(seedsDir: string): string[] {
  return entriesOfKind(seedsDir, (st) => st.isDirectory());
}

/**
 * Entries in seedsDir named like a version that are symlinks. No consumer follows one (it may lead
 * anywhere: inspect refuses it), but a listing or a check of the whole folder names them as
 * refused rather than skipping them in silence. CURRENT is the file every seed reads, no version.
 */
export function symlinkedVersions(seedsDir: string): string[] {
  return entriesOfKind(seedsDir, (st) => st.isSymbolicLink());
}

/** Entries of seedsDir named like a version (no dot-folder, not CURRENT) whose lstat is `kind`, in natural order. */
function entriesOfKind(seedsDir: string, kind: (st: Stats) => boolean): string[] {
  let names: string[];
  try {
    names = readdirSync(seedsDir);
  } catch {
    return [];
  }
  return names
    .filter((n) => !n.startsWith('.') && n !== CURRENT_FILE && isVersionName(n))
    .filter((n) => {
      try {
        return kind(lstatSync(path.join(seedsDir, n)));
      } catch {
        return false; // gone since the listing, or not to be looked at: no version
      }
    })
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

/** Every version entry in seedsDir, folders and refused symlinks alike, in natural order. */
export function versionEntries(seedsDir: string): string[] {
  return [...knownVersions(seedsDir), ...symlinkedVersions(seedsDir)].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

/** Throw what a seeds folder that is not there means to every command that reads packages. */
export function assertSeedsDir(seedsDir: string): void {
  if (!existsSync(seedsDir)) throw new PackageError(`seed packages folder ${seedsDir} does not exist`);
}

/**
 * Refuse a version whose folder is a symlink with the sentence and code `acm2 seed show` gives it
 * (loadPackage's), so every command that names a version says the same of it.
 */
export function refuseSymlinkedVersion(seedsDir: string, version: string): void {
  if (!symlinkedVersions(seedsDir).includes(version)) return;
  const { problems } = inspect(seedsDir, version, true);
  if (problems[0]) throw packageProblem(version, problems[0]);
}

function packageProblem(version: string, first: Problem): Error {
  // The same code as `acm2 seed check` gives a version that is not there.
  if (first.kind === 'unknown') return new UsageError(first.text, 'unknown_version');
  // Stops at the first problem: `acm2 seed check` lists them all.
  return new PackageError(`seed package ${version} is ${first.kind}: ${first.text}`);
}

function isVersionName(n: string): boolean {
  try {
    assertVersionName(n);
    return true;
  } catch {
    return false;
  }
}

const cache = new Map<string, SeedPackage>();

/** Forget every checked package (tests tamper with packages inside one process). */
export function clearPackageCache(): void {
  cache.clear();
}

/**
 * Check a package fully and return it, or throw PackageError naming the version and its first
 * problem. Results are cached per process by folder and manifest mtime.
 */
export function loadPackage(seedsDir: string, version: string): SeedPackage {
  assertVersionName(version);
  const dir = path.join(path.resolve(seedsDir), version);
  const key = cacheKey(dir);
  const hit = key !== undefined ? cache.get(key) : undefined;
  if (hit) return hit;
  const { problems, manifest } = inspect(seedsDir, version, true);
  const first = problems[0];
  if (first || !manifest) throw packageProblem(version, first ?? { kind: 'malformed', text: 'no manifest' });
  const pkg: SeedPackage = {
    version,
    dir,
    manifest,
    seedDbPath: path.join(dir, SEED_DB_FILE),
    filesDir: path.join(dir, FILES_DIR),
  };
  const after = cacheKey(dir);
  if (after !== undefined && after === key) cache.set(after, pkg);
  return pkg;
}

/** The same checks as loadPackage, collecting every problem instead of stopping at the first. */
export function checkPackage(seedsDir: string, version: string): PackageCheck {
  assertVersionName(version);
  const { problems } = inspect(seedsDir, version, false);
  return { version, ok: problems.length === 0, problems: problems.map((p) => p.text) };
}

export interface CurrentState {
  /** The version CURRENT names, when that version is there. */
  version?: string;
  /** Why CURRENT cannot be used (unreadable, not a version name, a version that is not there). */
  error?: string;
}

/** What CURRENT points at. No CURRENT file is a state, not an error: nothing is current yet. */
export function currentState(seedsDir: string): CurrentState {
  if (lstatSync(path.join(seedsDir, CURRENT_FILE), { throwIfNoEntry: false }) === undefined) return {};
  let version: string;
  try {
    version = readCurrent(seedsDir);
  } catch (e) {
    return { error: (e as Error).message };
  }
  if (!knownVersions(seedsDir).includes(version)) return { error: `${path.join(seedsDir, CURRENT_FILE)} names '${version}', which is not a version in ${seedsDir}` };
  return { version };
}

/** Every version with its totals, from the manifests alone (no hashing). */
export function listPackages(seedsDir: string): PackageListing[] {
  assertSeedsDir(seedsDir);
  const current = currentState(seedsDir).version;
  const linked = symlinkedVersions(seedsDir);
  return versionEntries(seedsDir).map((version) => {
    const base = { version, current: version === current };
    const none = { rows: 0, files: 0, bytes: 0, packageSha256: '', createdAt: '' };
    // Named as inspect refuses it: seed show, seed check and every seed say the same of it.
    if (linked.includes(version)) return { ...base, ...none, error: `${path.join(path.resolve(seedsDir), version)} is a symlink` };
    try {
      const m = JSON.parse(readFileSync(path.join(seedsDir, version, MANIFEST_FILE), 'utf8')) as Manifest;
      const shape = manifestShapeProblems(m, version);
      if (shape.length > 0) throw new Error(shape[0]);
      return {
        ...base,
        rows: Object.values(m.tables).reduce((n, t) => n + t.rows, 0),
        files: m.files.length,
        bytes: m.files.reduce((n, f) => n + f.bytes, 0) + m.seedDb.bytes,
        packageSha256: m.packageSha256,
        createdAt: m.createdAt,
      };
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'manifest.json is missing' : `manifest unreadable: ${(e as Error).message}`;
      return { ...base, ...none, error: why };
    }
  });
}

/** Every row of the package's tables, in primary-key order. */
export function readPackageRows(pkg: SeedPackage): Record<string, Record<string, unknown>[]> {
  const db = new Database(pkg.seedDbPath, { readonly: true, fileMustExist: true });
  try {
    const out: Record<string, Record<string, unknown>[]> = {};
    for (const t of manifestTables(pkg.manifest)) {
      // Integers beyond 2^53 would be rounded by Number(): keep those as BigInt.
      out[t] = readTableExact(db, t).map((r) =>
        Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'bigint' && Number.isSafeInteger(Number(v)) ? Number(v) : v])),
      );
    }
    return out;
  } finally {
    db.close();
  }
}

/** Manifest table names, package tables first (references before referrers). */
export function manifestTables(m: Manifest): string[] {
  const known = PACKAGE_TABLES.filter((t) => t in m.tables) as string[];
  return [...known, ...Object.keys(m.tables).filter((t) => !known.includes(t)).sort(compareStrings)];
}

/** Absolute path of a manifest file path inside the package (refuses escapes). */
export function packageFilePath(pkg: SeedPackage, rel: string): string {
  return resolveInside(pkg.filesDir, rel);
}

function cacheKey(dir: string): string | undefined {
  try {
    const st = statSync(path.join(dir, MANIFEST_FILE));
    return `${dir}\0${st.ino}\0${st.size}\0${st.mtimeMs}\0${st.ctimeMs}`;
  } catch {
    return undefined;
  }
}

/**
 * The whole check. With stopEarly it returns at the first problem (loadPackage); otherwise it
 * collects everything it can still check.
 */
/**
 * inspectReadable, with a package this host cannot read (EACCES, EIO: a file system error, not
 * a fault of the package) said as such: exit 3, the path and the errno named.
 */
function inspect(seedsDir: string, version: string, stopEarly: boolean): { problems: Problem[]; manifest?: Manifest } {
  try {
    return inspectReadable(seedsDir, version, stopEarly);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) {
      const where = (e as NodeJS.ErrnoException).path ?? path.join(seedsDir, version);
      throw new UnavailableError(`cannot read seed package ${version}: ${where} (${code}); check its permissions and the disk`, 'package_unreadable', { cause: e });
    }
    throw e;
  }
}

function inspectReadable(seedsDir: string, version: string, stopEarly: boolean): { problems: Problem[]; manifest?: Manifest } {
  const problems: Problem[] = [];
  const add = (kind: ProblemKind, text: string) => {
    problems.push({ kind, text });
    return stopEarly;
  };
  const dir = path.join(path.resolve(seedsDir), version);

  let st;
  try {
    st = lstatSync(dir);
  } catch (e) {
    // Only a version that is not there is unknown; a folder this host cannot read is not.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw e;
    // No seeds folder at all is a mistyped --seeds / ACM2_SEED_DIR, not a version missing from it.
    assertSeedsDir(seedsDir);
    const known = knownVersions(seedsDir);
    add('unknown', `unknown seed version '${version}' in ${seedsDir} (known: ${known.length > 0 ? known.join(', ') : 'none'})`);
    return { problems };
  }
  if (st.isSymbolicLink()) {
    add('unsafe', `${dir} is a symlink`);
    return { problems };
  }
  if (!st.isDirectory()) {
    add('malformed', `${dir} is not a folder`);
    return { problems };
  }

  // Structure: no symlinks or special files anywhere, nothing unexpected beside the three parts.
  const tree = walkTree(dir);
  const onDisk = new Map<string, number>();
  for (const e of tree) {
    if (e.kind === 'symlink' && add('unsafe', `${e.rel} is a symlink`)) return { problems };
    if (e.kind === 'other' && add('unsafe', `${e.rel} ${e.rel.includes('\uFFFD') ? 'has a name that is not valid UTF-8' : 'is not a regular file or folder'}`)) return { problems };
    const top = e.rel.split('/')[0] as string;
    if (!TOP_LEVEL.has(top) && e.rel === top && add('tampered', `unexpected ${e.rel} in the package`)) return { problems };
    if (e.kind === 'file' && e.rel.startsWith(`${FILES_DIR}/`)) onDisk.set(e.rel.slice(FILES_DIR.length + 1), e.bytes);
  }
  const kindOf = (rel: string) => tree.find((e) => e.rel === rel)?.kind;
  if (kindOf(FILES_DIR) !== undefined && kindOf(FILES_DIR) !== 'dir' && add('malformed', `${FILES_DIR} is not a folder`)) return { problems };

  // Manifest: parse, shape, hash.
  let raw: unknown;
  if (kindOf(MANIFEST_FILE) !== 'file') {
    add(kindOf(MANIFEST_FILE) === undefined ? 'incomplete' : 'malformed', `${MANIFEST_FILE} is missing`);
    return { problems };
  }
  const text = readFileSync(path.join(dir, MANIFEST_FILE), 'utf8'); // unreadable: see inspect
  try {
    raw = JSON.parse(text);
  } catch (e) {
    add('malformed', `${MANIFEST_FILE} is not valid JSON (${(e as Error).message})`);
    return { problems };
  }
  const shape = manifestShapeProblems(raw, version);
  if (shape.length > 0) {
    for (const s of shape) if (add(/path '/.test(s) ? 'unsafe' : 'malformed', s)) break;
    return { problems };
  }
  const m = raw as Manifest;
  if (computePackageSha256(m) !== m.packageSha256) {
    if (add('tampered', `${MANIFEST_FILE} does not match its packageSha256 (it was edited after freezing)`)) return { problems };
  }

  // seed.db: size and hash of the whole file, then the table dumps.
  const seedDb = path.join(dir, SEED_DB_FILE);
  let seedDbOk = false;
  if (kindOf(SEED_DB_FILE) !== 'file') {
    if (add('incomplete', `${SEED_DB_FILE} is missing`)) return { problems };
  } else {
    const h = sha256File(seedDb);
    if (h.bytes !== m.seedDb.bytes) {
      if (add('tampered', `${SEED_DB_FILE} is ${h.bytes} bytes, the manifest says ${m.seedDb.bytes}`)) return { problems };
    } else if (h.sha256 !== m.seedDb.sha256) {
      if (add('tampered', `${SEED_DB_FILE} sha256 does not match the manifest`)) return { problems };
    } else seedDbOk = true;
  }

  // files/: exactly the manifest's list, each with its size and hash.
  const listed = new Map(m.files.map((f) => [f.path, f]));
  for (const f of m.files) {
    const bytes = onDisk.get(f.path);
    const rel = `${FILES_DIR}/${f.path}`;
    if (bytes === undefined) {
      if (add('incomplete', `${rel} is missing`)) return { problems };
      continue;
    }
    if (bytes !== f.bytes) {
      if (add('tampered', `${rel} is ${bytes} bytes, the manifest says ${f.bytes}`)) return { problems };
      continue;
    }
    if (sha256File(path.join(dir, FILES_DIR, ...f.path.split('/'))).sha256 !== f.sha256) {
      if (add('tampered', `${rel} sha256 does not match the manifest`)) return { problems };
    }
  }
  for (const rel of onDisk.keys()) {
    if (!listed.has(rel) && add('tampered', `${FILES_DIR}/${rel} is not in the manifest`)) return { problems };
  }

  // Tables: only meaningful once seed.db is the frozen file.
  if (seedDbOk) {
    for (const p of tableProblems(seedDb, m.tables)) if (add('tampered', p)) return { problems };
  }
  return { problems, manifest: problems.length === 0 ? m : undefined };
}

/**
 * seed.db as seeding will read it: every package table a real table whose columns the user schema
 * has (and that carries every column seeding needs), its dump matching the manifest; beside them
 * only the excluded tables, empty, and indexes. No views, triggers or other tables, so a name
 * cannot hide other rows and nothing runs when the package is read.
 */
function tableProblems(seedDb: string, tables: Record<string, ManifestTable>): string[] {
  const out: string[] = [];
  let db: Database.Database | undefined;
  try {
    db = new Database(seedDb, { readonly: true, fileMustExist: true });
    const objects = db.prepare(`SELECT type, name, sql FROM sqlite_master`).all() as Array<{ type: string; name: string; sql: string | null }>;
    const real = new Set<string>();
    for (const o of objects) {
      if (o.type === 'index') continue; // on a table judged below; reading a table never runs one
      if (o.type !== 'table') out.push(`${SEED_DB_FILE} holds a ${o.type} "${o.name}"; a package holds only tables`);
      else if (/^\s*CREATE\s+VIRTUAL\b/i.test(o.sql ?? '')) out.push(`${SEED_DB_FILE} table "${o.name}" is a virtual table`);
      else if (ALLOWED_TABLES.includes(o.name)) real.add(o.name);
      else if (!INTERNAL_TABLE.test(o.name)) out.push(`${SEED_DB_FILE} holds table "${o.name}", which is not a package table`);
    }

    const columns = new Map<string, Array<{ name: string; hidden: number }>>();
    const listed = db
      .prepare(`SELECT m.name AS t, p.name AS c, p.hidden AS hidden FROM sqlite_master m JOIN pragma_table_xinfo(m.name) p WHERE m.type = 'table' AND m.name IN (${PACKAGE_TABLES.map(() => '?').join(', ')})`)
      .all(...PACKAGE_TABLES) as Array<{ t: string; c: string; hidden: number }>;
    for (const r of listed) columns.set(r.t, [...(columns.get(r.t) ?? []), { name: r.c, hidden: r.hidden }]);
    const schema = userSchemaColumns();
    for (const name of PACKAGE_TABLES) {
      if (!real.has(name)) {
        out.push(`${SEED_DB_FILE} has no table ${name}`);
        continue;
      }
      const want = schema.get(name);
      const have = columns.get(name) ?? [];
      const bad = [
        ...have.filter((c) => c.hidden !== 0).map((c) => `${SEED_DB_FILE} table ${name} column "${c.name}" is generated or hidden`),
        ...have.filter((c) => c.hidden === 0 && !want?.all.has(c.name)).map((c) => `${SEED_DB_FILE} table ${name} has column "${c.name}", which the user schema lacks`),
        ...(want?.required ?? []).filter((c) => !have.some((h) => h.name === c)).map((c) => `${SEED_DB_FILE} table ${name} lacks column ${c}, which seeding needs`),
      ];
      out.push(...bad);
      const expected = tables[name];
      if (bad.length > 0 || !expected) continue;
      const got = dumpTable(db, name);
      if (got.rows !== expected.rows) out.push(`${SEED_DB_FILE} table ${name} has ${got.rows} rows, the manifest says ${expected.rows}`);
      else if (got.sha256 !== expected.sha256) out.push(`${SEED_DB_FILE} table ${name} sha256 does not match the manifest`);
    }
    // The excluded tables are part of ACM2's schema, so seed.db has them: always empty.
    for (const t of EXCLUDED_TABLES) {
      if (!real.has(t)) continue;
      const n = (db.prepare(`SELECT COUNT(*) AS n FROM ${quoteIdent(t)}`).get() as { n: number }).n;
      if (n > 0) out.push(`${SEED_DB_FILE} table ${t} holds ${n} rows, but credentials and personal state are never in a package`);
    }
  } catch (e) {
    out.push(`${SEED_DB_FILE} cannot be read as SQLite (${(e as Error).message})`);
  } finally {
    db?.close();
  }
  return out;
}

const ALLOWED_TABLES: readonly string[] = [...PACKAGE_TABLES, ...EXCLUDED_TABLES];
/** SQLite's own bookkeeping (AUTOINCREMENT, ANALYZE): only SQLite can create these names. */
const INTERNAL_TABLE = /^sqlite_(sequence|stat[1-4])$/;

interface SchemaTable {
  all: Set<string>;
  /** What seeding cannot do without: the primary key, NOT NULL columns without a default, user_id. */
  required: string[];
}
let userSchema: Map<string, SchemaTable> | undefined;

/** The package tables' columns in a fresh user DB: every user migration, applied once in memory. */
function userSchemaColumns(): Map<string, SchemaTable> {
  if (userSchema) return userSchema;
  const mem = new Database(':memory:');
  try {
    migrateUserDb(mem);
    const rows = mem
      .prepare(`SELECT m.name AS t, p.name AS c, p."notnull" AS nn, p.dflt_value AS dflt, p.pk AS pk FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'`)
      .all() as Array<{ t: string; c: string; nn: number; dflt: unknown; pk: number }>;
    const map = new Map<string, SchemaTable>();
    for (const r of rows) {
      const t = map.get(r.t) ?? { all: new Set<string>(), required: [] };
      t.all.add(r.c);
      if (r.pk > 0 || (r.nn === 1 && r.dflt === null) || r.c === 'user_id') t.required.push(r.c);
      map.set(r.t, t);
    }
    userSchema = map;
    return map;
  } finally {
    mem.close();
  }
}
