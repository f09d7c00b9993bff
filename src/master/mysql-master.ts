// The production master: ACM2's users/api_keys plus the tool's tables on MySQL or MariaDB.
// Jobs are claimed with FOR UPDATE SKIP LOCKED and leases; per-user locks are GET_LOCK held on a connection.

import { createHash } from 'node:crypto';
import mysql from 'mysql2/promise';
import type { Connection, Pool, PoolConnection, ResultSetHeader, RowDataPacket } from 'mysql2/promise';
import { hostPort, type MasterUrl } from '../config.js';
import { isAcm2Error, UnavailableError, UsageError } from '../errors.js';
import { loadMigrations, splitStatements, type LedgerRow } from '../migrations.js';
import { duplicateMessage, keyUsedSince, masterLedgerVerdict, reissuedElsewhere, toApiKey, toBackfill, toJob, toUndelivered, toUser, UNDELIVERED_SQL } from './sqlite-master.js';
import type {
  ApiKeyRow,
  BackfillItem,
  BackfillProgress,
  DataDirPairing,
  JobOutcome,
  JobStatus,
  MasterCapabilities,
  MasterDb,
  MasterUser,
  NewUser,
  ReissuedKey,
  SeedJob,
  UndeliveredKey,
  UserLock,
} from './types.js';
import { leaseExpiredError, notAttempted, supersededError } from './types.js';

type MysqlUrl = Extract<MasterUrl, { kind: 'mysql' }>;
type Row = RowDataPacket;

/** Bounded pools: the work pool is small; lock connections live apart so held locks never starve it. */
const POOL_SIZE = 4;
const LOCK_POOL_SIZE = 32;
const CONNECT_TIMEOUT_MS = 5000;
/**
 * The longest any statement may go unanswered (plus a lock's own wait, for GET_LOCK): a master
 * that stops answering without closing the connection (a network cut) is then exit 3 within a
 * minute, not after the kernel's ~15 minutes of TCP retries.
 */
function queryTimeoutMs(): number {
  const v = Number(process.env.ACM2_MYSQL_QUERY_TIMEOUT_MS);
  return Number.isFinite(v) && v > 0 ? v : 60_000;
}
const MIGRATE_LOCK_SECONDS = 30;
/** Every session's sql_mode, whatever the server's default (see createPool); valid on MariaDB and MySQL. */
export const SESSION_SQL_MODE = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION';
/** Rows per multi-row INSERT of backfill items. */
const ITEMS_PER_STATEMENT = 500;
/** Codes that mean the server (or the path to it) is gone, not that our SQL is wrong. */
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_SERVER_SHUTDOWN',
]);
/**
 * The server answered and would not give the account another connection (max_connections, the
 * account's MAX_USER_CONNECTIONS or max_user_connections) or run more for it (its hourly limits).
 */
const LIMIT_CODES = new Set(['ER_CON_COUNT_ERROR', 'ER_TOO_MANY_USER_CONNECTIONS', 'ER_USER_LIMIT_REACHED']);
const RETRYABLE_CODES = new Set(['ER_LOCK_DEADLOCK', 'ER_LOCK_WAIT_TIMEOUT']);
/** How often a statement or transaction that lost a deadlock or timed out waiting for a row lock is run. */
const LOCK_TRIES = 5;
/** The account may not run a statement the tool needs (a read-only CI account, a narrow grant). */
const DENIED_CODES = new Set(['ER_TABLEACCESS_DENIED_ERROR', 'ER_COLUMNACCESS_DENIED_ERROR', 'ER_DBACCESS_DENIED_ERROR', 'ER_SPECIFIC_ACCESS_DENIED_ERROR', 'ER_PROCACCESS_DENIED_ERROR']);

function errorCode(e: unknown): string {
  const err = e as { code?: unknown; errors?: Array<{ code?: unknown }> } | undefined;
  if (typeof err?.code === 'string' && err.code) return err.code;
  // Node's happy-eyeballs connect reports an AggregateError whose parts carry the code.
  const inner = err?.errors?.find((x) => typeof x?.code === 'string');
  if (inner) return String(inner.code);
  return 'UNKNOWN';
}

/** GET_LOCK names are server-wide and at most 64 characters: name the database, hashed if long. */
export function mysqlLockName(prefix: string, database: string, suffix = ''): string {
  const plain = `${prefix}${database}${suffix}`;
  if (plain.length <= 64) return plain;
  const h = createHash('sha256').update(database).digest('hex').slice(0, 16);
  return `${prefix}${h}${suffix}`;
}

/** SKIP LOCKED arrived in MariaDB 10.6 and MySQL 8.0. */
export function supportsSkipLocked(version: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  const major = Number(m[1]);
  const minor = Number(m[2]);
  if (/mariadb/i.test(version)) return major > 10 || (major === 10 && minor >= 6);
  return major >= 8;
}

export class MysqlMaster implements MasterDb {
  readonly dialect = 'mysql' as const;
  readonly display: string;
  readonly capabilities: MasterCapabilities;
  private lockPool: Pool | undefined;
  private readonly heldLocks = new Set<PoolConnection>();
  private closed = false;

  private constructor(
    private readonly url: MysqlUrl,
    private readonly pool: Pool,
    private readonly isMariaDb: boolean,
    skipLocked: boolean,
  ) {
    this.display = url.display;
    this.capabilities = { skipLocked, advisoryLocks: true };
  }

