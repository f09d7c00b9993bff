// Opens and migrates a per-user SQLite DB (ACM2's schema plus the tool's tables).
// Migrations are ordered and checksummed; the ledger lives in the DB itself.

import Database from 'better-sqlite3';
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { canWrite, processAlive } from '../durable.js';
import { thisPidSpace } from '../core/worker-name.js';
import { checkLedger, loadMigrations, newerToolError, type Migration } from '../migrations.js';
import { isDiskFull, NeedsOperatorError, UnavailableError, UsageError } from '../errors.js';
import { userDbEntryProblem, userDbPath, type UserId } from './paths.js';
import { PACKAGE_TABLES } from '../seed/manifest.js';

export type SqliteDb = Database.Database;

export const USER_MIGRATIONS = 'user';

const LEDGER_DDL = `CREATE TABLE IF NOT EXISTS acm2_migrations (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)`;

export function userMigrations(): Migration[] {
  return loadMigrations(USER_MIGRATIONS);
}

export interface OpenUserDbOptions {
  /** Create the file (0600) if it does not exist. */
  create?: boolean;
  readonly?: boolean;
  /** Milliseconds to wait on a locked DB. */
  busyTimeoutMs?: number;
  /** Only read (never written through this connection): see openForReading. */
  forReading?: boolean;
}

export function openSqlite(file: string, opts: OpenUserDbOptions = {}): SqliteDb {
  const exists = existsSync(file);
  if (!exists && !opts.create) throw new UsageError(`database ${file} does not exist`, 'db_missing');
  if (!exists) {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  }
  const db =
    opts.forReading && exists
      ? openForReading(file, { readonly: opts.readonly ?? false, timeout: opts.busyTimeoutMs ?? 5000 })
      : new Database(file, { readonly: opts.readonly ?? false, fileMustExist: !opts.create });
  db.pragma(`busy_timeout = ${opts.busyTimeoutMs ?? 5000}`);
  // better-sqlite3 turns foreign keys on; ACM2 never does (schema.sql). With them on, the seed's
  // INSERT OR REPLACE of a seeded row would run the ON DELETE actions of a user DB's foreign keys
  // (CASCADE, SET NULL) and delete or change the user's own rows that reference it.
  db.pragma('foreign_keys = OFF');
  if (!exists) chmodSync(file, 0o600);
  return db;
}

/**
 * Open an existing DB that will only be read. SQLite cannot open a WAL DB whose -shm file is not
 * there in a folder it may not write (a read-only mount or backup snapshot, a data dir of another
 * uid): it would have to create the -shm, and says SQLITE_CANTOPEN, "unable to open database
 * file", although the DB is sound. Such a DB is read from a private copy of the file and its -wal
 * in the temp folder (removed on close): the same content, and nothing written beside it.
 * `fileReadOnly`: the caller found that this process may not write the file itself (see
 * needsPrivateCopy).
 */
