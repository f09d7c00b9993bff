// Test plumbing for suites that run once per master implementation: a fresh MySQL database or SQLite
// file per test, and DIALECTS so a suite says `for (const d of DIALECTS)` (Kysely's test-setup style).

import Database from 'better-sqlite3';
import mysql from 'mysql2/promise';
import type { RowDataPacket } from 'mysql2/promise';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseMasterUrl } from '../../src/config.js';
import { openMaster } from '../../src/master/factory.js';
import type { MasterDb } from '../../src/master/types.js';

/** A server where the tests may create and drop databases (never a real master). */
export const MYSQL_BASE_URL = process.env.ACM2_TEST_MYSQL_URL || 'mysql://root@127.0.0.1:3306/test';
/** In CI (or when asked) an absent MySQL fails the MySQL suites instead of skipping them. */
export const REQUIRE_MYSQL = process.env.CI === 'true' || process.env.ACM2_REQUIRE_MYSQL === '1';

type MysqlUrl = Extract<ReturnType<typeof parseMasterUrl>, { kind: 'mysql' }>;

function baseUrl(): MysqlUrl {
  const u = parseMasterUrl(MYSQL_BASE_URL);
  if (u.kind !== 'mysql') throw new Error(`ACM2_TEST_MYSQL_URL must be a mysql:// URL, got ${u.display}`);
  return u;
}

/** A server-level connection (no default database), for creating and dropping test databases. */
async function adminConnection(): Promise<mysql.Connection> {
  const u = baseUrl();
  return mysql.createConnection({ host: u.host, port: u.port, user: u.user, password: u.password, connectTimeout: 3000 });
}

let probe: Promise<string | undefined> | undefined;

/** Why MySQL is unusable (undefined when it answers); asked once per test file. */
function mysqlProblem(): Promise<string | undefined> {
  probe ??= (async () => {
    try {
      const c = await adminConnection();
      try {
        await c.ping();
      } finally {
        await c.end().catch(() => undefined);
      }
      return undefined;
    } catch (e) {
      const code = (e as { code?: string }).code ?? (e as Error).message;
      return `${baseUrl().display} is unreachable (${code})`;
    }
  })();
  return probe;
}

export async function mysqlAvailable(): Promise<boolean> {
  return (await mysqlProblem()) === undefined;
}

export interface MysqlGate {
  /** describe.skipIf(gate.skip): only when MySQL is absent and not required. */
  skip: boolean;
  /** Call in beforeAll: throws, failing the suite, when MySQL is required but absent. */
  ready(): void;
}

export async function mysqlOrSkip(): Promise<MysqlGate> {
  const problem = await mysqlProblem();
  return {
    skip: problem !== undefined && !REQUIRE_MYSQL,
    ready() {
      if (problem !== undefined) {
        throw new Error(`MySQL is required here (CI=true or ACM2_REQUIRE_MYSQL=1) but ${problem}; set ACM2_TEST_MYSQL_URL or start the server`);
      }
    },
  };
}

/** A fresh, empty database `acm2_t_<random>` on the test server, and the URL that names it. */
export async function createMysqlTestDb(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `acm2_t_${randomBytes(6).toString('hex')}`;
  const c = await adminConnection();
  try {
    await c.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  } finally {
    await c.end().catch(() => undefined);
  }
  const u = new URL(MYSQL_BASE_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const d = await adminConnection();
      try {
        await d.query(`DROP DATABASE IF EXISTS \`${name}\``);
      } finally {
        await d.end().catch(() => undefined);
      }
    },
  };
}

export function sqliteTestUrl(dir: string): string {
  return `sqlite:${path.join(dir, 'master.db')}`;
}

export interface Column {
  name: string;
  /** Lower-case declared type; MySQL integer display widths dropped (MariaDB says int(11), MySQL 8 int). */
  type: string;
}

