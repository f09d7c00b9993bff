// A master and its data dir know each other. On first use the data dir gets an id of its own
// (<data-dir>/.acm2/data-dir.json) and the master records it (acm2_data_dir); every command that
// writes refuses, before it writes anything, a data dir that is not the master's: a mistyped or
// cwd-relative --data-dir beside ACM2_MASTER_URL would otherwise get a fresh DB for every user of
// the fleet (and the master would record them seeded), and a staging master against production's
// data dir would seed its user 7 beside another person's user_7.db.
// A first pairing is written in three steps, master first: its record of the id (unfinished), the
// stamp, the record finished; whichever step a kill -9 cuts, the next command can tell its own
// unfinished pairing from another master's data dir, and finishes it.

import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { DataDirPairing, MasterDb } from '../master/types.js';
import { classifyFsError, UsageError } from '../errors.js';
import { toolDir } from '../userdb/paths.js';

/** Set to the data dir's path to pair it with the master on purpose (a master moved to new files). */
export const PAIR_ENV = 'ACM2_PAIR_DATA_DIR';

const STAMP = 'data-dir.json';

export function stampPath(dataDir: string): string {
  return toolDir(dataDir, STAMP);
}

/** The data dir's id, if it was ever used by a writing command of this tool. */
export function readDataDirId(dataDir: string): string | undefined {
  return readStamp(dataDir)?.id;
}

/** The stamp: the data dir's id, and the master it was written for (stamps from before: none). */
function readStamp(dataDir: string): { id: string; master?: string } | undefined {
  const file = stampPath(dataDir);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw e;
  }
  let id: unknown;
  let master: unknown;
  try {
    ({ id, master } = JSON.parse(text) as { id?: unknown; master?: unknown });
  } catch {
    /* said below */
  }
  if (typeof id !== 'string' || !/^[A-Za-z0-9-]{8,64}$/.test(id)) throw new UsageError(`${file} is not the tool's data dir stamp (expected {"id": "…"}): put it back as it was, or move it aside`, 'bad_data_dir_stamp');
  return typeof master === 'string' ? { id, master } : { id };
}

/**
 * Write the stamp unless one is there (a concurrent first use wins), or over it (replace): the id
 * now in it.
 */
function stampDataDir(dataDir: string, id: string, master: string, replace = false): string {
  const file = stampPath(dataDir);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, `${JSON.stringify({ id, master, createdAt: new Date().toISOString() })}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  if (replace) {
    renameSync(tmp, file);
    return readDataDirId(dataDir)!;
  }
  try {
    linkSync(tmp, file); // never replaces a stamp another process wrote meanwhile
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  } finally {
    unlinkSync(tmp);
  }
  return readDataDirId(dataDir)!;
}

/** Whether the data dir's stamp holds this id (false when it cannot be read). */
function stampHolds(dataDir: string, id: string): boolean {
  try {
    return readDataDirId(dataDir) === id;
  } catch {
    return false;
  }
}

/** The master, whichever account opens it: its URL without the user (a password is never in it). */
function masterOf(master: MasterDb): string {
  return master.display.replace(/^mysql:\/\/[^@/]*@/, 'mysql://');
}

const USER_DB = /^user_\d+\.db$/;

/** A user DB in the data dir (the first found), if it holds any. */
function someUserDb(dataDir: string): string | undefined {
  try {
    return readdirSync(dataDir).find((n) => USER_DB.test(n));
  } catch {
    return undefined;
  }
}

const fix = `check --data-dir (ACM2_DATA_DIR) and --master (ACM2_MASTER_URL)`;
const onPurpose = (dataDir: string) => `; to pair them on purpose, run again with ${PAIR_ENV}=${dataDir}`;

/**
 * Before a new master is set up (the embedded file created, or ACM2's tables put into an empty
 * MySQL database): a data dir already used with a master, or holding user DBs, is not a new
 * master's (a mistyped master path or database name): refused, nothing written.
 */
export function refuseNewMasterFor(dataDir: string, display: string, what = 'does not exist yet'): void {
  if (process.env[PAIR_ENV] && path.resolve(process.env[PAIR_ENV]) === path.resolve(dataDir)) return;
  const stamped = readDataDirId(dataDir) !== undefined;
  const db = stamped ? undefined : someUserDb(dataDir);
  if (!stamped && !db) return;
  throw new UsageError(
    `the master ${display} ${what}, but the data dir ${dataDir} ${stamped ? 'belongs to another master' : `already holds user DBs (${db}…)`}: ` +
      `a new master would give its users ids that are other people's here; ${fix}; nothing was written`,
    'data_dir_not_paired',
  );
}

