// The embedded default master: ACM2's users/api_keys plus the tool's tables in one SQLite file.
// Writers serialise with BEGIN IMMEDIATE; WAL lets readers (list, verify) run beside them.

import Database from 'better-sqlite3';
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import { canWrite } from '../durable.js';
import { openForReading } from '../userdb/user-db.js';
import { checkLedger, loadMigrations, newerToolError, type LedgerRow, type Migration } from '../migrations.js';
import { isAcm2Error, isDiskFull, isReadOnly, masterBusyError, UnavailableError, UsageError } from '../errors.js';
import type {
  ApiKeyRow,
  BackfillItem,
  BackfillProgress,
  JobOutcome,
  JobStatus,
  MasterDb,
  MasterUser,
  NewUser,
  ReissuedKey,
  SeedJob,
  UndeliveredKey,
  UserLock,
} from './types.js';
import { leaseExpiredError, notAttempted, supersededError } from './types.js';

type Row = Record<string, unknown>;

export function toUser(r: Row): MasterUser {
  return {
    id: Number(r.id),
    username: String(r.username),
    email: String(r.email),
    wordpressUserId: r.wordpress_user_id == null ? null : Number(r.wordpress_user_id),
    createdAt: toIso(r.created_at),
  };
}

export function toJob(r: Row): SeedJob {
  return {
    id: Number(r.id),
    userId: Number(r.user_id),
    seedVersion: String(r.seed_version),
    status: String(r.status) as JobStatus,
    force: Number(r.force) === 1,
    attempts: Number(r.attempts),
    maxAttempts: Number(r.max_attempts),
    lockedBy: r.locked_by == null ? null : String(r.locked_by),
    lockedUntil: r.locked_until == null ? null : Number(r.locked_until),
    nextAttemptAt: Number(r.next_attempt_at),
    lastError: r.last_error == null ? null : String(r.last_error),
    createdAt: String(r.created_at),
    updatedAt: String(r.updated_at),
  };
}

export function toApiKey(r: Row): ApiKeyRow {
  return {
    id: Number(r.id),
    userId: Number(r.user_id),
    keyHash: String(r.key_hash),
    keyPrefix: r.key_prefix == null ? '' : String(r.key_prefix),
    name: r.name == null ? null : String(r.name),
    revokedAt: toIso(r.revoked_at),
  };
}

export function toIso(v: unknown): string | null {
  if (v == null) return null;
  if (v instanceof Date) return v.toISOString();
  const s = String(v);
  // SQLite CURRENT_TIMESTAMP is 'YYYY-MM-DD HH:MM:SS' in UTC.
  if (/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/.test(s)) return `${s.replace(' ', 'T')}.000Z`;
  return s;
}

export function toUndelivered(r: Row): UndeliveredKey {
  return {
    userId: Number(r.user_id),
    apiKeyId: Number(r.api_key_id),
    keyPrefix: r.key_prefix == null ? '' : String(r.key_prefix),
    issuedBy: String(r.issued_by),
    createdAt: String(r.created_at),
    lastUsedAt: toIso(r.last_used_at),
    revokedAt: toIso(r.revoked_at),
  };
}

/** The marker with its key (none if ACM2 removed that row: then there is nothing to revoke). */
export const UNDELIVERED_SQL = `SELECT u.api_key_id, u.user_id, u.issued_by, u.created_at, k.key_prefix, k.last_used_at, k.revoked_at
  FROM acm2_undelivered_keys u LEFT JOIN api_keys k ON k.id = u.api_key_id AND k.user_id = u.user_id WHERE u.user_id = ?`;

/** reissueKey found the marker naming another key than the caller saw: another rerun replaced it meanwhile. */
export function reissuedElsewhere(userId: number): UnavailableError {
  return new UnavailableError(
    `another acm2 user create for user ${userId} issued it a new API key just now, which that run shows: nothing was changed here; if that run was stopped too, run this one again`,
    'key_reissued',
  );
}

/** reissueKey found the undelivered key used since: it reached someone after all, and is not replaced. */
export function keyUsedSince(userId: number, prefix: string): UsageError {
  return new UsageError(
    `user ${userId}'s API key ${prefix}… was never shown by acm2 user create, but ACM2 has accepted it since, so someone holds it: it is not replaced; a user with this email already exists`,
    'duplicate_email',
  );
}