export interface TestMaster {
  /** The master URL (a string, as a user would pass it). */
  url: string;
  master: MasterDb;
  /** Another, independent MasterDb on the same database (own connections); closed by cleanup. */
  another(): Promise<MasterDb>;
  /** Raw SQL on the database, bypassing MasterDb, for assertions. */
  query(sql: string, args?: unknown[]): Promise<Record<string, unknown>[]>;
  count(table: string): Promise<number>;
  columns(table: string): Promise<Column[]>;
  cleanup(): Promise<void>;
}

export interface Dialect {
  name: 'sqlite' | 'mysql';
  /** True when this dialect's suite should be skipped (MySQL absent and not required). */
  skip: boolean;
  /** Call in beforeAll; throws when the dialect is required but unavailable. */
  ready(): void;
  /** A fresh, empty master (migrated unless migrate: false). */
  open(opts?: { migrate?: boolean }): Promise<TestMaster>;
}

function tracker(url: string, master: MasterDb) {
  const extra: MasterDb[] = [];
  return {
    async another() {
      const m = await openMaster(parseMasterUrl(url), { migrate: false });
      extra.push(m);
      return m;
    },
    async closeAll() {
      await Promise.all([master, ...extra].map((m) => m.close().catch(() => undefined)));
    },
  };
}

const sqliteDialect: Dialect = {
  name: 'sqlite',
  skip: false,
  ready() {},
  async open(opts = {}) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'acm2-master-'));
    const url = sqliteTestUrl(dir);
    const master = await openMaster(parseMasterUrl(url), { migrate: opts.migrate });
    const t = tracker(url, master);
    const file = path.join(dir, 'master.db');
    const withDb = <T>(fn: (db: Database.Database) => T): T => {
      const db = new Database(file);
      try {
        db.pragma('busy_timeout = 15000');
        return fn(db);
      } finally {
        db.close();
      }
    };
    const query = async (sql: string, args: unknown[] = []) =>
      withDb((db) => {
        const st = db.prepare(sql);
        return st.reader ? (st.all(...args) as Record<string, unknown>[]) : (st.run(...args), []);
      });
    return {
      url,
      master,
      another: t.another,
      query,
      async count(table) {
        return Number((await query(`SELECT COUNT(*) AS n FROM ${table}`))[0]!.n);
      },
      async columns(table) {
        return (await query(`PRAGMA table_info(${table})`)).map((r) => ({ name: String(r.name), type: String(r.type).toLowerCase() }));
      },
      async cleanup() {
        await t.closeAll();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};

function mysqlDialect(gate: MysqlGate): Dialect {
  return {
    name: 'mysql',
    skip: gate.skip,
    ready: () => gate.ready(),
    async open(opts = {}) {
      const db = await createMysqlTestDb();
      let master: MasterDb;
      try {
        master = await openMaster(parseMasterUrl(db.url), { migrate: opts.migrate });
      } catch (e) {
        await db.drop().catch(() => undefined);
        throw e;
      }
      const t = tracker(db.url, master);
      const u = parseMasterUrl(db.url) as MysqlUrl;
      const raw = await mysql.createConnection({ host: u.host, port: u.port, user: u.user, password: u.password, database: u.database, dateStrings: true });
      const query = async (sql: string, args: unknown[] = []) => {
        const [rows] = await raw.query<RowDataPacket[]>(sql, args);
        return Array.isArray(rows) ? (rows as Record<string, unknown>[]) : [];
      };
      return {
        url: db.url,
        master,
        another: t.another,
        query,
        async count(table) {
          return Number((await query(`SELECT COUNT(*) AS n FROM \`${table}\``))[0]!.n);
        },
        async columns(table) {
          const rows = await query(
            `SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`,
            [u.database, table],
          );
          return rows.map((r) => ({ name: String(r.name), type: String(r.type).toLowerCase().replace(/^((?:tiny|small|medium|big)?int)\(\d+\)/, '$1') }));
        },
        async cleanup() {
          await t.closeAll();
          await raw.end().catch(() => undefined);
          await db.drop();
        },
      };
    },
  };
}

/** Every master implementation a contract suite must pass against. */
export const DIALECTS: readonly Dialect[] = [sqliteDialect, mysqlDialect(await mysqlOrSkip())];