  static async connect(url: MysqlUrl): Promise<MysqlMaster> {
    const pool = createPool(url, POOL_SIZE);
    let version: string;
    try {
      const [rows] = await pool.query<Row[]>('SELECT VERSION() AS v');
      version = String(rows[0]?.v ?? '');
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw connectError(url, e);
    }
    return new MysqlMaster(url, pool, /mariadb/i.test(version), supportsSkipLocked(version));
  }

  // ---- plumbing -------------------------------------------------------------------------------

  /**
   * Turn "the server went away" into exit 3 with one sentence; everything else stays as it is.
   * retried: the statement (or its transaction) was already run again as often as it will be, so a
   * lock wait timeout or deadlock is the answer (inside a transaction tx() retries it first).
   */
  private wrap(e: unknown, retried = true): unknown {
    const code = errorCode(e);
    if (retried && RETRYABLE_CODES.has(code)) {
      return new UnavailableError(
        `another transaction on MySQL master ${this.display} held rows acm2 needs, through ${LOCK_TRIES} tries (${code}): nothing was changed by this statement; let that transaction finish or end it (SHOW ENGINE INNODB STATUS names it), then run again`,
        'master_busy',
        { cause: e },
      );
    }
    if (UNREACHABLE_CODES.has(code)) {
      return new UnavailableError(`cannot reach MySQL master at ${hostPort(this.url.host, this.url.port)} (${code})`, 'master_unreachable', { cause: e });
    }
    if (LIMIT_CODES.has(code)) return limitError(this.url, e);
    if (DENIED_CODES.has(code)) {
      return new UnavailableError(`MySQL master ${this.display} refused user '${this.url.user}' a statement acm2 needs: ${(e as Error).message} (${code}); grant it, or use an account that has it`, 'master_access_denied', { cause: e });
    }
    return e;
  }

