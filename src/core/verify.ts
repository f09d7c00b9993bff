// `verify`: proves every user is complete, consistent and isolated (SPEC §5, §6), as data.
// One user's checks are a pure function of (data dir, user id, master job), so they run on a pool
// of worker threads while the main thread streams users from the master in keyset pages.

import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, opendirSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync, type Stats } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import type { JobStatus, MasterDb, SeedJob } from '../master/types.js';
import { gcEvery } from '../gc.js';
import { startOrHand, threadInput, type WarmWorkers } from './warm-workers.js';
import { lstatOrUndefined, statOrUndefined } from '../durable.js';
import { isBusy } from './migrate-safe.js';
import { deadHere } from './worker-name.js';
import { fromWire, isAcm2Error, isDiskFull, toWire, type WireError } from '../errors.js';
import { knownVersions, loadPackage } from '../seed/package.js';
import { bytesAsText, isTemplate, preparePackage } from '../seed/prepared.js';
import { idMayStartAt, isDocId, isUuid, safeDocId, uuidPartOf, uuidPrefixOf } from '../seed/remap.js';
import { ACM2_TABLES, ledgerVerdict, openForReading, tempFolderProblem, turnedReadOnly, userMigrations, versionSeededHere, type AppliedMigration } from '../userdb/user-db.js';
import { checkLedger, newerToolReason } from '../migrations.js';
import { entryKind, resolveInside, userDbPath, userIdFromEntry, userRoot, type UserId } from '../userdb/paths.js';

/** The stable problem codes of SPEC §5, in the order a person reads them. */
export const PROBLEM_CODES = [
  'master_user_missing',
  'db_missing',
  'db_corrupt',
  'db_busy',
  'schema_outdated',
  'schema_newer',
  'meta_missing',
  'not_ready',
  'seed_version_unknown',
  'seed_row_missing',
  'fk_violation',
  'foreign_user_row',
  'unresolved_reference',
  'file_missing',
  'file_size_mismatch',
  'file_hash_mismatch',
  'path_escape',
  'seed_id_leaked',
  'job_state_mismatch',
  'orphan',
  'bad_permissions',
] as const;
export type ProblemCode = (typeof PROBLEM_CODES)[number];

/**
 * 'warning' marks a state that may resolve by itself (a seed job is queued or running for a user
 * that is not ready yet); it still fails verify, because a fleet in CI must be fully ready.
 */
export type Severity = 'error' | 'warning';

export interface Problem {
  code: ProblemCode;
  severity: Severity;
  userId: number;
  table?: string;
  rowId?: string;
  /** Relative to the data dir ('/' separators), e.g. user_3.db or user_3/runs/…/x.md. */
  path?: string;
  message: string;
}

export interface UserVerdict {
  id: number;
  ok: boolean;
  problems: Problem[];
}

export interface VerifyResult {
  ok: boolean;
  checked: number;
  failed: number;
  users: UserVerdict[];
  orphans: Problem[];
  durationMs: number;
}

export interface VerifyDeps {
  master: MasterDb;
  dataDir: string;
  seedsDir: string;
}

export interface VerifyOptions {
  /** Only these users (ids not in the master are reported as master_user_missing; no orphan scan). */
  users?: number[];
  /** integrity_check instead of quick_check, sha256 of every seeded file, text files scanned for package ids. */
  deep?: boolean;
  /** Only users with id % count == index (orphans too), so hosts can split a fleet. */
  shard?: { index: number; count: number };
  /** Users verified at once; above 1 (and when running compiled) each slot is a worker thread. */
  concurrency?: number;
  /** Users read from the master per keyset page. */
  pageSize?: number;
  /** Clock for lease expiry (tests). */
  now?: number;
  /** Wait for a locked user DB this long before reporting it db_busy (default 5 s). */
  busyTimeoutMs?: number;
  /** Worker threads started early (warmVerifyWorkers): the first checkers are these. */
  warm?: WarmWorkers;
}

/** Progress callbacks (the CLI passes its spinner/bar; core never prints). */
export interface VerifyProgress {
  start(label: string, total?: number): void;
  tick(n?: number): void;
  done(): void;
}

/** The part of a master seed job the per-user checks need (plain data, so it crosses threads). */
export interface JobView {
  id: number;
  status: JobStatus;
  seedVersion: string;
  lockedUntil: number | null;
  lastError: string | null;
  /** Running, claimed by a process of this host that is gone (killed): nothing works on it now. */
  seederGone?: true;
  /** A --force (restores the seeded rows and files over the user's edits). */
  force?: true;
}

/** Everything a per-user check needs besides the user id and its job. */
export interface CheckContext {
  dataDir: string;
  /** Where the packages are: a ready user is compared with its version's rows and files. */
  seedsDir?: string;
  knownVersions: string[];
  deep: boolean;
  now: number;
  /** How long to wait for a user DB another process holds locked before reporting db_busy. */
  busyTimeoutMs: number;
}

export function jobView(job: SeedJob | undefined): JobView | undefined {
  if (!job) return undefined;
  const v: JobView = { id: job.id, status: job.status, seedVersion: job.seedVersion, lockedUntil: job.lockedUntil, lastError: job.lastError };
  if (job.status === 'running' && job.lockedBy && deadHere(job.lockedBy)) v.seederGone = true;
  if (job.force) v.force = true;
  return v;
}

/** "seed job #N (v) is running", and what to do when its seeder is gone: its lease alone ends in minutes. */
function openJobText(job: JobView, userId: UserId): string {
  const text = `seed job #${job.id} (${job.seedVersion}) is ${job.status}`;
  return job.seederGone ? `${text}, but the process that claimed it on this host is gone (killed?): the next acm2 user seed --pending takes it over at once, or run acm2 user seed ${userId}` : text;
}

// ---------------------------------------------------------------------------------------------
// Orchestration

export async function verifyUsers(deps: VerifyDeps, opts: VerifyOptions = {}, progress?: VerifyProgress): Promise<VerifyResult> {
  const started = Date.now();
  const dataDir = path.resolve(deps.dataDir);
  const ctx: CheckContext = { dataDir, seedsDir: deps.seedsDir, knownVersions: knownVersions(deps.seedsDir), deep: Boolean(opts.deep), now: opts.now ?? Date.now(), busyTimeoutMs: opts.busyTimeoutMs ?? 5000 };
  const shard = opts.shard;
  const inShard = (id: number) => !shard || id % shard.count === shard.index;
  const pageSize = opts.pageSize ?? 500;
  const wanted = opts.users ? [...new Set(opts.users)].filter(inShard).sort((a, b) => a - b) : undefined;

  const total = wanted ? wanted.length : shard ? undefined : await deps.master.countUsers();
  progress?.start('verifying users', total);
  const users: UserVerdict[] = [];
  const seen = new Set<number>();
  const pool = new CheckerPool(Math.max(1, opts.concurrency ?? 1), ctx, opts.warm);
  try {
    // Users go to a slot a few at a time: one message per user was a measurable share of a worker.
    await pool.forEach(inBatches(streamUsers(deps.master, pageSize, inShard, wanted), pool.batchSize), async (batch, checker) => {
      const verdicts = await checker.check(batch);
      for (let i = 0; i < batch.length; i++) {
        const { id, job } = batch[i]!;
        if (wanted) seen.add(id);
        let problems = verdicts[i]!;
        // The job was read with its page, maybe seconds ago: a verdict that depends on it is
        // confirmed against the job as it is now (a seed may have finished in between).
        if (problems.some((p) => JOB_DEPENDENT.has(p.code))) {
          const now = jobView(await deps.master.latestJob(id));
          if (JSON.stringify(now) !== JSON.stringify(job)) problems = (await checker.check([{ id, job: now }]))[0]!;
        }
        users.push({ id, ok: problems.length === 0, problems });
        progress?.tick();
      }
    });
  } finally {
    await pool.close();
    progress?.done();
  }
  for (const id of wanted ?? []) if (!seen.has(id)) users.push(missingFromMaster(dataDir, id));
  users.sort((a, b) => a.id - b.id);

  const orphans = wanted ? [] : await scanOrphans(deps.master, dataDir, inShard);
  const failed = users.filter((u) => !u.ok).length;
  return { ok: failed === 0 && orphans.length === 0, checked: users.length, failed, users, orphans, durationMs: Date.now() - started };
}

/** The users to check, page by page, each with its latest seed job (one master query per page, not per user). */
async function* streamUsers(master: MasterDb, pageSize: number, inShard: (id: number) => boolean, ids?: number[]): AsyncGenerator<{ id: number; job: JobView | undefined }> {
  if (ids && ids.length === 0) return;
  let after = 0;
  for (;;) {
    const page = await master.listUsers({ afterId: after, limit: pageSize, ids });
    if (page.length === 0) return;
    after = page[page.length - 1]!.id;
    const mine = page.filter((u) => inShard(u.id)).map((u) => u.id);
    const jobs = await master.latestJobs(mine);
    for (const id of mine) yield { id, job: jobView(jobs.get(id)) };
  }
}