export function duplicateMessage(e: unknown, input: NewUser): UsageError | undefined {
  const msg = String((e as Error)?.message ?? '');
  if (!/UNIQUE|Duplicate entry/i.test(msg)) return undefined;
  if (/email/i.test(msg)) return new UsageError(`a user with email '${input.email}' already exists`, 'duplicate_email');
  if (/username/i.test(msg)) return new UsageError(`a user with username '${input.username}' already exists`, 'duplicate_username');
  if (/wordpress/i.test(msg)) return new UsageError(`a user with WordPress user id ${input.wordpressUserId} already exists`, 'duplicate_wordpress_id');
  return new UsageError(`the new user clashes with an existing one (${msg})`, 'duplicate');
}

/** See MasterDb.checkMigrations: the names to apply, or the refusal, for both masters alike. */
export function masterLedgerVerdict(display: string, all: readonly Migration[], ledger: readonly LedgerRow[]): string[] {
  const c = checkLedger(all, ledger);
  // Newer first: a newer acm2's ledger is no tampering, and the remedy is to upgrade this one.
  if (c.unknown.length > 0) throw newerToolError(`the master ${display}`, c.unknown, 'master_newer');
  if (c.changed) throw new UsageError(`master migration ${c.changed.name} was applied with a different checksum`, 'migration_checksum');
  return c.pending.map((m) => m.name);
}

/** See MasterDb.foreignTables. */
export function foreignSqliteTables(db: Database.Database): string[] {
  return (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name`).pluck().all() as string[]).filter(
    (n) => n !== 'users' && n !== 'api_keys' && !n.startsWith('acm2_'),
  );
}

/** The tables an existing file holds that make it something other than a master, read without changing it. */
export function foreignTablesIn(file: string): string[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const ours = Number(db.prepare(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'api_keys')`).pluck().get()) === 2;
    return ours ? [] : foreignSqliteTables(db);
  } finally {
    db.close();
  }
}

export class SqliteMaster implements MasterDb {
  readonly dialect = 'sqlite' as const;
  readonly capabilities = { skipLocked: false, advisoryLocks: false };
  readonly display: string;
  /** How long a statement waits on another process's write lock before SQLITE_BUSY. */
  readonly busyTimeoutMs = 15000;
  private db: Database.Database;

  constructor(readonly file: string) {
    this.display = `sqlite:${file}`;
    try {
      const fileReadOnly = existsSync(file) && !canWrite(file);
      if (fileReadOnly || (existsSync(file) && !canWrite(path.dirname(file)))) {
        // A read-only place (a mount or backup snapshot of the data dir, a CI user without write
        // access) or file (chmod 0400, another account's): opened read-only, so the read commands
        // work and a write is refused (exit 3, read_only). A WAL master whose -shm (or, beside a
        // file that may not be written, -wal) SQLite would have to make is read from a private
        // copy (openForReading): nothing is left beside a master this process could not write.
        this.db = openForReading(file, { readonly: true, timeout: this.busyTimeoutMs, fileReadOnly });
      } else {
        mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        // It holds e-mail addresses and key hashes: created 0600 like every file in the data dir
        // (SQLite gives its -wal and -shm files the same mode). An existing file keeps its mode.
        if (!existsSync(file)) closeSync(openSync(file, 'wx', 0o600));
        this.db = new Database(file);
        this.db.pragma(`busy_timeout = ${this.busyTimeoutMs}`);
        this.switchToWal();
        // WAL with NORMAL never corrupts; a power cut may lose the last job updates, which the
        // user DB (the truth for readiness) and the lease expiry make good on the next run.
        this.db.pragma('synchronous = NORMAL');
      }
      this.db.pragma(`busy_timeout = ${this.busyTimeoutMs}`);
      this.db.pragma('foreign_keys = ON');
    } catch (e) {
      if (isAcm2Error(e)) throw e; // said already (a private copy the temp folder cannot hold)
      const code = (e as NodeJS.ErrnoException).code;
      // Locked by another process past the wait, as for any statement (see the factory).
      if (/^SQLITE_(BUSY|LOCKED)/.test(String(code))) throw masterBusyError(this.display, `${this.busyTimeoutMs / 1000} s`, String(code), e);
      // A file that is not a database is a wrong --master or --data-dir, not an outage.
      if (code === 'SQLITE_NOTADB') throw new UsageError(`the master ${file} is not a SQLite database (${code}): check --master and --data-dir`, 'not_a_master', { cause: e });
      // ENOSPC (on its -shm file: SQLITE_IOERR_SHMSIZE): the disk is full, not the master gone.
      if (isDiskFull(e))
        throw new UnavailableError(`disk full: cannot open the SQLite master at ${file} (${code})`, 'disk_full', { cause: e });
      // A WAL master in a folder SQLite may not write (a read-only mount or snapshot, another
      // user's folder) cannot be opened without its -shm file, which SQLite cannot create there.
      if ((code === 'SQLITE_CANTOPEN' || isReadOnly(e)) && !canWrite(path.dirname(file)))
        throw new UnavailableError(
          `cannot open SQLite master at ${file} (${code}): its folder is read-only here and SQLite cannot open a WAL database there without its -shm file; run this where the data dir can be written, or on a copy`,
          'read_only',
          { cause: e },
        );
      throw new UnavailableError(`cannot open SQLite master at ${file} (${code ?? (e as Error).message})`, 'master_unreachable', { cause: e });
    }
  }