export function openForReading(file: string, opts: { readonly?: boolean; timeout?: number; fileReadOnly?: boolean } = {}): SqliteDb {
  const readonly = opts.readonly ?? true;
  const timeout = opts.timeout ?? 5000; // better-sqlite3 refuses `timeout: undefined`
  if (!needsPrivateCopy(file, opts.fileReadOnly ?? false)) return new Database(file, { readonly, fileMustExist: true, timeout });
  sweepDeadCopies();
  let dir: string;
  try {
    dir = mkdtempSync(path.join(tmpdir(), `${COPY_PREFIX}${process.pid}.${thisPidSpace() || 'x'}-`));
  } catch (e) {
    throw tempFolderProblem(e, file);
  }
  try {
    const copy = path.join(dir, path.basename(file));
    copyFileSync(file, copy);
    if (existsSync(`${file}-wal`)) copyFileSync(`${file}-wal`, `${copy}-wal`);
    const db = new Database(copy, { readonly, fileMustExist: true, timeout });
    try {
      // SQLite makes the copy's -shm (32 KiB, in the temp folder) at the first read, not at open:
      // read now, so a temp folder that holds the copy but not its -shm is said as what it is.
      db.pragma('schema_version', { simple: true });
    } catch (e) {
      db.close();
      throw e;
    }
    const close = db.close.bind(db);
    db.close = () => {
      try {
        return close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };
    return db;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    // Only writing the copy fails so (reading the DB does not): the temp folder's problem.
    const code = (e as NodeJS.ErrnoException).code;
    throw code === 'EROFS' || isDiskFull(e) ? tempFolderProblem(e, file) : e;
  }
}

const COPY_PREFIX = 'acm2-read-';
/** A copy's folder name: the prefix, its process's pid and pid space, mkdtemp's suffix. */
const COPY_NAME = new RegExp(`^${COPY_PREFIX}(\\d+)\\.([^-]+)-`);
/** Temp folders swept by this process (once each). */
const sweptIn = new Set<string>();

/**
 * Private copies a process left when it was killed (SIGINT, kill -9: a copy is removed on close,
 * which never came): removed by the next process that makes one. Each is named after its process's
 * pid and pid space, and only those of a pid of this pid space that is gone are touched.
 */
function sweepDeadCopies(): void {
  const tmp = tmpdir();
  // Where /proc does not say which pid space this is, a pid elsewhere cannot be told dead: no sweep.
  if (sweptIn.has(tmp) || thisPidSpace() === '') return;
  sweptIn.add(tmp);
  let names: string[];
  try {
    names = readdirSync(tmp);
  } catch {
    return;
  }
  for (const name of names) {
    // Only this pid space's (a container sharing /tmp has pids of its own).
    const [, pid, space] = COPY_NAME.exec(name) ?? [];
    if (pid === undefined || space !== thisPidSpace() || Number(pid) === process.pid || processAlive(Number(pid))) continue;
    try {
      rmSync(path.join(tmp, name), { recursive: true, force: true });
    } catch {
      // Another user's (a shared /tmp: its 0700 folder, the sticky bit): theirs to remove. This
      // process's read goes on; failing it would say the DB, or the master, cannot be opened.
    }
  }
}

const tempFolderProblems = new WeakSet<object>();

/** The temp folder cannot hold a private copy: the environment (exit 3), not the user's DB. */
export function tempFolderProblem(e: unknown, file: string): UnavailableError {
  const code = String((e as NodeJS.ErrnoException).code ?? (e as Error).message);
  const err = new UnavailableError(
    `cannot copy ${file} to read it into the temp folder ${tmpdir()} (${code}); set TMPDIR to a folder with room`,
    isDiskFull(e) ? 'disk_full' : 'read_only',
    { cause: e },
  );
  tempFolderProblems.add(err);
  return err;
}

/** Whether e is tempFolderProblem's: a fault of this host's temp folder, alike for every DB read. */
export function isTempFolderProblem(e: unknown): boolean {
  return typeof e === 'object' && e !== null && tempFolderProblems.has(e);
}

/**
 * Whether a folder may be written, asked once per folder per process: every user DB of a fleet is
 * in the data dir, and an access() per user was a measurable share of backfill's planning.
 * A data dir that turns read-only mid-run is then met as a failed open, as before this check.
 */
const writableFolders = new Map<string, boolean>();
function folderWritable(dir: string): boolean {
  let ok = writableFolders.get(dir);
  if (ok === undefined) {
    if (writableFolders.size >= 64) writableFolders.clear();
    writableFolders.set(dir, (ok = canWrite(dir)));
  }
  return ok;
}

/**
 * Forget what this process knew of a folder: true when it had called it writable. A read that
 * failed as a read-only place fails (SQLITE_CANTOPEN) then asks again, and may use a copy.
 */
export function forgetWritable(dir: string): boolean {
  const was = writableFolders.get(dir) === true;
  writableFolders.delete(dir);
  return was;
}

/**
 * Whether a read of `file` failed because its folder turned read-only since this process last
 * asked (a remount after disk errors): a WAL DB without its -shm cannot be read in place there, and
 * SQLite says SQLITE_CANTOPEN at the first read. The folder is then forgotten, so the next
 * openForReading asks again and reads a private copy. Costs nothing on a read that worked.
 */
export function turnedReadOnly(e: unknown, file: string): boolean {
  return (e as { code?: unknown } | undefined)?.code === 'SQLITE_CANTOPEN' && forgetWritable(path.dirname(file));
}

/**
 * Run a read of `file` (open with openForReading, read, close: all inside `read`), once more if
 * its folder turned read-only meanwhile (see turnedReadOnly). Every reader of user DBs in a
 * long-lived process goes through this, so none reports a sound DB unreadable after a remount.
 */
export function readAgainIfReadOnly<T>(file: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (!turnedReadOnly(e, file)) throw e;
    return read();
  }
}