/** Groups of up to n items, in order. */
async function* inBatches<T>(items: AsyncIterable<T>, n: number): AsyncGenerator<T[]> {
  let batch: T[] = [];
  for await (const item of items) {
    batch.push(item);
    if (batch.length >= n) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

function missingFromMaster(dataDir: string, id: UserId): UserVerdict {
  const leftovers = [userDbPath(dataDir, id), userRoot(dataDir, id)].filter((p) => existsSync(p)).map((p) => rel(dataDir, p));
  const tail = leftovers.length > 0 ? `; ${leftovers.join(' and ')} exist${leftovers.length === 1 ? 's' : ''} without an owner` : '';
  return { id, ok: false, problems: [problem('master_user_missing', id, `no user ${id} in the master${tail}`)] };
}

/**
 * user_{id}.db files and user_{id}/ folders whose id has no master user. The data dir is read
 * as a stream and ids are looked up in batches, so memory stays flat however many users exist.
 */
async function scanOrphans(master: MasterDb, dataDir: string, inShard: (id: number) => boolean): Promise<Problem[]> {
  const out: Problem[] = [];
  let batch: Array<{ id: number; name: string; kind: 'db' | 'dir' }> = [];
  const flush = async () => {
    const ids = [...new Set(batch.map((b) => b.id))];
    const found = new Set((await master.listUsers({ afterId: 0, limit: ids.length, ids })).map((u) => u.id));
    for (const b of batch) {
      if (found.has(b.id)) continue;
      const what = b.kind === 'db' ? 'database' : 'folder';
      out.push(problem('orphan', b.id, `${what} ${b.name} belongs to user ${b.id}, who is not in the master`, { path: b.name }));
    }
    batch = [];
  };
  let dir;
  try {
    dir = opendirSync(dataDir);
  } catch {
    return out;
  }
  try {
    for (let e = dir.readSync(); e; e = dir.readSync()) {
      const m = userIdFromEntry(e.name);
      if (!m || !inShard(m.id)) continue;
      batch.push({ id: m.id, name: e.name, kind: m.kind });
      if (batch.length >= 500) await flush();
    }
  } finally {
    dir.closeSync();
  }
  if (batch.length > 0) await flush();
  return out.sort((a, b) => a.userId - b.userId || (a.path! < b.path! ? -1 : 1));
}

// ---------------------------------------------------------------------------------------------
// The pool: N slots, each checking one user at a time; worker threads when running compiled JS.

interface UserToCheck {
  id: UserId;
  job: JobView | undefined;
}

interface Checker {
  /** Every problem of each user, in the order given. */
  check(users: UserToCheck[]): Promise<Problem[][]>;
  close(): Promise<void>;
  /** Users checked so far (a worker is replaced after WORKER_USERS, see release()). */
  checked: number;
  worker: boolean;
}

/** Users checked between two full collections (keeps peak memory flat over a fleet; see gc.ts). */
const GC_EVERY = 200;
/** Users per message to a worker thread. */
const WORKER_BATCH = 8;
/**
 * Users a worker thread checks before it is replaced by a fresh one (see CheckerPool.release).
 * ACM2_VERIFY_WORKER_USERS overrides it, for tests that must see a replacement with few users.
 */
const WORKER_USERS = Number(process.env.ACM2_VERIFY_WORKER_USERS) > 0 ? Number(process.env.ACM2_VERIFY_WORKER_USERS) : 500;

/** Worker threads need the compiled module; under a TS runner (tests) the slots run in this thread. */
const CAN_USE_WORKERS = import.meta.url.endsWith('.js');

class CheckerPool {
  private all: Checker[] = [];
  private idle: Checker[] = [];
  private waiters: Array<(c: Checker) => void> = [];
  private retiring: Array<Promise<void>> = [];
  constructor(
    private readonly size: number,
    private readonly ctx: CheckContext,
    private readonly warm?: WarmWorkers,
  ) {}

  /** Users handed to a slot at once: a batch per message for worker threads, one at a time in-thread. */
  get batchSize(): number {
    return this.size > 1 && CAN_USE_WORKERS ? WORKER_BATCH : 1;
  }

  private make(): Checker {
    if (this.size > 1 && CAN_USE_WORKERS) return workerChecker(this.ctx, this.warm?.take());
    const ctx = this.ctx;
    const tick = gcEvery(GC_EVERY);
    const c: Checker = {
      check: async (users) => {
        c.checked += users.length;
        return checkBatch(ctx, users, tick);
      },
      close: async () => undefined,
      checked: 0,
      worker: false,
    };
    return c;
  }

  private acquire(): Promise<Checker> {
    const c = this.idle.pop();
    if (c) return Promise.resolve(c);
    if (this.all.length < this.size) {
      const n = this.make();
      this.all.push(n);
      return Promise.resolve(n);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private release(c: Checker): void {
    // A worker's heap settles at a size V8 picks from how long it has run, not from what it holds
    // (a few MiB live): replacing each worker after WORKER_USERS keeps peak memory the same for
    // 1,000 users as for 10,000. A fresh worker costs ~0.1 s, about 2% of its life.
    if (c.worker && c.checked >= WORKER_USERS) {
      this.all = this.all.filter((x) => x !== c);
      this.retiring.push(c.close());
      c = this.make();
      this.all.push(c);
    }
    const w = this.waiters.shift();
    if (w) w(c);
    else this.idle.push(c);
  }

  /** Run fn for every item, at most `size` at once; the first failure stops the stream and is thrown. */
  async forEach<T>(items: AsyncIterable<T>, fn: (item: T, c: Checker) => Promise<void>): Promise<void> {
    const inflight = new Set<Promise<void>>();
    let failure: { error: unknown } | undefined;
    for await (const item of items) {
      if (failure) break;
      const c = await this.acquire();
      const p: Promise<void> = fn(item, c)
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => {
          this.release(c);
          inflight.delete(p);
        });
      inflight.add(p);
    }
    await Promise.all(inflight);
    if (failure) throw failure.error;
  }

  async close(): Promise<void> {
    await Promise.all([...this.retiring, ...this.all.map((c) => c.close())]);
  }
}

interface WorkerReply {
  problems?: Problem[][];
  error?: WireError;
}

/** A checker on a worker thread: a warm one (started early, waiting for its context), or one started now. */
function workerChecker(ctx: CheckContext, warm?: Worker): Checker {
  const w = startOrHand(warm, new URL(import.meta.url), 'verify', ctx);
  let pending: { resolve: (p: Problem[][]) => void; reject: (e: Error) => void } | undefined;
  let dead: Error | undefined;
  const fail = (e: Error) => {
    dead ??= e;
    pending?.reject(e);
    pending = undefined;
  };
  w.on('message', (m: WorkerReply) => {
    const p = pending;
    pending = undefined;
    if (m.error !== undefined) p?.reject(fromWire(m.error));
    else p?.resolve(m.problems ?? []);
  });
  w.on('error', fail);
  w.on('exit', (code) => fail(new Error(`verify worker exited with code ${code}`)));
  const c: Checker = {
    check: (users) =>
      new Promise((resolve, reject) => {
        if (dead) return reject(dead);
        c.checked += users.length;
        pending = { resolve, reject };
        w.postMessage(users);
      }),
    close: async () => {
      w.removeAllListeners('exit');
      await w.terminate();
    },
    checked: 0,
    worker: true,
  };
  return c;
}

// A warm thread is handed its context by message; every message of ours, before or after it, is users to check.
let verifyCtx: CheckContext | undefined;
const verifyPort = threadInput<CheckContext>('verify', (ctx) => (verifyCtx = ctx));
if (verifyPort) {
  const tick = gcEvery(GC_EVERY);
  verifyPort.on('message', (m: UserToCheck[] | { acm2Input: CheckContext }) => {
    if (!Array.isArray(m)) return;
    const ctx = verifyCtx;
    try {
      if (!ctx) throw new Error('verify worker was given users before its context');
      verifyPort.postMessage({ problems: checkBatch(ctx, m, tick) } satisfies WorkerReply);
    } catch (e) {
      verifyPort.postMessage({ error: toWire(e) } satisfies WorkerReply);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// One user

function problem(code: ProblemCode, userId: number, message: string, where: { table?: string; rowId?: string; path?: string } = {}, severity: Severity = 'error'): Problem {
  const p = { code, severity, userId } as Problem;
  if (where.table !== undefined) p.table = where.table;
  if (where.rowId !== undefined) p.rowId = where.rowId;
  if (where.path !== undefined) p.path = where.path;
  p.message = message;
  return p;
}

/**
 * A path as one word of a shell command an operator can paste. A quote is closed, written as
 * "'" and reopened, never written \': a terminal shows the message escaped (visible()), where a
 * backslash of ours would be doubled and the pasted command broken.
 */
function shellWord(p: string): string {
  return /^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replace(/'/g, `'"'"'`)}'`;
}

function rel(dataDir: string, abs: string): string {
  return path.relative(dataDir, abs).split(path.sep).join('/');
}

/** checkUser for each of a batch, calling tick (the periodic GC) before each. */
function checkBatch(ctx: CheckContext, users: UserToCheck[], tick: () => void): Problem[][] {
  return users.map(({ id, job }) => {
    tick();
    return checkUser(ctx, id, job);
  });
}

/** Every problem of one user, in check order. Reads only; never throws for bad data, only for bugs. */
export function checkUser(ctx: CheckContext, userId: UserId, job: JobView | undefined): Problem[] {
  return new UserCheck(ctx, userId, job).run();
}

interface Meta {
  status: string;
  version: string;
  seededAt: string | null;
}

/** Test hooks (never set in production): run between reading a user's DB and checking its files. */
export const verifyTestHooks: { afterDbRead?: (userId: UserId) => void } = {};

/** Problems about seeded files, which a seed running meanwhile can cause. */
const FILE_CODES: ReadonlySet<ProblemCode> = new Set(['file_missing', 'file_size_mismatch', 'file_hash_mismatch']);

/** What the DB told us: absent, unreadable, or read (with user_meta if it has one). */
type DbState = { kind: 'absent' } | { kind: 'unreadable' } | { kind: 'read'; meta?: Meta };

interface SeededFile {
  path: string;
  /** The seed version that wrote it (a user can hold several), named in its problems. */
  version: string;
  bytes: number;
  sha256: string;
}

const SQL_NAME = (s: string) => `"${s.replace(/"/g, '""')}"`;
const OPEN_JOB: readonly JobStatus[] = ['pending', 'running'];

/** Seeded files ACM2 itself rewrites in normal use (acm2/README: the report, on every GET of it). */
const REGENERATED = /^runs\/[^/]+\/reports\/report\.html$/;
/** Problems whose code or severity depends on the master's seed job. */
const JOB_DEPENDENT: ReadonlySet<ProblemCode> = new Set(['job_state_mismatch', 'not_ready', 'db_missing']);
const CONTENT_ID_KEYS = ['generation_instructions_id', 'single_eval_instructions_id', 'pairwise_eval_instructions_id', 'eval_criteria_id', 'combine_instructions_id'];

/**
 * Column references between ACM2's rows. Most are declared FOREIGN KEYs, which ACM2 never
 * enforces; tasks.document_id is not declared at all. Checked by query as well as by
 * PRAGMA foreign_key_check so a DB rebuilt without its FK clauses is still checked.
 */
const COLUMN_REFS: ReadonlyArray<{ table: string; column: string; parents: string[] }> = [
  ...CONTENT_ID_KEYS.map((column) => ({ table: 'presets', column, parents: ['contents'] })),
  { table: 'presets', column: 'github_connection_id', parents: ['github_connections'] },
  { table: 'runs', column: 'preset_id', parents: ['presets'] },
  { table: 'tasks', column: 'run_id', parents: ['runs'] },
  { table: 'artifacts', column: 'task_id', parents: ['tasks'] },
  { table: 'tasks', column: 'document_id', parents: ['contents', 'documents'] },
];

interface TableColumns {
  list: string[];
  set: Set<string>;
}

/**
 * Column lists by schema text, kept across the users one thread checks. Reading them cost a
 * `SELECT *` prepare and its column list per table per user (a tenth of verify's time), yet a
 * fleet has one or two distinct schemas. Bounded, so a fleet of odd schemas cannot grow it.
 */
const columnCache = new Map<string, Map<string, TableColumns>>();
const COLUMN_CACHE_MAX = 16;

/** The (shared, growing) column lists of the schema with this text. */
function cachedColumns(schemaText: string): Map<string, TableColumns> {
  let cols = columnCache.get(schemaText);
  if (!cols) {
    if (columnCache.size >= COLUMN_CACHE_MAX) columnCache.delete(columnCache.keys().next().value!);
    columnCache.set(schemaText, (cols = new Map()));
  }
  return cols;
}

/** What one pass over ACM2's rows found, and the JSON it kept for the reference checks. */
interface RowPass {
  owned: Problem[];
  leaked: Problem[];
  /** contents and documents ids. */
  known: Set<string>;
  json: Array<{ table: string; id: string; values: unknown[] }>;
}

/** Per table, the JSON columns whose references are checked (in this order). */
const JSON_COLUMNS: Partial<Record<string, string[]>> = {
  presets: ['documents', 'input_content_ids', 'config_overrides'],
  contents: ['variables'],
  runs: ['config', 'results_summary'],
};

/** SQLite's order for values of one column: NULL, numbers, text, blobs. */
function sqliteCompare(a: unknown, b: unknown): number {
  const rank = (v: unknown) => (v === null || v === undefined ? 0 : typeof v === 'number' || typeof v === 'bigint' ? 1 : typeof v === 'string' ? 2 : 3);
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 1) return Number(a) - Number(b);
  if (ra === 2) return (a as string) < (b as string) ? -1 : (a as string) > (b as string) ? 1 : 0;
  if (ra === 3) return Buffer.compare(a as Buffer, b as Buffer);
  return 0;
}

class UserCheck {
  private readonly problems: Problem[] = [];
  private readonly dbFile: string;
  private readonly root: string;
  private schemaBroken = false;
  private leaks?: LeakIndex;
  /** Index names the DB has (from the table list). */
  private readonly indexes = new Set<string>();
  /** Paths (relative to the user root) already reported as escaping: never read through them. */
  private readonly escaped = new Set<string>();
  /** Regular files the tree walk found (relative to the user root, no symlink on the way), with their lstat. */
  private readonly walked = new Map<string, Stats>();
  /** Generated docs results_summary names by file only: looked for once the DB snapshot is closed. */
  private readonly summaryDocs: Array<{ runId: string; doc: string; file: string }> = [];

  constructor(
    private readonly ctx: CheckContext,
    private readonly userId: UserId,
    private readonly job: JobView | undefined,
  ) {
    this.dbFile = userDbPath(ctx.dataDir, userId);
    this.root = userRoot(ctx.dataDir, userId);
  }

  private add(code: ProblemCode, message: string, where: { table?: string; rowId?: string; path?: string } = {}, severity: Severity = 'error'): void {
    this.problems.push(problem(code, this.userId, message, where, severity));
  }

  private rel(abs: string): string {
    return rel(this.ctx.dataDir, abs);
  }

  private rootRel(relToRoot: string): string {
    return `user_${this.userId}/${relToRoot}`;
  }

  run(): Problem[] {
    let state: DbState;
    let seeded: SeededFile[] = [];
    const st = lstatOrUndefined(this.dbFile);
    if (!st) {
      state = { kind: 'absent' };
      if (this.job && OPEN_JOB.includes(this.job.status)) {
        this.add('not_ready', `not seeded yet: ${openJobText(this.job, this.userId)}`, { path: this.rel(this.dbFile) }, 'warning');
      } else {
        this.add('db_missing', `${this.rel(this.dbFile)} does not exist`, { path: this.rel(this.dbFile) });
      }
    } else {
      if (st.isSymbolicLink()) {
        // The link is how the user's data is reached: deleting it (then seeding) leaves that data behind.
        const target = resolveLink(this.dbFile);
        const held = this.heldInDataDir(target);
        this.add(
          'path_escape',
          held !== undefined
            ? `${this.rel(this.dbFile)} is a symlink to ${readlinkSafe(this.dbFile)}, which is ${held} in the data dir, not this user's: remove the link (rm ${shellWord(this.dbFile)}), never move what it points to, then acm2 user seed ${this.userId}`
            : `${this.rel(this.dbFile)} is a symlink to ${readlinkSafe(this.dbFile)}; the user's DB must be the file itself: while ACM2 is not using it, move the file it points to into its place (mv ${shellWord(target)} ${shellWord(this.dbFile)}), with its -wal or -journal file if it has one; do not just delete the link`,
          { path: this.rel(this.dbFile) },
        );
      } else if (st.isFile()) {
        this.checkMode(st, this.dbFile, 0o600);
      }
      // Opening a FIFO (or a symlink to one) would wait for a writer for ever.
      const target = st.isSymbolicLink() ? statOrUndefined(this.dbFile) : st;
      if (!target?.isFile()) {
        this.add('db_corrupt', `${this.rel(this.dbFile)} is ${entryKind(target)}, not a database file; it was not opened`, { path: this.rel(this.dbFile) });
        state = { kind: 'unreadable' };
      } else {
        const r = this.checkDatabase();
        state = r.state;
        seeded = r.seeded;
      }
    }
    verifyTestHooks.afterDbRead?.(this.userId);
    this.checkTree();
    this.checkSummaryDocs();
    this.checkSeededFiles(seeded);
    if (state.kind === 'read') this.seedRanMeanwhile(state.meta);
    this.checkJob(state);
    return this.problems;
  }

  /**
   * Files are checked after the DB's snapshot is closed: a seed that began (or ran) in between
   * rewrites them, and what looked wrong may be that seed at work. When user_meta no longer says
   * what the snapshot said, the file problems are not reported; a warning says to look again.
   */
  /** A short second read of the user's DB, after its snapshot closed; undefined when it cannot be read. */
  private reread<T>(fn: (db: Database.Database) => T): T | undefined {
    try {
      const db = openForReading(this.dbFile, { timeout: this.ctx.busyTimeoutMs });
      try {
        return fn(db);
      } finally {
        db.close();
      }
    } catch {
      return undefined;
    }
  }

  private seedRanMeanwhile(then: Meta | undefined): void {
    if (then?.status !== 'ready' || !this.problems.some((p) => FILE_CODES.has(p.code))) return;
    const read = this.reread((db) => ({ now: db.prepare(`SELECT seed_status, seeded_at FROM user_meta WHERE user_id = ?`).get(this.userId) as { seed_status: string; seeded_at: string | null } | undefined }));
    if (!read) return; // as read before: the file problems stand
    const { now } = read;
    if (now && now.seed_status === then.status && (now.seeded_at === null ? null : String(now.seeded_at)) === then.seededAt) return;
    const kept = this.problems.filter((p) => !FILE_CODES.has(p.code));
    this.problems.length = 0;
    this.problems.push(...kept);
    this.add(
      'not_ready',
      `a seed of this user began or ran while verify checked it (user_meta now says '${now?.seed_status ?? 'nothing'}'): its files were changing, so they were not judged; verify this user again`,
      { table: 'user_meta' },
      'warning',
    );
  }

  // --- the database ---------------------------------------------------------------------------

  private checkDatabase(): { state: DbState; seeded: SeededFile[] } {
    return this.readDatabase(false) ?? this.readDatabase(true)!;
  }

  /** The DB's checks; undefined when it is to be opened again (see the SQLITE_CANTOPEN case). */
  private readDatabase(again: boolean): { state: DbState; seeded: SeededFile[] } | undefined {
    const where = { path: this.rel(this.dbFile) };
    let db: Database.Database;
    try {
      db = openForReading(this.dbFile, { timeout: this.ctx.busyTimeoutMs });
      // Reads through a memory map: half the system time of a read() per page, over a fleet.
      // Safe with SQLite writers: none can shrink the file while this read transaction holds its lock.
      db.pragma('mmap_size = 268435456');
      // One read transaction for all of this user's queries: ACM2 writing meanwhile cannot make
      // a run and its new tasks look like a dangling reference (close() ends it).
      db.exec('BEGIN');
    } catch (e) {
      // The environment, not the DB (a private copy the temp folder cannot hold): verify stops, exit 3.
      if (isAcm2Error(e)) throw e;
      this.add('db_corrupt', `cannot open ${where.path}: ${errMessage(e)}`, where);
      return { state: { kind: 'unreadable' }, seeded: [] };
    }
    try {
      const check = this.ctx.deep ? 'integrity_check' : 'quick_check';
      let verdict: string[];
      try {
        verdict = (db.pragma(check) as Array<Record<string, string>>).map((r) => String(Object.values(r)[0]));
      } catch (e) {
        if (!again && turnedReadOnly(e, this.dbFile)) {
          // The data dir was writable when this process last asked, and is not now (a remount):
          // a WAL DB without its -shm cannot be read in place. Asked again, it is read from a copy.
          return undefined;
        }
        if (isBusy(e)) this.busy();
        else if (/^SQLITE_READONLY_(ROLLBACK|RECOVERY)/.test(String((e as { code?: unknown }).code ?? ''))) {
          // A writer died mid-transaction (ACM2 killed, a container restart): its journal is rolled
          // back by the DB's next writer, which verify (read-only) must not be. A copy is rolled
          // back and checked instead: only if that is sound is it a warning to look again.
          const p = this.rel(this.dbFile);
          const copy = checkRolledBackCopy(this.dbFile, check);
          if (copy === undefined) {
            this.add('db_busy', `${p} has a hot journal left by a writer that died mid-transaction; its next writer (ACM2, acm2 user seed or backfill) rolls it back: verify this user again then`, { path: p }, 'warning');
          } else this.add('db_corrupt', `${check} of ${p}, rolled back from its hot journal (on a copy), failed: ${copy}`, where);
        } else this.add('db_corrupt', `${where.path} is not a readable SQLite database: ${errMessage(e)}`, where);
        return { state: { kind: 'unreadable' }, seeded: [] };
      }
      if (verdict.length !== 1 || verdict[0] !== 'ok') {
        const shown = verdict.slice(0, 3).join('; ');
        this.add('db_corrupt', `${check} failed: ${shown}${verdict.length > 3 ? ` (and ${verdict.length - 3} more)` : ''}`, where);
        return { state: { kind: 'unreadable' }, seeded: [] };
      }
      return this.checkContents(db);
    } finally {
      db.close();
    }
  }

  /**
   * A DB another process holds locked past the wait (ACM2 or a seeder in a long write): not
   * corrupt, just not checked this time. A warning, which still fails verify: nothing was proven.
   */
  private busy(): void {
    const p = this.rel(this.dbFile);
    this.add('db_busy', `${p} is locked by another process (still busy after ${this.ctx.busyTimeoutMs / 1000} s), so it was not checked: verify this user again`, { path: p }, 'warning');
  }

  /** Runs one group of queries; an SQLite error is explained by a broken schema, a lock held elsewhere, or is corruption. */
  private guard(what: string, fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (e) {
      if (!(e instanceof Database.SqliteError)) throw e;
      if (isBusy(e)) {
        if (!this.problems.some((x) => x.code === 'db_busy')) this.busy();
      } else if (!this.schemaBroken) this.add('db_corrupt', `cannot read ${what}: ${e.message}`, { path: this.rel(this.dbFile) });
      return false;
    }
  }

  private checkContents(db: Database.Database): { state: DbState; seeded: SeededFile[] } {
    const tables = new Set<string>();
    // The schema's own text, which alone decides every table's columns (SQLite rewrites it on
    // ALTER TABLE): users with the same text share one set of column lists, see columnCache.
    let schemaText = '';
    const listed = this.guard('the table list', () => {
      for (const [type, name, sql] of db.prepare(`SELECT type, name, sql FROM sqlite_master`).raw(true).iterate() as Iterable<[string, string, string | null]>) {
        if (type === 'table') tables.add(name);
        else if (type === 'index') this.indexes.add(name);
        schemaText += `${type}\0${name}\0${sql ?? ''}\0`;
      }
    });
    if (!listed) return { state: { kind: 'unreadable' }, seeded: [] };
    const cols = cachedColumns(schemaText);
    // One `SELECT *` per table read, prepared once per user; its columns are the table's columns.
    const stmts = new Map<string, Database.Statement>();
    const select = (t: string): Database.Statement => {
      let stmt = stmts.get(t);
      if (!stmt) stmts.set(t, (stmt = db.prepare(`SELECT * FROM ${SQL_NAME(t)}`).raw(true)));
      return stmt;
    };
    const columnsOf = (t: string): TableColumns => {
      let c = cols.get(t);
      if (!c) {
        const list = select(t).columns().map((x) => x.name);
        cols.set(t, (c = { list, set: new Set(list) }));
      }
      return c;
    };
    const columns = (t: string) => columnsOf(t).set;
    // The tool's migration ledger, read once for both questions: is the DB newer than this tool, and what is pending.
    let ledger: AppliedMigration[] = [];
    if (tables.has('acm2_migrations') && !this.guard('acm2_migrations', () => (ledger = db.prepare(`SELECT id, name, checksum FROM acm2_migrations`).all() as AppliedMigration[]))) {
      return { state: { kind: 'unreadable' }, seeded: [] };
    }
    const newer = checkLedger(userMigrations(), ledger).unknown;
    if (newer.length > 0) {
      // A newer acm2 migrated it: what this tool would check there may have changed meaning, so
      // nothing more of the DB is judged (nor the master's job against it), only reported.
      this.add('schema_newer', `${this.rel(this.dbFile)} ${newerToolReason(newer, "this acm2 did not check the DB's contents")}`, { path: this.rel(this.dbFile) });
      return { state: { kind: 'unreadable' }, seeded: [] };
    }
    this.guard('the schema', () => this.checkSchema(tables, columns, ledger));

    let meta: Meta | undefined;
    const metaRead = this.guard('user_meta', () => {
      if (!tables.has('user_meta')) return;
      const row = db.prepare(`SELECT seed_status, seed_version, seeded_at FROM user_meta WHERE user_id = ?`).get(this.userId) as
        | { seed_status: string; seed_version: string; seeded_at: string | null }
        | undefined;
      if (row) meta = { status: String(row.seed_status), version: String(row.seed_version), seededAt: row.seeded_at === null ? null : String(row.seeded_at) };
    });
    if (tables.has('user_meta') && metaRead && !meta) {
      this.add('meta_missing', `user_meta has no row for user ${this.userId}: ACM2 answers 425 for every request`, { table: 'user_meta' });
    }
    if (meta && meta.status !== 'ready') {
      const open = this.job && OPEN_JOB.includes(this.job.status);
      const tail = open ? ` (${openJobText(this.job!, this.userId)})` : this.job?.lastError ? ` (last error: ${this.job.lastError})` : '';
      this.add('not_ready', `user_meta.seed_status is '${meta.status}'${tail}: ACM2 answers 425`, { table: 'user_meta' }, open ? 'warning' : 'error');
    }
    if (meta && meta.version !== 'legacy' && !this.ctx.knownVersions.includes(meta.version)) {
      const version = meta.version;
      // A version this tool never seeded here (no seed record, no ID map entry) was written by
      // someone else: ACM2's own seeding stores its SEED_VERSION ('1'), or a hand edit. No
      // package of it ever existed, so "put the package back" cannot be the remedy; a seed of
      // the current package can (it adds its rows beside the user's and makes it ready).
      let ours = true;
      this.guard('the seed record', () => {
        ours = versionSeededHere(db, tables, version);
      });
      this.add(
        'seed_version_unknown',
        !ours
          ? `user_meta.seed_version '${version}' is neither a seed package in the seeds dir nor 'legacy', and acm2 never seeded it here (ACM2's own seeding or a hand edit wrote it), so nothing vouches for the user's copy; \`acm2 user seed ${this.userId}\` (or \`acm2 backfill\`, for every such user) adds the current package's rows and files beside the user's and makes it ready with that version`
          : `user_meta.seed_version '${version}' is neither a seed package in the seeds dir nor 'legacy'`,
        { table: 'user_meta' },
      );
    }

    // Seed versions whose rows and files must be present. A user that is not ready is expected
    // to be incomplete (not_ready says so); 'legacy' users were never seeded from a package.
    let versions: string[] = [];
    const kindsByVersion = new Map<string, Set<string>>();
    // The package a ready user says it was seeded from: what it must hold, whatever its own
    // records (the ID map, the seeded-file list) still say.
    const loaded = meta && meta.status === 'ready' && meta.version !== 'legacy' && this.ctx.knownVersions.includes(meta.version) ? packageExpectation(this.ctx.seedsDir, meta.version) : undefined;
    // A package that does not load cannot vouch for anyone: the user is not called ok against it.
    if (typeof loaded === 'string') this.add('seed_version_unknown', `seed package ${meta!.version} cannot be read, so this user cannot be checked against it (${loaded}); run acm2 seed check ${meta!.version}`, { table: 'user_meta' });
    const expected = typeof loaded === 'string' ? undefined : loaded;
    const mappedOfVersion = new Set<string>();
    this.guard('acm2_id_map', () => {
      const sources = new Set<string>();
      let own = new Set<string>();
      if (tables.has('acm2_id_map')) {
        const inMap = new Set<string>();
        const entries = db.prepare(`SELECT seed_version, source_id, kind FROM acm2_id_map`).raw(true).all() as Array<[string, string, string]>;
        for (const [v, src, kind] of entries) {
          inMap.add(v);
          kindsByVersion.get(v)?.add(kind) ?? kindsByVersion.set(v, new Set([kind]));
          if (v === meta?.version) mappedOfVersion.add(`${kind}\0${src}`);
        }
        own = versionsCutFromHere(db, tables, entries);
        for (const [v, src, kind] of entries) {
          // 'uuid' entries are no package ids: a capitals form of one (found through its row's
          // id anyway), or UUID-shaped text an older tool remapped, which a reseed now keeps as is.
          if (kind !== 'uuid' && !own.has(v)) sources.add(src);
        }
        if (meta?.version === 'legacy') versions = [];
        else if (meta && (inMap.has(meta.version) || expected)) {
          // And every other version this user was made complete with (it moved on to this one):
          // its copy's rows and files stay the user's seed, to be found whole.
          // The same read says whether the tool's own record has this version finished.
          const states = tables.has('acm2_seed_state') ? (db.prepare(`SELECT seed_version, status FROM acm2_seed_state`).raw(true).all() as Array<[string, string]>) : undefined;
          const current = meta.version;
          const earlier = (states ?? []).filter(([v, s]) => s === 'ready' && v !== current && inMap.has(v)).map(([v]) => v);
          versions = [meta.version, ...earlier];
          if (states && meta.status === 'ready' && !this.problems.some((p) => p.code === 'seed_version_unknown')) this.checkSeedRecord(meta.version, states);
        } else versions = [...inMap];
      } else if (expected) versions = [meta!.version];
      if (!own.has(meta?.version ?? '')) for (const id of expected?.ids ?? []) sources.add(id);
      if (sources.size > 0) this.leaks = new LeakIndex(sources, { parts: this.ctx.deep });
    });
    const complete = !meta || meta.status === 'ready';

    if (complete && expected) {
      // Every package row has its entry in the map (checkSeedRows then finds its row).
      for (const [table, ids] of expected.rows) {
        for (const src of ids) {
          if (!mappedOfVersion.has(`${table}\0${src}`)) this.add('seed_row_missing', `package ${meta!.version} ${table} row ${src} has no entry in acm2_id_map, so this user's copy of it cannot be found`, { table });
        }
      }
    }
    if (complete && versions.length > 0) this.guard('seeded rows', () => this.checkSeedRows(db, tables, columns, versions, kindsByVersion));
    // ACM2's rows are read once, for ownership, JSON references and leaked ids together; their
    // problems are reported in the same order as ever (ownership, FKs, JSON, leaks).
    // Which seed wrote a row, asked only of a row found scoped to another user (its remedy is a
    // --force of that seed): nothing per row of a user whose rows are all its own.
    let bySeed: Database.Statement | undefined;
    const seededBy = (table: string, id: unknown): string | undefined => {
      if (!tables.has('acm2_id_map')) return undefined;
      try {
        bySeed ??= db.prepare(`SELECT seed_version FROM acm2_id_map WHERE kind = ? AND target_id = ? ORDER BY rowid LIMIT 1`).pluck();
        return bySeed.get(table, String(id)) as string | undefined;
      } catch {
        return undefined; // a map changed by hand: the problem is said without the remedy
      }
    };
    const pass = this.scanRows(tables, columnsOf, select, seededBy);
    this.problems.push(...pass.owned);
    this.guard('references', () => this.checkForeignKeys(db, tables, columns));
    this.checkJsonReferences(pass);
    this.problems.push(...pass.leaked);

    let seeded: SeededFile[] = [];
    if (complete && versions.length > 0) {
      this.guard('acm2_seed_files', () => {
        if (!tables.has('acm2_seed_files')) return;
        const rows = db
          .prepare(`SELECT path, bytes, sha256, seed_version AS v, source_path AS src FROM acm2_seed_files WHERE seed_version IN (${versions.map(() => '?').join(',')}) ORDER BY path`)
          .all(...versions) as Array<SeededFile & { v: string; src: string }>;
        seeded = rows.map(({ path: p, bytes, sha256, v }) => ({ path: p, bytes, sha256, version: v }));
        if (expected) {
          // Every package file is in the seeded-file list (checkSeededFiles then finds it on disk).
          const listed = new Set(rows.filter((r) => r.v === meta!.version).map((r) => r.src));
          for (const f of expected.files) {
            if (!listed.has(f)) this.add('file_missing', `package ${meta!.version} file ${f} is not in acm2_seed_files, so this user's copy of it cannot be found`, { table: 'acm2_seed_files', path: f });
          }
        }
      });
    }
    return { state: { kind: 'read', meta }, seeded };
  }

  /**
   * user_meta ready with a version the tool's seed record (acm2_seed_state) does not have
   * finished: the tool writes both in one transaction, so only a hand edit of user_meta (to end
   * the 425s after a seed stopped), a deleted record or a DB pieced together from two copies
   * leaves them apart. Nothing then vouches that the version's rows and files were all written,
   * and once the user moves on to another version that copy is no longer the user's seed to the
   * tool (verify stops checking it, a seed back to it does not resume it). A plain seed finds the
   * user ready and changes nothing: --force of that version writes it again under the same ids
   * and records it.
   */
  private checkSeedRecord(version: string, states: ReadonlyArray<[string, string]>): void {
    const status = states.find(([v]) => v === version)?.[1];
    if (status === 'ready') return;
    const said = status === undefined ? `has no row for ${version}` : `says '${status}'`;
    this.add(
      'seed_version_unknown',
      `user_meta is ready with seed version '${version}', but the tool's seed record (acm2_seed_state) ${said}, so nothing vouches that ${version}'s rows and files were all written; \`acm2 user seed ${this.userId} --force --seed-version ${version}\` writes them again under the same ids and records the seed (edits to them are reset, with a backup)`,
      { table: 'acm2_seed_state' },
    );
  }

  /** Pending migrations, and every table/column migrations/user/* create (extra columns are fine). */
  private checkSchema(tables: Set<string>, columns: (t: string) => Set<string>, ledger: readonly AppliedMigration[]): void {
    const where = { path: this.rel(this.dbFile) };
    try {
      const pending = ledgerVerdict(where.path, userMigrations(), ledger);
      if (pending.length > 0) {
        this.schemaBroken = true;
        this.add('schema_outdated', `migration${pending.length > 1 ? 's' : ''} ${pending.map((m) => m.name).join(', ')} not applied`, where);
      }
    } catch (e) {
      this.schemaBroken = true;
      this.add('schema_outdated', errMessage(e), where);
    }
    for (const index of referenceIndexes()) {
      if (this.indexes.has(index)) continue;
      this.schemaBroken = true;
      this.add('schema_outdated', `index ${index} is missing`, where);
    }
    for (const [table, want] of referenceSchema()) {
      if (!tables.has(table)) {
        this.schemaBroken = true;
        this.add('schema_outdated', `table ${table} is missing`, { table });
        continue;
      }
      const have = columns(table);
      for (const c of want) {
        if (have.has(c)) continue;
        this.schemaBroken = true;
        this.add('schema_outdated', `column ${table}.${c} is missing`, { table });
      }
    }
  }

  private checkSeedRows(db: Database.Database, tables: Set<string>, columns: (t: string) => Set<string>, versions: string[], kindsByVersion: Map<string, Set<string>>): void {
    // Only the kinds the map holds for these versions (a branch per empty kind still costs a plan).
    const inMap = new Set(versions.flatMap((v) => [...(kindsByVersion.get(v) ?? [])]));
    const kinds = ACM2_TABLES.filter((t) => inMap.has(t) && tables.has(t) && columns(t).has('id'));
    if (kinds.length === 0) return;
    const inVersions = versions.map((_, i) => `@v${i}`).join(',');
    // One statement over every kind of seeded row, instead of one per kind.
    const sql = kinds
      .map(
        (kind, k) =>
          `SELECT ${k} AS k, m.target_id AS id, m.source_id AS src, m.seed_version AS v FROM acm2_id_map m
           WHERE m.seed_version IN (${inVersions}) AND m.kind = '${kind}'
             AND NOT EXISTS (SELECT 1 FROM ${SQL_NAME(kind)} r WHERE r.id = m.target_id)`,
      )
      .join(' UNION ALL ');
    const missing = db.prepare(`${sql} ORDER BY k, id`).all(Object.fromEntries(versions.map((v, i) => [`v${i}`, v]))) as { k: number; id: string; src: string; v: string }[];
    for (const m of missing) {
      const kind = kinds[m.k]!;
      this.add('seed_row_missing', `seeded ${kind} row ${m.id} (seed ${m.v}, package id ${m.src}) is gone`, { table: kind, rowId: m.id });
    }
  }

  /**
   * One pass over every row of ACM2's tables: rows owned by another user (sorted by id, as
   * SQLite orders ids), package ids left in any text cell, and what the JSON checks need.
   */
  private scanRows(tables: Set<string>, columnsOf: (t: string) => TableColumns, select: (t: string) => Database.Statement, seededBy: (table: string, id: unknown) => string | undefined): RowPass {
    const pass: RowPass = { owned: [], leaked: [], known: new Set(), json: [] };
    const leaks = this.leaks;
    const uid = String(this.userId);
    for (const t of ACM2_TABLES) {
      if (!tables.has(t)) continue;
      this.guard(`the rows of ${t}`, () => {
        const { list } = columnsOf(t);
        const idIx = list.indexOf('id');
        const userIx = idIx >= 0 ? list.indexOf('user_id') : -1;
        const jsonCols = JSON_COLUMNS[t];
        const jsonIx = jsonCols?.map((c) => list.indexOf(c));
        const keepIds = idIx >= 0 && (t === 'contents' || t === 'documents');
        const owned: Array<{ id: unknown; owner: unknown }> = [];
        for (const row of select(t).iterate() as Iterable<unknown[]>) {
          if (userIx >= 0) {
            const owner = row[userIx];
            // String compare: what SQLite's `user_id IS NOT ?` says for INTEGER and TEXT columns alike.
            if (owner === null || String(owner) !== uid) owned.push({ id: row[idIx], owner });
          }
          if (keepIds) pass.known.add(String(row[idIx]));
          if (jsonIx) pass.json.push({ table: t, id: String(row[idIx]), values: jsonIx.map((i) => (i >= 0 ? row[i] : undefined)) });
          if (!leaks) continue;
          for (let i = 0; i < row.length; i++) {
            const v = row[i];
            // A BLOB (bytes SQLite kept in a TEXT column) as the remapper reads it: UTF-8, else latin1.
            const text = typeof v === 'string' ? v : Buffer.isBuffer(v) ? bytesAsText(v).text : undefined;
            if (text === undefined) continue;
            const hit = leaks.find(text);
            if (hit) pass.leaked.push(problem('seed_id_leaked', this.userId, `${t}.${list[i]} holds package id ${hit}`, { table: t, rowId: String(row[idIx] ?? '') }));
          }
        }
        owned.sort((a, b) => sqliteCompare(a.id, b.id));
        for (const o of owned) {
          const owner = o.owner === null ? 'NULL' : String(o.owner);
          pass.owned.push(
            problem('foreign_user_row', this.userId, `${t} row ${String(o.id)} has user_id ${owner}, not ${this.userId}: ACM2 does not show it to this user${this.seededTail(seededBy(t, o.id))}`, { table: t, rowId: String(o.id) }),
          );
        }
      });
    }
    return pass;
  }

  /**
   * For a row the seed wrote (`v`: the seed that wrote it): the command that puts it back. ACM2 cannot show a
   * row scoped to another user, so it cannot be fixed there; the seed's --force restores it.
   */
  private seededTail(v: string | undefined): string {
    return v === undefined ? '' : `; it is a seeded row (seed ${v}): acm2 user seed ${this.userId} --force --seed-version ${v} puts it back`;
  }

  private checkForeignKeys(db: Database.Database, tables: Set<string>, columns: (t: string) => Set<string>): void {
    const reported = new Set<string>();
    const report = (table: string, rowId: string, column: string, value: unknown, parents: string[]) => {
      const key = `${table}\0${rowId}\0${column}`;
      if (reported.has(key)) return;
      reported.add(key);
      this.add('fk_violation', `${table}.${column} = '${String(value)}' has no ${parents.join(' or ')} row`, { table, rowId });
    };
    // What SQLite knows (declared FOREIGN KEYs, never enforced by ACM2).
    let declared: Array<{ table: string; rowid: number; parent: string; fkid: number }> = [];
    try {
      declared = db.prepare(`PRAGMA foreign_key_check`).all() as typeof declared;
    } catch (e) {
      this.schemaBroken = true;
      this.add('schema_outdated', `foreign keys cannot be checked: ${errMessage(e)}`, { path: this.rel(this.dbFile) });
    }
    for (const v of declared) {
      const fk = (db.prepare(`PRAGMA foreign_key_list(${SQL_NAME(v.table)})`).all() as { id: number; from: string }[]).find((f) => f.id === v.fkid);
      const column = fk?.from ?? '?';
      const row = db.prepare(`SELECT * FROM ${SQL_NAME(v.table)} WHERE rowid = ?`).get(v.rowid) as Record<string, unknown> | undefined;
      report(v.table, String(row?.id ?? `rowid ${v.rowid}`), column, row?.[column], [v.parent]);
    }
    // The references ACM2 relies on, declared or not: one statement for all of them.
    const refs = COLUMN_REFS.filter((ref) => tables.has(ref.table) && columns(ref.table).has(ref.column));
    if (refs.length === 0) return;
    const sql = refs
      .map((ref, k) => {
        const exists = ref.parents.filter((p) => tables.has(p)).map((p) => `EXISTS (SELECT 1 FROM ${SQL_NAME(p)} p WHERE p.id = c.${SQL_NAME(ref.column)})`).join(' OR ') || '0';
        return `SELECT ${k} AS k, c.id AS id, c.${SQL_NAME(ref.column)} AS v FROM ${SQL_NAME(ref.table)} c WHERE c.${SQL_NAME(ref.column)} IS NOT NULL AND NOT (${exists})`;
      })
      .join(' UNION ALL ');
    const rows = db.prepare(`${sql} ORDER BY k, id`).all() as { k: number; id: unknown; v: unknown }[];
    for (const r of rows) {
      const ref = refs[r.k]!;
      report(ref.table, String(r.id), ref.column, r.v, ref.parents);
    }
  }

  /**
   * IDs inside JSON: presets' and runs' content ids (lists, the five *_id keys, the
   * config_overrides fallbacks), contents.variables, and every source doc and generated/combined
   * doc that a run's results_summary names, which the Evaluation tabs need to render.
   */
  private checkJsonReferences(pass: RowPass): void {
    const known = pass.known;
    const missingContent = (table: string, rowId: string, where: string, value: unknown) => {
      if (typeof value !== 'string' || known.has(value)) return;
      this.add('unresolved_reference', `${table}.${where} refers to '${value}', which is not a contents row`, { table, rowId });
    };
    const parse = (table: string, rowId: string, column: string, raw: unknown): unknown => {
      if (raw === null || raw === undefined) return undefined;
      try {
        return JSON.parse(String(raw));
      } catch {
        this.add('unresolved_reference', `${table}.${column} is not valid JSON, so its references cannot resolve`, { table, rowId });
        return undefined;
      }
    };
    const contentKeys = (table: string, rowId: string, column: string, obj: unknown) => {
      if (!isObject(obj)) return;
      for (const k of CONTENT_ID_KEYS) if (obj[k] !== undefined && obj[k] !== null) missingContent(table, rowId, `${column}.${k}`, obj[k]);
    };
    const idList = (table: string, rowId: string, column: string, v: unknown) => {
      if (Array.isArray(v)) v.forEach((x, i) => missingContent(table, rowId, `${column}[${i}]`, x));
    };

    // Rows in the order the checks always reported them: presets, contents, runs, each by id.
    const order = (t: string) => (t === 'presets' ? 0 : t === 'contents' ? 1 : 2);
    const rows = pass.json.sort((a, b) => order(a.table) - order(b.table) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    for (const { table, id, values } of rows) {
      if (table === 'presets') {
        const [documents, inputs, overrides] = values;
        idList('presets', id, 'documents', parse('presets', id, 'documents', documents));
        idList('presets', id, 'input_content_ids', parse('presets', id, 'input_content_ids', inputs));
        contentKeys('presets', id, 'config_overrides', parse('presets', id, 'config_overrides', overrides));
      } else if (table === 'contents') {
        const vars = parse('contents', id, 'variables', values[0]);
        if (isObject(vars)) for (const [k, v] of Object.entries(vars)) if (typeof v === 'string' && isUuid(v)) missingContent('contents', id, `variables.${k}`, v);
      } else {
        const [rawConfig, rawSummary] = values;
        const config = parse('runs', id, 'config', rawConfig);
        if (isObject(config)) {
          idList('runs', id, 'config.document_ids', config.document_ids);
          contentKeys('runs', id, 'config', config);
          contentKeys('runs', id, 'config.config_overrides', config.config_overrides);
        }
        const summary = parse('runs', id, 'results_summary', rawSummary);
        if (summary !== undefined) this.checkResultsSummary(id, summary, known);
      }
    }
  }

  private checkResultsSummary(runId: string, summary: unknown, known: Set<string>): void {
    const sources = new Set<string>();
    const docs = new Set<string>();
    const walk = (v: unknown, parentKey: string | undefined) => {
      if (Array.isArray(v)) {
        for (const x of v) walk(x, parentKey);
      } else if (isObject(v)) {
        for (const k in v) {
          const x = v[k];
          if (maybeDocId(k) && isDocId(k)) docs.add(k);
          if (parentKey === 'source_doc_results' || parentKey === 'eval_scores') sources.add(k);
          if (k === 'source_doc_id' && typeof x === 'string') sources.add(x);
          if (k === 'source_doc_name' && typeof x === 'string' && isUuid(x)) sources.add(x);
          walk(x, k);
        }
      } else if (typeof v === 'string' && maybeDocId(v) && isDocId(v)) {
        docs.add(v);
      }
    };
    walk(summary, undefined);
    for (const s of [...sources].sort()) {
      if (!known.has(s)) this.add('unresolved_reference', `results_summary names source doc '${s}', which is not a contents row`, { table: 'runs', rowId: runId });
    }
    const genDir = path.join(this.root, 'runs', runId, 'generated');
    for (const d of [...docs].sort()) {
      if (!known.has(d)) this.summaryDocs.push({ runId, doc: d, file: path.join(genDir, `${safeDocId(d)}.md`) });
    }
  }

  /**
   * The generated docs results_summary names, on disk. Looked for after the DB's snapshot is
   * closed, like every file: ACM2 deletes a run's row, then its folder, and a run the snapshot
   * still held may be gone from disk by now. A doc found missing is reported only if its run is
   * still in the DB when asked again.
   */
  private checkSummaryDocs(): void {
    const missing = this.summaryDocs.filter((x) => !isFile(x.file));
    if (missing.length === 0) return;
    const runs = [...new Set(missing.map((x) => x.runId))];
    // Unreadable now: as read before, the run was there.
    const still = this.reread((db) => new Set(db.prepare(`SELECT id FROM runs WHERE id IN (${runs.map(() => '?').join(',')})`).pluck().all(...runs) as string[]));
    for (const x of missing) {
      if (still && !still.has(x.runId)) continue;
      this.add('unresolved_reference', `results_summary names doc '${x.doc}' but ${this.rel(x.file)} does not exist`, { table: 'runs', rowId: x.runId, path: this.rel(x.file) });
    }
  }

  // --- files ----------------------------------------------------------------------------------

  /**
   * What a link of this user's leads to when that is inside the data dir (another user's DB or
   * folder, the master, the tool's own files): someone else's, so moving it would take it from them.
   */
  private heldInDataDir(target: string): string | undefined {
    let dir: string;
    try {
      dir = realpathSync(this.ctx.dataDir);
    } catch {
      dir = path.resolve(this.ctx.dataDir);
    }
    const r = path.relative(dir, target);
    if (r === '' || r.startsWith('..') || path.isAbsolute(r)) return undefined;
    const shown = r.split(path.sep).join('/');
    // Only what is recognisably someone else's is held: another user's DB (or its -wal/-journal)
    // or folder, the master, the tool's own folder. Anything else (the user's own DB restored
    // beside it as user_1.db.restored, its folder renamed user_1.old) is this user's data:
    // moving it into place is right, as for a link out of the data dir.
    const head = shown.split('/')[0]!;
    if (head === '.acm2' || /^master\.db(-wal|-shm|-journal)?$/.test(head)) return shown;
    const owner = userIdFromEntry(head.replace(/-(wal|shm|journal)$/, ''));
    return owner !== undefined && owner.id !== this.userId ? shown : undefined;
  }

  /**
   * Everything under user_{id}/: nothing may resolve outside it, folders are 0700 and files
   * 0600, no file name holds a package id (and, with --deep, no text file does).
   */
  private checkTree(): void {
    const st = lstatOrUndefined(this.root);
    if (!st) return;
    const rootRel = this.rel(this.root);
    if (st.isSymbolicLink()) {
      this.escaped.add('');
      const target = resolveLink(this.root);
      const held = this.heldInDataDir(target);
      this.add(
        'path_escape',
        held !== undefined
          ? `${rootRel} is a symlink to ${readlinkSafe(this.root)}, which is ${held} in the data dir, not this user's: remove the link (rm ${shellWord(this.root)}), never move what it points to, then acm2 user seed ${this.userId}`
          : `${rootRel} is a symlink to ${readlinkSafe(this.root)}; the user's files must live in the folder itself: remove the link and move the folder it points to into its place (rm ${shellWord(this.root)} && mv ${shellWord(target)} ${shellWord(this.root)}), do not just delete the link`,
        { path: rootRel },
      );
      return;
    }
    if (!st.isDirectory()) {
      // A plain file, FIFO or device the tool did not make: the user's files cannot be there.
      // Once it is moved aside they are missing, which file_missing names with the seed whose
      // --force --seed-version puts them back.
      this.add(
        'path_escape',
        `${rootRel} is ${entryKind(st)}, not the user's folder, so none of the user's files can be there: move it aside (the tool did not make it and leaves it alone), then acm2 user seed ${this.userId} --force --seed-version <the version each file_missing names>`,
        { path: rootRel },
      );
      return;
    }
    this.checkMode(st, this.root, 0o700);
    const realRoot = realpathSync(this.root);
    const stack: string[] = [''];
    while (stack.length > 0) {
      const dirRel = stack.pop()!;
      const dirAbs = path.join(this.root, dirRel);
      let names: string[];
      try {
        names = readdirSync(dirAbs).sort().reverse();
      } catch (e) {
        // A folder removed since the walk saw it (ACM2 deleting a run) is simply gone.
        if (dirRel !== '' && (e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        this.add('bad_permissions', `cannot read ${this.rel(dirAbs)}: ${errMessage(e)}`, { path: this.rel(dirAbs) });
        continue;
      }
      for (const name of names) {
        const r = dirRel ? `${dirRel}/${name}` : name;
        const abs = path.join(this.root, r);
        const est = lstatOrUndefined(abs);
        const shown = this.rootRel(r);
        if (!est) {
          // readdir gives a name that is not UTF-8 with U+FFFD in it, and no entry has that name:
          // what it is and where it leads cannot be checked (a vanished entry is simply gone).
          if (name.includes('\uFFFD')) {
            this.add('path_escape', `${shown} has a name that is not valid UTF-8, so verify cannot check what it is or where it leads; rename or remove it`, { path: shown });
          }
          continue;
        }
        const hit = this.leaks?.find(name);
        if (hit) this.add('seed_id_leaked', `file name ${shown} holds package id ${hit}`, { path: shown });
        if (est.isSymbolicLink()) {
          const target = resolveLink(abs);
          if (!isInside(realRoot, target)) {
            this.escaped.add(r);
            this.add('path_escape', `${shown} is a symlink resolving to ${target}, outside user_${this.userId}/`, { path: shown });
          }
        } else if (est.isDirectory()) {
          this.checkMode(est, abs, 0o700);
          stack.push(r);
        } else if (est.isFile()) {
          this.walked.set(r, est);
          this.checkMode(est, abs, 0o600);
          if (this.ctx.deep && this.leaks) {
            const text = readText(abs);
            const leak = text === undefined ? undefined : this.leaks.find(text);
            if (leak) this.add('seed_id_leaked', `${shown} holds package id ${leak}`, { path: shown });
          }
        }
      }
    }
  }

  private checkSeededFiles(files: SeededFile[]): void {
    let realRoot: string | undefined;
    try {
      realRoot = realpathSync(this.root);
    } catch {
      realRoot = undefined;
    }
    for (const f of files) {
      const shown = this.rootRel(f.path);
      let abs: string;
      try {
        abs = resolveInside(this.root, f.path);
      } catch {
        this.add('path_escape', `acm2_seed_files lists '${f.path}', which leaves user_${this.userId}/`, { table: 'acm2_seed_files', path: shown });
        continue;
      }
      // A file the tree walk reached through real folders only is itself: no realpath needed.
      const key = path.relative(this.root, abs).split(path.sep).join('/');
      let st: Stats | undefined = this.walked.get(key);
      let real = realRoot && st ? path.join(realRoot, key) : abs;
      if (!st) {
        try {
          real = realpathSync(abs);
          st = statSync(real);
        } catch {
          this.add('file_missing', `seeded file ${shown} (seed ${f.version}) is missing`, { path: shown });
          continue;
        }
      }
      // A symlink that leaves the root was reported by the tree walk; never read through it.
      if (!realRoot || !isInside(realRoot, real)) continue;
      if (!st.isFile()) {
        this.add('file_missing', `seeded file ${shown} (seed ${f.version}) is not a regular file`, { path: shown });
        continue;
      }
      // ACM2 rebuilds a run's report from results_summary on every GET /runs/{id}/report: that it
      // is there is the seed's promise, its bytes are ACM2's to change.
      if (REGENERATED.test(f.path)) continue;
      if (st.size !== f.bytes) {
        this.add('file_size_mismatch', `seeded file ${shown} (seed ${f.version}) is ${st.size} bytes, ${f.bytes} were written`, { path: shown });
        continue;
      }
      if (this.ctx.deep) {
        const sha = createHash('sha256').update(readFileSync(real)).digest('hex');
        if (sha !== f.sha256) this.add('file_hash_mismatch', `seeded file ${shown} (seed ${f.version}) has sha256 ${sha.slice(0, 12)}…, ${f.sha256.slice(0, 12)}… was written`, { path: shown });
      }
    }
  }

  private checkMode(st: Stats, abs: string, want: number): void {
    const mode = st.mode & 0o777;
    // Group/other bits leak a user's data; missing owner bits lock ACM2 out.
    if ((mode & 0o077) === 0 && (mode & want) === want) return;
    const what = st.isDirectory() ? 'folder' : 'file';
    // A second hard link shares the mode with another path, not the user's: backfill leaves it.
    const linked = st.isFile() && st.nlink > 1 ? `; it has ${st.nlink} hard links, so acm2 backfill leaves it (a chmod would change the other paths' file too): give it a copy of its own (cp it to a new name, mv that over it), or set its mode yourself` : '';
    this.add('bad_permissions', `${what} ${this.rel(abs)} has mode ${octal(mode)}, expected ${octal(want)}${linked}`, { path: this.rel(abs) });
  }

  // --- master vs user DB ----------------------------------------------------------------------

  /**
   * job_state_mismatch, precisely: the master's latest seed job for the user and the user's DB
   * tell different stories.
   *  - job done, but the DB is absent, has no user_meta, or is not ready;
   *  - job done for version X, but the DB is ready with version Y;
   *  - job failed, but the DB is ready (the master would retry or report a healthy user), unless
   *    it is a --force: one that failed before it changed anything leaves the user ready as it
   *    was, and a direct one is closed, not retried (a --force runs only when asked);
   *  - job running with an expired lease (its worker died), but the DB is ready.
   * A pending/running job with a not-ready DB is a seed in flight (not_ready, warning), and
   * a user with no job at all (legacy, backfilled) has nothing to disagree with. An unreadable
   * DB tells no story, so it is compared with nothing.
   */
  private checkJob(state: DbState): void {
    const job = this.job;
    if (!job || state.kind === 'unreadable') return;
    const meta = state.kind === 'read' ? state.meta : undefined;
    const ready = meta?.status === 'ready';
    const name = `master seed job #${job.id} (${job.seedVersion})`;
    // A user ready with another version than its job's: a plain `acm2 user seed <id>` finds the
    // user ready (at CURRENT) and leaves that job as it is; seeding the job's version closes it.
    const other = ready && meta!.version !== job.seedVersion;
    const seedCmd = (version?: string) => `\`acm2 user seed ${this.userId}${version ? ` --seed-version ${version}` : ''}\``;
    if (job.status === 'done') {
      // The remedy its what-to-do line points at is named here too: the job's version, seeded again.
      const again = `; ${seedCmd(job.seedVersion)} seeds ${job.seedVersion} again and closes it`;
      if (state.kind === 'absent') this.add('job_state_mismatch', `${name} is done but the user has no database${again}`);
      else if (!meta) this.add('job_state_mismatch', `${name} is done but the user DB has no user_meta row${again}`, { table: 'user_meta' });
      else if (!ready) this.add('job_state_mismatch', `${name} is done but user_meta.seed_status is '${meta.status}'${again}`, { table: 'user_meta' });
      else if (other) this.add('job_state_mismatch', `${name} is done but the user DB is ready with version '${meta.version}'; ${seedCmd(job.seedVersion)} seeds ${job.seedVersion} and closes it`, { table: 'user_meta' });
    } else if (job.status === 'failed' && ready && !job.force) {
      const finish = other ? ` (${seedCmd(job.seedVersion)} instead seeds ${job.seedVersion} and closes it)` : '';
      this.add('job_state_mismatch', `${name} failed${job.lastError ? ` (${job.lastError})` : ''} but the user DB is ready with '${meta!.version}'; ${seedCmd()} closes it${finish}`, { table: 'user_meta' });
    } else if (job.status === 'running' && ready && job.lockedUntil !== null && job.lockedUntil < this.ctx.now) {
      const tail = other ? `ready with '${meta!.version}'; ${seedCmd(job.seedVersion)} seeds ${job.seedVersion} and closes it` : `ready; ${seedCmd()} closes it`;
      this.add('job_state_mismatch', `${name} is still marked running with a lease that expired at ${new Date(job.lockedUntil).toISOString()}, but the user DB is ${tail}`, {
        table: 'user_meta',
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** Finds package identifiers (UUIDs and generated/combined doc ids by their `S8.tag.` head) in text. */
export class LeakIndex {
  private readonly uuids = new Set<string>();
  private readonly heads = new Set<string>();
  /** Also find bare parts of the UUIDs and UUIDs cut short (see the constructor). */
  private readonly parts: boolean;

  /**
   * `parts`: also find bare parts of the UUIDs (verify --deep). Probing every text for them costs
   * ~0.8 ms per v1 user, +~40 % of a quick verify's work per user, for a form the seed already
   * remaps and ACM2 is not known to write; a quick verify finds the ids whole and their doc heads.
   */
  constructor(sourceIds: Iterable<string>, opts: { parts?: boolean } = {}) {
    this.parts = opts.parts ?? true;
    for (const id of sourceIds) {
      if (isUuid(id)) {
        const u = id.toLowerCase();
        this.uuids.add(u);
      } else {
        const head = /^((?:combined\.)?[0-9a-f]{8}\.[0-9a-f]{4}\.)/.exec(id)?.[1];
        if (head) this.heads.add(head);
      }
    }
  }

  /**
   * The first package identifier in text, or undefined. A hand-written scan rather than a regex:
   * it jumps between '-' (UUIDs) and '.' (doc-id heads) with indexOf and checks the shape around
   * each, which is ~10× faster than two look-behind regexes over every text cell (verify's top cost).
   * Same matches as `(?<![0-9A-Za-z])UUID(?![0-9A-Za-z])` and `(?<![0-9A-Za-z])(combined\.)?H8\.H4\.`,
   * where an escape ending right before the id (`\n`, `\u201c`, `%2F`) counts as a boundary, as for the remapper.
   */
  find(text: string): string | undefined {
    if (this.uuids.size > 0 && text.length >= 36) {
      // The first hyphen of a UUID sits 8 characters in; two UUIDs cannot overlap.
      for (let p = text.indexOf('-', 8); p !== -1; p = text.indexOf('-', p + 1)) {
        const s = p - 8;
        if (
          text.charCodeAt(p + 5) === 45 &&
          text.charCodeAt(p + 10) === 45 &&
          text.charCodeAt(p + 15) === 45 &&
          hexRun(text, s, 8, true) &&
          hexRun(text, p + 1, 4, true) &&
          hexRun(text, p + 6, 4, true) &&
          hexRun(text, p + 11, 4, true) &&
          hexRun(text, p + 16, 12, true) &&
          (!alnumAt(text, s - 1) || idMayStartAt(text, s)) &&
          !alnumAt(text, s + 36)
        ) {
          const id = text.slice(s, s + 36);
          if (this.uuids.has(id.toLowerCase())) return id;
        }
      }
    }
    if (this.heads.size > 0 && text.length >= 14) {
      // A head is 8 lowercase hex, '.', 4 lowercase hex, '.': look at each '.' 8 characters in.
      for (let p = text.indexOf('.', 8); p !== -1; p = text.indexOf('.', p + 1)) {
        const s = p - 8;
        if (text.charCodeAt(p + 5) !== 46 || !hexRun(text, s, 8, false) || !hexRun(text, p + 1, 4, false) || (alnumAt(text, s - 1) && !idMayStartAt(text, s))) continue;
        const bare = text.slice(s, p + 6);
        if (s >= 9 && text.startsWith('combined.', s - 9) && (!alnumAt(text, s - 10) || idMayStartAt(text, s - 9))) {
          const full = `combined.${bare}`;
          if (this.heads.has(full)) return full;
        }
        if (this.heads.has(bare)) return bare;
      }
    }
    if (this.parts && this.uuids.size > 0) return this.findPart(text);
    return undefined;
  }

  /**
   * A bare part of a package UUID (`[run 746301ce]`, `…673307e8`, `uuid.hex`): a hex run of 8 to 12
   * or 32 characters starting a token, not the last group of a dashed run, and followed by neither
   * a letter, a digit nor '-' (as the remapper's UUID_PART_SRC).
   */
  private findPart(text: string): string | undefined {
    const n = text.length;
    // A hex run of 8 or more covers an index that is 7 modulo 8: probe those, and widen a hex one
    // to its whole run (most text is probed at one character in eight).
    for (let k = 7; k < n; k += 8) {
      if (!(CHAR_CLASS[text.charCodeAt(k)]! & HEX)) continue;
      let s = k;
      while (s > 0 && CHAR_CLASS[text.charCodeAt(s - 1)]! & HEX) s--;
      let e = k + 1;
      while (e < n && CHAR_CLASS[text.charCodeAt(e)]! & HEX) e++;
      k = e + ((((7 - e) % 8) + 8) % 8) - 8; // the loop's next probe is the first one past the run
      if (e - s < 8 || CHAR_CLASS[text.charCodeAt(e)]! & ALNUM) continue; // short, or the word goes on
      // A token starts the run, or right after an escape's own hex at its start (`\b`, `\f`: one
      // character; `%2F`: two; `\u201c`: four), as the remapper's second scan (afterEscapes) finds it.
      for (const at of [s, s + 1, s + 2, s + 4]) {
        if (at === s ? CHAR_CLASS[text.charCodeAt(s - 1)]! & ALNUM && !idMayStartAt(text, s) : !idMayStartAt(text, at)) continue;
        const hit = this.partAt(text, at, e) ?? this.prefixAt(text, at, e);
        if (hit) return hit;
      }
    }
    return undefined;
  }

  /**
   * A package UUID cut short from its first group and dash on (`str(e)[:100]` ending in
   * `8c98f774-784d-4201-9`) that starts at text[s], its first group text[s..j), or undefined: as
   * the remapper's UUID_PREFIX_SRC, at most 26 characters of hex and '-' after the dash, followed by
   * neither a letter, a digit nor '-', and the start of exactly one package UUID.
   */
  private prefixAt(text: string, s: number, j: number): string | undefined {
    if (j - s !== 8 || text.charCodeAt(j) !== 45) return undefined;
    let k = j + 1;
    while (k < text.length && k - j <= 27 && (CHAR_CLASS[text.charCodeAt(k)]! & HEX || text.charCodeAt(k) === 45)) k++;
    if (k - j > 27 || CHAR_CLASS[text.charCodeAt(k)]! & ALNUM) return undefined;
    const cut = text.slice(s, k);
    // The start of exactly one package UUID, as the remapper judges it.
    return uuidPrefixOf(cut, this.uuids) !== undefined ? cut : undefined;
  }

  /** The part of a package UUID that text[s..j) is, j ending a hex run (see findPart), or undefined. */
  private partAt(text: string, s: number, j: number): string | undefined {
    const len = j - s;
    if (!((len >= 8 && len <= 12) || len === 32) || text.charCodeAt(j) === 45) return undefined;
    for (let e = s; e < j; e++) if (!(CHAR_CLASS[text.charCodeAt(e)]! & HEX)) return undefined;
    if (s >= 2 && text.charCodeAt(s - 1) === 45 && CHAR_CLASS[text.charCodeAt(s - 2)]! & HEX) return undefined;
    const part = text.slice(s, j);
    // A part of exactly one package UUID (one two share names neither), as the remapper judges it.
    return uuidPartOf(part, this.uuids) !== undefined ? part : undefined;
  }
}

const ALNUM = 1;
const HEX = 2;
/** ASCII letters and digits (ALNUM), of them 0-9a-fA-F (HEX); 0 for everything else. */
const CHAR_CLASS = new Uint8Array(65536);
for (let c = 48; c <= 122; c++) {
  const hex = c <= 57 || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
  if (c <= 57 || (c >= 65 && c <= 90) || c >= 97) CHAR_CLASS[c] = ALNUM | (hex ? HEX : 0);
}

/** n hex digits at text[from..from+n) (lowercase only unless upper); false past the end. */
function hexRun(text: string, from: number, n: number, upper: boolean): boolean {
  if (from < 0 || from + n > text.length) return false;
  for (let i = from; i < from + n; i++) {
    const c = text.charCodeAt(i);
    if ((c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (upper && c >= 65 && c <= 70)) continue;
    return false;
  }
  return true;
}

/** Whether text[i] is an ASCII letter or digit (false outside the string). */
function alnumAt(text: string, i: number): boolean {
  if (i < 0 || i >= text.length) return false;
  const c = text.charCodeAt(i);
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
}

let reference: Map<string, string[]> | undefined;

/** Tables and columns a DB built from migrations/user/* has (built once per process, in memory). */
let referenceIndexList: string[] | undefined;

/** The named indexes every migration together creates (autoindexes come with their tables). */
function referenceIndexes(): string[] {
  if (referenceIndexList) return referenceIndexList;
  const db = new Database(':memory:');
  try {
    for (const m of userMigrations()) db.exec(m.sql);
    referenceIndexList = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name`).pluck().all() as string[]);
    return referenceIndexList;
  } finally {
    db.close();
  }
}

interface PackageExpectation {
  /** Source ids of the package's rows, per table. */
  rows: Map<string, string[]>;
  /** Source paths of its files. */
  files: string[];
  /** Every identifier it holds (for the leak scan). */
  ids: string[];
}

const expectations = new Map<string, PackageExpectation | string>();

/**
 * What a user seeded from this version must hold, read once per thread; undefined without a
 * seeds dir, and why not (a sentence) when the package does not load (tampered, unreadable).
 */
/**
 * The versions this user's DB was the source of (`seed freeze --source user_{id}.db`): the
 * package's run is a row of this user's that no seed of that version made. Their package ids
 * are this user's own, so its rows holding them are no leak; every other user seeded from such
 * a version is still checked against them.
 */
function versionsCutFromHere(db: Database.Database, tables: Set<string>, entries: Array<[string, string, string]>): Set<string> {
  const own = new Set<string>();
  if (!tables.has('runs')) return own;
  const runs = entries.filter(([, , kind]) => kind === 'runs');
  if (runs.length === 0) return own;
  const isOwnRow = db.prepare(`SELECT 1 FROM runs WHERE id = ? AND id NOT IN (SELECT target_id FROM acm2_id_map WHERE seed_version = ? AND kind = 'runs')`).pluck();
  for (const [v, src] of runs) if (isOwnRow.get(src, v) !== undefined) own.add(v);
  return own;
}

function packageExpectation(seedsDir: string | undefined, version: string): PackageExpectation | string | undefined {
  if (!seedsDir) return undefined;
  const key = `${seedsDir}\0${version}`;
  let e: PackageExpectation | string | undefined = expectations.get(key);
  if (e === undefined) {
    try {
      const p = preparePackage(loadPackage(seedsDir, version));
      e = {
        // An id cell is text, tokenised: its text is its literals and tokens in turn.
        rows: new Map(p.tables.map((t) => [t.name, t.rows.map((r) => r[t.idIndex]).filter(isTemplate).map((v) => v.lits.map((l, i) => l + (v.toks[i] ?? '')).join(''))])),
        files: p.pkg.manifest.files.map((f) => f.path),
        ids: [...p.kinds.keys()],
      };
    } catch (err) {
      e = err instanceof Error ? err.message : String(err);
    }
    expectations.set(key, e);
  }
  return e;
}

export function referenceSchema(): Map<string, string[]> {
  if (reference) return reference;
  const db = new Database(':memory:');
  try {
    for (const m of userMigrations()) db.exec(m.sql);
    const names = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all() as { name: string }[]).map((r) => r.name);
    reference = new Map(names.map((t) => [t, (db.prepare(`PRAGMA table_info(${SQL_NAME(t)})`).all() as { name: string }[]).map((c) => c.name)]));
    return reference;
  } finally {
    db.close();
  }
}

/**
 * Copy a DB and its hot journal aside, let SQLite roll the copy back (a read-write open does), and
 * run `check` on it: undefined when sound, else what the check said. The user's files are not
 * touched.
 */
function checkRolledBackCopy(dbFile: string, check: 'quick_check' | 'integrity_check'): string | undefined {
  let dir: string;
  try {
    dir = mkdtempSync(path.join(tmpdir(), 'acm2-verify-journal-'));
  } catch (e) {
    throw tempFolderProblem(e, dbFile);
  }
  try {
    const copy = path.join(dir, 'user.db');
    copyFileSync(dbFile, copy);
    if (existsSync(`${dbFile}-journal`)) copyFileSync(`${dbFile}-journal`, `${copy}-journal`);
    const db = new Database(copy, { fileMustExist: true });
    try {
      const rows = (db.pragma(check) as Array<Record<string, string>>).map((r) => String(Object.values(r)[0]));
      return rows.length === 1 && rows[0] === 'ok' ? undefined : rows.slice(0, 3).join('; ');
    } finally {
      db.close();
    }
  } catch (e) {
    // Writing the copy failed (the temp folder, not the DB): the environment, as above.
    const code = (e as { code?: unknown }).code;
    if (code === 'EROFS' || isDiskFull(e)) throw tempFolderProblem(e, dbFile);
    return errMessage(e);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function readlinkSafe(p: string): string {
  try {
    return readlinkSync(p);
  } catch {
    return '?';
  }
}

/** Where a symlink finally points (lexically, when the target does not exist). */
function resolveLink(abs: string): string {
  try {
    return realpathSync(abs);
  } catch {
    return path.resolve(path.dirname(abs), readlinkSafe(abs));
  }
}

function isInside(root: string, p: string): boolean {
  const r = path.relative(root, p);
  return r === '' || (!r.startsWith('..') && !path.isAbsolute(r));
}

/** UTF-8 text without NUL bytes, or undefined for a binary or unreadable file. */
function readText(abs: string): string | undefined {
  try {
    const buf = readFileSync(abs);
    return buf.includes(0) ? undefined : buf.toString('utf8');
  } catch {
    return undefined;
  }
}

/** Cheap pre-test for isDocId: `{8 hex}.` or `combined.` at the start, at least 15 characters. */
function maybeDocId(s: string): boolean {
  return s.length >= 15 && (s.charCodeAt(8) === 46 || s.startsWith('combined.'));
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function octal(mode: number): string {
  return `0${mode.toString(8).padStart(3, '0')}`;
}

function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