  /**
   * One statement, given at most the query timeout (plus waitMs) to answer. A connection whose
   * statement timed out is in an unknown state (the answer may still come): it is destroyed, never
   * reused or waited on (ending it would wait for that answer).
   */
  private async query<T extends Row[] | ResultSetHeader>(sql: string, args: unknown[], on: Connection, waitMs: number): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = on === this.pool ? await this.pool.getConnection().catch((e: unknown) => Promise.reject(this.wrap(e))) : on;
      try {
        const [res] = await c.query<T>({ sql, values: args, timeout: queryTimeoutMs() + waitMs });
        if (c !== on) (c as PoolConnection).release();
        return res;
      } catch (e) {
        if (errorCode(e) === 'PROTOCOL_SEQUENCE_TIMEOUT') c.destroy();
        else if (c !== on) (c as PoolConnection).release();
        // A statement on its own (autocommit) that InnoDB picked as a deadlock victim was rolled
        // back whole: run it again, as tx() does for a transaction. Inside a transaction the
        // caller's tx() retries from the start instead.
        if (on === this.pool && attempt < LOCK_TRIES && RETRYABLE_CODES.has(errorCode(e))) {
          await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 20 * attempt)));
          continue;
        }
        throw this.wrap(e, on === this.pool);
      }
    }
  }

  private async rows(sql: string, args: unknown[] = [], on: Connection = this.pool, waitMs = 0): Promise<Row[]> {
    return this.query<Row[]>(sql, args, on, waitMs);
  }

  private async one(sql: string, args: unknown[] = [], on: Connection = this.pool, waitMs = 0): Promise<Row | undefined> {
    return (await this.rows(sql, args, on, waitMs))[0];
  }

  private async exec(sql: string, args: unknown[] = [], on: Connection = this.pool): Promise<ResultSetHeader> {
    return this.query<ResultSetHeader>(sql, args, on, 0);
  }

  private async connection(pool: Pool = this.pool): Promise<PoolConnection> {
    try {
      return await pool.getConnection();
    } catch (e) {
      throw this.wrap(e);
    }
  }

  /** Run fn in one transaction on one connection; a deadlock victim is retried from the start. */
  private async tx<T>(fn: (c: PoolConnection) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = await this.connection();
      let healthy = true;
      try {
        await this.exec('START TRANSACTION', [], c);
        const out = await fn(c);
        await this.exec('COMMIT', [], c);
        return out;
      } catch (e) {
        await c.query('ROLLBACK').catch(() => {
          healthy = false;
        });
        if (attempt < LOCK_TRIES && RETRYABLE_CODES.has(errorCode(e))) continue;
        throw this.wrap(e);
      } finally {
        if (healthy) c.release();
        else c.destroy();
      }
    }
  }

  // ---- migrations ------------------------------------------------------------------------------

  async migrate(): Promise<string[]> {
    // Up to date: nothing to write, and no lock to take. A read-only account (verify in CI) gets
    // this far; one that must apply a migration needs the grants to.
    const pending = await this.checkMigrations();
    if (pending.length === 0) return [];
    try {
      return await this.applyMigrations();
    } catch (e) {
      if (isAcm2Error(e) && e.code === 'master_access_denied') {
        throw new UnavailableError(
          `MySQL master ${this.display} needs the tool's migration${pending.length > 1 ? 's' : ''} ${pending.join(', ')}, which user '${this.url.user}' may not apply (${errorCode(e.cause)}); ` +
            `run acm2 once with an account that may create and alter tables (acm2 backfill, or acm2 user create), then again with this one`,
          'master_access_denied',
          { cause: e.cause },
        );
      }
      throw e;
    }
  }

  async checkMigrations(): Promise<string[]> {
    let ledger: LedgerRow[];
    try {
      ledger = await this.ledger();
    } catch (e) {
      if (errorCode(e) !== 'ER_NO_SUCH_TABLE') throw e;
      ledger = [];
    }
    // A checksum that differs is not "pending" (no account could apply it): refused as the locked pass would.
    return masterLedgerVerdict(this.display, loadMigrations('master/mysql'), ledger);
  }

  private async ledger(on: Connection = this.pool): Promise<LedgerRow[]> {
    return (await this.rows('SELECT id, name, checksum FROM acm2_master_migrations', [], on)).map((r) => ({ id: Number(r.id), name: String(r.name), checksum: String(r.checksum) }));
  }

  private async applyMigrations(): Promise<string[]> {
    // DDL is not transactional on MySQL: one process at a time, every statement safe to rerun,
    // and the ledger row written only after the migration's statements all ran.
    const c = await this.connection();
    const lock = mysqlLockName('acm2_migrate:', this.url.database);
    let healthy = true;
    try {
      const got = await this.one('SELECT GET_LOCK(?, ?) AS got', [lock, MIGRATE_LOCK_SECONDS], c, MIGRATE_LOCK_SECONDS * 1000);
      if (Number(got?.got) !== 1) {
        throw new UnavailableError(
          `another acm2 process held the migration lock on MySQL master ${this.display} for over ${MIGRATE_LOCK_SECONDS} s`,
          'lock_timeout',
        );
      }
      try {
        await this.exec(
          `CREATE TABLE IF NOT EXISTS acm2_master_migrations (
             id INT NOT NULL PRIMARY KEY,
             name VARCHAR(191) NOT NULL,
             checksum CHAR(64) NOT NULL,
             applied_at VARCHAR(32) NOT NULL
           ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci`,
          [],
          c,
        );
        // Read again under the lock: another host may have migrated meanwhile, a newer acm2 too.
        const todo = new Set(masterLedgerVerdict(this.display, loadMigrations('master/mysql'), await this.ledger(c)));
        const applied: string[] = [];
        for (const m of loadMigrations('master/mysql')) {
          if (!todo.has(m.name)) continue;
          for (const stmt of splitStatements(m.sql)) await this.exec(stmt, [], c);
          await this.exec('INSERT INTO acm2_master_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)', [m.id, m.name, m.checksum, new Date().toISOString()], c);
          applied.push(m.name);
        }
        return applied;
      } finally {
        // One that cannot say RELEASE_LOCK (timed out: its answer may still come) is dropped, which
        // frees the lock server-side; back in the pool it would hold the lock, and the statement
        // given it next would wait behind the unanswered one with no timeout of its own.
        await c.query({ sql: 'SELECT RELEASE_LOCK(?)', values: [lock], timeout: queryTimeoutMs() }).catch(() => {
          healthy = false;
        });
      }
    } finally {
      if (healthy) c.release();
      else c.destroy();
    }
  }

  // ---- users -----------------------------------------------------------------------------------

  async getUser(id: number): Promise<MasterUser | undefined> {
    const r = await this.one('SELECT * FROM users WHERE id = ?', [id]);
    return r && toUser(r);
  }
  async findUserByEmail(email: string): Promise<MasterUser | undefined> {
    // utf8mb4_unicode_ci already compares case-insensitively, like COLLATE NOCASE on SQLite.
    const r = await this.one('SELECT * FROM users WHERE email = ?', [email]);
    return r && toUser(r);
  }
  async findUserByUsername(username: string): Promise<MasterUser | undefined> {
    const r = await this.one('SELECT * FROM users WHERE username = ?', [username]);
    return r && toUser(r);
  }
  async findUserByWordpressId(wpId: number): Promise<MasterUser | undefined> {
    const r = await this.one('SELECT * FROM users WHERE wordpress_user_id = ?', [wpId]);
    return r && toUser(r);
  }

  async createUser(input: NewUser): Promise<{ user: MasterUser; job: SeedJob; keyId: number }> {
    const now = Date.now();
    try {
      return await this.tx(async (c) => {
        const u = await this.exec('INSERT INTO users (username, email, wordpress_user_id) VALUES (?, ?, ?)', [input.username, input.email, input.wordpressUserId], c);
        const userId = Number(u.insertId);
        const k = await this.exec('INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES (?, ?, ?, ?)', [userId, input.keyHash, input.keyPrefix, input.keyName], c);
        const keyId = Number(k.insertId);
        // REPLACE: a marker naming this brand-new user id or key id is a stale one, of a user ACM2
        // deleted (InnoDB may hand its ids out again after a restart), and goes.
        await this.exec('REPLACE INTO acm2_undelivered_keys (api_key_id, user_id, issued_by, created_at) VALUES (?, ?, ?, ?)', [keyId, userId, input.issuedBy ?? '', new Date(now).toISOString()], c);
        const job = await this.insertJob(c, userId, input.seedVersion, false, input.maxAttempts, now, input.jobDueAt);
        const user = await this.one('SELECT * FROM users WHERE id = ?', [userId], c);
        return { user: toUser(user!), job, keyId };
      });
    } catch (e) {
      const duplicate = duplicateMessage(duplicateKeyOnly(e), input);
      if (duplicate) throw duplicate;
      // Only a connection that died may have committed; a refused statement rolled back.
      if (e instanceof UnavailableError && e.code === 'master_unreachable') return this.createdAnyway(input, e);
      throw e;
    }
  }

  /**
   * The connection died during the transaction, possibly after the server committed it (only the
   * answer to COMMIT lost): the key's hash, unique, says which. Created: the user is returned as
   * if nothing had happened, so its key is shown. Not created: the original error. Unknown
   * (still unreachable): an error that says so and how to find out.
   */
  private async createdAnyway(input: NewUser, lost: UnavailableError): Promise<{ user: MasterUser; job: SeedJob; keyId: number }> {
    let found: Row | undefined;
    try {
      // A connection of its own: the pool's may share the fate of the one that died.
      const c = await mysql.createConnection({ host: this.url.host, port: this.url.port, user: this.url.user, password: this.url.password, database: this.url.database, connectTimeout: CONNECT_TIMEOUT_MS });
      try {
        found = await this.one('SELECT id, user_id FROM api_keys WHERE key_hash = ?', [input.keyHash], c);
      } finally {
        c.destroy();
      }
    } catch {
      throw new UnavailableError(
        `${lost.message}; whether user '${input.email}' was created before that is unknown: once the master answers, run this same acm2 user create again (if the user was made, its key was never shown, and the rerun shows a new one)`,
        'master_unreachable',
        { cause: lost },
      );
    }
    if (!found) throw lost;
    const user = await this.getUser(Number(found.user_id));
    const job = await this.latestJob(Number(found.user_id));
    if (!user || !job) throw lost;
    return { user, job, keyId: Number(found.id) };
  }

  async undeliveredKey(userId: number): Promise<UndeliveredKey | undefined> {
    const r = await this.one(UNDELIVERED_SQL, [userId]);
    return r && toUndelivered(r);
  }

  async reissueKey(input: ReissuedKey): Promise<{ keyId: number }> {
    return this.tx(async (c) => {
      // The marker's row, locked: a second rerun at once waits here, then finds it moved.
      const marked = await this.one('SELECT api_key_id FROM acm2_undelivered_keys WHERE user_id = ? FOR UPDATE', [input.userId], c);
      if (!marked || Number(marked.api_key_id) !== input.oldKeyId) throw reissuedElsewhere(input.userId);
      const old = await this.one('SELECT key_prefix, last_used_at FROM api_keys WHERE id = ? AND user_id = ? FOR UPDATE', [input.oldKeyId, input.userId], c);
      if (old && old.last_used_at != null) throw keyUsedSince(input.userId, String(old.key_prefix));
      await this.exec('UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE id = ? AND user_id = ? AND revoked_at IS NULL', [input.oldKeyId, input.userId], c);
      const k = await this.exec('INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES (?, ?, ?, ?)', [input.userId, input.keyHash, input.keyPrefix, input.keyName], c);
      const keyId = Number(k.insertId);
      await this.exec('UPDATE acm2_undelivered_keys SET api_key_id = ?, issued_by = ?, created_at = ? WHERE user_id = ?', [keyId, input.issuedBy, new Date().toISOString(), input.userId], c);
      return { keyId };
    });
  }

  async keyDelivered(keyId: number): Promise<boolean> {
    return (await this.exec('DELETE FROM acm2_undelivered_keys WHERE api_key_id = ?', [keyId])).affectedRows === 1;
  }

  private async insertJob(c: Connection, userId: number, version: string, force: boolean, maxAttempts: number, now: number, dueAt = now): Promise<SeedJob> {
    const iso = new Date(now).toISOString();
    const res = await this.exec(
      `INSERT INTO acm2_seed_jobs (user_id, seed_version, status, \`force\`, attempts, max_attempts, next_attempt_at, created_at, updated_at)
       VALUES (?, ?, 'pending', ?, 0, ?, ?, ?, ?)`,
      [userId, version, force ? 1 : 0, maxAttempts, dueAt, iso, iso],
      c,
    );
    return toJob((await this.one('SELECT * FROM acm2_seed_jobs WHERE id = ?', [res.insertId], c))!);
  }

  async listUsers(opts: { afterId: number; limit: number; ids?: number[] }): Promise<MasterUser[]> {
    if (opts.ids && opts.ids.length === 0) return [];
    const filter = opts.ids ? ` AND id IN (${opts.ids.map(() => '?').join(',')})` : '';
    const rows = await this.rows(`SELECT * FROM users WHERE id > ?${filter} ORDER BY id LIMIT ?`, [opts.afterId, ...(opts.ids ?? []), opts.limit]);
    return rows.map(toUser);
  }
  async foreignTables(): Promise<string[]> {
    const rows = await this.rows(`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name`);
    return rows.map((r) => String(r.name)).filter((n) => n !== 'users' && n !== 'api_keys' && !n.startsWith('acm2_'));
  }
  async hasAcm2Tables(): Promise<boolean> {
    const r = await this.one(`SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name IN ('users', 'api_keys')`);
    return Number(r!.n) === 2;
  }
  async countUsers(): Promise<number> {
    return Number((await this.one('SELECT COUNT(*) AS n FROM users'))!.n);
  }
  async maxUserId(): Promise<number> {
    return Number((await this.one('SELECT COALESCE(MAX(id), 0) AS n FROM users'))!.n);
  }
  async apiKeysFor(userId: number): Promise<ApiKeyRow[]> {
    return (await this.rows('SELECT * FROM api_keys WHERE user_id = ? ORDER BY id', [userId])).map(toApiKey);
  }

  // ---- seed jobs -------------------------------------------------------------------------------

  async enqueueSeedJob(userId: number, seedVersion: string, opts: { force?: boolean; maxAttempts?: number } = {}): Promise<SeedJob> {
    return this.tx(async (c) => {
      // The user's row serialises enqueuers of one user, as BEGIN IMMEDIATE does on SQLite.
      await this.rows('SELECT id FROM users WHERE id = ? FOR UPDATE', [userId], c);
      const open = await this.one(
        `SELECT * FROM acm2_seed_jobs WHERE user_id = ? AND seed_version = ? AND status IN ('pending','running') ORDER BY id DESC LIMIT 1`,
        [userId, seedVersion],
        c,
      );
      if (open) return toJob(open);
      return this.insertJob(c, userId, seedVersion, opts.force ?? false, opts.maxAttempts ?? 5, Date.now());
    });
  }

  async latestJobs(userIds: number[]): Promise<Map<number, SeedJob>> {
    const out = new Map<number, SeedJob>();
    if (userIds.length === 0) return out;
    const rows = await this.rows(
      `SELECT j.* FROM acm2_seed_jobs j
       JOIN (SELECT MAX(id) AS id FROM acm2_seed_jobs WHERE user_id IN (${userIds.map(() => '?').join(',')}) GROUP BY user_id) m ON m.id = j.id`,
      userIds,
    );
    for (const r of rows) out.set(Number(r.user_id), toJob(r));
    return out;
  }

  async latestJob(userId: number): Promise<SeedJob | undefined> {
    const r = await this.one('SELECT * FROM acm2_seed_jobs WHERE user_id = ? ORDER BY id DESC LIMIT 1', [userId]);
    return r && toJob(r);
  }

  /**
   * Same choice as the SQLite master (the due job first by next_attempt_at, id), asked as two
   * index-ordered LIMIT 1 lookups so each locks only the row it returns and skips rows other claimers hold.
   */
  private async claimIn(c: Connection, where: string, args: unknown[], workerId: string, leaseMs: number, now: number, failExhausted = false, hint = ''): Promise<SeedJob | undefined> {
    const lock = this.capabilities.skipLocked ? 'FOR UPDATE SKIP LOCKED' : 'FOR UPDATE';
    const tail = `ORDER BY next_attempt_at, id LIMIT 1 ${lock}`;
    let pick: Row | undefined;
    for (;;) {
      // Whole rows: the claimed job is returned from its locked row plus the update, without reading it again.
      const pending = await this.one(`SELECT * FROM acm2_seed_jobs ${hint} WHERE ${where} AND status = 'pending' AND next_attempt_at <= ? ${tail}`, [...args, now], c);
      const expired = await this.one(`SELECT * FROM acm2_seed_jobs ${hint} WHERE ${where} AND status = 'running' AND locked_until < ? ${tail}`, [...args, now], c);
      pick = [pending, expired]
        .filter((r): r is Row => r !== undefined)
        .sort((a, b) => Number(a.next_attempt_at) - Number(b.next_attempt_at) || Number(a.id) - Number(b.id))[0];
      if (!pick || !(failExhausted && pick.status === 'running' && Number(pick.attempts) >= Number(pick.max_attempts))) break;
      await this.exec(
        `UPDATE acm2_seed_jobs SET status = 'failed', locked_by = NULL, locked_until = NULL, last_error = ?, updated_at = ? WHERE id = ?`,
        [leaseExpiredError(pick), new Date(now).toISOString(), pick.id],
        c,
      );
    }
    if (!pick) return undefined;
    const set = { status: 'running', locked_by: workerId, locked_until: now + leaseMs, attempts: Number(pick.attempts) + 1, updated_at: new Date(now).toISOString() };
    await this.exec(
      `UPDATE acm2_seed_jobs SET status = ?, locked_by = ?, locked_until = ?, attempts = ?, updated_at = ? WHERE id = ?`,
      [set.status, set.locked_by, set.locked_until, set.attempts, set.updated_at, pick.id],
      c,
    );
    return toJob({ ...pick, ...set });
  }

  async claimJob(workerId: string, leaseMs: number, now = Date.now(), skipVersions: readonly string[] = []): Promise<SeedJob | undefined> {
    if (skipVersions.length === 0) return this.tx((c) => this.claimIn(c, '1 = 1', [], workerId, leaseMs, now, true));
    return this.tx((c) => this.claimIn(c, `seed_version NOT IN (${skipVersions.map(() => '?').join(', ')})`, [...skipVersions], workerId, leaseMs, now, true));
  }

  async claimJobForUser(
    userId: number,
    workerId: string,
    leaseMs: number,
    now = Date.now(),
    seedVersion?: string,
    enqueue?: { force?: boolean; maxAttempts?: number },
    takeOver = false,
  ): Promise<SeedJob | undefined> {
    const where = seedVersion === undefined ? 'user_id = ?' : 'user_id = ? AND seed_version = ?';
    const args = seedVersion === undefined ? [userId] : [userId, seedVersion];
    return this.tx(async (c) => {
      // This user's jobs, locked through its own index first: an UPDATE by user and status could
      // walk the queue's (status, next_attempt_at) index and lock other users' jobs, which
      // deadlocked with drainers finishing theirs. The updates below then name rows by id.
      const mine = await this.rows(`SELECT id, status, next_attempt_at FROM acm2_seed_jobs FORCE INDEX (ix_acm2_seed_jobs_user) WHERE ${where} FOR UPDATE`, args, c);
      const ids = (pick: (r: Row) => boolean) => mine.filter(pick).map((r) => Number(r.id));
      const running = ids((r) => r.status === 'running');
      if (takeOver && running.length > 0) await this.exec(`UPDATE acm2_seed_jobs SET locked_until = ? WHERE id IN (${running.map(() => '?').join(',')})`, [now - 1, ...running], c);
      // Made in this transaction, the job is invisible to drainers until it is claimed here.
      if (enqueue && seedVersion !== undefined && !mine.some((r) => r.status === 'pending' || r.status === 'running')) {
        await this.insertJob(c, userId, seedVersion, enqueue.force ?? false, enqueue.maxAttempts ?? 5, now);
      }
      // A direct `user seed` does not wait for backoff: the operator asked for it now.
      const later = ids((r) => r.status === 'pending' && Number(r.next_attempt_at) > now);
      if (later.length > 0) await this.exec(`UPDATE acm2_seed_jobs SET next_attempt_at = ? WHERE id IN (${later.map(() => '?').join(',')})`, [now, ...later], c);
      return this.claimIn(c, where, args, workerId, leaseMs, now, false, 'FORCE INDEX (ix_acm2_seed_jobs_user)');
    });
  }

  async supersedeOlderJobs(userId: number, jobId: number, now = Date.now()): Promise<number> {
    const r = await this.exec(`UPDATE acm2_seed_jobs SET status = 'failed', last_error = ?, updated_at = ? WHERE user_id = ? AND id < ? AND status = 'pending'`, [
      supersededError(jobId),
      new Date(now).toISOString(),
      userId,
      jobId,
    ]);
    return r.affectedRows;
  }

  async finishJob(jobId: number, workerId: string, outcome: JobOutcome, now = Date.now()): Promise<boolean> {
    const iso = new Date(now).toISOString();
    const res =
      outcome.status === 'done'
        ? await this.exec(
            `UPDATE acm2_seed_jobs SET status = 'done', locked_by = NULL, locked_until = NULL, last_error = NULL, updated_at = ? WHERE id = ? AND locked_by = ? AND status = 'running'`,
            [iso, jobId, workerId],
          )
        : await this.exec(
            `UPDATE acm2_seed_jobs SET status = ?, locked_by = NULL, locked_until = NULL, last_error = ?, next_attempt_at = ?, attempts = GREATEST(0, CAST(attempts AS SIGNED) - ?), updated_at = ?
             WHERE id = ? AND locked_by = ? AND status = 'running'`,
            [outcome.status, outcome.error, outcome.status === 'pending' ? outcome.nextAttemptAt : now, notAttempted(outcome), iso, jobId, workerId],
          );
    return res.affectedRows === 1;
  }

  async pendingNotDue(now = Date.now()): Promise<{ count: number; nextAttemptAt: number | null }> {
    const r = (await this.one(`SELECT COUNT(*) AS n, MIN(next_attempt_at) AS next FROM acm2_seed_jobs WHERE status = 'pending' AND next_attempt_at > ?`, [now]))!;
    return { count: Number(r.n), nextAttemptAt: r.next === null ? null : Number(r.next) };
  }
  async makeJobDue(jobId: number, now = Date.now()): Promise<boolean> {
    const res = await this.exec(`UPDATE acm2_seed_jobs SET next_attempt_at = ? WHERE id = ? AND status = 'pending' AND next_attempt_at > ?`, [now, jobId, now]);
    return res.affectedRows === 1;
  }
  async heldJobs(limit: number, now = Date.now()): Promise<SeedJob[]> {
    const rows = await this.rows(`SELECT * FROM acm2_seed_jobs WHERE status = 'running' AND locked_until >= ? ORDER BY locked_until, id LIMIT ${Math.max(0, Math.floor(limit))}`, [now]);
    return rows.map(toJob);
  }
  async expireLease(jobId: number, workerId: string, now = Date.now()): Promise<boolean> {
    const res = await this.exec(`UPDATE acm2_seed_jobs SET locked_until = ? WHERE id = ? AND locked_by = ? AND status = 'running'`, [now - 1, jobId, workerId]);
    return res.affectedRows === 1;
  }
  async countJobs(status?: JobStatus): Promise<number> {
    const r = status ? await this.one('SELECT COUNT(*) AS n FROM acm2_seed_jobs WHERE status = ?', [status]) : await this.one('SELECT COUNT(*) AS n FROM acm2_seed_jobs');
    return Number(r!.n);
  }

  // ---- per-user advisory lock ------------------------------------------------------------------

  async acquireUserLock(userId: number, timeoutMs: number): Promise<UserLock | undefined> {
    return this.acquireNamedLock(`user:${userId}`, timeoutMs, `user ${userId}`);
  }

  async acquireNamedLock(key: string, timeoutMs: number, what = `'${key}'`): Promise<UserLock | undefined> {
    // GET_LOCK belongs to the connection: the connection is kept, out of the work pool, until release.
    this.lockPool ??= createPool(this.url, LOCK_POOL_SIZE);
    const c = await this.connection(this.lockPool);
    const name = mysqlLockName('acm2:', this.url.database, `:${key}`);
    const ms = Math.max(0, timeoutMs);
    // MariaDB takes fractional seconds; MySQL is given whole ones, rounded up so we never wait less.
    const seconds = this.isMariaDb ? ms / 1000 : Math.ceil(ms / 1000);
    let got: Row | undefined;
    try {
      got = await this.one('SELECT GET_LOCK(?, ?) AS got', [name, seconds], c, ms);
    } catch (e) {
      c.destroy();
      throw e;
    }
    if (got?.got == null) {
      c.release();
      throw new UnavailableError(`MySQL master ${this.display} could not take the lock for ${what}`, 'lock_error');
    }
    if (Number(got.got) !== 1) {
      c.release();
      return undefined;
    }
    this.heldLocks.add(c);
    let released = false;
    let lost: Error | undefined;
    return {
      check: async () => {
        if (released) throw new UnavailableError(`the lock for ${what} was released`, 'lock_lost');
        if (!lost) {
          try {
            const r = await this.one('SELECT IS_USED_LOCK(?) = CONNECTION_ID() AS mine', [name], c);
            if (Number(r?.mine) !== 1) lost = new Error('another connection holds it, or nobody does');
          } catch (e) {
            lost = e instanceof Error ? e : new Error(String(e));
          }
        }
        if (lost) throw new UnavailableError(`lost the lock for ${what} on MySQL master ${this.display} (${lost.message}): stopped before anything else was changed`, 'lock_lost', { cause: lost });
      },
      release: async () => {
        if (released) return;
        released = true;
        this.heldLocks.delete(c);
        try {
          // Given the statement timeout like every other: a master that stops answering without
          // closing the connection (a network cut) must not hold a run at its end for ever.
          await c.query({ sql: 'SELECT RELEASE_LOCK(?)', values: [name], timeout: queryTimeoutMs() });
          c.release();
        } catch {
          // A connection that cannot say RELEASE_LOCK is dropped, which frees the lock server-side.
          c.destroy();
        }
      },
    };
  }

  // ---- backfill progress -----------------------------------------------------------------------

  async getBackfill(name: string): Promise<BackfillProgress | undefined> {
    const r = await this.one('SELECT * FROM acm2_backfill_runs WHERE name = ?', [name]);
    return r && toBackfill(r);
  }
  async saveBackfill(p: Omit<BackfillProgress, 'startedAt' | 'updatedAt'>): Promise<void> {
    const iso = new Date().toISOString();
    await this.exec(
      `INSERT INTO acm2_backfill_runs (name, status, cursor_id, options, counts, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON DUPLICATE KEY UPDATE status = VALUES(status), cursor_id = VALUES(cursor_id), options = VALUES(options), counts = VALUES(counts), updated_at = VALUES(updated_at)`,
      [p.name, p.status, p.cursor, p.options, JSON.stringify(p.counts), iso, iso],
    );
  }
  async recordBackfillItem(name: string, item: BackfillItem): Promise<void> {
    await this.exec(
      `INSERT INTO acm2_backfill_items (name, user_id, outcome, reason) VALUES (?, ?, ?, ?)
       ON DUPLICATE KEY UPDATE outcome = VALUES(outcome), reason = VALUES(reason)`,
      [name, item.userId, item.outcome, item.reason],
    );
  }
  async recordBackfillItems(name: string, items: readonly BackfillItem[]): Promise<void> {
    // Multi-row upserts, a bounded number of rows per statement (well under max_allowed_packet).
    for (let i = 0; i < items.length; i += ITEMS_PER_STATEMENT) {
      const rows = items.slice(i, i + ITEMS_PER_STATEMENT).map((it) => [name, it.userId, it.outcome, it.reason]);
      await this.exec(
        `INSERT INTO acm2_backfill_items (name, user_id, outcome, reason) VALUES ?
         ON DUPLICATE KEY UPDATE outcome = VALUES(outcome), reason = VALUES(reason)`,
        [rows],
      );
    }
  }
  async backfillItems(name: string): Promise<BackfillItem[]> {
    return (await this.rows('SELECT user_id, outcome, reason FROM acm2_backfill_items WHERE name = ? ORDER BY user_id', [name])).map((r) => ({
      userId: Number(r.user_id),
      outcome: String(r.outcome),
      reason: r.reason == null ? null : String(r.reason),
    }));
  }
  async resetBackfill(name: string): Promise<void> {
    await this.tx(async (c) => {
      await this.exec('DELETE FROM acm2_backfill_items WHERE name = ?', [name], c);
      await this.exec('DELETE FROM acm2_backfill_runs WHERE name = ?', [name], c);
    });
  }

  async pairedDataDir(): Promise<DataDirPairing | undefined> {
    const r = await this.one('SELECT * FROM acm2_data_dir WHERE slot = 1');
    return r && { id: String(r.data_dir_id), path: String(r.data_dir_path), pairedAt: r.paired_at === '' ? null : String(r.paired_at) };
  }
  async pairDataDir(p: { id: string; path: string; unfinished?: boolean }, replace = false): Promise<DataDirPairing> {
    await this.exec(
      `INSERT INTO acm2_data_dir (slot, data_dir_id, data_dir_path, paired_at) VALUES (1, ?, ?, ?)
       ON DUPLICATE KEY UPDATE ${replace ? 'data_dir_id = VALUES(data_dir_id), data_dir_path = VALUES(data_dir_path), paired_at = VALUES(paired_at)' : 'slot = slot'}`,
      [p.id, p.path, p.unfinished ? '' : new Date().toISOString()],
    );
    return (await this.pairedDataDir())!;
  }
  async settleDataDirPairing(id: string, stamped: boolean): Promise<void> {
    if (stamped) await this.exec(`UPDATE acm2_data_dir SET paired_at = ? WHERE slot = 1 AND data_dir_id = ? AND paired_at = ''`, [new Date().toISOString(), id]);
    else await this.exec(`DELETE FROM acm2_data_dir WHERE slot = 1 AND data_dir_id = ? AND paired_at = ''`, [id]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Dropping a lock's connection frees its GET_LOCK on the server.
    for (const c of this.heldLocks) c.destroy();
    this.heldLocks.clear();
    const pools = [this.pool, this.lockPool].filter((p): p is Pool => p !== undefined);
    await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
    // end() only writes each connection's QUIT: a master that stopped answering (a network cut)
    // never closes its side, and the socket would keep this process alive, its exit 3 already
    // said, for the kernel's ~15 minutes of TCP retries. Such a socket no longer holds the process
    // and is dropped shortly (the server has its QUIT, or never hears from it again).
    for (const p of pools) {
      for (const conn of openConnections.get(p) ?? []) {
        conn.stream?.unref?.();
        setTimeout(() => conn.destroy(), QUIT_GRACE_MS).unref();
      }
    }
  }
}