/**
 * A WAL DB (header bytes 18-19 = 2) that SQLite would need files beside to open: without its -shm
 * file, in a folder this process cannot write; or, when the file itself may not be written here
 * (`fileReadOnly`: chmod 0400, another account's file) in a folder that may, without its -wal or
 * its -shm. SQLite makes those even for a read-only connection, and one that cannot write the DB
 * never removes them: they would stay beside it, made by a process that changed nothing.
 */
function needsPrivateCopy(file: string, fileReadOnly = false): boolean {
  const wouldMake = folderWritable(path.dirname(file))
    ? fileReadOnly && !(existsSync(`${file}-wal`) && existsSync(`${file}-shm`))
    : !existsSync(`${file}-shm`);
  if (!wouldMake) return false;
  const head = Buffer.alloc(20);
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    if (readSync(fd, head, 0, 20, 0) < 20) return false;
  } catch {
    return false; // opening it in place says what is wrong
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return head.toString('latin1', 0, 16) === 'SQLite format 3\0' && head[18] === 2 && head[19] === 2;
}

export function openUserDb(dataDir: string, id: UserId, opts: OpenUserDbOptions = {}): SqliteDb {
  const odd = userDbEntryProblem(dataDir, id);
  if (odd) throw new NeedsOperatorError(`${odd}: it was not opened; put the user's database file itself there or move the entry aside, then run: acm2 user seed ${id}`);
  return openSqlite(userDbPath(dataDir, id), opts);
}

export interface AppliedMigration {
  id: number;
  name: string;
  checksum: string;
}

export function appliedMigrations(db: SqliteDb): AppliedMigration[] {
  const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE type='table' AND name='acm2_migrations'`).get();
  if (!has) return [];
  return db.prepare(`SELECT id, name, checksum FROM acm2_migrations ORDER BY id`).all() as AppliedMigration[];
}

/**
 * Migrations not yet applied; `all` defaults to the shipped list (tests may pass another). Throws
 * for a DB a newer acm2 migrated (exit 3, schema_newer) or one applied with another checksum.
 */
export function pendingMigrations(db: SqliteDb, all: Migration[] = userMigrations()): Migration[] {
  return ledgerVerdict(db.name, all, appliedMigrations(db));
}

/** pendingMigrations for a ledger already read (schemaWork reads it with the table list). */
export function ledgerVerdict(file: string, all: Migration[], ledger: readonly AppliedMigration[]): Migration[] {
  const c = checkLedger(all, ledger);
  if (c.unknown.length > 0) throw newerToolError(`the user DB ${file}`, c.unknown, 'schema_newer');
  if (c.changed) throw new UsageError(`user DB migration ${c.changed.name} was applied with a different checksum`, 'migration_checksum');
  return c.pending;
}

/**
 * The ledger rows a newer acm2 wrote (migrations this tool does not ship), in one read; none for a
 * DB without a ledger or one that cannot be read (what reads it next says what is wrong).
 */
export function newerMigrations(db: SqliteDb, all: Migration[] = userMigrations()): AppliedMigration[] {
  let ledger: AppliedMigration[];
  try {
    ledger = db.prepare(`SELECT id, name, checksum FROM acm2_migrations`).all() as AppliedMigration[];
  } catch {
    return [];
  }
  return checkLedger(all, ledger).unknown;
}

/** Apply every pending migration, each in its own transaction with its ledger row. */
export function migrateUserDb(db: SqliteDb, now = new Date()): Migration[] {
  adoptAcm2Db(db, now);
  db.exec(LEDGER_DDL);
  const pending = pendingMigrations(db);
  for (const m of pending) {
    db.transaction(() => {
      db.exec(m.sql);
      db.prepare(`INSERT INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(
        m.id,
        m.name,
        m.checksum,
        now.toISOString(),
      );
    })();
  }
  return pending;
}