  /**
   * A master in rollback-journal mode (one restored from a VACUUM INTO copy) that another process
   * is reading or writing is waited for, as every statement is: the switch to WAL needs the file
   * to itself, and SQLite answers SQLITE_BUSY at once there rather than call its busy handler (it
   * would wait on a holder while holding a read lock), so this waits in steps up to the same wait.
   */
  private switchToWal(): void {
    const deadline = Date.now() + this.busyTimeoutMs;
    for (;;) {
      try {
        this.db.pragma('journal_mode = WAL');
        return;
      } catch (e) {
        if (!/^SQLITE_(BUSY|LOCKED)/.test(String((e as { code?: unknown }).code)) || Date.now() >= deadline) throw e;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
      }
    }
  }

  async migrate(): Promise<string[]> {
    const db = this.db;
    // Up to date: nothing to write (a master opened read-only gets this far; see the constructor).
    if ((await this.checkMigrations()).length === 0) return [];
    db.exec(`CREATE TABLE IF NOT EXISTS acm2_master_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)`);
    const applied: string[] = [];
    for (const m of loadMigrations('master/sqlite')) {
      const done = db.transaction(() => {
        const row = db.prepare(`SELECT checksum FROM acm2_master_migrations WHERE id = ?`).get(m.id) as { checksum: string } | undefined;
        if (row) {
          if (row.checksum !== m.checksum) throw new UsageError(`master migration ${m.name} was applied with a different checksum`, 'migration_checksum');
          return false;
        }
        db.exec(m.sql);
        db.prepare(`INSERT INTO acm2_master_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(m.id, m.name, m.checksum, new Date().toISOString());
        return true;
      }).immediate();
      if (done) applied.push(m.name);
    }
    return applied;
  }

  async checkMigrations(): Promise<string[]> {
    const has = this.db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'acm2_master_migrations'`).get();
    const ledger = has ? (this.db.prepare(`SELECT id, name, checksum FROM acm2_master_migrations`).all() as LedgerRow[]) : [];
    return masterLedgerVerdict(this.display, loadMigrations('master/sqlite'), ledger);
  }

  private one(sql: string, ...args: unknown[]): Row | undefined {
    return this.db.prepare(sql).get(...args) as Row | undefined;
  }

  async getUser(id: number) {
    const r = this.one(`SELECT * FROM users WHERE id = ?`, id);
    return r && toUser(r);
  }
  async findUserByEmail(email: string) {
    // Emails compare case-insensitively, as on ACM2's MySQL master (utf8mb4_unicode_ci). But this
    // file's UNIQUE is byte-wise, so a master written by hand (or by ACM2's own SQLite master code)
    // may hold two emails differing only in case: the one given exactly is that user, never the
    // other (`user seed --force` would overwrite the wrong person's edits), and a lookup that only
    // matches several names none of them.
    const rows = this.db.prepare(`SELECT * FROM users WHERE email = ? COLLATE NOCASE ORDER BY email = ? DESC, id LIMIT 2`).all(email, email) as Row[];
    const [first, second] = rows;
    if (!first) return undefined;
    if (first.email === email || !second) return toUser(first);
    throw new UsageError(
      `email '${email}' matches more than one user, their emails differing only in case (users ${Number(first.id)} '${String(first.email)}' and ${Number(second.id)} '${String(second.email)}'): give the exact email or the user id`,
      'ambiguous_email',
    );
  }
  async findUserByUsername(username: string) {
    const r = this.one(`SELECT * FROM users WHERE username = ? COLLATE NOCASE`, username);
    return r && toUser(r);
  }
  async findUserByWordpressId(wpId: number) {
    const r = this.one(`SELECT * FROM users WHERE wordpress_user_id = ?`, wpId);
    return r && toUser(r);
  }

  async createUser(input: NewUser) {
    const now = new Date();
    try {
      return this.db.transaction(() => {
        // The UNIQUE constraints compare case-sensitively, but an e-mail or username differing only
        // in case is the same person (as MySQL's _ci collation says): checked under this write lock,
        // so two creates at once cannot both pass a check made before it.
        if (this.one(`SELECT 1 FROM users WHERE email = ? COLLATE NOCASE`, input.email)) throw new UsageError(`a user with email '${input.email}' already exists`, 'duplicate_email');
        if (this.one(`SELECT 1 FROM users WHERE username = ? COLLATE NOCASE`, input.username)) throw new UsageError(`a user with username '${input.username}' already exists`, 'duplicate_username');
        const info = this.db
          .prepare(`INSERT INTO users (username, email, wordpress_user_id) VALUES (?, ?, ?)`)
          .run(input.username, input.email, input.wordpressUserId);
        const userId = Number(info.lastInsertRowid);
        const keyId = Number(
          this.db.prepare(`INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES (?, ?, ?, ?)`).run(userId, input.keyHash, input.keyPrefix, input.keyName).lastInsertRowid,
        );
        // REPLACE: a marker naming this brand-new user id or key id is a stale one, of a user ACM2
        // deleted (its ids reused), and goes.
        this.db
          .prepare(`REPLACE INTO acm2_undelivered_keys (api_key_id, user_id, issued_by, created_at) VALUES (?, ?, ?, ?)`)
          .run(keyId, userId, input.issuedBy ?? '', now.toISOString());
        const job = this.insertJob(userId, input.seedVersion, false, input.maxAttempts, now.getTime(), input.jobDueAt);
        return { user: toUser(this.one(`SELECT * FROM users WHERE id = ?`, userId)!), job, keyId };
      }).immediate();
    } catch (e) {
      throw duplicateMessage(e, input) ?? e;
    }
  }

  async undeliveredKey(userId: number) {
    const r = this.one(UNDELIVERED_SQL, userId);
    return r && toUndelivered(r);
  }

  async reissueKey(input: ReissuedKey) {
    // BEGIN IMMEDIATE: the write lock is taken before the marker is read, so two reruns at once
    // run one after the other, and the second finds the marker moved.
    return this.db.transaction(() => {
      const marked = this.one(UNDELIVERED_SQL, input.userId);
      if (!marked || Number(marked.api_key_id) !== input.oldKeyId) throw reissuedElsewhere(input.userId);
      if (marked.last_used_at != null) throw keyUsedSince(input.userId, String(marked.key_prefix));
      this.db.prepare(`UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE id = ? AND user_id = ? AND revoked_at IS NULL`).run(input.oldKeyId, input.userId);
      const keyId = Number(
        this.db.prepare(`INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES (?, ?, ?, ?)`).run(input.userId, input.keyHash, input.keyPrefix, input.keyName).lastInsertRowid,
      );
      this.db
        .prepare(`UPDATE acm2_undelivered_keys SET api_key_id = ?, issued_by = ?, created_at = ? WHERE user_id = ?`)
        .run(keyId, input.issuedBy, new Date().toISOString(), input.userId);
      return { keyId };
    }).immediate();
  }

  async keyDelivered(keyId: number) {
    return this.db.prepare(`DELETE FROM acm2_undelivered_keys WHERE api_key_id = ?`).run(keyId).changes === 1;
  }

  private insertJob(userId: number, version: string, force: boolean, maxAttempts: number, now: number, dueAt = now): SeedJob {
    const iso = new Date(now).toISOString();
    const info = this.db
      .prepare(`INSERT INTO acm2_seed_jobs (user_id, seed_version, status, force, attempts, max_attempts, next_attempt_at, created_at, updated_at)
                VALUES (?, ?, 'pending', ?, 0, ?, ?, ?, ?)`)
      .run(userId, version, force ? 1 : 0, maxAttempts, dueAt, iso, iso);
    return toJob(this.one(`SELECT * FROM acm2_seed_jobs WHERE id = ?`, info.lastInsertRowid)!);
  }

  async listUsers(opts: { afterId: number; limit: number; ids?: number[] }) {
    if (opts.ids && opts.ids.length === 0) return [];
    const filter = opts.ids ? ` AND id IN (${opts.ids.map(() => '?').join(',')})` : '';
    const rows = this.db
      .prepare(`SELECT * FROM users WHERE id > ?${filter} ORDER BY id LIMIT ?`)
      .all(opts.afterId, ...(opts.ids ?? []), opts.limit) as Row[];
    return rows.map(toUser);
  }
  async foreignTables() {
    return foreignSqliteTables(this.db);
  }
  async hasAcm2Tables() {
    return Number(this.one(`SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'api_keys')`)!.n) === 2;
  }
  async countUsers() {
    return Number(this.one(`SELECT COUNT(*) AS n FROM users`)!.n);
  }
  async maxUserId() {
    return Number(this.one(`SELECT COALESCE(MAX(id), 0) AS n FROM users`)!.n);
  }
  async apiKeysFor(userId: number) {
    return (this.db.prepare(`SELECT * FROM api_keys WHERE user_id = ? ORDER BY id`).all(userId) as Row[]).map(toApiKey);
  }

  async enqueueSeedJob(userId: number, seedVersion: string, opts: { force?: boolean; maxAttempts?: number } = {}) {
    return this.db.transaction(() => {
      const open = this.one(
        `SELECT * FROM acm2_seed_jobs WHERE user_id = ? AND seed_version = ? AND status IN ('pending','running') ORDER BY id DESC LIMIT 1`,
        userId,
        seedVersion,
      );
      if (open) return toJob(open);
      return this.insertJob(userId, seedVersion, opts.force ?? false, opts.maxAttempts ?? 5, Date.now());
    }).immediate();
  }

  async latestJobs(userIds: number[]) {
    const out = new Map<number, SeedJob>();
    if (userIds.length === 0) return out;
    const rows = this.db
      .prepare(
        `SELECT j.* FROM acm2_seed_jobs j
         JOIN (SELECT MAX(id) AS id FROM acm2_seed_jobs WHERE user_id IN (${userIds.map(() => '?').join(',')}) GROUP BY user_id) m ON m.id = j.id`,
      )
      .all(...userIds) as Row[];
    for (const r of rows) out.set(Number(r.user_id), toJob(r));
    return out;
  }

  async latestJob(userId: number) {
    const r = this.one(`SELECT * FROM acm2_seed_jobs WHERE user_id = ? ORDER BY id DESC LIMIT 1`, userId);
    return r && toJob(r);
  }

  private claimWhere(where: string, args: unknown[], workerId: string, leaseMs: number, now: number, failExhausted = false): SeedJob | undefined {
    return this.db.transaction(() => {
      let r: Row | undefined;
      for (;;) {
        r = this.one(
          `SELECT * FROM acm2_seed_jobs
           WHERE ${where} AND ((status = 'pending' AND next_attempt_at <= ?) OR (status = 'running' AND locked_until < ?))
           ORDER BY next_attempt_at, id LIMIT 1`,
          ...args,
          now,
          now,
        );
        if (!r || !(failExhausted && r.status === 'running' && Number(r.attempts) >= Number(r.max_attempts))) break;
        this.db
          .prepare(`UPDATE acm2_seed_jobs SET status = 'failed', locked_by = NULL, locked_until = NULL, last_error = ?, updated_at = ? WHERE id = ?`)
          .run(leaseExpiredError(r), new Date(now).toISOString(), r.id);
      }
      if (!r) return undefined;
      this.db
        .prepare(`UPDATE acm2_seed_jobs SET status = 'running', locked_by = ?, locked_until = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?`)
        .run(workerId, now + leaseMs, new Date(now).toISOString(), r.id);
      return toJob(this.one(`SELECT * FROM acm2_seed_jobs WHERE id = ?`, r.id)!);
    }).immediate();
  }

  async claimJob(workerId: string, leaseMs: number, now = Date.now(), skipVersions: readonly string[] = []) {
    if (skipVersions.length === 0) return this.claimWhere('1 = 1', [], workerId, leaseMs, now, true);
    return this.claimWhere(`seed_version NOT IN (${skipVersions.map(() => '?').join(', ')})`, [...skipVersions], workerId, leaseMs, now, true);
  }
  async claimJobForUser(userId: number, workerId: string, leaseMs: number, now = Date.now(), seedVersion?: string, enqueue?: { force?: boolean; maxAttempts?: number }, takeOver = false) {
    const where = seedVersion === undefined ? 'user_id = ?' : 'user_id = ? AND seed_version = ?';
    const args = seedVersion === undefined ? [userId] : [userId, seedVersion];
    // A direct `user seed` does not wait for backoff: the operator asked for it now.
    return this.db.transaction(() => {
      if (takeOver) this.db.prepare(`UPDATE acm2_seed_jobs SET locked_until = ? WHERE ${where} AND status = 'running'`).run(now - 1, ...args);
      if (enqueue && seedVersion !== undefined && !this.one(`SELECT id FROM acm2_seed_jobs WHERE ${where} AND status IN ('pending','running')`, ...args)) {
        this.insertJob(userId, seedVersion, enqueue.force ?? false, enqueue.maxAttempts ?? 5, now);
      }
      this.db.prepare(`UPDATE acm2_seed_jobs SET next_attempt_at = ? WHERE ${where} AND status = 'pending' AND next_attempt_at > ?`).run(now, ...args, now);
      return this.claimWhere(where, args, workerId, leaseMs, now);
    }).immediate();
  }
  async supersedeOlderJobs(userId: number, jobId: number, now = Date.now()) {
    return this.db
      .prepare(`UPDATE acm2_seed_jobs SET status = 'failed', last_error = ?, updated_at = ? WHERE user_id = ? AND id < ? AND status = 'pending'`)
      .run(supersededError(jobId), new Date(now).toISOString(), userId, jobId).changes;
  }

  async finishJob(jobId: number, workerId: string, outcome: JobOutcome, now = Date.now()) {
    const iso = new Date(now).toISOString();
    const info =
      outcome.status === 'done'
        ? this.db
            .prepare(`UPDATE acm2_seed_jobs SET status = 'done', locked_by = NULL, locked_until = NULL, last_error = NULL, updated_at = ? WHERE id = ? AND locked_by = ? AND status = 'running'`)
            .run(iso, jobId, workerId)
        : this.db
            .prepare(
              `UPDATE acm2_seed_jobs SET status = ?, locked_by = NULL, locked_until = NULL, last_error = ?, next_attempt_at = ?, attempts = MAX(0, attempts - ?), updated_at = ?
               WHERE id = ? AND locked_by = ? AND status = 'running'`,
            )
            .run(outcome.status, outcome.error, outcome.status === 'pending' ? outcome.nextAttemptAt : now, notAttempted(outcome), iso, jobId, workerId);
    return info.changes === 1;
  }

  async pendingNotDue(now = Date.now()) {
    const r = this.one(`SELECT COUNT(*) AS n, MIN(next_attempt_at) AS next FROM acm2_seed_jobs WHERE status = 'pending' AND next_attempt_at > ?`, now)!;
    return { count: Number(r.n), nextAttemptAt: r.next === null ? null : Number(r.next) };
  }
  async makeJobDue(jobId: number, now = Date.now()) {
    return this.db.prepare(`UPDATE acm2_seed_jobs SET next_attempt_at = ? WHERE id = ? AND status = 'pending' AND next_attempt_at > ?`).run(now, jobId, now).changes === 1;
  }
  async heldJobs(limit: number, now = Date.now()) {
    return this.db
      .prepare(`SELECT * FROM acm2_seed_jobs WHERE status = 'running' AND locked_until >= ? ORDER BY locked_until, id LIMIT ?`)
      .all(now, limit)
      .map((r) => toJob(r as Row));
  }
  async expireLease(jobId: number, workerId: string, now = Date.now()) {
    return this.db.prepare(`UPDATE acm2_seed_jobs SET locked_until = ? WHERE id = ? AND locked_by = ? AND status = 'running'`).run(now - 1, jobId, workerId).changes === 1;
  }
  async countJobs(status?: JobStatus) {
    const r = status ? this.one(`SELECT COUNT(*) AS n FROM acm2_seed_jobs WHERE status = ?`, status) : this.one(`SELECT COUNT(*) AS n FROM acm2_seed_jobs`);
    return Number(r!.n);
  }

  async acquireUserLock(): Promise<UserLock | undefined> {
    throw new Error('the SQLite master has no advisory locks; use the file lock');
  }
  async acquireNamedLock(): Promise<UserLock | undefined> {
    throw new Error('the SQLite master has no advisory locks; use the file lock');
  }

  async getBackfill(name: string) {
    const r = this.one(`SELECT * FROM acm2_backfill_runs WHERE name = ?`, name);
    return r && toBackfill(r);
  }
  async saveBackfill(p: Omit<BackfillProgress, 'startedAt' | 'updatedAt'>) {
    const iso = new Date().toISOString();
    this.db
      .prepare(`INSERT INTO acm2_backfill_runs (name, status, cursor_id, options, counts, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(name) DO UPDATE SET status = excluded.status, cursor_id = excluded.cursor_id, options = excluded.options, counts = excluded.counts, updated_at = excluded.updated_at`)
      .run(p.name, p.status, p.cursor, p.options, JSON.stringify(p.counts), iso, iso);
  }
  async recordBackfillItem(name: string, item: BackfillItem) {
    this.db
      .prepare(`INSERT INTO acm2_backfill_items (name, user_id, outcome, reason) VALUES (?, ?, ?, ?)
                ON CONFLICT(name, user_id) DO UPDATE SET outcome = excluded.outcome, reason = excluded.reason`)
      .run(name, item.userId, item.outcome, item.reason);
  }
  async recordBackfillItems(name: string, items: readonly BackfillItem[]) {
    if (items.length === 0) return;
    const upsert = this.db.prepare(`INSERT INTO acm2_backfill_items (name, user_id, outcome, reason) VALUES (?, ?, ?, ?)
                ON CONFLICT(name, user_id) DO UPDATE SET outcome = excluded.outcome, reason = excluded.reason`);
    this.db.transaction(() => {
      for (const item of items) upsert.run(name, item.userId, item.outcome, item.reason);
    }).immediate();
  }
  async backfillItems(name: string) {
    return (this.db.prepare(`SELECT user_id, outcome, reason FROM acm2_backfill_items WHERE name = ? ORDER BY user_id`).all(name) as Row[]).map((r) => ({
      userId: Number(r.user_id),
      outcome: String(r.outcome),
      reason: r.reason == null ? null : String(r.reason),
    }));
  }
  async resetBackfill(name: string) {
    this.db.transaction(() => {
      this.db.prepare(`DELETE FROM acm2_backfill_items WHERE name = ?`).run(name);
      this.db.prepare(`DELETE FROM acm2_backfill_runs WHERE name = ?`).run(name);
    })();
  }

  async pairedDataDir() {
    const r = this.one(`SELECT * FROM acm2_data_dir WHERE slot = 1`);
    return r && { id: String(r.data_dir_id), path: String(r.data_dir_path), pairedAt: r.paired_at === '' ? null : String(r.paired_at) };
  }
  async pairDataDir(p: { id: string; path: string; unfinished?: boolean }, replace = false) {
    this.db
      .prepare(`INSERT INTO acm2_data_dir (slot, data_dir_id, data_dir_path, paired_at) VALUES (1, ?, ?, ?)
                ON CONFLICT(slot) DO ${replace ? 'UPDATE SET data_dir_id = excluded.data_dir_id, data_dir_path = excluded.data_dir_path, paired_at = excluded.paired_at' : 'NOTHING'}`)
      .run(p.id, p.path, p.unfinished ? '' : new Date().toISOString());
    return (await this.pairedDataDir())!;
  }
  async settleDataDirPairing(id: string, stamped: boolean) {
    if (stamped) this.db.prepare(`UPDATE acm2_data_dir SET paired_at = ? WHERE slot = 1 AND data_dir_id = ? AND paired_at = ''`).run(new Date().toISOString(), id);
    else this.db.prepare(`DELETE FROM acm2_data_dir WHERE slot = 1 AND data_dir_id = ? AND paired_at = ''`).run(id);
  }

  async close() {
    this.db.close();
  }
}

export function toBackfill(r: Row): BackfillProgress {
  return {
    name: String(r.name),
    status: String(r.status) as BackfillProgress['status'],
    cursor: Number(r.cursor_id),
    options: String(r.options),
    counts: JSON.parse(String(r.counts)) as Record<string, number>,
    startedAt: String(r.started_at),
    updatedAt: String(r.updated_at),
  };
}
