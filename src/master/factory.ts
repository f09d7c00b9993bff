// Picks the master implementation from the URL scheme and scopes its lifetime.

import { existsSync } from 'node:fs';
import path from 'node:path';
import { canWrite } from '../durable.js';
import type { MasterUrl } from '../config.js';
import { isAcm2Error, isDiskFull, isReadOnly, masterBusyError, UnavailableError, UsageError } from '../errors.js';
import { loadMigrations } from '../migrations.js';
import type { MasterDb } from './types.js';
import { checkPairing, refuseNewMasterFor, type PairingNotice } from '../core/pairing.js';

export interface OpenMasterOptions {
  /** Apply the tool's pending master migrations (default true). */
  migrate?: boolean;
  /**
   * Create the embedded master (and its folder) when it does not exist (default true). Commands
   * that only read users pass false: a mistyped --data-dir must be an error, not a new empty
   * master that verify then reports as zero users, all ok.
   */
  create?: boolean;
  /**
   * The data dir the command works on: refused (exit 2, nothing written) when it is not this
   * master's, and paired with it on first use when write (see core/pairing.ts).
   */
  pairWith?: { dataDir: string; write: boolean; read?: boolean; notice?: PairingNotice };
  /**
   * The command only reads (user list, user show, verify, diff): a master the tool never set up
   * (ACM2's users and api_keys only, no ledger) is left as it is and reads as having no seed jobs,
   * no backfill progress and no paired data dir, instead of getting the tool's tables.
   */
  readOnly?: boolean;
}

export async function openMaster(url: MasterUrl, opts: OpenMasterOptions = {}): Promise<MasterDb> {
  let master: MasterDb;
  switch (url.kind) {
    case 'sqlite': {
      if (opts.create === false && !existsSync(url.file)) throw masterMissing(url.display, 'does not exist');
      // A new embedded master for a data dir that already has one (a mistyped master path).
      if (opts.pairWith && !existsSync(url.file)) refuseNewMasterFor(opts.pairWith.dataDir, url.display);
      const { SqliteMaster, foreignTablesIn } = await import('./sqlite-master.js');
      // Checked before the master is opened: opening it read-write would already change the file.
      // One this process may not write (nor its folder) is opened read-only and left as it is,
      // and a read-only open here would make a -wal and -shm beside it that nobody removes.
      if (opts.migrate !== false && existsSync(url.file) && canWrite(url.file) && canWrite(path.dirname(url.file))) {
        let foreign: string[] = [];
        try {
          foreign = foreignTablesIn(url.file);
        } catch {
          /* not a SQLite file: the open below says so */
        }
        if (foreign.length > 0) throw notAMaster(url.display, foreign);
      }
      master = embeddedMasterErrors(new SqliteMaster(url.file));
      break;
    }
    case 'mysql': {
      const { MysqlMaster } = await import('./mysql-master.js');
      master = await MysqlMaster.connect(url);
      break;
    }
    default: {
      const never: never = url;
      throw new Error(`unknown master kind ${(never as MasterUrl).kind}`);
    }
  }
  try {
    // A database without ACM2's tables is the wrong one (or was never set up): a command that only
    // reads users stops before the migrations would create anything in it.
    const ours = await master.hasAcm2Tables();
    if (opts.create === false && !ours) throw masterMissing(master.display, 'has no ACM2 users and api_keys tables');
    // Setting up a master in a database that holds something else (a user DB, another app's
    // schema, a mistyped name) would put credential tables into it: refused, nothing written.
    if (opts.migrate !== false && !ours) {
      const foreign = await master.foreignTables();
      if (foreign.length > 0) throw notAMaster(master.display, foreign);
      // An empty database (a mistyped name) for a data dir that already has a master.
      if (opts.pairWith) refuseNewMasterFor(opts.pairWith.dataDir, master.display, 'has no ACM2 tables yet');
    }
    // A master a newer acm2 migrated is refused by every command, read or write, before it uses
    // it: this tool does not know what the newer one changed (migrate() says it too).
    // One read of the ledger decides (the usual case, nothing pending, costs nothing more).
    const pending = await master.checkMigrations();
    // A read command on a master the tool never set up (nothing of the tool's to read, and no
    // reason to create it), or one that lacks only tables no read command reads (a master the
    // previous acm2 set up, read from a snapshot or with a SELECT-only account): read as it is.
    // A master the tool set up but older is migrated as before: this tool's reads may need what
    // the pending migrations add.
    const before = pending.length > 0 ? readsBefore(master, pending) : undefined;
    if (opts.readOnly && before?.all) master = answeringEmpty(master, before.answers);
    else if (opts.migrate !== false && before) {
      if (opts.pairWith && ours) await refuseUnpairedBeforeMigrating(answeringEmpty(master, before.answers), opts.pairWith);
      await master.migrate();
    }
    if (opts.pairWith) await checkPairing(master, opts.pairWith.dataDir, { write: opts.pairWith.write, read: opts.pairWith.read, notice: opts.pairWith.notice });
  } catch (e) {
    await master.close().catch(() => undefined);
    throw e;
  }
  return master;
}

