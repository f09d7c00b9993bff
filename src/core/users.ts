// User lifecycle: create (master row + API key + seed job, then seed), seed one user under
// its lock, drain the job queue, and read a user's status from both master and user DB.

import { existsSync, lstatSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { JobOutcome, MasterDb, MasterUser, SeedJob, UndeliveredKey } from '../master/types.js';
import { loadPackage, resolveVersion, versionOrUndefined, type SeedPackage } from '../seed/package.js';
import { FindingsError, UnavailableError, UsageError, isAcm2Error, needsOperator } from '../errors.js';
import { newerToolError } from '../migrations.js';
import { refuseOddToolDir, seedUserAsync, readMeta, readSeedState, type SeedUserResult, type SeedStep } from './seed-user.js';
import { lockUser, tryLockUser } from './user-lock.js';
import { isBusy, keptBackups, type KeptBackups } from './migrate-safe.js';
import { otherOwners } from './schema-work.js';
import { lstatOrUndefined } from '../durable.js';
import { aliveHere, deadHere, workerName } from './worker-name.js';
import { hasTable, isTempFolderProblem, listTables, newerMigrations, openUserDb, readAgainIfReadOnly } from '../userdb/user-db.js';
import { parseUserId, toolDir, userDbPath, userRoot, userRootProblem, type UserId } from '../userdb/paths.js';

export interface UserDeps {
  master: MasterDb;
  dataDir: string;
  seedsDir: string;
  lockTimeoutMs: number;
  onStep?: (step: SeedStep) => void;
  /** `user seed <id>` holds the user's lock and is about to make or claim its job: from here on it finishes. */
  onCommitting?: () => void;
}

export type SeedStatus = 'ready' | 'pending' | 'in_progress' | 'failed' | 'missing';

export interface SeedReport {
  status: 'ready' | 'failed' | 'pending';
  outcome?: SeedUserResult['outcome'];
  seedVersion: string;
  rows?: number;
  files?: number;
  bytes?: number;
  durationMs?: number;
  jobId?: number;
  error?: string;
  retry?: string;
  /** --force: the folder holding what it overwrote (the DB, and the edited seeded files); absent when nothing differed. */
  backup?: string;
  /** already_ready, with user_meta written back to this version (see SeedUserResult.readyAgain). */
  readyAgain?: { from: string | null };
  /**
   * Jobs of an earlier `--force` whose process is gone that this plain seed found and closed
   * instead of running (see queuedForce): said, so "nothing to do" does not hide that the
   * --force the operator asked for never happened.
   */
  closedForceJobs?: Array<{ id: number; status: 'done' | 'failed'; error?: string }>;
}

export interface CreateUserResult {
  user: { id: number; username: string; email: string; seedStatus: SeedStatus; seedVersion: string };
  apiKey: string;
  /**
   * This run took over a user an earlier run of the same create made and was stopped before it
   * showed the key: that key was revoked and apiKey issued in its place.
   */
  resumed: boolean;
  seed: SeedReport;
  /** apiKey's api_keys row: marked undelivered until the caller has shown the key (MasterDb.keyDelivered). Not in the JSON. */
  keyId: number;
  /** resumed: the prefix of the key revoked (not secret: the master keeps it). Not in the JSON. */
  revokedKeyPrefix?: string;
  /**
   * Why seeding stopped, when it was the environment (disk full, the master gone) or a bug rather
   * than the seed itself: the user and its key exist by then, so this is reported beside the key
   * (and sets the exit code) instead of being thrown past it. Not part of the JSON document.
   */
  seedError?: unknown;
}

const EMAIL_RE = /^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;
const USERNAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

export function validateEmail(email: string): string {
  const e = email.trim();
  const bad = (why: string) => new UsageError(`'${email}' is not a valid email address${why}`, 'bad_email');
  if (!EMAIL_RE.test(e)) throw bad('');
  // RFC 5321/5322 limits a bare regex does not see: mail to such an address cannot be delivered.
  const local = e.slice(0, e.lastIndexOf('@'));
  if (e.length > 254) throw bad(` (${e.length} characters: at most 254)`);
  if (local.length > 64) throw bad(` (the part before '@' is ${local.length} characters: at most 64)`);
  if (local.startsWith('.') || local.endsWith('.') || local.includes('..')) throw bad(` (the part before '@' may not begin or end with '.', nor hold '..')`);
  return e;
}

export function validateUsername(u: string): string {
  if (!USERNAME_RE.test(u)) throw new UsageError(`'${u}' is not a valid username (1-100 letters, digits, '.', '_', '-', starting with a letter or digit)`, 'bad_username');
  return u;
}

export function parseWordpressId(raw: unknown): number | null {
  if (raw === undefined || raw === null) return null;
  // Surrounding blanks are trimmed, as for a user id (`user show ' 7'`).
  const s = String(raw).trim();
  if (!/^[1-9][0-9]*$/.test(s)) throw new UsageError(`--wordpress-user-id '${String(raw)}' must be a positive whole number`, 'bad_wordpress_id');
  // ACM2's column is a signed 32-bit INT.
  if (s.length > 10 || Number(s) > 2147483647) throw new UsageError(`--wordpress-user-id '${s}' is more than 2147483647, the largest id ACM2's users table holds`, 'bad_wordpress_id');
  return Number(s);
}

export interface CreateInput {
  email: string;
  username: string;
  wordpressUserId?: unknown;
  seedVersion?: string;
  async?: boolean;
}

export interface CheckedCreateInput {
  email: string;
  username: string;
  wordpressUserId: number | null;
  pkg: SeedPackage;
  async: boolean;
}

/** Everything about the input that can be checked without the master: call before opening it. */
export function checkCreateInput(seedsDir: string, input: CreateInput): CheckedCreateInput {
  return {
    email: validateEmail(input.email),
    username: validateUsername(input.username),
    wordpressUserId: parseWordpressId(input.wordpressUserId),
    pkg: loadPackage(seedsDir, resolveVersion(seedsDir, input.seedVersion)),
    async: Boolean(input.async),
  };
}

export interface CreateHooks {
  /** Checked just before the master rows are written: aborted means no user is made (FindingsError). */
  signal?: AbortSignal;
  /** Called just before the master rows are written: from here the user may exist before createUser returns. */
  onCreating?: () => void;
  /** Called once the user and its key exist, before the seed: the key is shown once, so a caller stopped mid-seed can still show it. */
  onCreated?: (made: { user: CreateUserResult['user']; apiKey: string; jobId: number | undefined; keyId: number; resumed: boolean; revokedKeyPrefix?: string }) => void;
}

export async function createUser(deps: UserDeps, raw: CreateInput | CheckedCreateInput, hooks: CreateHooks = {}): Promise<CreateUserResult> {
  // Everything that can be wrong with the input is checked before anything is written.
  const input = 'pkg' in raw ? raw : checkCreateInput(deps.seedsDir, raw);
  const { email, username, wordpressUserId, pkg } = input;
  const { master } = deps;
  const resume = await interruptedCreate(master, input);
  if (!resume) {
    const byName = await master.findUserByUsername(username);
    if (byName) throw new UsageError(`a user with username '${username}' already exists${await interruptedNote(master, byName)}`, 'duplicate_username');
    const byWp = wordpressUserId === null ? undefined : await master.findUserByWordpressId(wordpressUserId);
    if (byWp) throw new UsageError(`a user with WordPress user id ${wordpressUserId} already exists${await interruptedNote(master, byWp)}`, 'duplicate_wordpress_id');
  }

  // Seeding at once would stop on a broken staging folder after the user was made: say so first.
  if (!input.async) refuseOddToolDir(deps.dataDir);
  // bcryptjs is loaded by the one command that makes a key, not at every command's start (~7 ms).
  // `acm2 user create` has loaded it before opening the master, so this cannot fail half way.
  const { generateApiKey, bcryptRounds } = await import('./api-key.js');
  const key = generateApiKey(bcryptRounds());
  if (hooks.signal?.aborted) throw new FindingsError('interrupted before the user was created: nothing was changed', 'interrupted');
  hooks.onCreating?.();
  const issuedBy = workerName();
  let user: MasterUser;
  let job: SeedJob | undefined;
  let keyId: number;
  if (resume) {
    // The same create again, after one that made the user and was stopped before it showed the
    // key: that key (which nobody saw) is revoked and a new one issued, in one transaction.
    user = resume.user;
    ({ keyId } = await master.reissueKey({
      userId: user.id,
      oldKeyId: resume.key.apiKeyId,
      keyHash: key.hash,
      keyPrefix: key.prefix,
      keyName: `WordPress API Key for ${username}`,
      issuedBy,
    }));
    job = await master.latestJob(user.id).catch(() => undefined);
  } else {
    ({ user, job, keyId } = await master.createUser({
      username,
      email,
      wordpressUserId,
      keyHash: key.hash,
      keyPrefix: key.prefix,
      keyName: `WordPress API Key for ${username}`,
      seedVersion: pkg.version,
      maxAttempts: 5,
      // Not due until the data dir has been looked at below: a drainer elsewhere would otherwise
      // take the job at once and begin a seed whose build looks like data from before the user
      // (or adopt data that is). A create killed meanwhile leaves a job due a little later.
      jobDueAt: Date.now() + CREATE_HOLD_MS,
      issuedBy,
    }));
  }
  // From here on the user and its key exist, and the key is shown only once: nothing may throw
  // past it. A seed stopped by the environment or a bug is reported as failed, with the cause.
  let seed: SeedReport;
  let seedError: unknown;
  hooks.onCreated?.({ user: { id: user.id, username: user.username, email: user.email, seedStatus: 'pending', seedVersion: pkg.version }, apiKey: key.key, jobId: job?.id, keyId, resumed: resume !== undefined, ...(resume ? { revokedKeyPrefix: resume.key.keyPrefix } : {}) });
  // A rerun counts what is there as someone else's only while the first run's job is untouched, as the first run would have.
  const foreign = job ? await foreignLeftovers(deps, user.id, job.id) : [];
  // What seeds this user again: with the version this create seeds, unless that is CURRENT (a bare
  // `acm2 user seed <id>` seeds CURRENT, and a create may have been given another one).
  const again = `acm2 user seed ${user.id}${pkg.version === versionOrUndefined(deps.seedsDir) ? '' : ` --seed-version ${pkg.version}`}`;
  if (foreign.length > 0) {
    // A brand-new user owns nothing yet: what is there under its id is someone else's (an id the
    // master reused, a data dir from another master). Seeding would adopt it; it is left alone.
    const error = `the data dir already holds ${foreign.join(', ')} from before user ${user.id} existed, which is not this user's data: nothing was seeded and none of it was touched; move it out of the data dir, then run: ${again}`;
    const worker = workerName();
    const claimed = await master.claimJobForUser(user.id, worker, LEASE_MS, undefined, pkg.version);
    if (claimed) await master.finishJob(claimed.id, worker, { status: 'failed', error });
    // No "retry" line: the retry is the last step of what the error says to do, never the first.
    seed = { status: 'failed', seedVersion: pkg.version, error, jobId: job?.id };
  } else if (input.async) {
    seed = await queueAfterCreate(deps, user, pkg, resume ? undefined : job);
  }
  else {
    try {
      // A rerun goes on from wherever the first run's seed stopped (or finds it ready).
      seed = await seedWithJob(deps, user, pkg, false, again);
    } catch (e) {
      seedError = e;
      seed = { status: 'failed', seedVersion: pkg.version, error: e instanceof Error ? e.message : String(e), jobId: job?.id, retry: again };
    }
  }
  return {
    user: { id: user.id, username: user.username, email: user.email, seedStatus: seed.status, seedVersion: pkg.version },
    apiKey: key.key,
    resumed: resume !== undefined,
    seed,
    keyId,
    ...(resume ? { revokedKeyPrefix: resume.key.keyPrefix } : {}),
    ...(seedError === undefined ? {} : { seedError }),
  };
}

/**
 * `--async`: the new user's job, held back, made due now. A rerun's: this version's open job
 * (the first run's, or one made now), unless the first run's seed already made the user ready.
 */
async function queueAfterCreate(deps: UserDeps, user: MasterUser, pkg: SeedPackage, made: SeedJob | undefined): Promise<SeedReport> {
  // The user exists: nothing may throw now; a job not made due falls due on its own shortly.
  let job = made;
  try {
    if (!job) {
      if (readyAt(deps.dataDir, user.id, pkg.version)) {
        const latest = await deps.master.latestJob(user.id);
        if (latest?.status !== 'failed') return { status: 'ready', seedVersion: pkg.version, jobId: latest?.id };
      }
      job = await deps.master.enqueueSeedJob(user.id, pkg.version, { maxAttempts: 5 });
    }
    await deps.master.makeJobDue(job.id);
  } catch (e) {
    if (!job) return { status: 'failed', seedVersion: pkg.version, error: e instanceof Error ? e.message : String(e), retry: `acm2 user seed ${user.id}` };
  }
  return { status: 'pending', seedVersion: pkg.version, jobId: job.id };
}

/**
 * The user this create would make, already made by an earlier run of the same create that was
 * stopped before it showed the API key: same email, username and WordPress id, and its key still
 * marked undelivered (and never used). Any other user with this email is duplicate_email, with
 * what the interrupted create was if that is what it is. A create of it still running on this
 * host is waited for, not raced (exit 3).
 */
async function interruptedCreate(master: MasterDb, input: CheckedCreateInput): Promise<{ user: MasterUser; key: UndeliveredKey } | undefined> {
  const existing = await master.findUserByEmail(input.email).catch((e: unknown) => {
    // Several users' emails differ from it only in case (a hand-written SQLite master): taken.
    if (isAcm2Error(e) && e.code === 'ambiguous_email') throw new UsageError(`a user with email '${input.email}' already exists (more than one: their emails differ from it only in case)`, 'duplicate_email');
    throw e;
  });
  if (!existing) return undefined;
  const key = await master.undeliveredKey(existing.id);
  const same = existing.email === input.email && existing.username === input.username && existing.wordpressUserId === input.wordpressUserId;
  if (!key || key.lastUsedAt !== null || !same) {
    throw new UsageError(`a user with email '${input.email}' already exists${await undeliveredNote(master, existing, key)}`, 'duplicate_email');
  }
  // A process started after the key was issued is not the create that issued it (its pid reused).
  const pid = aliveHere(key.issuedBy, Date.parse(key.createdAt));
  if (pid !== undefined) {
    throw new UnavailableError(
      `user ${existing.id} ('${existing.email}') is being created by acm2 process ${pid} on this host, which has not shown its API key yet: wait for it (or stop it), then run this again if it showed none; nothing was changed`,
      'create_in_progress',
    );
  }
  // Made on another host (or container): whether that create is gone cannot be seen from here,
  // and revoking the key of one still seeding would have it show a revoked key. Its job says if
  // it may still be at work: held back (it is looking at the data dir) or leased (it is seeding).
  if (!deadHere(key.issuedBy)) {
    const busy = await createStillAtWork(master, existing.id, key.issuedBy);
    if (busy) {
      throw new UnavailableError(
        `user ${existing.id} ('${existing.email}') may still be being created by acm2 ${busy.who}, which has not shown its API key yet: ` +
          `run this again after ${new Date(busy.until).toISOString()} if that run showed no key (or run it on that host once it is stopped); nothing was changed`,
        'create_in_progress',
      );
    }
  }
  return { user: existing, key };
}

/**
 * The first run's job as a create still running elsewhere leaves it: held back and never tried
 * (the create is looking at the data dir), or running under a lease whose holder is not known to
 * be gone (the create is seeding). Until when, and by whom; undefined once neither holds.
 */
async function createStillAtWork(master: MasterDb, userId: number, issuedBy: string): Promise<{ who: string; until: number } | undefined> {
  const job = await master.latestJob(userId);
  if (!job) return undefined;
  const now = Date.now();
  const where = (w: string) => `(${w.split(':')[0] || 'unknown host'}, worker ${w})`;
  if (job.status === 'running' && job.lockedBy !== null && (job.lockedUntil ?? 0) > now && !deadHere(job.lockedBy)) {
    return { who: where(job.lockedBy), until: job.lockedUntil! };
  }
  if (job.status === 'pending' && job.attempts === 0 && job.nextAttemptAt > now) return { who: where(issuedBy), until: job.nextAttemptAt };
  return undefined;
}

/** What to say of an existing user whose create has not shown its key yet ('' if it has). */
async function interruptedNote(master: MasterDb, user: MasterUser): Promise<string> {
  return undeliveredNote(master, user, await master.undeliveredKey(user.id).catch(() => undefined));
}

/**
 * The user's key is still marked undelivered: either its create was stopped before it showed the
 * key (say how to finish it), or that create is still at work (a second create with the same email
 * or username started meanwhile). The first create shows its key when its seed is done, so telling
 * the second one's operator it "was stopped" and to run it again would be untrue, and the rerun
 * would only be refused (create_in_progress) or, once the key is shown, duplicate_email.
 */
async function undeliveredNote(master: MasterDb, user: MasterUser, key: UndeliveredKey | undefined): Promise<string> {
  if (!key || key.lastUsedAt !== null) return '';
  const pid = aliveHere(key.issuedBy, Date.parse(key.createdAt));
  if (pid !== undefined) return ` (user ${user.id}, which acm2 process ${pid} on this host is creating right now: it shows the user's API key when it is done)`;
  if (!deadHere(key.issuedBy)) {
    const busy = await createStillAtWork(master, user.id, key.issuedBy).catch(() => undefined);
    if (busy) return ` (user ${user.id}, which acm2 ${busy.who} may still be creating: it shows the user's API key when it is done; if it shows none, run that create again after ${new Date(busy.until).toISOString()})`;
  }
  return interruptedSentence(user);
}

function interruptedSentence(u: MasterUser): string {
  const wp = u.wordpressUserId === null ? '' : ` --wordpress-user-id ${u.wordpressUserId}`;
  return (
    ` (user ${u.id}, made by an acm2 user create that was stopped before it showed the API key, with username '${u.username}'` +
    `${u.wordpressUserId === null ? ' and no WordPress user id' : ` and WordPress user id ${u.wordpressUserId}`}): ` +
    `to give it a new key, run that create again with the same fields: acm2 user create --email ${u.email} --username ${u.username}${wp}`
  );
}

/**
 * What the data dir held under a brand-new user's id before the user existed. The job is held
 * back (not due), so no drainer has taken it; but `user seed <id>` or backfill may have (they
 * do not wait for the hold), and what such a seed made is this user's own. So what is there
 * counts only while the job is untouched, checked under the user's lock.
 */
async function foreignLeftovers(deps: UserDeps, id: UserId, jobId: number): Promise<string[]> {
  const there = leftoversAt(deps.dataDir, id);
  if (there.length === 0) return [];
  try {
    const lock = await tryLockUser(deps.master, deps.dataDir, id);
    if (!lock) return []; // a seeder holds the user: its staging and files are this user's
    try {
      const latest = await deps.master.latestJob(id);
      if (latest?.id !== jobId || latest.status !== 'pending' || latest.attempts > 0) return [];
      return leftoversAt(deps.dataDir, id);
    } finally {
      await lock.release();
    }
  } catch {
    return there; // the user exists: nothing may throw now; what was seen stays unadopted
  }
}

/**
 * What the data dir holds under a user id (DB, its journals, folder, staged builds), relative to
 * it. Never throws (the caller has just made the user): a path it cannot look at counts as there.
 */
function leftoversAt(dataDir: string, id: UserId): string[] {
  const there = (p: string): boolean => {
    try {
      lstatSync(p);
      return true;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code !== 'ENOENT';
    }
  };
  const db = userDbPath(dataDir, id);
  const out = [db, `${db}-journal`, `${db}-wal`, userRoot(dataDir, id)].filter(there);
  const staging = toolDir(dataDir, 'staging');
  try {
    for (const n of readdirSync(staging).sort()) if (n.startsWith(`user_${id}-`)) out.push(path.join(staging, n));
  } catch {
    /* no staging folder, or one the seed will report */
  }
  return out.map((p) => path.relative(dataDir, p));
}

/** Whether the user's DB says ready at this version (false when it cannot be read: the seed will say why). */
export function readyAt(dataDir: string, id: UserId, version: string): boolean {
  if (!existsSync(userDbPath(dataDir, id))) return false;
  try {
    const db = openUserDb(dataDir, id, { readonly: true });
    try {
      const meta = hasTable(db, 'user_meta') ? readMeta(db, id) : undefined;
      return meta?.seed_status === 'ready' && meta.seed_version === version;
    } finally {
      db.close();
    }
  } catch {
    return false;
  }
}

/**
 * A DB a newer acm2 migrated is refused (exit 3) before a job is made or claimed for it, so a
 * refused seed leaves nothing queued behind. A DB that cannot be read at once (held locked) is
 * left to the seed, which waits for it and checks again.
 */
function refuseNewerSchema(dataDir: string, id: UserId): void {
  if (!existsSync(userDbPath(dataDir, id))) return;
  let newer: ReturnType<typeof newerMigrations>;
  try {
    const db = openUserDb(dataDir, id, { readonly: true, busyTimeoutMs: 0 });
    try {
      newer = newerMigrations(db);
    } finally {
      db.close();
    }
  } catch {
    return;
  }
  if (newer.length > 0) throw newerToolError(`the user DB ${userDbPath(dataDir, id)}`, newer, 'schema_newer');
}

/**
 * An id or an email, resolved against the master. With the data dir, an id the master lacks whose
 * DB or folder is there says so: an orphan (a user deleted from the master, a master restored from
 * before the user) is not "no such user" to an operator looking at user_{id}.db.
 */
export async function resolveUser(master: MasterDb, ref: string, dataDir?: string): Promise<MasterUser> {
  if (ref.includes('@')) {
    const u = await master.findUserByEmail(ref.trim());
    if (!u) throw new UsageError(`no user with email '${ref}' in the master`, 'unknown_user');
    return u;
  }
  const id = parseUserId(ref);
  const u = await master.getUser(id);
  if (!u) throw new UsageError(`no user with id ${id} in the master${dataDir === undefined ? '' : orphanNote(dataDir, id)}`, 'unknown_user');
  return u;
}

/** "; <its DB> is there without a master user…" when the data dir holds the id's DB or folder. */
function orphanNote(dataDir: string, id: UserId): string {
  const there = [userDbPath(dataDir, id), userRoot(dataDir, id)].filter((p) => lstatOrUndefined(p) !== undefined);
  if (there.length === 0) return '';
  return `, but ${there.join(' and ')} ${there.length === 1 ? 'is' : 'are'} there: an orphan (no master user owns ${there.length === 1 ? 'it' : 'them'}; acm2 verify lists orphans, and nothing in acm2 removes them)`;
}

/** A user reference is an email or a positive integer id; anything else is refused up front. */
export function checkUserRef(ref: string): string {
  if (!ref.includes('@')) parseUserId(ref);
  return ref;
}

export async function seedOneUser(deps: UserDeps, ref: string, opts: { seedVersion?: string; force?: boolean }): Promise<{ user: MasterUser; seed: SeedReport }> {
  const pkg = loadPackage(deps.seedsDir, resolveVersion(deps.seedsDir, opts.seedVersion));
  const user = await resolveUser(deps.master, checkUserRef(ref), deps.dataDir);
  // Run again as asked: a bare `user seed <id>` would seed CURRENT, and without --force restore nothing.
  const again = `acm2 user seed ${user.id}${opts.force ? ' --force' : ''}${opts.seedVersion === undefined ? '' : ` --seed-version ${pkg.version}`}`;
  return { user, seed: await seedWithJob(deps, user, pkg, Boolean(opts.force), again) };
}

const LEASE_MS = 10 * 60 * 1000;

/**
 * Seed under the user's lock, keeping the master's job in step with the outcome. `again`: the
 * command that runs this seed again, offered when it fails.
 */
async function seedWithJob(deps: UserDeps, user: MasterUser, pkg: SeedPackage, force: boolean, again = `acm2 user seed ${user.id}`): Promise<SeedReport> {
  // Every seed would fail on it alike: refused before a job is claimed (no attempt is spent).
  refuseOddToolDir(deps.dataDir);
  const lock = await lockUser(deps.master, deps.dataDir, user.id, deps.lockTimeoutMs);
  const worker = workerName();
  try {
    // This version's job only (another version's, a retry waiting, is not what was asked for),
    // made and claimed in one transaction: a drainer taking it in between would run it again.
    // A user ready at this version already gets no new job: a second run changes nothing.
    // A user ready at this version whose last job failed (a worker died on its last attempt
    // after the seed had finished) gets a job too, which this run closes: otherwise the master
    // would say failed for ever. We hold the lock: a job marked running has no live seeder.
    refuseNewerSchema(deps.dataDir, user.id);
    const ready = !force && readyAt(deps.dataDir, user.id, pkg.version);
    const enqueue = !ready || (await deps.master.latestJob(user.id))?.status === 'failed' ? { force } : undefined;
    deps.onCommitting?.();
    let claimed = await deps.master.claimJobForUser(user.id, worker, LEASE_MS, undefined, pkg.version, enqueue, true);
    const closedForceJobs: NonNullable<SeedReport['closedForceJobs']> = [];
    while (claimed?.force && !force) {
      // A --force's job this plain seed took over (its worker died): a plain seed never does a
      // --force's work on a ready user. The job is closed as the queue would close it, and the
      // plain seed goes on with a job of its own, if it needs one (a user ready with this
      // version: nothing to do). A user the --force left not ready is seeded to the end under
      // that job, the only way back to a served user.
      let unrun: ReturnType<typeof queuedForce>;
      try {
        unrun = queuedForce(deps, claimed);
      } catch (e) {
        // Its DB held by ACM2: the job goes back as it was, for whoever can read the DB later.
        await deps.master.finishJob(claimed.id, worker, { status: 'pending', error: e instanceof Error ? e.message : String(e), nextAttemptAt: Date.now() + backoffMs(1), notAttempted: true });
        throw e;
      }
      if (!unrun) break;
      if (await deps.master.finishJob(claimed.id, worker, unrun)) {
        closedForceJobs.push({ id: claimed.id, status: unrun.status, ...(unrun.status === 'failed' ? { error: unrun.error } : {}) });
        if (unrun.status === 'done') await deps.master.supersedeOlderJobs(user.id, claimed.id);
      }
      claimed = await deps.master.claimJobForUser(user.id, worker, LEASE_MS, undefined, pkg.version, enqueue, true);
    }
    const job = claimed;
    let seeded = false;
    // An error this seed throws (exit 3, the master gone) is all the operator sees: it names the
    // --force jobs closed above too, as the report does (renderSeed), or that --force's not
    // happening would be said nowhere but in the master.
    const sayClosed = (e: unknown) => {
      if (!(e instanceof Error)) return;
      for (const j of closedForceJobs) e.message += `; job #${j.id}, of an earlier acm2 user seed ${user.id} --force whose process is gone, is closed as ${j.status}${j.status === 'failed' ? ', not run' : ''}`;
    };
    try {
      const r = await seedUserAsync({ dataDir: deps.dataDir, userId: user.id, pkg, force, onStep: deps.onStep, lock });
      seeded = true;
      if (job && (await deps.master.finishJob(job.id, worker, { status: 'done' }))) await deps.master.supersedeOlderJobs(user.id, job.id);
      return { status: 'ready', outcome: r.outcome, seedVersion: pkg.version, rows: r.rows, files: r.files, bytes: r.bytes, durationMs: r.durationMs, jobId: job?.id, ...(r.backup ? { backup: r.backup.path } : {}), ...(r.readyAgain ? { readyAgain: r.readyAgain } : {}), ...(closedForceJobs.length > 0 ? { closedForceJobs } : {}) };
    } catch (e) {
      // The seed worked and the master failed to take it (locked past the wait, gone, corrupt):
      // not an attempt of the user's. The job stays claimed until its lease ends; the next run
      // finds the user ready and closes it.
      if (seeded || masterStopped(e)) {
        sayClosed(e);
        throw e;
      }
      nameRerun(e, user.id, again);
      const error = e instanceof Error ? e.message : String(e);
      // A --force overwrites the user's edits: it runs when an operator asks and sees it through,
      // never later from the queue. Left queued, a `user seed --pending` from cron would do it
      // once the cause passed, after the operator saw it fail (and maybe decided against it).
      // So its job is closed, failed; a --force that failed before it changed anything leaves
      // the user ready as it was, which verify accepts beside a failed --force job.
      const closed = job?.force === true;
      if (job) await deps.master.finishJob(job.id, worker, closed ? { status: 'failed', error } : retryOutcome(job, error, e));
      const retry = !needsOperator(e) && !(isAcm2Error(e) && e.exitCode === 3);
      const note = closed ? `; job #${job.id} is closed, not queued: a --force runs only when asked${retry || error.includes(`run: ${again}`) ? '' : ` (${again})`}` : '';
      if (isAcm2Error(e) && e.exitCode === 3) {
        e.message += note;
        sayClosed(e);
        throw e;
      }
      return { status: 'failed', seedVersion: pkg.version, error: error + note, jobId: job?.id, ...(retry ? { retry: again } : {}), ...(closedForceJobs.length > 0 ? { closedForceJobs } : {}) };
    }
  } finally {
    await lock.release();
  }
}

/**
 * How a --force's job that a queue drain (or a plain `user seed`) finds is closed instead of run;
 * undefined: it is run. Its worker died (kill -9, a lost host) or the job came back to the queue:
 * either way no operator is watching it now, and a --force runs only when one asks and sees it
 * through; done from the queue, it would overwrite the user's edits out of sight, maybe the very
 * ones the operator stopped it to keep. A --force changes nothing of the user before it marks it
 * in_progress (beginSeed, committed before its first write of a row or file), so a user still
 * ready was left as it was (the job is failed, saying so and how to run it again), or the --force
 * finished and only its job was left open (this version's seed state finished after the job was
 * made: it is done). A user not ready (in_progress, failed, no DB) is not served as it is:
 * finishing the --force is the only way back, and it is run. Called under the user's lock.
 */
function queuedForce(deps: UserDeps, job: SeedJob): Extract<JobOutcome, { status: 'done' | 'failed' }> | undefined {
  if (!existsSync(userDbPath(deps.dataDir, job.userId))) return undefined;
  let meta: ReturnType<typeof readMeta>;
  let finishedAt: string | null | undefined;
  try {
    // Read-write (never create): a hot journal the killed --force left is rolled back to read.
    const db = openUserDb(deps.dataDir, job.userId);
    try {
      meta = hasTable(db, 'user_meta') ? readMeta(db, job.userId) : undefined;
      if (hasTable(db, 'acm2_seed_state')) {
        const s = readSeedState(db, job.seedVersion);
        finishedAt = s?.status === 'ready' ? s.finished_at : undefined;
      }
    } finally {
      db.close();
    }
  } catch (e) {
    // Held by ACM2 (serving the user, so likely ready): not run blind; the job waits for a retry.
    if (isBusy(e)) throw new UnavailableError(`user ${job.userId}'s database ${userDbPath(deps.dataDir, job.userId)} is locked by another process (ACM2?), so whether the --force of job #${job.id} began could not be read: nothing was changed; it is looked at again later`, 'db_busy', { cause: e });
    return undefined; // unreadable: the seed says why
  }
  if (meta?.seed_status !== 'ready') return undefined;
  if (meta.seed_version === job.seedVersion && finishedAt && Date.parse(finishedAt) >= Date.parse(job.createdAt)) return { status: 'done' };
  const command = `acm2 user seed ${job.userId} --force${job.seedVersion === versionOrUndefined(deps.seedsDir) ? '' : ` --seed-version ${job.seedVersion}`}`;
  return {
    status: 'failed',
    error:
      `the ${command} that ran this job stopped, its process gone (kill -9, a lost host), before it changed anything: user ${job.userId} stays ready with ${meta.seed_version}, its rows and files as they were; ` +
      `job #${job.id} is closed, not taken over: a --force runs only when asked (to restore the user's seeded rows and files, run: ${command})`,
  };
}

/**
 * The seed's own remedies say `run: acm2 user seed <id>`, which seeds CURRENT and restores
 * nothing: a seed run with --force or for another version is run again as it was (`again`).
 */
function nameRerun(e: unknown, userId: number, again: string): void {
  if (e instanceof Error && again !== `acm2 user seed ${userId}`) e.message = e.message.replace(new RegExp(`run: acm2 user seed ${userId}(?=;|$)`, 'g'), `run: ${again}`);
}

/** The master locked past the wait, gone or corrupt: nothing to record a job's outcome in. */
function masterStopped(e: unknown): boolean {
  return isAcm2Error(e) && e.exitCode === 3 && (e.code === 'master_unreachable' || e.code === 'master_busy' || e.code === 'master_corrupt');
}

/** The first retry delay (ACM2_RETRY_BASE_MS; empty, as every empty variable, counts as unset). */
function retryBaseMs(): number {
  const raw = process.env.ACM2_RETRY_BASE_MS;
  const v = raw?.trim() ? Number(raw) : NaN;
  return Number.isFinite(v) && v >= 0 ? v : 5000;
}

export function backoffMs(attempts: number): number {
  const base = retryBaseMs();
  return Math.min(base * 2 ** Math.max(0, attempts - 1), 60 * 60 * 1000);
}

/** How long a job whose user DB a newer acm2 migrated waits before this (older) acm2 looks at it again. */
const NEWER_SCHEMA_RECHECK_MS = 60_000;

/** The user's DB was migrated by a newer acm2: this host's tool is out of date, not the user. */
function newerSchema(e: unknown): boolean {
  return isAcm2Error(e) && e.code === 'schema_newer';
}

function retryOutcome(job: SeedJob, error: string, e?: unknown): JobOutcome {
  // Not this user's fault and no attempt of theirs: the job waits, its attempt given back, for an
  // upgraded acm2 (on this host or another) rather than failing the user after a few tries.
  if (newerSchema(e)) return { status: 'pending', error, nextAttemptAt: Date.now() + NEWER_SCHEMA_RECHECK_MS, notAttempted: true };
  // The user's lock went with its holder's master connection (a network blip, a server restart,
  // wait_timeout): the seed stopped before anything became visible, through no fault of the
  // user's. The job waits out one backoff, its attempt given back.
  if (isAcm2Error(e) && e.code === 'lock_lost') return { status: 'pending', error, nextAttemptAt: Date.now() + backoffMs(1), notAttempted: true };
  // A seed that needs an operator first fails now: retrying it would only burn the attempts.
  return job.attempts >= job.maxAttempts || needsOperator(e)
    ? ({ status: 'failed', error } as const)
    : ({ status: 'pending', error, nextAttemptAt: Date.now() + backoffMs(job.attempts) } as const);
}

export interface DrainResult {
  claimed: number;
  done: number;
  retrying: number;
  failed: number;
  skipped: number;
  failures: Array<{ userId: number; jobId: number; error: string; final: boolean }>;
}

/**
 * Jobs each drainer keeps in flight: one user's CPU work runs while others wait on their fsyncs
 * and on the master's round trips. Four rather than two: one worker on the MySQL queue drained
 * 1,000 users in 6.5 s instead of 7.4-7.5 s (two series of paired runs, faster in every pair),
 * two workers gained 4-9 %, the embedded master 1-3 % (noise), and peak RSS seeding the 28 MB
 * large package did not move (572 MB either way).
 */
export const DRAIN_LANES = 4;

/** How long a new user's job is held back while user create looks at the data dir (see createUser). */
const CREATE_HOLD_MS = 30_000;

/** A live drainer claims a job, then takes its user's lock, within moments of each other. */
const CLAIM_TO_LOCK_MS = 5000;

/**
 * End the leases of jobs whose worker died (kill -9, a lost host) instead of waiting out the
 * ten minutes: every seeder holds the user's lock while its job runs (a lock file, or GET_LOCK
 * on MySQL: either dies with its holder), so a running job whose user lock is free, claimed
 * long enough ago, has no live worker. The claims that follow take it as an expired one.
 */
async function releaseOrphanedJobs(deps: UserDeps, now = Date.now()): Promise<number> {
  let released = 0;
  for (const j of await deps.master.heldJobs(100, now)) {
    if (j.lockedBy === null || j.lockedUntil === null) continue;
    // A claim younger than that may be a live drainer between its claim and its lock, unless
    // its worker ran on this host and that process is gone (a drain right after a kill -9).
    const gone = deadHere(j.lockedBy);
    if (j.lockedUntil - LEASE_MS > now - CLAIM_TO_LOCK_MS && !gone) continue;
    // A worker of this host whose process is gone holds nothing: its lease ends without the
    // user's lock (expireLease is for its claim only). Taking the lock to look would make a
    // drainer that took the job over a moment ago (another thread of this drain, which read
    // the list before) find its user locked and put the job off as "user busy", so that a
    // drain right after a kill -9 exited 0 with a job still queued.
    if (gone) {
      if (await deps.master.expireLease(j.id, j.lockedBy, now)) released++;
      continue;
    }
    const lock = await tryLockUser(deps.master, deps.dataDir, j.userId);
    if (!lock) continue;
    try {
      if (await deps.master.expireLease(j.id, j.lockedBy, now)) released++;
    } finally {
      await lock.release();
    }
  }
  return released;
}


/**
 * How long this process remembers that a version's package could not be used here: its drains
 * leave that version's jobs to other hosts meanwhile (a --watch worker looks again after it).
 */
const BAD_PACKAGE_RECHECK_MS = 30_000;
const badPackages = new Map<string, { error: unknown; at: number }>();

/** Versions whose package this process found it cannot use, lately: not claimed by its drains. */
function unusableVersions(seedsDir: string, now = Date.now()): string[] {
  const out: string[] = [];
  for (const [key, bad] of badPackages) {
    const [dir, version] = key.split('\0');
    if (dir === seedsDir && version !== undefined && now - bad.at < BAD_PACKAGE_RECHECK_MS) out.push(version);
  }
  return out;
}

/**
 * The checked package of a job's version. loadPackage caches a good one per process; a bad one is
 * remembered here for a while, so a queue of its jobs is not re-hashed job by job.
 */
function packageFor(seedsDir: string, version: string): SeedPackage {
  const key = `${seedsDir}\0${version}`;
  const bad = badPackages.get(key);
  if (bad && Date.now() - bad.at < BAD_PACKAGE_RECHECK_MS) throw bad.error;
  try {
    const pkg = loadPackage(seedsDir, version);
    badPackages.delete(key);
    return pkg;
  } catch (e) {
    badPackages.set(key, { error: e, at: Date.now() });
    throw e;
  }
}

/**
 * Drain due jobs on this connection until none is left (or limit is reached). A job whose user
 * is locked by another seeder is handed back at once, not waited on. `lanes` jobs are in flight
 * at a time on this thread: seeding is synchronous CPU work between durability barriers, so a
 * second job fills the time the first one waits for its fsyncs.
 */
export async function drainQueue(
  deps: UserDeps,
  opts: {
    limit?: number;
    /** Take a slot before each claim (false: claim no more); unreserve gives back one whose claim found no job. */
    reserve?: () => boolean;
    unreserve?: () => void;
    onJob?: (r: DrainResult) => void;
    worker?: string;
    lanes?: number;
  },
): Promise<DrainResult> {
  const res: DrainResult = { claimed: 0, done: 0, retrying: 0, failed: 0, skipped: 0, failures: [] };
  // Every job would fail on it alike: refused before one is claimed.
  refuseOddToolDir(deps.dataDir);
  await releaseOrphanedJobs(deps);
  const worker = opts.worker ?? workerName();
  let claiming = 0;
  let stop = false;
  const lane = async (): Promise<void> => {
    // One lane at a time to its first claim: the embedded master blocks the thread for its whole
    // busy wait, so lanes started together would each sit through it (four waits, one message)
    // before the first one's failure could stop the others.
    await new Promise<void>((resolve) => setImmediate(resolve));
    while (!stop) {
      // Count a claim in flight at once, so two lanes never overshoot --limit together.
      if (opts.limit !== undefined && res.claimed + claiming >= opts.limit) break;
      if (opts.reserve && !opts.reserve()) break;
      claiming++;
      let job: SeedJob | undefined;
      try {
        job = await deps.master.claimJob(worker, LEASE_MS, undefined, unusableVersions(deps.seedsDir));
      } finally {
        claiming--;
      }
      if (!job) {
        opts.unreserve?.();
        break;
      }
      res.claimed++;
      // The user's lock first, at once after the claim: a drain's orphan sweep counts on a live
      // worker holding it within moments of its claim.
      const lock = await tryLockUser(deps.master, deps.dataDir, job.userId);
      if (!lock) {
        res.skipped++;
        await deps.master.finishJob(job.id, worker, { status: 'pending', error: 'user locked by another seeder', nextAttemptAt: Date.now() + 1000, notAttempted: true });
        continue;
      }
      let pkg: SeedPackage;
      try {
        pkg = packageFor(deps.seedsDir, job.seedVersion);
      } catch (e) {
        await lock.release();
        const error = e instanceof Error ? e.message : String(e);
        if (!(isAcm2Error(e) && e.exitCode === 2)) {
          // The package could not be read here (EACCES, EIO): this host's fault, alike for every
          // job; the job goes back unattempted and the drain stops (exit 3), as for a full disk.
          await deps.master.finishJob(job.id, worker, { status: 'pending', error, nextAttemptAt: Date.now(), notAttempted: true });
          throw isAcm2Error(e) ? e : new UnavailableError(`cannot read seed package ${job.seedVersion} in ${deps.seedsDir} (${error}): nothing was seeded from it; fix its permissions or the disk, then run again`, 'package_unreadable', { cause: e });
        }
        // A package missing here or tampered with fails every job of its version alike on this
        // host: the job goes back due (another host's --seeds may hold the version intact), its
        // attempts untouched (the user is not failed for a package fault), and this drain claims
        // no more jobs of that version while it goes on with the others.
        await deps.master.finishJob(job.id, worker, { status: 'pending', error, nextAttemptAt: Date.now(), notAttempted: true });
        res.retrying++;
        res.failures.push({
          userId: job.userId,
          jobId: job.id,
          error: `${error}; the job stays queued, its attempts untouched (this host leaves ${job.seedVersion}'s jobs to others for ${BAD_PACKAGE_RECHECK_MS / 1000} s): fix the package (acm2 seed check ${job.seedVersion}) or this host's --seeds, or seed the user with another version (acm2 user seed ${job.userId} --seed-version <v>)`,
          final: false,
        });
        opts.onJob?.(res);
        continue;
      }
      let seeded = false;
      try {
        const unrun = job.force ? queuedForce(deps, job) : undefined;
        if (unrun?.status === 'failed') {
          await deps.master.finishJob(job.id, worker, unrun);
          res.failed++;
          res.failures.push({ userId: job.userId, jobId: job.id, error: unrun.error, final: true });
        } else {
          if (!unrun) await seedUserAsync({ dataDir: deps.dataDir, userId: job.userId, pkg, force: job.force, onStep: deps.onStep, lock });
          seeded = true;
          if (await deps.master.finishJob(job.id, worker, { status: 'done' })) await deps.master.supersedeOlderJobs(job.userId, job.id);
          res.done++;
        }
      } catch (e) {
        // The user is seeded and only the master's record of it failed (see seedWithJob), or the
        // master stopped answering: no attempt is spent, and the drain stops (exit 3).
        if (seeded || masterStopped(e)) throw e;
        // The job is for its own version, which need not be CURRENT (a `--seed-version` seed
        // queued, CURRENT moved since): a bare `user seed <id>` would seed CURRENT instead.
        nameRerun(e, job.userId, `acm2 user seed ${job.userId} --seed-version ${job.seedVersion}`);
        const error = e instanceof Error ? e.message : String(e);
        if (isAcm2Error(e) && (e.code === 'disk_full' || e.code === 'bad_tool_dir')) {
          // Every next user would fail the same way: the job waits (this try not counted) and the
          // drain stops with exit 3, rather than burning every queued job's attempts.
          await deps.master.finishJob(job.id, worker, { status: 'pending', error, nextAttemptAt: Date.now() + backoffMs(1), notAttempted: true });
          throw e;
        }
        const outcome = retryOutcome(job, error, e);
        await deps.master.finishJob(job.id, worker, outcome);
        if (outcome.status === 'failed') res.failed++;
        else res.retrying++;
        res.failures.push({
          userId: job.userId,
          jobId: job.id,
          error: newerSchema(e) ? `${error}; the job stays queued, its attempts untouched, for an upgraded acm2 (this one looks at it again in ${NEWER_SCHEMA_RECHECK_MS / 1000} s)` : error,
          final: outcome.status === 'failed',
        });
      } finally {
        await lock.release();
      }
      opts.onJob?.(res);
    }
  };
  const lanes = Math.max(1, opts.lanes ?? DRAIN_LANES);
  const settled = await Promise.allSettled(
    Array.from({ length: lanes }, () =>
      lane().catch((e: unknown) => {
        stop = true; // the other lanes finish their job in hand, then stop
        throw e;
      }),
    ),
  );
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return res;
}

export interface UserStatus {
  id: number;
  username: string;
  email: string;
  status: SeedStatus;
  seedVersion: string | null;
  seededAt: string | null;
  /**
   * newerMigrations: what a newer acm2 applied to the DB (this one does not know them: it may not seed it).
   * busy: another process (ACM2 writing) held the DB locked past the wait, so it was not read just
   * now (error says so); nothing else of db, nor seedVersion, seededAt or files, was read.
   */
  db: { path: string; present: boolean; seedStatus: string | null; error?: string; newerMigrations?: string[]; busy?: true };
  root: string;
  /** What is at root instead of the user's folder (a plain file, a symlink...): none of its files can be there. */
  rootProblem?: string;
  /**
   * The files the seeded-file list (acm2_seed_files) names, of every version the user holds (a
   * user seeded with v1 then v2 keeps both copies); byVersion: the same per version, user_meta's
   * version first (0 when it lists none yet), then the others by name. Empty when no list was read.
   */
  files: { count: number; bytes: number; byVersion: Array<{ version: string; count: number; bytes: number }> };
  job: {
    id: number;
    status: string;
    attempts: number;
    maxAttempts: number;
    lastError: string | null;
    /** Running: the worker holding it (host:pid:tag) and until when (ISO); a dead worker's hold lasts until then. */
    lockedBy: string | null;
    lockedUntil: string | null;
    /** Pending: when it is due (ISO). */
    nextAttemptAt: string | null;
  } | null;
  lastError: string | null;
  /** `user show` only: the user's whole backups under .acm2/backups/ (never pruned by the tool); null when that folder cannot be read. */
  backups?: KeptBackups | null;
}

/** How long a user DB another process holds locked is waited for (default). */
const USER_DB_BUSY_MS = 5000;

/**
 * The wait for locked user DBs shared by one walk over many users (`user list`): left, what is
 * still to be spent. A DB found locked is waited for no longer than what is left; once one was
 * still locked after its wait, nothing is left, and any later locked DB is reported busy at once.
 * A listing over many DBs held by a backfill or a seed drain so waits once in all, not once per DB.
 */
export interface BusyWait {
  leftMs: number;
}

export interface UserStatusDeps extends Pick<UserDeps, 'master' | 'dataDir'> {
  /** How long to wait for one user DB another process holds locked (default 5 s). */
  busyTimeoutMs?: number;
  /** A listing's shared wait (see BusyWait); absent, a locked DB is waited for its whole busyTimeoutMs. */
  busyWait?: BusyWait;
}

/** `opts.backups`: also what the user's backups take (one user's folder walked: `user show`, not `user list`). */
export async function userStatus(deps: UserStatusDeps, user: MasterUser, opts: { backups?: boolean } = {}): Promise<UserStatus> {
  const job = (await deps.master.latestJob(user.id)) ?? null;
  const dbPath = userDbPath(deps.dataDir, user.id);
  const out: UserStatus = {
    id: user.id,
    username: user.username,
    email: user.email,
    status: 'missing',
    seedVersion: null,
    seededAt: null,
    // lstat: a dangling symlink there is not "no DB" (openUserDb below says what it is).
    db: { path: dbPath, present: lstatSync(dbPath, { throwIfNoEntry: false }) !== undefined, seedStatus: null },
    root: userRoot(deps.dataDir, user.id),
    files: { count: 0, bytes: 0, byVersion: [] },
    job: job && {
      id: job.id,
      status: job.status,
      attempts: job.attempts,
      maxAttempts: job.maxAttempts,
      lastError: job.lastError,
      lockedBy: job.status === 'running' ? job.lockedBy : null,
      lockedUntil: job.status === 'running' && job.lockedUntil !== null ? new Date(job.lockedUntil).toISOString() : null,
      nextAttemptAt: job.status === 'pending' ? new Date(job.nextAttemptAt).toISOString() : null,
    },
    lastError: job?.lastError ?? null,
  };
  let dbState: DbRead = 'read';
  // How long the DB, when it is still locked, was waited for: its busy message says so.
  const waited = { ms: 0 };
  if (out.db.present) {
    try {
      // A data dir that turned read-only since this process last asked is read from a copy.
      readAgainIfReadOnly(dbPath, () => {
        // Read-write (never create): a hot journal left by a killed writer must be rolled back to read.
        // No wait at open: beginRead decides how long a locked DB is waited for.
        const db = openUserDb(deps.dataDir, user.id, { busyTimeoutMs: 0, forReading: true });
        try {
          // Every read in one read transaction, its first read taking the DB's shared lock: a DB
          // another process holds locked is waited for once (beginRead throws, busy), not once
          // per read (newerMigrations takes a failed read for "no ledger" and goes on), and no
          // writer can lock it again between two reads.
          beginRead(db, deps.busyTimeoutMs ?? USER_DB_BUSY_MS, deps.busyWait, waited);
          const newer = newerMigrations(db);
          if (newer.length > 0) out.db.newerMigrations = newer.map((m) => m.name);
          const meta = hasTable(db, 'user_meta') ? readMeta(db, user.id) : undefined;
          // A copy of another user's DB put at this user's path (or an id reused): it serves
          // another person's data as this user's, and no seed or backfill will touch it.
          const owners = meta ? [] : otherOwners(db, new Set(listTables(db)), user.id);
          if (owners.length > 0) throw new ForeignDb(`the DB holds another user's data (${owners.join('; ')}), not user ${user.id}'s: move it out of the data dir, then run: acm2 user seed ${user.id}`);
          out.db.seedStatus = meta?.seed_status ?? null;
          out.seedVersion = meta?.seed_version ?? null;
          out.seededAt = meta?.seeded_at ?? null;
          if (hasTable(db, 'acm2_seed_files') && meta) {
            const per = db.prepare(`SELECT seed_version AS version, COUNT(*) AS count, COALESCE(SUM(bytes),0) AS bytes FROM acm2_seed_files GROUP BY seed_version ORDER BY seed_version`).all() as Array<{ version: string; count: number; bytes: number }>;
            const current = per.find((v) => v.version === meta.seed_version) ?? { version: meta.seed_version, count: 0, bytes: 0 };
            const byVersion = [current, ...per.filter((v) => v !== current)];
            out.files = { count: byVersion.reduce((n, v) => n + v.count, 0), bytes: byVersion.reduce((n, v) => n + v.bytes, 0), byVersion };
          }
          if (hasTable(db, 'acm2_seed_state') && meta) {
            const s = db.prepare(`SELECT last_error FROM acm2_seed_state WHERE seed_version = ?`).get(meta.seed_version) as { last_error: string | null } | undefined;
            out.lastError = s?.last_error ?? out.lastError;
          }
        } finally {
          // Only read: nothing to keep (and a rollback cannot fail on a busy DB).
          if (db.inTransaction) db.exec('ROLLBACK');
          db.close();
        }
      });
    } catch (e) {
      // The temp folder cannot hold the copy a read-only data dir is read from (the same file
      // system remounted read-only, a full TMPDIR): the environment (exit 3), not this user's DB,
      // which is sound; reported as the user failed, every user of a list would say so.
      if (isTempFolderProblem(e)) throw e;
      out.db.error = e instanceof Error ? e.message : String(e);
      dbState = isBusy(e) ? 'busy' : 'unreadable';
      if (dbState === 'busy') {
        out.db.busy = true;
        out.db.error = busyNote(user.id, waited.ms, deps.busyWait !== undefined);
      }
      if (e instanceof ForeignDb) out.lastError = e.message;
    }
  }
  // A pending job that has been tried and failed is a failed seed waiting for its retry (SPEC:
  // "if seeding fails the user stays, with status failed, the job stays retryable").
  const retrying = job?.status === 'pending' && job.attempts > 0 && job.lastError !== null;
  out.status = deriveStatus(out.db.seedStatus, retrying ? 'failed' : (job?.status ?? null), dbState);
  if (dbState === 'unreadable' && out.status === 'failed') out.lastError ??= `user DB unreadable: ${out.db.error}`;
  if (out.status === 'ready') out.lastError = null;
  try {
    const odd = userRootProblem(deps.dataDir, user.id);
    if (odd) out.rootProblem = odd;
  } catch (e) {
    out.rootProblem = `${out.root} cannot be looked at (${(e as NodeJS.ErrnoException).code ?? String(e)})`;
  }
  if (opts.backups) out.backups = keptBackups(toolDir(deps.dataDir, 'backups', `user_${user.id}`), `user_${user.id}`) ?? null;
  return out;
}

/**
 * Open the read transaction and take the DB's shared lock with its first read: at once when the DB
 * is free (nothing counted as waited); when another process holds it, wait up to waitMs, or what
 * is left of a listing's shared wait, and take what was waited off it. Still locked after that:
 * nothing is left of the shared wait, waited.ms says how long this DB was waited for, and the busy
 * error is thrown.
 */
function beginRead(db: import('better-sqlite3').Database, waitMs: number, shared: BusyWait | undefined, waited: { ms: number }): void {
  const firstRead = () => {
    // A read refused busy may have ended the transaction it began (SQLite may roll back on BUSY).
    if (!db.inTransaction) db.exec('BEGIN');
    db.prepare(`SELECT 1 FROM sqlite_master LIMIT 1`).get();
  };
  try {
    firstRead();
    return;
  } catch (e) {
    if (!isBusy(e)) throw e;
    waited.ms = Math.max(0, Math.min(waitMs, shared?.leftMs ?? waitMs));
    if (waited.ms === 0) throw e;
  }
  const started = Date.now();
  try {
    db.pragma(`busy_timeout = ${waited.ms}`);
    firstRead();
  } catch (e) {
    if (isBusy(e) && shared) shared.leftMs = 0;
    throw e;
  } finally {
    if (shared && shared.leftMs > 0) shared.leftMs = Math.max(0, shared.leftMs - (Date.now() - started));
  }
}

/** db.error of a DB still locked, worded for the wait made: a listing's DB not waited for names the command that waits for it. */
function busyNote(id: number, waitedMs: number, listing: boolean): string {
  const what = 'locked by another process (ACM2 writing?)';
  if (waitedMs > 0) return `${what} for more than ${waitedMs / 1000} s, so it was not read just now: run this again shortly`;
  if (listing) return `${what} and not waited for (this listing already spent its wait on another locked DB), so it was not read just now: run acm2 user show ${id} to wait for it, or this again shortly`;
  return `${what}, so it was not read just now: run this again shortly`;
}

/** The user's DB is another user's (user show, user list): it serves nobody as this user. */
class ForeignDb extends Error {}

/** How reading the user's DB went: read (or absent), unreadable (corrupt, not a DB), or busy (locked by another process). */
export type DbRead = 'read' | 'unreadable' | 'busy';

/**
 * A user's status from its DB's seed status and its latest job. A DB that is there but cannot be
 * read serves nobody: failed. One locked by another process (ACM2 writing) is not broken: its
 * status is the master job's word (db.error says it could not be read).
 */
export function deriveStatus(meta: string | null, job: string | null, db: DbRead = 'read'): SeedStatus {
  if (job === 'pending' || job === 'running') return 'pending';
  if (db === 'unreadable') return 'failed';
  if (db === 'busy') return job === 'done' ? 'ready' : job === 'failed' ? 'failed' : 'missing';
  if (meta === 'ready') return 'ready';
  if (meta === 'failed' || job === 'failed') return 'failed';
  if (meta === 'in_progress') return 'pending';
  return 'missing';
}

/** Stream users (keyset pages) with their status; never holds every user in memory. */
export async function* listUserStatuses(deps: Omit<UserStatusDeps, 'busyWait'>, opts: { status?: SeedStatus; pageSize?: number } = {}): AsyncGenerator<UserStatus> {
  // One wait for the whole listing: many DBs held locked (a backfill, a seed drain) are not each
  // waited for, one after the other, while nothing is printed.
  const busyWait: BusyWait = { leftMs: deps.busyTimeoutMs ?? USER_DB_BUSY_MS };
  let after = 0;
  const size = opts.pageSize ?? 500;
  for (;;) {
    const page = await deps.master.listUsers({ afterId: after, limit: size });
    if (page.length === 0) return;
    for (const u of page) {
      const s = await userStatus({ ...deps, busyWait }, u);
      if (!opts.status || s.status === opts.status) yield s;
    }
    after = page[page.length - 1]!.id;
  }
}