/**
 * A DB that ACM2 created itself (create_all, no ledger) already has migration 1's tables:
 * record that baseline instead of running it again. Returns whether it adopted the DB.
 */
export function adoptAcm2Db(db: SqliteDb, now = new Date()): boolean {
  if (appliedMigrations(db).length > 0) return false;
  const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE type='table' AND name='contents'`).get();
  if (!has) return false;
  recordBaseline(db, 1, now);
  return true;
}

/** Record migrations as applied without running them (adopting a DB ACM2 created itself). */
export function recordBaseline(db: SqliteDb, upTo: number, now = new Date()): void {
  db.exec(LEDGER_DDL);
  const ins = db.prepare(`INSERT OR IGNORE INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`);
  for (const m of userMigrations().filter((x) => x.id <= upTo)) ins.run(m.id, m.name, m.checksum, now.toISOString());
}

export function isSchemaCurrent(db: SqliteDb): boolean {
  try {
    return pendingMigrations(db).length === 0 && appliedMigrations(db).length > 0;
  } catch {
    return false;
  }
}

/** ACM2's eleven tables, in schema.sql order. */
export const ACM2_TABLES = [
  'documents',
  'contents',
  'github_connections',
  'provider_keys',
  'usage_stats',
  'user_meta',
  'user_settings',
  'presets',
  'runs',
  'tasks',
  'artifacts',
] as const;
export type Acm2Table = (typeof ACM2_TABLES)[number];

// ---------------------------------------------------------------------------------------------
// Adoption of DBs that ACM2 created itself at other revisions (drift). ACM2 ran create_all with
// whatever models it had, never migrated, and on drift deleted the DB; here the drift is measured
// against migration 1 (ACM2 @5107384) and repaired only by adding what is missing — never by
// rebuilding or dropping a table, so no row can be lost on the way.

/** Record one migration as applied (the ledger row migrateUserDb writes). */
export function recordMigration(db: SqliteDb, m: Migration, now = new Date()): void {
  db.exec(LEDGER_DDL);
  db.prepare(`INSERT INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(m.id, m.name, m.checksum, now.toISOString());
}

export function hasTable(db: SqliteDb, name: string): boolean {
  return Boolean(db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name));
}

/**
 * Whether the tool's seed record (acm2_seed_state) or ID map names `version`: a seed of it by this
 * tool began in this DB. A version neither names was written by someone else (ACM2's own seeding,
 * its SEED_VERSION '1', or a hand edit). `tables`: the DB's tables, as the caller has them.
 */
export function versionSeededHere(db: SqliteDb, tables: ReadonlySet<string>, version: string): boolean {
  const named = (t: string) => tables.has(t) && db.prepare(`SELECT 1 FROM ${t} WHERE seed_version = ? LIMIT 1`).get(version) !== undefined;
  return named('acm2_seed_state') || named('acm2_id_map');
}