/**
 * The embedded master's environment failures, whichever call ran into them: a full disk (SQLite's
 * SQLITE_FULL, "database or disk is full"), a master this process may only read, one another
 * process keeps locked past the busy wait, or a corrupt master file is exit 3 naming the master
 * file (SPEC §2), not an internal error.
 */
function embeddedMasterErrors(master: MasterDb): MasterDb {
  const wrap = (e: unknown): unknown => {
    if (isAcm2Error(e)) return e;
    const code = String((e as { code?: unknown }).code);
    if (isDiskFull(e)) return new UnavailableError(`disk full while writing the master ${master.display} (${code})`, 'disk_full', { cause: e });
    // A master on a read-only mount or snapshot, or a file this user may not write: SQLite opened
    // it read-only, and the first write (a migration, a new user, a job claim) is refused.
    if (isReadOnly(e)) return new UnavailableError(`the master ${master.display} is read-only here (${code}): run this command where the master can be written`, 'read_only', { cause: e });
    // The disk under the master failed a read or write (EIO: SQLITE_IOERR_READ, _WRITE, _FSYNC…),
    // or SQLite could no longer open a file it needs (its -wal, -shm or journal): the environment.
    if (code.startsWith('SQLITE_IOERR') || code === 'SQLITE_CANTOPEN' || code === 'SQLITE_PROTOCOL')
      return new UnavailableError(`I/O error on the master ${master.display} (${code}): check the disk it is on, then run again`, 'master_io_error', { cause: e });
    // Another process (ACM2, a second acm2, an sqlite3 shell) held the master's write lock for
    // longer than SQLite's busy wait: the lock held past the wait (SPEC §2), not a bug of ours.
    if (/^SQLITE_(BUSY|LOCKED)/.test(code)) return masterBusyError(master.display, busyWait(master), code, e);
    // The file went bad under us (a disk fault, a copy made mid-write): the master must be
    // restored, and nothing this tool could do with it would help.
    if (/^SQLITE_(CORRUPT|NOTADB)/.test(code))
      return new UnavailableError(`the master ${master.display} is corrupt (${code}: ${(e as Error).message}): restore it from a backup, then run again`, 'master_corrupt', { cause: e });
    return e;
  };
  return new Proxy(master, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]): unknown => {
        try {
          const r: unknown = (v as (...a: unknown[]) => unknown).apply(target, args);
          return r instanceof Promise ? r.catch((e: unknown) => Promise.reject(wrap(e))) : r;
        } catch (e) {
          throw wrap(e);
        }
      };
    },
  });
}

/** The embedded master's busy wait, as a person reads it ('15 s'). */
function busyWait(master: MasterDb): string {
  const ms = (master as { busyTimeoutMs?: unknown }).busyTimeoutMs;
  return typeof ms === 'number' ? `${Math.round(ms / 100) / 10} s` : 'busy';
}

