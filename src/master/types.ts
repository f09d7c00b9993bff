// The one interface every master implementation (embedded SQLite, MySQL) provides.
// Ids are numbers and times ISO strings at this boundary, whatever the engine returns.

export interface MasterUser {
  id: number;
  username: string;
  email: string;
  wordpressUserId: number | null;
  createdAt: string | null;
}

export type JobStatus = 'pending' | 'running' | 'done' | 'failed';

export interface SeedJob {
  id: number;
  userId: number;
  seedVersion: string;
  status: JobStatus;
  force: boolean;
  attempts: number;
  maxAttempts: number;
  lockedBy: string | null;
  /** Epoch ms; a running job whose lease is past may be reclaimed. */
  lockedUntil: number | null;
  /** Epoch ms before which a pending job is not claimed (retry backoff). */
  nextAttemptAt: number;
  lastError: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface NewUser {
  username: string;
  email: string;
  wordpressUserId: number | null;
  keyHash: string;
  keyPrefix: string;
  keyName: string;
  seedVersion: string;
  maxAttempts: number;
  /** Epoch ms when the new user's job is first due (default: now): user create holds it back while it looks at the data dir. */
  jobDueAt?: number;
  /** Who makes it (a workerName): kept with the undelivered-key marker, so a rerun can tell a create still running here. */
  issuedBy?: string;
}

/**
 * An API key `user create` made and has not shown yet (acm2_undelivered_keys): the create
 * committed, then stopped before the key reached stdout. Joined with its api_keys row.
 */
export interface UndeliveredKey {
  userId: number;
  apiKeyId: number;
  keyPrefix: string;
  /** The workerName of the process that made it. */
  issuedBy: string;
  createdAt: string;
  /** Set: ACM2 has authenticated with it since, so it did reach someone. */
  lastUsedAt: string | null;
  revokedAt: string | null;
}

/** A fresh key for a user whose undelivered key it replaces (see MasterDb.reissueKey). */
export interface ReissuedKey {
  userId: number;
  /** The undelivered key the caller saw: refused if the marker names another one by now. */
  oldKeyId: number;
  keyHash: string;
  keyPrefix: string;
  keyName: string;
  issuedBy: string;
}

export interface ApiKeyRow {
  id: number;
  userId: number;
  keyHash: string;
  keyPrefix: string;
  name: string | null;
  revokedAt: string | null;
}

export type JobOutcome =
  | { status: 'done' }
  /**
   * Retry later: back to pending with the error kept. `notAttempted`: the claim did no work (the
   * user was locked by another seeder), so the attempt the claim counted is given back.
   */
  | { status: 'pending'; error: string; nextAttemptAt: number; notAttempted?: boolean }
  /** Last attempt spent. */
  | { status: 'failed'; error: string };

/** 1 when a finished claim gives its attempt back (see JobOutcome), else 0. */
export function notAttempted(outcome: JobOutcome): number {
  return outcome.status === 'pending' && outcome.notAttempted ? 1 : 0;
}

/** last_error of a job whose worker stopped (its lease expired) on its last attempt. */
export function leaseExpiredError(r: Record<string, unknown>): string {
  return `the worker running it (${String(r.locked_by)}) stopped before finishing, on attempt ${Number(r.attempts)} of ${Number(r.max_attempts)} (its lease expired): not run again`;
}

/** last_error of a pending job a later, finished job of the same user supersedes. */
export function supersededError(doneJobId: number): string {
  return `superseded by job #${doneJobId}, a later request for this user that is done: running this one after it would undo it`;
}

export interface UserLock {
  release(): Promise<void>;
  /**
   * Resolves while this lock is still ours; rejects with an UnavailableError (code lock_lost)
   * once it is not (MySQL: the lock's connection died, and with it the lock). Seeding asks
   * before each step another holder could collide with.
   */
  check(): Promise<void>;
}

export interface BackfillProgress {
  name: string;
  status: 'running' | 'done' | 'interrupted';
  cursor: number;
  options: string;
  counts: Record<string, number>;
  startedAt: string;
  updatedAt: string;
}

export interface BackfillItem {
  userId: number;
  outcome: string;
  reason: string | null;
}

export interface DataDirPairing {
  /** The id stamped in <data-dir>/.acm2/data-dir.json. */
  id: string;
  /** Where that data dir was when it was paired (for the message; the id decides). */
  path: string;
  /**
   * When the pairing was finished; null while it is not: the master records the id first, then the
   * data dir is stamped with it, then this is set, so a record without it is a first pairing that
   * has not finished (or was cut short), whose stamp may or may not have been written.
   */
  pairedAt: string | null;
}

export interface MasterCapabilities {
  /** SELECT … FOR UPDATE SKIP LOCKED for claiming jobs. */
  skipLocked: boolean;
  /** Named advisory locks held by a connection (GET_LOCK). */
  advisoryLocks: boolean;
}

export interface MasterDb {
  readonly dialect: 'sqlite' | 'mysql';
  /** Where it points, with no password. */
  readonly display: string;
  readonly capabilities: MasterCapabilities;