/** Every table of the DB (SQLite's own excluded), sorted. */
export function listTables(db: SqliteDb): string[] {
  return (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name`).raw(true).all() as [string][]).map((r) => r[0]);
}

export interface MissingColumn {
  table: string;
  column: string;
  /** The column definition ALTER TABLE … ADD COLUMN uses. */
  definition: string;
}

export interface SchemaDrift {
  /** ACM2 tables the DB lacks: created as migration 1 has them. */
  missingTables: string[];
  /** Columns of migration 1 an existing table lacks (e.g. runs.preset_id in early DBs). */
  missingColumns: MissingColumn[];
  /** Indexes of migration 1 the DB lacks. */
  missingIndexes: string[];
  /** Columns a later ACM2 added (e.g. presets.output_destination): kept untouched. */
  extraColumns: Array<{ table: string; column: string }>;
  /** Drift that only a table rebuild could repair: refused, the DB is left as it is. */
  unrepairable: string[];
}

interface BaselineColumn {
  name: string;
  type: string;
  notnull: boolean;
  pk: boolean;
}

interface BaselineSchema {
  tables: Map<string, { sql: string; columns: BaselineColumn[]; refs: Map<string, string> }>;
  indexes: Map<string, { table: string; sql: string; columns: string[] }>;
}

let baselineCache: BaselineSchema | undefined;

/** Migration 1's tables, columns, references and indexes, read from an in-memory copy of it. */
function baselineSchema(): BaselineSchema {
  if (baselineCache) return baselineCache;
  const mem = new Database(':memory:');
  try {
    mem.exec(userMigrations()[0]!.sql);
    const tables: BaselineSchema['tables'] = new Map();
    for (const t of ACM2_TABLES) {
      const sql = (mem.prepare(`SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?`).get(t) as { sql: string }).sql;
      const columns = (mem.prepare(`SELECT name, type, "notnull" AS nn, pk FROM pragma_table_info(?)`).all(t) as Array<{ name: string; type: string; nn: number; pk: number }>).map(
        (c) => ({ name: c.name, type: c.type, notnull: c.nn === 1, pk: c.pk > 0 }),
      );
      const refs = new Map<string, string>();
      for (const f of mem.prepare(`SELECT "from" AS col, "table" AS parent, "to" AS target FROM pragma_foreign_key_list(?)`).all(t) as Array<{ col: string; parent: string; target: string }>) {
        refs.set(f.col, `${f.parent} (${f.target})`);
      }
      tables.set(t, { sql, columns, refs });
    }
    const indexes: BaselineSchema['indexes'] = new Map();
    for (const i of mem.prepare(`SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL`).all() as Array<{ name: string; tbl_name: string; sql: string }>) {
      const columns = (mem.prepare(`SELECT name FROM pragma_index_info(?)`).raw(true).all(i.name) as [string][]).map((r) => r[0]);
      indexes.set(i.name, { table: i.tbl_name, sql: i.sql, columns });
    }
    baselineCache = { tables, indexes };
    return baselineCache;
  } finally {
    mem.close();
  }
}

/**
 * Values for NOT NULL columns added to existing rows. SQLite needs a constant default there;
 * these are the neutral values ACM2's own code treats as "not set" (empty JSON lists/objects,
 * false flags, one iteration, the database input source). Nullable columns are added as NULL.
 */
const ADDED_DEFAULTS: Record<string, string> = {
  'presets.input_source_type': `'database'`,
  'presets.log_level': `'INFO'`,
  'presets.fpf_log_output': `'file'`,
  'presets.iterations': '1',
  'presets.eval_iterations': '1',
  'presets.generation_concurrency': '1',
  'presets.eval_concurrency': '1',
  'runs.config': `'{}'`,
  'runs.status': `'pending'`,
  'contents.variables': `'{}'`,
  'user_settings.settings': `'{}'`,
};

function addedDefault(table: string, col: BaselineColumn): string {
  const known = ADDED_DEFAULTS[`${table}.${col.name}`];
  if (known) return known;
  const type = col.type.toUpperCase();
  if (type === 'JSON') return `'[]'`;
  if (type.startsWith('INT') || type === 'BOOLEAN' || type === 'FLOAT') return '0';
  if (type === 'DATETIME') return `'1970-01-01 00:00:00.000000'`;
  if (type === 'DATE') return `'1970-01-01'`;
  return `''`;
}

/** How this DB differs from migration 1 (meaningful for a DB without a ledger). */
export function detectSchemaDrift(db: SqliteDb): SchemaDrift {
  const base = baselineSchema();
  const drift: SchemaDrift = { missingTables: [], missingColumns: [], missingIndexes: [], extraColumns: [], unrepairable: [] };
  // Every column of every table and every index name, in two queries.
  const columnsOf = new Map<string, Set<string>>();
  for (const [t, c] of db.prepare(`SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'`).raw(true).all() as [string, string][]) {
    const set = columnsOf.get(t) ?? new Set<string>();
    set.add(c);
    columnsOf.set(t, set);
  }
  const have = new Set(columnsOf.keys());
  for (const [table, spec] of base.tables) {
    if (!have.has(table)) {
      drift.missingTables.push(table);
      continue;
    }
    const cols = columnsOf.get(table)!;
    for (const c of spec.columns) {
      if (cols.has(c.name)) continue;
      if (c.pk) {
        drift.unrepairable.push(`${table} has no ${c.name} column (its primary key)`);
        continue;
      }
      const ref = spec.refs.get(c.name);
      const definition = `${c.name} ${c.type}${ref ? ` REFERENCES ${ref}` : ''}${c.notnull ? ` NOT NULL DEFAULT ${addedDefault(table, c)}` : ''}`;
      drift.missingColumns.push({ table, column: c.name, definition });
    }
    const known = new Set(spec.columns.map((c) => c.name));
    for (const c of cols) if (!known.has(c)) drift.extraColumns.push({ table, column: c });
  }
  const haveIndexes = new Set((db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index'`).raw(true).all() as [string][]).map((r) => r[0]));
  for (const [name, idx] of base.indexes) {
    if (haveIndexes.has(name)) continue;
    drift.missingIndexes.push(name);
    if (!have.has(idx.table) && !drift.missingTables.includes(idx.table)) drift.unrepairable.push(`index ${name} names unknown table ${idx.table}`);
  }
  return drift;
}

/** The tables a seed writes rows to: the package's, and user_meta. */
const SEEDED_TABLES: readonly string[] = [...PACKAGE_TABLES, 'user_meta'];

/**
 * Columns the rows a seed writes cannot fill, as `table.column`: NOT NULL without a default and
 * not migration 1's (a later ACM2 added them, e.g. presets.output_destination at 707aa8f), in a
 * table the seed writes to. SQLite cannot give a column a default without rebuilding its table.
 */
export function unfillableColumns(db: SqliteDb, drift: SchemaDrift): string[] {
  const q = db.prepare(`SELECT 1 FROM pragma_table_info(?) WHERE name = ? AND "notnull" = 1 AND dflt_value IS NULL AND pk = 0`);
  return drift.extraColumns.filter((c) => SEEDED_TABLES.includes(c.table) && q.get(c.table, c.column) !== undefined).map((c) => `${c.table}.${c.column}`);
}

/** Nothing to add (extra columns are never a reason to touch a DB). */
export function isDriftEmpty(d: SchemaDrift): boolean {
  return d.missingTables.length === 0 && d.missingColumns.length === 0 && d.missingIndexes.length === 0 && d.unrepairable.length === 0;
}

/** The statements that repair a drift by addition only; run them inside one transaction. */
export function driftRepairSql(d: SchemaDrift): string[] {
  if (d.unrepairable.length > 0) throw new UsageError(`schema drift cannot be repaired without rebuilding a table: ${d.unrepairable.join('; ')}`, 'schema_unrepairable');
  const base = baselineSchema();
  const out: string[] = [];
  for (const t of d.missingTables) out.push(base.tables.get(t)!.sql);
  for (const c of d.missingColumns) out.push(`ALTER TABLE ${c.table} ADD COLUMN ${c.definition}`);
  for (const i of d.missingIndexes) out.push(base.indexes.get(i)!.sql.replace(/^CREATE (UNIQUE )?INDEX /, 'CREATE $1INDEX IF NOT EXISTS '));
  return out;
}

/** One line per repair, for plans and reports. */
export function describeDrift(d: SchemaDrift): string[] {
  return [
    ...d.missingTables.map((t) => `create table ${t}`),
    ...d.missingColumns.map((c) => `add column ${c.table}.${c.column}`),
    ...d.missingIndexes.map((i) => `create index ${i}`),
    ...d.unrepairable.map((u) => `cannot repair: ${u}`),
  ];
}