/** A pool's connections whose socket is still open (see close). */
type RawConnection = { stream?: { unref?(): void; once(ev: 'close', fn: () => void): void }; destroy(): void };
const openConnections = new WeakMap<Pool, Set<RawConnection>>();
/** How long a closed master's connection may wait for the server to answer its QUIT before it is dropped. */
const QUIT_GRACE_MS = 2000;

function createPool(url: MysqlUrl, connectionLimit: number): Pool {
  const pool = mysql.createPool({
    host: url.host,
    port: url.port,
    user: url.user,
    password: url.password,
    database: url.database,
    connectionLimit,
    maxIdle: connectionLimit,
    idleTimeout: 60_000,
    waitForConnections: true,
    queueLimit: 0,
    connectTimeout: CONNECT_TIMEOUT_MS,
    enableKeepAlive: true,
    supportBigNumbers: true,
    bigNumberStrings: false,
    // TIMESTAMPs come back as 'YYYY-MM-DD HH:MM:SS' in UTC (session time_zone below); toIso makes them ISO.
    dateStrings: true,
    timezone: 'Z',
    charset: 'utf8mb4_unicode_ci',
  });
  const open = new Set<RawConnection>();
  openConnections.set(pool, open);
  pool.pool.on('connection', (conn) => {
    const tracked = conn as unknown as RawConnection;
    open.add(tracked);
    tracked.stream?.once('close', () => open.delete(tracked));
    // Queued ahead of the first query on every new connection.
    conn.query(`SET time_zone = '+00:00'`, () => undefined);
    // No gap locks: claimers and enqueuers lock only the rows they read.
    conn.query('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED', () => undefined);
    // The server's sql_mode is whatever its operator chose, and the tool's SQL depends on it:
    // without STRICT a value too long for its column is cut short with a warning instead of
    // refused; NO_BACKSLASH_ESCAPES breaks mysql2's quoting of a value holding ' (an email may);
    // ANSI_QUOTES turns "…" into names. Each session pins the one mode it was written for.
    conn.query(`SET SESSION sql_mode = '${SESSION_SQL_MODE}'`, () => undefined);
  });
  return pool;
}