  /** Apply pending master migrations (ordered, checksummed, each once). Returns names applied. */
  migrate(): Promise<string[]>;
  /**
   * The master migrations this tool has and the master lacks, read without writing. Throws for a
   * master this tool must not use: one a newer acm2 migrated (a migration it does not know: exit 3,
   * master_newer) or one with a migration applied with another checksum (exit 2).
   */
  checkMigrations(): Promise<string[]>;

  getUser(id: number): Promise<MasterUser | undefined>;
  findUserByEmail(email: string): Promise<MasterUser | undefined>;
  findUserByUsername(username: string): Promise<MasterUser | undefined>;
  findUserByWordpressId(wpId: number): Promise<MasterUser | undefined>;
  /**
   * users row + api_keys row + seed job, in one transaction, with the key marked undelivered
   * (acm2_undelivered_keys) until keyDelivered(keyId) says it was shown.
   */
  createUser(input: NewUser): Promise<{ user: MasterUser; job: SeedJob; keyId: number }>;
  /** The user's key that `user create` made and never showed, if any. */
  undeliveredKey(userId: number): Promise<UndeliveredKey | undefined>;
  /**
   * In one transaction, under a lock on the user's marker: revoke the undelivered key (revoked_at,
   * never a delete), add the new one and mark it undelivered in its place. Refused, changing
   * nothing, if the marker no longer names oldKeyId (another rerun replaced it: UnavailableError
   * key_reissued) or the old key has been used since (UsageError duplicate_email: it was delivered).
   */
  reissueKey(input: ReissuedKey): Promise<{ keyId: number }>;
  /** The key has been shown: drop its marker. False if it was not marked (any more). */
  keyDelivered(keyId: number): Promise<boolean>;
  /** Keyset page: users with id > afterId, ascending, at most limit; optionally only these ids. */
  listUsers(opts: { afterId: number; limit: number; ids?: number[] }): Promise<MasterUser[]>;
  countUsers(): Promise<number>;
  /** Whether ACM2's `users` and `api_keys` tables are there (false: not an ACM2 master, or one never set up). */
  hasAcm2Tables(): Promise<boolean>;
  /** Tables that are neither ACM2's master tables (users, api_keys) nor the tool's (acm2_*). */
  foreignTables(): Promise<string[]>;
  maxUserId(): Promise<number>;
  apiKeysFor(userId: number): Promise<ApiKeyRow[]>;