/** What the tool's master tables hold before the tool first ran there: nothing. */
const NO_TOOL_TABLES: Pick<MasterDb, 'latestJob' | 'latestJobs' | 'countJobs' | 'pendingNotDue' | 'heldJobs' | 'getBackfill' | 'backfillItems' | 'pairedDataDir' | 'undeliveredKey'> = {
  latestJob: async () => undefined,
  latestJobs: async () => new Map(),
  countJobs: async () => 0,
  pendingNotDue: async () => ({ count: 0, nextAttemptAt: null }),
  heldJobs: async () => [],
  getBackfill: async () => undefined,
  backfillItems: async () => [],
  pairedDataDir: async () => undefined,
  undeliveredKey: async () => undefined,
};

/**
 * The reads of what `pending` master migrations add, answered as they will be once applied
 * (nothing), and whether every pending migration is one the read commands can go without (all).
 */
function readsBefore(master: MasterDb, pending: string[]): { answers: Partial<MasterDb>; all: boolean } {
  if (pending.length === loadMigrations(`master/${master.dialect}`).length) return { answers: NO_TOOL_TABLES, all: true };
  const known = pending.map((name) => READS_NEED_NOT.get(name.replace(/^\d{4}_/, '')));
  return { answers: Object.assign({}, ...known) as Partial<MasterDb>, all: known.every((a) => a !== undefined) };
}

/**
 * A master without some of the tool's tables (never set up by the tool, or behind only by
 * READS_NEED_NOT migrations), read as if they were there and empty: `answers` replace the reads
 * of them (read commands only).
 */
function answeringEmpty(master: MasterDb, answers: Partial<MasterDb>): MasterDb {
  return new Proxy(master, {
    get: (target, prop, receiver): unknown => (Object.hasOwn(answers, prop) ? answers[prop as keyof MasterDb] : Reflect.get(target, prop, receiver)),
  });
}

/**
 * Master migrations (by name without their number, which differs per dialect) that add only what
 * no read command reads, with the reads of it that answer "nothing" until it is applied.
 */
const READS_NEED_NOT: ReadonlyMap<string, Partial<MasterDb>> = new Map<string, Partial<MasterDb>>([
  // Pairing is checked by the write commands only.
  ['acm2_data_dir', { pairedDataDir: async () => undefined }],
  ['acm2_undelivered_keys', { undeliveredKey: async () => undefined }],
]);

/**
 * A data dir that is not this master's is refused before the master is migrated, not after, so
 * that "nothing was written" holds for the master too: a mistyped --data-dir given to a new acm2
 * would otherwise leave production's master migrated past what the release still running there
 * accepts (it refuses a master a newer acm2 migrated). `asIfMigrated` reads the tables the pending
 * migrations add as empty, as they are once applied. Only a refusal counts here: a read this master cannot
 * answer before its migrations is left to the check after them, which also pairs the two.
 */
async function refuseUnpairedBeforeMigrating(asIfMigrated: MasterDb, pairWith: NonNullable<OpenMasterOptions['pairWith']>): Promise<void> {
  try {
    // By the rules of the command: a read command is refused only what the master's record rules out.
    await checkPairing(asIfMigrated, pairWith.dataDir, { write: false, read: pairWith.read });
  } catch (e) {
    if (e instanceof UsageError) throw e;
  }
}

/** The one sentence for a master that is not there, or not ACM2's. */
export function masterMissing(display: string, what: string): UsageError {
  return new UsageError(
    `the master ${display} ${what}: check --data-dir (ACM2_DATA_DIR) or --master (ACM2_MASTER_URL); \`acm2 user create\` sets a master up with the first user`,
    'master_missing',
  );
}

function notAMaster(display: string, foreign: string[]): UsageError {
  const shown = foreign.slice(0, 5).join(', ') + (foreign.length > 5 ? `, … (${foreign.length} in all)` : '');
  return new UsageError(
    `the master ${display} is not an ACM2 master: it holds other tables (${shown}) and no users and api_keys, so no master tables were added to it; check --master (ACM2_MASTER_URL) or --data-dir (ACM2_DATA_DIR)`,
    'not_a_master',
  );
}

/** Open the master, run fn, and always close it, so a throw never leaks a pool. */
export async function usingMaster<T>(url: MasterUrl, fn: (m: MasterDb) => Promise<T>, opts: OpenMasterOptions = {}): Promise<T> {
  const master = await openMaster(url, opts);
  try {
    return await fn(master);
  } finally {
    await master.close().catch(() => undefined);
  }
}
