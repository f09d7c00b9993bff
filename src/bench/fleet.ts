// Test fleets for the benchmarks: users registered in a master in bulk (queued or already seeded),
// and a fleet of ready users made by cloning ONE seeded user's DB and files per id.
//
// Clones share every identifier of the template user (its run id, doc ids…) across users: fine
// for a quick-verify / backfill speed benchmark, which reads each user on its own, but such a
// fleet is not what `user seed` would produce. Run as a script, this module is a clone worker:
//   node dist/bench/fleet.js clone <templateDb> <templateRoot> <outDir> <users> <i> <n>

import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MasterUrl } from '../config.js';
import { openMaster } from '../master/factory.js';
import { checkPairing, readDataDirId } from '../core/pairing.js';

export type MysqlUrl = Extract<MasterUrl, { kind: 'mysql' }>;

// ---------------------------------------------------------------------------------------------
// MySQL databases for the benchmark (created and dropped by us only)

async function adminConnection(url: MysqlUrl) {
  const mysql = await import('mysql2/promise');
  return mysql.createConnection({ host: url.host, port: url.port, user: url.user, password: url.password, multipleStatements: false });
}

export async function mysqlReachable(url: MysqlUrl): Promise<string | undefined> {
  try {
    const c = await adminConnection(url);
    await c.end();
    return undefined;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

export async function recreateDatabase(url: MysqlUrl): Promise<void> {
  if (!/^acm2_bench_[a-z0-9_]+$/.test(url.database)) throw new Error(`refusing to recreate database '${url.database}': not a bench database`);
  const c = await adminConnection(url);
  try {
    await c.query(`DROP DATABASE IF EXISTS \`${url.database}\``);
    await c.query(`CREATE DATABASE \`${url.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  } finally {
    await c.end();
  }
}

export async function dropDatabase(url: MysqlUrl): Promise<void> {
  if (!/^acm2_bench_[a-z0-9_]+$/.test(url.database)) throw new Error(`refusing to drop database '${url.database}': not a bench database`);
  const c = await adminConnection(url);
  try {
    await c.query(`DROP DATABASE IF EXISTS \`${url.database}\``);
  } finally {
    await c.end();
  }
}

export function mysqlUrl(base: MysqlUrl, database: string): MysqlUrl {
  return { ...base, database, display: `mysql://${base.user}@${base.host}:${base.port}/${database}` };
}

/** The URL string the CLI takes (--master). */
export function masterArg(url: MasterUrl): string {
  if (url.kind === 'sqlite') return `sqlite:${url.file}`;
  const auth = url.password ? `${encodeURIComponent(url.user)}:${encodeURIComponent(url.password)}` : encodeURIComponent(url.user);
  return `mysql://${auth}@${url.host}:${url.port}/${encodeURIComponent(url.database)}`;
}

// ---------------------------------------------------------------------------------------------
// Registering users in bulk

/** A bcrypt-shaped, unique string: stands in for a key hash nobody will check. Costs nothing. */
function fakeKeyHash(): string {
  const b64 = randomBytes(45).toString('base64').replace(/\+/g, '.').replace(/=/g, '');
  return `$2b$04$${b64.slice(0, 53)}`;
}

/**
 * Users 1..n with an API key row each and one seed job each: 'pending' (a queue for `user seed
 * --pending`) or 'done' (a fleet that is already seeded). The master is migrated by the tool's
 * own openMaster first; rows go in with multi-row INSERTs, and the counts are checked back
 * through the MasterDb API so the bench sees what the tool sees.
 */
export async function registerUsers(url: MasterUrl, n: number, opts: { seedVersion: string; jobStatus: 'pending' | 'done'; dataDir?: string }): Promise<void> {
  const master = await openMaster(url);
  await master.close();
  const now = Date.now();
  const iso = new Date(now).toISOString();
  const done = opts.jobStatus === 'done';
  const CHUNK = 1000;
  type Rows = { users: unknown[][]; keys: unknown[][]; jobs: unknown[][] };
  const chunk = (from: number, to: number): Rows => {
    const r: Rows = { users: [], keys: [], jobs: [] };
    for (let id = from; id <= to; id++) {
      r.users.push([id, `bench${id}`, `bench${id}@bench.example`]);
      r.keys.push([id, fakeKeyHash(), 'acm2_bench00', `WordPress API Key for bench${id}`]);
      r.jobs.push([id, opts.seedVersion, opts.jobStatus, 0, done ? 1 : 0, 5, now, iso, iso]);
    }
    return r;
  };
  const jobCols = 'user_id, seed_version, status, %FORCE%, attempts, max_attempts, next_attempt_at, created_at, updated_at';
  if (url.kind === 'sqlite') {
    const db = new Database(url.file);
    try {
      db.pragma('busy_timeout = 15000');
      const u = db.prepare('INSERT INTO users (id, username, email) VALUES (?, ?, ?)');
      const k = db.prepare('INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES (?, ?, ?, ?)');
      const j = db.prepare(`INSERT INTO acm2_seed_jobs (${jobCols.replace('%FORCE%', 'force')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`);
      db.transaction(() => {
        for (let from = 1; from <= n; from += CHUNK) {
          const r = chunk(from, Math.min(n, from + CHUNK - 1));
          for (const row of r.users) u.run(row);
          for (const row of r.keys) k.run(row);
          for (const row of r.jobs) j.run(row);
        }
      }).immediate();
    } finally {
      db.close();
    }
  } else {
    const mysql = await import('mysql2/promise');
    const c = await mysql.createConnection({ host: url.host, port: url.port, user: url.user, password: url.password, database: url.database });
    try {
      for (let from = 1; from <= n; from += CHUNK) {
        const r = chunk(from, Math.min(n, from + CHUNK - 1));
        await c.query('INSERT INTO users (id, username, email) VALUES ?', [r.users]);
        await c.query('INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES ?', [r.keys]);
        await c.query(`INSERT INTO acm2_seed_jobs (${jobCols.replace('%FORCE%', '`force`')}) VALUES ?`, [r.jobs]);
      }
    } finally {
      await c.end();
    }
  }
  const check = await openMaster(url);
  try {
    const users = await check.countUsers();
    const jobs = await check.countJobs(opts.jobStatus);
    if (users !== n || jobs !== n) throw new Error(`registering ${n} users in ${url.display}: master now has ${users} users and ${jobs} ${opts.jobStatus} jobs`);
    // One fleet is measured with two masters (embedded and MySQL) that hold the same users: both
    // are paired with its data dir, as the tool pairs a master on first use (core/pairing.ts).
    if (opts.dataDir) {
      const stamp = readDataDirId(opts.dataDir);
      if (stamp) await check.pairDataDir({ id: stamp, path: path.resolve(opts.dataDir) });
      else await checkPairing(check, opts.dataDir, { write: true });
    }
  } finally {
    await check.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Cloning one seeded user into a fleet

/** Tables of a user DB that carry a user_id column. */
function userIdTables(db: Database.Database): string[] {
  const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).pluck().all() as string[];
  return tables.filter((t) => (db.prepare(`SELECT name FROM pragma_table_info(?)`).pluck().all(t) as string[]).includes('user_id'));
}

function copyTree(src: string, dst: string): number {
  mkdirSync(dst, { recursive: true, mode: statSync(src).mode & 0o777 });
  chmodSync(dst, statSync(src).mode & 0o777);
  let n = 0;
  for (const e of readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, e.name);
    const d = path.join(dst, e.name);
    if (e.isDirectory()) n += copyTree(s, d);
    else {
      copyFileSync(s, d);
      chmodSync(d, statSync(s).mode & 0o777);
      n++;
    }
  }
  return n;
}

/** Clone the template user into user_<id>.db and user_<id>/ for ids 1..users with id % n == i. */
export function cloneUsers(templateDb: string, templateRoot: string, outDir: string, users: number, i = 0, n = 1): void {
  mkdirSync(outDir, { recursive: true, mode: 0o700 });
  const dbMode = statSync(templateDb).mode & 0o777;
  let tables: string[] | undefined;
  for (let id = 1; id <= users; id++) {
    if (id % n !== i) continue;
    const file = path.join(outDir, `user_${id}.db`);
    copyFileSync(templateDb, file);
    chmodSync(file, dbMode);
    const db = new Database(file);
    try {
      tables ??= userIdTables(db);
      db.transaction(() => {
        for (const t of tables!) db.prepare(`UPDATE "${t}" SET user_id = ?`).run(id);
      })();
    } finally {
      db.close();
    }
    copyTree(templateRoot, path.join(outDir, `user_${id}`));
  }
}

const self = fileURLToPath(import.meta.url);
if (process.argv[1] && path.resolve(process.argv[1]) === self && process.argv[2] === 'clone') {
  const [templateDb, templateRoot, outDir, users, i, n] = process.argv.slice(3) as [string, string, string, string, string, string];
  cloneUsers(templateDb, templateRoot, outDir, Number(users), Number(i), Number(n));
}

export const FLEET_SCRIPT = self;