  /** A job for this user and version; an open (pending/running) one is returned rather than duplicated. */
  enqueueSeedJob(userId: number, seedVersion: string, opts?: { force?: boolean; maxAttempts?: number }): Promise<SeedJob>;
  latestJob(userId: number): Promise<SeedJob | undefined>;
  /** latestJob for many users in one query (a page of verify): users without a job are absent. */
  latestJobs(userIds: number[]): Promise<Map<number, SeedJob>>;
  /**
   * Claim one due job (pending and due, or running with an expired lease) for workerId. A job
   * whose lease expired on its last attempt (its worker died every time) is failed, not run again.
   */
  claimJob(workerId: string, leaseMs: number, now?: number, skipVersions?: readonly string[]): Promise<SeedJob | undefined>;
  /**
   * Claim this user's open job (if any; of that version, if given) for a direct `user seed`. With
   * `enqueue` (and a version), a job is first made if none is open, in the same transaction: no
   * drainer can take the job between its making and this claim. With
   * takeOver: the caller holds the user's seed lock, so no live seeder works on this user and a
   * job of it marked running (its worker died, or claimed it and will find the lock taken) is
   * claimed at once, not after its lease.
   */
  claimJobForUser(
    userId: number,
    workerId: string,
    leaseMs: number,
    now?: number,
    seedVersion?: string,
    enqueue?: { force?: boolean; maxAttempts?: number },
    takeOver?: boolean,
  ): Promise<SeedJob | undefined>;
  /**
   * Fail this user's pending jobs older than jobId, which is done: a later request for the user
   * was carried out, and an earlier one run after it would undo it. Returns how many.
   */
  supersedeOlderJobs(userId: number, jobId: number, now?: number): Promise<number>;
  /** Record an outcome; false if the job is no longer held by workerId (lease lost). */
  finishJob(jobId: number, workerId: string, outcome: JobOutcome, now?: number): Promise<boolean>;
  countJobs(status?: JobStatus): Promise<number>;
  /** Pending jobs not due yet (a retry's backoff), and when the first of them is. */
  pendingNotDue(now?: number): Promise<{ count: number; nextAttemptAt: number | null }>;
  /** Make a pending job that is not due yet due now; false if it is not such a job (any more). */
  makeJobDue(jobId: number, now?: number): Promise<boolean>;
  /** Running jobs whose lease has not expired, oldest first (is their worker still alive?). */
  heldJobs(limit: number, now?: number): Promise<SeedJob[]>;
  /** End a running job's lease now, its worker gone, so the next claim takes it; false if workerId no longer holds it. */
  expireLease(jobId: number, workerId: string, now?: number): Promise<boolean>;

  /** Hold a per-user advisory lock (only when capabilities.advisoryLocks); undefined if not got within timeoutMs. */
  acquireUserLock(userId: number, timeoutMs: number): Promise<UserLock | undefined>;
  /** Hold a named advisory lock, e.g. `backfill:default` (only when capabilities.advisoryLocks); undefined if not got within timeoutMs. */
  acquireNamedLock(key: string, timeoutMs: number): Promise<UserLock | undefined>;

  getBackfill(name: string): Promise<BackfillProgress | undefined>;
  saveBackfill(p: Omit<BackfillProgress, 'startedAt' | 'updatedAt'>): Promise<void>;
  recordBackfillItem(name: string, item: BackfillItem): Promise<void>;
  /** recordBackfillItem for many users at once (a page's worth), in order, in few round trips. */
  recordBackfillItems(name: string, items: readonly BackfillItem[]): Promise<void>;
  backfillItems(name: string): Promise<BackfillItem[]>;
  resetBackfill(name: string): Promise<void>;

  /** The data dir this master belongs with (acm2_data_dir), if it was paired with one. */
  pairedDataDir(): Promise<DataDirPairing | undefined>;
  /**
   * Pair the master with a data dir: only when it has none (two first uses at once keep the first),
   * or, with replace, whatever it had (an operator moving the master to another data dir on purpose).
   * unfinished: recorded before the data dir is stamped (pairedAt null), finished by
   * settleDataDirPairing once it is. Returns the pairing now recorded.
   */
  pairDataDir(p: Omit<DataDirPairing, 'pairedAt'> & { unfinished?: boolean }, replace?: boolean): Promise<DataDirPairing>;
  /**
   * Settle the unfinished pairing with this data dir id (nothing if the record is another, or
   * finished): stamped, it is finished; not (another master stamped the data dir first), taken back.
   */
  settleDataDirPairing(id: string, stamped: boolean): Promise<void>;

  close(): Promise<void>;
}