function connectError(url: MysqlUrl, e: unknown): UnavailableError | UsageError {
  const code = errorCode(e);
  const where = hostPort(url.host, url.port);
  if (code === 'ER_ACCESS_DENIED_ERROR' || code === 'ER_DBACCESS_DENIED_ERROR') {
    return new UnavailableError(`MySQL master at ${where}/${url.database} denied access to user '${url.user}' (${code})`, 'master_access_denied', { cause: e });
  }
  if (LIMIT_CODES.has(code)) return limitError(url, e);
  // The server answered: a database name it does not have is a typo in --master, not an outage.
  if (code === 'ER_BAD_DB_ERROR') {
    return new UsageError(`MySQL master at ${where} has no database '${url.database}' (${code}): check the database name in --master`, 'master_unknown_database', { cause: e });
  }
  return new UnavailableError(`cannot reach MySQL master at ${where} (${code})`, 'master_unreachable', { cause: e });
}

/** The master reached a connection (or hourly) limit for this account: exit 3, with what to do. */
function limitError(url: MysqlUrl, e: unknown): UnavailableError {
  const said = e instanceof Error && e.message ? `: ${e.message.replace(/\.$/, '')}` : '';
  return new UnavailableError(
    `MySQL master at ${hostPort(url.host, url.port)} refused user '${url.user}' another connection or statement (${errorCode(e)}${said}); ` +
      `run acm2 with a lower --concurrency or fewer acm2 processes at once, or raise the limit, then run again`,
    'master_connection_limit',
    { cause: e },
  );
}

/**
 * MySQL's duplicate message quotes the clashing value ("Duplicate entry 'x' for key 'email'"), and a
 * username may itself contain "email": classify on the key name alone.
 */
function duplicateKeyOnly(e: unknown): unknown {
  if (errorCode(e) !== 'ER_DUP_ENTRY') return e;
  const key = /for key '([^']+)'/.exec(String((e as Error).message))?.[1];
  return key ? new Error(`Duplicate entry for key '${key}'`) : e;
}