/** What checkPairing says besides refusing (core does not print: the command does, on stderr). */
export type PairingNotice = (msg: string) => void;

/** A pair this check refuses: what is wrong (also said when it is paired on purpose), and the remedy. */
interface Refusal {
  what: string;
  fix: string;
}

/**
 * Refuse (exit 2, nothing written) a data dir that is not this master's; pair them on first use
 * (write: false only checks, for a dry run or an account that may not write). read: a command
 * that only reads (user list, user show, diff, verify) is refused only what the master's own
 * record of its data dir rules out, and never the guesses a first pairing makes.
 * ACM2_PAIR_DATA_DIR naming this data dir pairs them on purpose, only where they would be
 * refused; notice says that it did, or that it is set and not needed.
 */
export async function checkPairing(master: MasterDb, dataDir: string, opts: { write: boolean; read?: boolean; notice?: PairingNotice }): Promise<void> {
  const dir = path.resolve(dataDir);
  let stamped: ReturnType<typeof readStamp>;
  try {
    stamped = readStamp(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw e;
    // The tool's own folder is 0700 while ACM2's DBs are 0644 (its umask): an account that may
    // read the users' DBs but not .acm2/ (a monitoring or CI account) cannot compare the stamp.
    // A read goes on as it did before pairing (the folder is some fleet's data dir, not a
    // mistyped one); a write cannot pair or check, and says why (exit 3).
    if (opts.read) return;
    throw classifyFsError(e, stampPath(dir)) ?? e;
  }
  let rec;
  try {
    rec = await master.pairedDataDir();
  } catch (e) {
    // Only looking (a dry run) at a master a real run has not brought up to date: nothing to compare.
    if (!opts.write) return;
    throw e;
  }
  const found = await judge(master, dir, stamped, rec, Boolean(opts.read));
  const forced = Boolean(process.env[PAIR_ENV]) && path.resolve(process.env[PAIR_ENV]!) === dir;
  if ('what' in found) {
    if (!forced) throw new UsageError(`${found.what}: ${found.fix}${onPurpose(dir)}; nothing was written`, 'data_dir_not_paired');
    if (!opts.write) {
      opts.notice?.(`${PAIR_ENV}=${dir}: went on although ${found.what}; only a command that writes pairs them`);
      return;
    }
    // A new id for this data dir, so that neither another data dir with this master's old id nor
    // another master this one was stamped for accepts the pair any more.
    const id = randomUUID();
    await master.pairDataDir({ id, path: dir, unfinished: true }, true);
    stampDataDir(dir, id, masterOf(master), true);
    await master.settleDataDirPairing(id, true);
    opts.notice?.(
      `paired the master ${master.display} with the data dir ${dir} on purpose (${PAIR_ENV}), where this check would have refused: ${found.what}; ` +
        `unset ${PAIR_ENV} now: while it names this data dir, any master given with it is paired instead of refused`,
    );
    return;
  }
  if (forced) opts.notice?.(`${PAIR_ENV}=${dir} is set but not needed (the master and this data dir go together): nothing was re-paired; unset it`);
  if (!opts.write || found.pair === 'paired') return;
  if (found.pair !== 'first') {
    // The master recorded the id and the data dir was stamped with it; only the last step was cut short.
    await master.settleDataDirPairing(found.pair.finish, true);
    return;
  }
  // Recorded first (unfinished), stamped second, finished last: a stamp is only ever written for
  // an id this master holds, so a stamp its master has not finished is provably a pairing of its
  // own cut short (a kill -9, a lost connection), finished by the next command (judge).
  const now = await master.pairDataDir({ id: found.id ?? randomUUID(), path: dir, unfinished: true });
  // Another data dir was paired with this master a moment ago. (This same one, by a command run at
  // the same time, is not another: its id is the one stamped and finished below.)
  if (path.resolve(now.path) !== dir) {
    throw new UsageError(`the data dir ${dir} is not the one the master ${master.display} belongs with (${now.path}): ${fix}${onPurpose(dir)}; nothing was written`, 'data_dir_not_paired');
  }
  let stamp: string;
  try {
    stamp = stampDataDir(dir, now.id, masterOf(master));
  } catch (e) {
    // The stamp could not be written (a folder this account may not create, a full disk, a
    // data dir path through a file): the unfinished record is taken back, as a stamp is when the
    // master will not record it, so that the next command, given the right data dir, pairs them
    // as a first use rather than refusing for a pairing that never stamped anything.
    if (!stampHolds(dir, now.id)) await master.settleDataDirPairing(now.id, false).catch(() => undefined);
    throw e;
  }
  if (stamp !== now.id) {
    // Another master stamped this data dir a moment ago: this one's unfinished record is taken back.
    await master.settleDataDirPairing(now.id, false);
    throw new UsageError(`the data dir ${dir} was paired with another master than ${master.display} a moment ago: ${fix}${onPurpose(dir)}; nothing was written`, 'data_dir_not_paired');
  }
  await master.settleDataDirPairing(now.id, true);
}

/**
 * Whether this master and data dir go together: already paired, a pairing of this master's own
 * to finish, a first use (with the id this master recorded for it, if it did), or refused (why).
 */
async function judge(
  master: MasterDb,
  dir: string,
  stamped: ReturnType<typeof readStamp>,
  rec: DataDirPairing | undefined,
  read: boolean,
): Promise<Refusal | { pair: 'paired' | 'first' | { finish: string }; id?: string }> {
  const stamp = stamped?.id;
  if (rec && stamp === rec.id) return { pair: rec.pairedAt === null ? { finish: rec.id } : 'paired' };
  // A first pairing that recorded its id but was cut short before the stamp: nothing was paired
  // yet, and the pairing starts again (the checks of a first use included), with that id.
  const unstamped = rec !== undefined && rec.pairedAt === null && stamp === undefined && path.resolve(rec.path) === dir;
  const recorded = unstamped ? undefined : rec;
  // A read of a master that records no data dir (never paired: a fleet from before pairing, a
  // master ACM2 alone made) has nothing certain to compare with.
  if (read && !recorded) return { pair: 'paired' };
  // Nor does a read of a copy of the fleet's DBs made without the tool's own folder (.acm2/, where
  // the stamp is: a verify box fed by an rsync of the users' files): not the mistyped or emptied
  // folder this guards against, which holds no user DBs.
  if (read && stamp === undefined && someUserDb(dir)) return { pair: 'paired' };
  if (recorded && path.resolve(recorded.path) === dir) {
    // The very folder the master was paired with, without its stamp (or with another): an empty
    // or unmounted mount point, or files restored or copied from elsewhere. "Not the one (same
    // path)" would read as a contradiction.
    return {
      what: `the data dir ${dir} is where the master ${master.display} was paired, but ${stamp ? 'its stamp is another data dir’s' : 'it has lost its stamp'} (${stampPath(dir)}), as an unmounted or emptied folder, or files restored from before the pairing or copied from another fleet would be`,
      fix: `check that the fleet's files are there`,
    };
  }
  if (recorded) {
    const where = `${recorded.path}${recorded.pairedAt === null ? ', a first pairing not finished' : ''}${existsSync(recorded.path) ? '' : ', not found on this host'}`;
    return { what: `the data dir ${dir} is not the one the master ${master.display} belongs with (${where})`, fix };
  }
  // A stamp is written only after its master recorded it, so one this master has no record of is
  // another master's, or this one's restored from before the pairing, even at this very URL: a URL
  // is not a master (another server behind the same host name or tunnel, or another file put at
  // the same path, answers to it too: a staging master against production's data dir). So is a
  // stamp an acm2 that stamped first and recorded second left when it was killed between the two.
  if (stamp && stamped?.master === masterOf(master)) {
    return {
      what: `the data dir ${dir} was stamped for a master at ${master.display}, which has no record of it: the master restored from before the pairing, another master at the same address, or a pairing an older acm2 cut short`,
      fix,
    };
  }
  if (stamp) return { what: `the data dir ${dir} belongs to another master than ${master.display}`, fix };
  // Neither was paired (a first use, or both from before pairing existed): pair them, unless
  // the two plainly do not go together.
  // Users the tool seeded (a done job) must have their DBs here; queued ones need not yet. Users
  // with no job at all (a fleet ACM2 made before this tool: its DBs are ACM2's) must have theirs
  // here too: an empty data dir beside them is a mistyped or cwd-relative one, not a first use.
  const users = await master.countUsers();
  const seeded = users > 0 ? await master.countJobs('done') : 0;
  const jobless = users > 0 && seeded === 0 ? users - (await master.countJobs()) : 0;
  const db = someUserDb(dir);
  if ((seeded > 0 || jobless > 0) && !db) {
    const n = seeded > 0 ? seeded : users;
    return { what: `the master ${master.display} has ${n} ${seeded > 0 ? 'seeded ' : ''}user${n === 1 ? '' : 's'} but the data dir ${dir} holds none of their DBs`, fix };
  }
  if (users === 0 && db) return { what: `the data dir ${dir} holds user DBs (${db}…) but the master ${master.display} has no users`, fix };
  return { pair: 'first', id: unstamped ? rec!.id : undefined };
}
