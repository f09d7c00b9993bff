// The MasterDb contract: one suite body, run against the embedded SQLite master and against MySQL,
// so both behave the same for migrations, users, the job queue, locks and backfill progress.

import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseMasterUrl, TOOL_VERSION } from '../src/config.js';
import { UnavailableError, UsageError } from '../src/errors.js';
import { openMaster } from '../src/master/factory.js';
import { mysqlLockName, supportsSkipLocked } from '../src/master/mysql-master.js';
import type { MasterDb, NewUser, SeedJob } from '../src/master/types.js';
import { loadMigrations, splitStatements } from '../src/migrations.js';
import { createMysqlTestDb, DIALECTS, MYSQL_BASE_URL, mysqlOrSkip, type TestMaster } from './helpers/mysql.js';
import mysql from 'mysql2/promise';
import { randomBytes } from 'node:crypto';

const gate = await mysqlOrSkip();
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function newUser(i: number, over: Partial<NewUser> = {}): NewUser {
  return {
    username: `user${i}`,
    email: `user${i}@example.com`,
    wordpressUserId: 1000 + i,
    keyHash: `$2b$10$hash${i}`,
    keyPrefix: `acm2_k${String(i).padStart(6, '0')}`,
    keyName: `WordPress API Key for user${i}`,
    seedVersion: 'v1',
    maxAttempts: 3,
    ...over,
  };
}

async function createUsers(m: MasterDb, n: number, from = 1) {
  const out = [];
  for (let i = from; i < from + n; i++) out.push(await m.createUser(newUser(i)));
  return out;
}

/** ACM2's master columns, as acm2/master-mysql.sql declares them. */
const ACM2_COLUMNS: Record<string, Array<[string, string]>> = {
  users: [
    ['id', 'int'],
    ['username', 'varchar(255)'],
    ['email', 'varchar(255)'],
    ['wordpress_user_id', 'int'],
    ['created_at', 'timestamp'],
    ['updated_at', 'timestamp'],
  ],
  api_keys: [
    ['id', 'int'],
    ['user_id', 'int'],
    ['key_hash', 'varchar(255)'],
    ['key_prefix', 'varchar(20)'],
    ['name', 'varchar(255)'],
    ['last_used_at', 'timestamp'],
    ['created_at', 'timestamp'],
    ['revoked_at', 'timestamp'],
  ],
};

/** Columns per table read from ACM2's own master-mysql.sql (shared/ beside the repo), when present. */
function columnsFromAcm2Sql(): Record<string, Array<[string, string]>> | undefined {
  const file = [process.env.ACM2_SHARED_DIR, path.join(REPO, '..', 'shared')]
    .filter((d): d is string => Boolean(d))
    .map((d) => path.join(d, 'acm2', 'master-mysql.sql'))
    .find((f) => existsSync(f));
  if (!file) return undefined;
  const sql = readFileSync(file, 'utf8');
  const out: Record<string, Array<[string, string]>> = {};
  for (const m of sql.matchAll(/CREATE TABLE IF NOT EXISTS (\w+) \(([\s\S]*?)\n\)/g)) {
    out[m[1]!] = m[2]!
      .split('\n')
      .map((l) => l.trim().replace(/,$/, ''))
      .filter((l) => l && !/^(INDEX|KEY|FOREIGN|PRIMARY KEY|UNIQUE|CONSTRAINT)\b/i.test(l))
      .map((l) => {
        const [name, type] = l.split(/\s+/);
        return [name!, type!.toLowerCase()] as [string, string];
      });
  }
  return out;
}

describe('ACM2 master schema reference', () => {
  const fromFile = columnsFromAcm2Sql();
  it.skipIf(!fromFile)('the expected columns match acm2/master-mysql.sql', () => {
    expect(fromFile).toEqual(ACM2_COLUMNS);
  });
});

for (const d of DIALECTS) {
  describe.skipIf(d.skip)(`MasterDb contract (${d.name})`, () => {
    let t: TestMaster;
    let m: MasterDb;

    beforeAll(() => d.ready());
    beforeEach(async () => {
      t = await d.open();
      m = t.master;
    });
    afterEach(async () => {
      await t?.cleanup();
    });

    describe('migrations', () => {
      it('applies every migration once, records checksums, and applies nothing the second time', async () => {
        const fresh = await d.open({ migrate: false });
        try {
          const expected = loadMigrations(`master/${d.name}`);
          expect(await fresh.master.migrate()).toEqual(expected.map((x) => x.name));
          expect(await fresh.master.migrate()).toEqual([]);
          const ledger = await fresh.query('SELECT id, name, checksum FROM acm2_master_migrations ORDER BY id');
          expect(ledger.map((r) => [Number(r.id), r.name, r.checksum])).toEqual(expected.map((x) => [x.id, x.name, x.checksum]));
        } finally {
          await fresh.cleanup();
        }
      });

      it("a database without ACM2's tables is refused by a reader and left untouched; migrating sets it up", async () => {
        const fresh = await d.open({ migrate: false });
        try {
          expect(await fresh.master.hasAcm2Tables()).toBe(false);
          await expect(openMaster(parseMasterUrl(fresh.url), { create: false })).rejects.toThrow(/has no ACM2 users and api_keys tables: check --data-dir/);
          const tables = await fresh.query(d.name === 'mysql' ? 'SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()' : "SELECT name AS t FROM sqlite_master WHERE type = 'table'");
          expect(tables).toEqual([]);
          await fresh.master.migrate();
          expect(await fresh.master.hasAcm2Tables()).toBe(true);
          await (await openMaster(parseMasterUrl(fresh.url), { create: false })).close();
        } finally {
          await fresh.cleanup();
        }
      });

      it("a read command leaves a master the tool never set up (ACM2's users and api_keys only) as it is, reading no jobs and no backfill there", async () => {
        const fresh = await d.open({ migrate: false });
        try {
          // ACM2's own master, as ACM2 made it: its two tables and a user, none of the tool's.
          for (const stmt of splitStatements(loadMigrations(`master/${d.name}`)[0]!.sql)) await fresh.query(stmt);
          await fresh.query(`INSERT INTO users (username, email) VALUES ('ann', 'ann@example.com')`);
          const listTables = () =>
            fresh.query(d.name === 'mysql' ? 'SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY t' : "SELECT name AS t FROM sqlite_master WHERE type = 'table' ORDER BY t");
          const before = await listTables();
          const r = await openMaster(parseMasterUrl(fresh.url), { create: false, readOnly: true });
          try {
            const [ann] = await r.listUsers({ afterId: 0, limit: 10 });
            expect(ann).toMatchObject({ username: 'ann' });
            expect(await r.countUsers()).toBe(1);
            expect(await r.latestJob(ann!.id)).toBeUndefined();
            expect(await r.latestJobs([ann!.id])).toEqual(new Map());
            expect(await r.countJobs()).toBe(0);
            expect(await r.pendingNotDue()).toEqual({ count: 0, nextAttemptAt: null });
            expect(await r.heldJobs(10)).toEqual([]);
            expect(await r.getBackfill('default')).toBeUndefined();
            expect(await r.backfillItems('default')).toEqual([]);
            expect(await r.pairedDataDir()).toBeUndefined();
          } finally {
            await r.close();
          }
          expect(await listTables()).toEqual(before);
        } finally {
          await fresh.cleanup();
        }
      });

      it('a read command on a master the tool set up reads its jobs as they are', async () => {
        const { user, job } = await m.createUser(newUser(1));
        const r = await openMaster(parseMasterUrl(t.url), { create: false, readOnly: true });
        try {
          expect(await r.latestJob(user.id)).toEqual(job);
          expect(await r.countJobs()).toBe(1);
        } finally {
          await r.close();
        }
      });

      it('a database holding something else (a user DB, another schema) is refused as a master: no tables are added to it', async () => {
        const fresh = await d.open({ migrate: false });
        try {
          await fresh.query('CREATE TABLE user_meta (id VARCHAR(36) PRIMARY KEY, user_id INTEGER)');
          const listTables = () =>
            fresh.query(d.name === 'mysql' ? 'SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY t' : "SELECT name AS t FROM sqlite_master WHERE type = 'table' ORDER BY t");
          const before = await listTables();
          const err = await openMaster(parseMasterUrl(fresh.url)).catch((e: unknown) => e);
          expect(err).toBeInstanceOf(UsageError);
          expect((err as UsageError).code).toBe('not_a_master');
          expect((err as Error).message).toMatch(/is not an ACM2 master: it holds other tables \(user_meta\) and no users and api_keys/);
          expect(await listTables()).toEqual(before);
        } finally {
          await fresh.cleanup();
        }
      });

      it('lets concurrent processes migrate at once: each migration is applied exactly once', async () => {
        const fresh = await d.open({ migrate: false });
        try {
          const others = await Promise.all([fresh.another(), fresh.another(), fresh.another()]);
          const results = await Promise.all([fresh.master, ...others].map((x) => x.migrate()));
          const names = loadMigrations(`master/${d.name}`).map((x) => x.name);
          expect(results.flat().sort()).toEqual(names);
          expect(await fresh.count('acm2_master_migrations')).toBe(names.length);
        } finally {
          await fresh.cleanup();
        }
      });

      it.skipIf(d.name !== 'mysql')('finishes a migration interrupted half-way (MySQL DDL is not transactional)', async () => {
        // As after a crash between two CREATE TABLEs of 0002: one table missing and no ledger row.
        await t.query('DELETE FROM acm2_master_migrations WHERE id = 2');
        await t.query('DROP TABLE acm2_backfill_items');
        expect(await m.migrate()).toEqual(['0002_acm2_tool_tables']);
        expect(await t.count('acm2_backfill_items')).toBe(0);
        expect(await m.migrate()).toEqual([]);
      });

      it('refuses a migration whose recorded checksum differs', async () => {
        await t.query(`UPDATE acm2_master_migrations SET checksum = 'tampered' WHERE id = 1`);
        const err = await m.migrate().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(UsageError);
        expect((err as UsageError).code).toBe('migration_checksum');
      });

      it('refuses a master a newer acm2 migrated, for every command, read or write: exit 3 naming the master and the migration, nothing written', async () => {
        // Version skew: a newer acm2 on another host applied its next migration; this older one
        // does not know what it changed and must neither write nor read in the old format.
        const known = loadMigrations(`master/${d.name}`);
        const id = known.length + 1;
        const future = `${String(id).padStart(4, '0')}_from_a_newer_acm2`;
        await t.query('INSERT INTO acm2_master_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)', [id, future, 'f'.repeat(64), new Date().toISOString()]);
        const ledger = await t.query('SELECT id, name, checksum FROM acm2_master_migrations ORDER BY id');
        const sentence = `the master ${m.display} has migration ${future}, which this acm2 (${TOOL_VERSION}) does not know: a newer acm2 applied it, so nothing was changed; upgrade acm2 on this host to the newer version, then run again`;
        const url = parseMasterUrl(t.url);
        // user create / backfill (migrate), verify / user list (read), backfill --dry-run (no migrations).
        for (const opts of [{}, { create: false }, { create: false, migrate: false }]) {
          const err = await openMaster(url, opts).catch((e: unknown) => e);
          expect(err, JSON.stringify(opts)).toBeInstanceOf(UnavailableError);
          expect(err).toMatchObject({ exitCode: 3, code: 'master_newer', message: sentence });
        }
        await expect(m.migrate()).rejects.toMatchObject({ exitCode: 3, code: 'master_newer' });
        expect(await t.query('SELECT id, name, checksum FROM acm2_master_migrations ORDER BY id')).toEqual(ledger);
      });

      it("keeps ACM2's users and api_keys columns", async () => {
        for (const [table, cols] of Object.entries(ACM2_COLUMNS)) {
          const got = await t.columns(table);
          expect(got.map((c) => c.name)).toEqual(cols.map(([n]) => n));
          if (d.name === 'mysql') expect(got.map((c) => [c.name, c.type])).toEqual(cols);
        }
      });
    });

    describe('users', () => {
      it('creates the user, an API key and a pending seed job together', async () => {
        const { user, job } = await m.createUser(newUser(1));
        expect(user).toMatchObject({ username: 'user1', email: 'user1@example.com', wordpressUserId: 1001 });
        expect(user.id).toBeGreaterThan(0);
        expect(user.createdAt).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/);
        expect(Math.abs(Date.parse(user.createdAt!) - Date.now())).toBeLessThan(120_000);
        expect(await m.apiKeysFor(user.id)).toEqual([
          { id: expect.any(Number), userId: user.id, keyHash: '$2b$10$hash1', keyPrefix: 'acm2_k000001', name: 'WordPress API Key for user1', revokedAt: null },
        ]);
        expect(job).toMatchObject({ userId: user.id, seedVersion: 'v1', status: 'pending', force: false, attempts: 0, maxAttempts: 3, lockedBy: null, lockedUntil: null });
        expect(await m.latestJob(user.id)).toEqual(job);
        expect(await m.getUser(user.id)).toEqual(user);
        expect(await m.findUserByEmail('user1@example.com')).toEqual(user);
        expect(await m.findUserByUsername('user1')).toEqual(user);
        expect(await m.findUserByWordpressId(1001)).toEqual(user);
        expect(await m.getUser(user.id + 1)).toBeUndefined();
        expect(await m.createUser(newUser(2, { wordpressUserId: null }))).toMatchObject({ user: { wordpressUserId: null } });
      });

      it('finds a user by email case-insensitively; the email given exactly is that user, and a case-only match of several names none', async () => {
        const { user } = await m.createUser(newUser(1, { email: 'Ann@example.com' }));
        expect(await m.findUserByEmail('ann@EXAMPLE.com')).toEqual(user);
        // ACM2's MySQL master cannot hold two emails differing only in case (its UNIQUE is
        // case-insensitive); the embedded master's UNIQUE is byte-wise, so one written by hand can.
        const second = t.query(`INSERT INTO users (username, email) VALUES ('ann2', 'ANN@example.com')`);
        if (d.name === 'mysql') {
          await expect(second).rejects.toThrow(/Duplicate entry/);
          return;
        }
        await second;
        const other = (await t.query(`SELECT id FROM users WHERE username = 'ann2'`))[0]!.id as number;
        expect(await m.findUserByEmail('Ann@example.com')).toEqual(user);
        expect((await m.findUserByEmail('ANN@example.com'))?.id).toBe(other);
        const ambiguous = m.findUserByEmail('ann@example.com');
        await expect(ambiguous).rejects.toBeInstanceOf(UsageError);
        await expect(ambiguous).rejects.toMatchObject({
          code: 'ambiguous_email',
          message: `email 'ann@example.com' matches more than one user, their emails differing only in case (users ${user.id} 'Ann@example.com' and ${other} 'ANN@example.com'): give the exact email or the user id`,
        });
      });

      it('latestJobs gives each named user its newest job in one call, and nothing for users without one', async () => {
        const a = await m.createUser(newUser(1));
        const b = await m.createUser(newUser(2));
        const second = await m.enqueueSeedJob(a.user.id, 'v2');
        expect(await m.latestJobs([a.user.id, b.user.id, 99_999])).toEqual(
          new Map([
            [a.user.id, second],
            [b.user.id, b.job],
          ]),
        );
        expect(await m.latestJobs([b.user.id])).toEqual(new Map([[b.user.id, await m.latestJob(b.user.id)]]));
        expect(await m.latestJobs([])).toEqual(new Map());
      });

      it.each([
        ['email', { email: 'user1@example.com' }, 'duplicate_email'],
        ['email differing only in case', { email: 'User1@Example.COM' }, 'duplicate_email'],
        ['username', { username: 'email_fan' }, 'duplicate_username'],
        ['username differing only in case', { username: 'Email_Fan' }, 'duplicate_username'],
        ['WordPress id', { wordpressUserId: 1001 }, 'duplicate_wordpress_id'],
        ['API key hash (after the users row went in)', { keyHash: '$2b$10$hash1' }, 'duplicate'],
      ] as const)('refuses a duplicate %s with a UsageError and leaves no partial rows', async (_what, over, code) => {
        await m.createUser(newUser(1, { username: 'email_fan' }));
        const before = [await t.count('users'), await t.count('api_keys'), await t.count('acm2_seed_jobs')];
        const err = await m.createUser(newUser(2, over)).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(UsageError);
        expect((err as UsageError).code).toBe(code);
        expect((err as UsageError).exitCode).toBe(2);
        expect([await t.count('users'), await t.count('api_keys'), await t.count('acm2_seed_jobs')]).toEqual(before);
        expect(await m.findUserByUsername('user2')).toBeUndefined();
      });

      it('pages through 250 users by keyset, each exactly once and in order', { timeout: 120_000 }, async () => {
        const created = (await createUsers(m, 250)).map((x) => x.user.id);
        expect(await m.countUsers()).toBe(250);
        expect(await m.maxUserId()).toBe(Math.max(...created));

        const seen: number[] = [];
        for (let after = 0; ; ) {
          const page = await m.listUsers({ afterId: after, limit: 37 });
          if (page.length === 0) break;
          expect(page.length).toBeLessThanOrEqual(37);
          seen.push(...page.map((u) => u.id));
          after = page[page.length - 1]!.id;
        }
        expect(seen).toEqual([...created].sort((a, b) => a - b));

        const wanted = created.filter((_, i) => i % 7 === 3);
        const picked: number[] = [];
        for (let after = 0; ; ) {
          const page = await m.listUsers({ afterId: after, limit: 5, ids: wanted });
          if (page.length === 0) break;
          picked.push(...page.map((u) => u.id));
          after = page[page.length - 1]!.id;
        }
        expect(picked).toEqual(wanted);
        expect(await m.listUsers({ afterId: 0, limit: 10, ids: [] })).toEqual([]);
      });

      describe('an API key user create has not shown yet', () => {
        const fresh = (i: number, userId: number, oldKeyId: number) => ({
          userId,
          oldKeyId,
          keyHash: `$2b$10$fresh${i}`,
          keyPrefix: `acm2_f${String(i).padStart(6, '0')}`,
          keyName: `WordPress API Key for user${i}`,
          issuedBy: `host:${1000 + i}:abcdef`,
        });

        it('is marked undelivered in the create transaction, and the mark goes once it was shown', async () => {
          const { user, keyId } = await m.createUser(newUser(1, { issuedBy: 'host:42:abcdef' }));
          const keys = await m.apiKeysFor(user.id);
          expect(keyId).toBe(keys[0]!.id);
          expect(await m.undeliveredKey(user.id)).toEqual({
            userId: user.id,
            apiKeyId: keyId,
            keyPrefix: 'acm2_k000001',
            issuedBy: 'host:42:abcdef',
            createdAt: expect.stringMatching(/^\d{4}-/),
            lastUsedAt: null,
            revokedAt: null,
          });
          expect(await m.keyDelivered(keyId)).toBe(true);
          expect(await m.keyDelivered(keyId)).toBe(false);
          expect(await m.undeliveredKey(user.id)).toBeUndefined();
          // A refused create leaves no mark behind.
          await m.createUser(newUser(2, { email: 'user1@example.com' })).catch(() => undefined);
          expect(await t.count('acm2_undelivered_keys')).toBe(0);
        });

        it('is revoked (never deleted) and replaced in one step; ACM2’s own keys of the user are not touched', async () => {
          const { user, keyId } = await m.createUser(newUser(1));
          // A key ACM2 itself made for the user, beside the tool's.
          await t.query(`INSERT INTO api_keys (user_id, key_hash, key_prefix, name) VALUES (?, ?, ?, ?)`, [user.id, '$2b$10$acm2own', 'acm2_own0001', 'made by ACM2']);
          const { keyId: newId } = await m.reissueKey(fresh(1, user.id, keyId));
          const keys = await m.apiKeysFor(user.id);
          expect(keys.map((k) => [k.id, k.keyPrefix, k.revokedAt === null])).toEqual([
            [keyId, 'acm2_k000001', false],
            [expect.any(Number), 'acm2_own0001', true],
            [newId, 'acm2_f000001', true],
          ]);
          expect(keys[2]).toMatchObject({ keyHash: '$2b$10$fresh1', name: 'WordPress API Key for user1' });
          expect(Math.abs(Date.parse(keys[0]!.revokedAt!) - Date.now())).toBeLessThan(120_000);
          expect(await m.undeliveredKey(user.id)).toMatchObject({ apiKeyId: newId, issuedBy: 'host:1001:abcdef', revokedAt: null });
        });

        it('is replaced once only: a rerun that saw the old mark is refused and changes nothing', async () => {
          const { user, keyId } = await m.createUser(newUser(1));
          await m.reissueKey(fresh(1, user.id, keyId));
          const before = await m.apiKeysFor(user.id);
          const err = await m.reissueKey(fresh(2, user.id, keyId)).catch((e: unknown) => e);
          expect(err).toBeInstanceOf(UnavailableError);
          expect((err as UnavailableError).code).toBe('key_reissued');
          expect(await m.apiKeysFor(user.id)).toEqual(before);
          // A key marked delivered is never reissued either.
          await m.keyDelivered(before[1]!.id);
          expect(await m.reissueKey(fresh(3, user.id, before[1]!.id)).catch((e: unknown) => (e as UnavailableError).code)).toBe('key_reissued');
          expect(await m.apiKeysFor(user.id)).toEqual(before);
        });

        it('two reruns at once on separate connections: exactly one issues a key', async () => {
          const { user, keyId } = await m.createUser(newUser(1));
          const others = await Promise.all([t.another(), t.another(), t.another()]);
          const results = await Promise.allSettled([m, ...others].map((x, i) => x.reissueKey(fresh(10 + i, user.id, keyId))));
          expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
          for (const r of results) if (r.status === 'rejected') expect((r.reason as UnavailableError).code).toBe('key_reissued');
          const live = (await m.apiKeysFor(user.id)).filter((k) => k.revokedAt === null);
          expect(live).toHaveLength(1);
          expect((await m.undeliveredKey(user.id))?.apiKeyId).toBe(live[0]!.id);
          expect(await t.count('api_keys')).toBe(2);
        });

        it('is not replaced once ACM2 has accepted it: someone holds it', async () => {
          const { user, keyId } = await m.createUser(newUser(1));
          await t.query(`UPDATE api_keys SET last_used_at = CURRENT_TIMESTAMP WHERE id = ?`, [keyId]);
          expect((await m.undeliveredKey(user.id))?.lastUsedAt).not.toBeNull();
          const err = await m.reissueKey(fresh(1, user.id, keyId)).catch((e: unknown) => e);
          expect(err).toBeInstanceOf(UsageError);
          expect((err as UsageError).code).toBe('duplicate_email');
          expect((await m.apiKeysFor(user.id)).map((k) => k.revokedAt)).toEqual([null]);
        });
      });

      it('has an empty master with max id 0', async () => {
        expect(await m.countUsers()).toBe(0);
        expect(await m.maxUserId()).toBe(0);
        expect(await m.listUsers({ afterId: 0, limit: 10 })).toEqual([]);
      });
    });

    describe('data dir pairing', () => {
      it('records a pairing unfinished, finishes it or takes it back by its id only, and keeps the first of two', async () => {
        expect(await m.pairedDataDir()).toBeUndefined();
        expect(await m.pairDataDir({ id: 'aaaaaaaa-1', path: '/srv/a', unfinished: true })).toEqual({ id: 'aaaaaaaa-1', path: '/srv/a', pairedAt: null });
        // A second first use keeps the first record; settling another id changes nothing.
        expect((await m.pairDataDir({ id: 'bbbbbbbb-2', path: '/srv/b', unfinished: true })).id).toBe('aaaaaaaa-1');
        await m.settleDataDirPairing('bbbbbbbb-2', true);
        await m.settleDataDirPairing('bbbbbbbb-2', false);
        expect(await m.pairedDataDir()).toEqual({ id: 'aaaaaaaa-1', path: '/srv/a', pairedAt: null });
        // Taken back (another master stamped the data dir first): none again.
        await m.settleDataDirPairing('aaaaaaaa-1', false);
        expect(await m.pairedDataDir()).toBeUndefined();
        await m.pairDataDir({ id: 'cccccccc-3', path: '/srv/c', unfinished: true });
        await m.settleDataDirPairing('cccccccc-3', true);
        const done = await m.pairedDataDir();
        expect(done).toMatchObject({ id: 'cccccccc-3', path: '/srv/c', pairedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) });
        // A finished pairing is never taken back, nor finished again.
        await m.settleDataDirPairing('cccccccc-3', false);
        await m.settleDataDirPairing('cccccccc-3', true);
        expect(await m.pairedDataDir()).toEqual(done);
        // Replaced on purpose, unfinished until its stamp is written.
        expect(await m.pairDataDir({ id: 'dddddddd-4', path: '/srv/d', unfinished: true }, true)).toEqual({ id: 'dddddddd-4', path: '/srv/d', pairedAt: null });
      });
    });

    describe('seed job queue', () => {
      it('returns the open job instead of enqueueing a duplicate', async () => {
        const { user, job } = await m.createUser(newUser(1));
        expect((await m.enqueueSeedJob(user.id, 'v1')).id).toBe(job.id);
        const v2 = await m.enqueueSeedJob(user.id, 'v2', { force: true, maxAttempts: 7 });
        expect(v2).toMatchObject({ seedVersion: 'v2', status: 'pending', force: true, maxAttempts: 7 });
        expect(v2.id).not.toBe(job.id);

        const now = Date.now() + 1000;
        const claimed = await m.claimJobForUser(user.id, 'w1', 60_000, now);
        expect(claimed?.id).toBe(job.id);
        expect((await m.enqueueSeedJob(user.id, 'v1')).id).toBe(job.id); // running is open too
        expect(await m.finishJob(job.id, 'w1', { status: 'done' }, now)).toBe(true);
        const again = await m.enqueueSeedJob(user.id, 'v1');
        expect(again.id).not.toBe(job.id);
        expect(again.status).toBe('pending');
        expect(await m.countJobs()).toBe(3);
        expect(await m.latestJob(user.id)).toEqual(again);
      });

      it('a claim handed back as not attempted (user locked elsewhere) gives its attempt back; a failed try keeps it', async () => {
        const { job } = await m.createUser(newUser(1));
        const T = Date.now() + 1000;
        expect(await m.claimJob('w', 1000, T)).toMatchObject({ id: job.id, attempts: 1 });
        expect(await m.finishJob(job.id, 'w', { status: 'pending', error: 'user locked by another seeder', nextAttemptAt: T + 10, notAttempted: true }, T + 1)).toBe(true);
        expect(await m.latestJob(job.userId)).toMatchObject({ status: 'pending', attempts: 0, lastError: 'user locked by another seeder', nextAttemptAt: T + 10 });
        expect(await m.claimJob('w', 1000, T + 20)).toMatchObject({ id: job.id, attempts: 1 });
        expect(await m.finishJob(job.id, 'w', { status: 'pending', error: 'disk full', nextAttemptAt: T + 30 }, T + 21)).toBe(true);
        expect(await m.latestJob(job.userId)).toMatchObject({ status: 'pending', attempts: 1, lastError: 'disk full' });
      });

      it('claims, expires a lease, reclaims, and refuses to finish for a worker that lost it', async () => {
        const { job } = await m.createUser(newUser(1));
        const T = Date.now() + 1000;
        const a = await m.claimJob('worker-a', 1000, T);
        expect(a).toMatchObject({ id: job.id, status: 'running', lockedBy: 'worker-a', lockedUntil: T + 1000, attempts: 1 });
        expect(await m.countJobs('running')).toBe(1);
        expect(await m.claimJob('worker-b', 1000, T + 500)).toBeUndefined();

        const b = await m.claimJob('worker-b', 1000, T + 2000);
        expect(b).toMatchObject({ id: job.id, status: 'running', lockedBy: 'worker-b', lockedUntil: T + 3000, attempts: 2 });
        expect(await m.latestJob(job.userId)).toEqual(b); // what a claim returns is what the master holds
        expect(await m.finishJob(job.id, 'worker-a', { status: 'done' }, T + 2100)).toBe(false);
        expect(await m.finishJob(job.id, 'worker-b', { status: 'done' }, T + 2200)).toBe(true);
        expect(await m.latestJob(job.userId)).toMatchObject({ status: 'done', lockedBy: null, lockedUntil: null, lastError: null, attempts: 2 });
        expect(await m.finishJob(job.id, 'worker-b', { status: 'done' }, T + 2300)).toBe(false);
        expect(await m.claimJob('worker-c', 1000, T + 10_000)).toBeUndefined();
        expect(await m.countJobs('done')).toBe(1);
      });

      it("a holder of the user's lock takes over the user's running job at once; the old worker can no longer finish it", async () => {
        const { user, job } = await m.createUser(newUser(1));
        const T = Date.now() + 1000;
        expect((await m.claimJob('dead-worker', 600_000, T))?.id).toBe(job.id);
        // Its lease is live: without takeOver a direct seed gets nothing (and makes nothing).
        expect(await m.claimJobForUser(user.id, 'operator', 1000, T + 10)).toBeUndefined();
        const taken = await m.claimJobForUser(user.id, 'operator', 1000, T + 20, job.seedVersion, undefined, true);
        expect(taken).toMatchObject({ id: job.id, status: 'running', lockedBy: 'operator', attempts: 2 });
        expect(await m.finishJob(job.id, 'dead-worker', { status: 'pending', error: 'user locked by another seeder', nextAttemptAt: T + 30, notAttempted: true }, T + 25)).toBe(false);
        expect(await m.finishJob(job.id, 'operator', { status: 'done' }, T + 30)).toBe(true);
        expect(await m.countJobs()).toBe(1);
      });

      it("seed versions differing only in case are two versions: a 'V1' seed never takes a queued 'v1' job", async () => {
        const { user, job } = await m.createUser(newUser(1)); // a pending 'v1' job
        const upper = await m.enqueueSeedJob(user.id, 'V1');
        expect(upper.id).not.toBe(job.id);
        expect(upper.seedVersion).toBe('V1');
        const claimed = await m.claimJobForUser(user.id, 'w', 1000, undefined, 'V1');
        expect(claimed?.id).toBe(upper.id);
        expect(await m.latestJobs([user.id])).toEqual(new Map([[user.id, expect.objectContaining({ id: upper.id })]]));
        expect((await m.claimJobForUser(user.id, 'w2', 1000, undefined, 'v1'))?.id).toBe(job.id);
      });

      it('counts the jobs waiting for a retry and says when the first is due', async () => {
        const a = await m.createUser(newUser(1));
        const b = await m.createUser(newUser(2));
        const T = Date.now() + 1000;
        expect(await m.pendingNotDue(T)).toEqual({ count: 0, nextAttemptAt: null });
        for (const [j, due] of [[a.job, T + 90_000], [b.job, T + 60_000]] as const) {
          expect((await m.claimJobForUser(j.userId, 'w', 1000, T))?.id).toBe(j.id);
          expect(await m.finishJob(j.id, 'w', { status: 'pending', error: 'boom', nextAttemptAt: due }, T + 1)).toBe(true);
        }
        expect(await m.pendingNotDue(T + 2)).toEqual({ count: 2, nextAttemptAt: T + 60_000 });
        expect(await m.pendingNotDue(T + 70_000)).toEqual({ count: 1, nextAttemptAt: T + 90_000 });
        expect(await m.pendingNotDue(T + 100_000)).toEqual({ count: 0, nextAttemptAt: null });
      });

      it('holds a new user’s job back until made due (user create looks at the data dir first)', async () => {
        const T = Date.now();
        const { job } = await m.createUser({ ...newUser(1), jobDueAt: T + 30_000 });
        expect(job.nextAttemptAt).toBe(T + 30_000);
        expect(await m.claimJob('w', 60_000, T + 1)).toBeUndefined();
        expect(await m.makeJobDue(job.id, T + 2)).toBe(true);
        expect(await m.makeJobDue(job.id, T + 3)).toBe(false);
        expect(await m.claimJob('w', 60_000, T + 4)).toMatchObject({ id: job.id, attempts: 1 });
        expect(await m.makeJobDue(job.id, T + 5)).toBe(false);
      });

      it('claims no job of the versions a drainer was told to skip', async () => {
        const a = await m.createUser(newUser(1));
        const b = await m.createUser({ ...newUser(2), seedVersion: 'v2' });
        const T = Date.now() + 1000;
        expect(await m.claimJob('w', 60_000, T, ['v1', 'v2'])).toBeUndefined();
        expect(await m.claimJob('w', 60_000, T, ['v1'])).toMatchObject({ id: b.job.id });
        expect(await m.claimJob('w', 60_000, T, ['v2'])).toMatchObject({ id: a.job.id });
      });

      it('lists the jobs still leased, and ends one lease only for the worker that holds it', async () => {
        const a = await m.createUser(newUser(1));
        const b = await m.createUser(newUser(2));
        const T = Date.now();
        expect(await m.heldJobs(10, T)).toEqual([]);
        expect((await m.claimJobForUser(a.user.id, 'wa', 60_000, T))?.id).toBe(a.job.id);
        expect((await m.claimJobForUser(b.user.id, 'wb', 30_000, T))?.id).toBe(b.job.id);
        expect((await m.heldJobs(10, T + 1)).map((j) => [j.id, j.lockedBy])).toEqual([
          [b.job.id, 'wb'],
          [a.job.id, 'wa'],
        ]);
        expect((await m.heldJobs(1, T + 1)).map((j) => j.id)).toEqual([b.job.id]);
        expect(await m.heldJobs(10, T + 40_000)).toEqual([expect.objectContaining({ id: a.job.id })]);
        expect(await m.expireLease(a.job.id, 'wb', T + 2)).toBe(false);
        expect(await m.expireLease(a.job.id, 'wa', T + 2)).toBe(true);
        expect((await m.heldJobs(10, T + 3)).map((j) => j.id)).toEqual([b.job.id]);
        // Now an expired lease: the next claim takes it, as a new attempt.
        expect(await m.claimJob('w2', 60_000, T + 4)).toMatchObject({ id: a.job.id, lockedBy: 'w2', attempts: 2 });
      });

      it('backs off: a retry due later is not claimed until due, unless its user is seeded directly', async () => {
        const { user, job } = await m.createUser(newUser(1));
        const other = await m.createUser(newUser(2));
        const T = Date.now() + 1000;
        expect((await m.claimJobForUser(user.id, 'w', 1000, T))?.id).toBe(job.id);
        expect(await m.finishJob(job.id, 'w', { status: 'pending', error: 'boom', nextAttemptAt: T + 60_000 }, T + 10)).toBe(true);
        expect(await m.latestJob(user.id)).toMatchObject({ status: 'pending', lastError: 'boom', nextAttemptAt: T + 60_000, lockedBy: null });

        // The other user's job is due now; the backed-off one is not.
        expect((await m.claimJob('w', 1000, T + 1000))?.id).toBe(other.job.id);
        expect(await m.finishJob(other.job.id, 'w', { status: 'done' }, T + 1001)).toBe(true);
        expect(await m.claimJob('w', 1000, T + 1000)).toBeUndefined();
        expect((await m.claimJob('w', 1000, T + 60_000))?.id).toBe(job.id);
        expect(await m.finishJob(job.id, 'w', { status: 'pending', error: 'boom again', nextAttemptAt: T + 120_000 }, T + 60_010)).toBe(true);

        // A direct `user seed` pulls the retry forward.
        const direct = await m.claimJobForUser(user.id, 'operator', 1000, T + 61_000);
        expect(direct).toMatchObject({ id: job.id, lockedBy: 'operator', attempts: 3, nextAttemptAt: T + 61_000 });
        expect(await m.finishJob(job.id, 'operator', { status: 'failed', error: 'gave up' }, T + 61_100)).toBe(true);
        expect(await m.latestJob(user.id)).toMatchObject({ status: 'failed', lastError: 'gave up' });
        expect(await m.claimJobForUser(user.id, 'operator', 1000, T + 500_000)).toBeUndefined();
        expect(await m.claimJob('w', 1000, T + 500_000)).toBeUndefined();
      });

      it('a job whose worker dies on its last attempt is failed when its lease expires, not run again', async () => {
        const { user } = await m.createUser(newUser(1));
        const T = Date.now() + 1000;
        const job = await m.enqueueSeedJob(user.id, 'v2', { maxAttempts: 2 });
        // createUser's own v1 job goes first; it is done.
        const first = await m.claimJob('w', 1000, T);
        expect(await m.finishJob(first!.id, 'w', { status: 'done' }, T + 1)).toBe(true);
        expect(await m.claimJob('w1', 1000, T + 2)).toMatchObject({ id: job.id, attempts: 1 });
        // w1 dies; its lease expires; w2 takes the second and last attempt and dies too.
        expect(await m.claimJob('w2', 1000, T + 2000)).toMatchObject({ id: job.id, attempts: 2, lockedBy: 'w2' });
        expect(await m.claimJob('w3', 1000, T + 4000)).toBeUndefined();
        const failed = await m.latestJob(user.id);
        expect(failed).toMatchObject({ id: job.id, status: 'failed', attempts: 2, lockedBy: null, lockedUntil: null });
        expect(failed!.lastError).toMatch(/w2\) stopped before finishing, on attempt 2 of 2/);
        expect(await m.finishJob(job.id, 'w2', { status: 'done' }, T + 4001)).toBe(false);
      });

      it("a direct seed claims its own version's job; once done, older pending jobs of the user are superseded", async () => {
        const { user, job: v1 } = await m.createUser(newUser(1));
        const other = await m.createUser(newUser(2));
        const T = Date.now() + 1000;
        // v1 failed once and waits for its retry; the operator seeds v2 directly.
        expect((await m.claimJob('w', 1000, T))?.id).toBe(v1.id);
        expect(await m.finishJob(v1.id, 'w', { status: 'pending', error: 'boom', nextAttemptAt: T + 60_000 }, T + 1)).toBe(true);
        const v2 = await m.enqueueSeedJob(user.id, 'v2');
        // Both pulled forward to the same instant: without the version, the older v1 would win.
        const direct = await m.claimJobForUser(user.id, 'operator', 1000, v2.nextAttemptAt - 1, 'v2');
        expect(direct).toMatchObject({ id: v2.id, seedVersion: 'v2' });
        expect(await m.latestJob(user.id)).toMatchObject({ id: v2.id, status: 'running' });
        expect(await m.finishJob(v2.id, 'operator', { status: 'done' }, T + 6)).toBe(true);
        expect(await m.supersedeOlderJobs(user.id, v2.id, T + 7)).toBe(1);
        expect(await m.countJobs('failed')).toBe(1);
        // The v1 retry never runs now; the other user's job is untouched.
        expect(await m.claimJob('w', 1000, T + 120_000)).toMatchObject({ id: other.job.id });
        expect(await m.claimJob('w', 1000, T + 120_000)).toBeUndefined();
        const jobs = await m.latestJobs([user.id]);
        expect(jobs.get(user.id)).toMatchObject({ id: v2.id, status: 'done' });
        // A newer pending job is not older than the done one: it stays.
        const v3 = await m.enqueueSeedJob(user.id, 'v3');
        expect(await m.supersedeOlderJobs(user.id, v2.id, T + 8)).toBe(0);
        expect(await m.latestJob(user.id)).toMatchObject({ id: v3.id, status: 'pending' });
      });

      it('a direct seed makes and claims its job in one step; an open job of its version is claimed, not duplicated', async () => {
        const { user, job: v1 } = await m.createUser(newUser(1));
        const T = Date.now() + 1000;
        const forced = await m.claimJobForUser(user.id, 'operator', 1000, T, 'v2', { force: true });
        expect(forced).toMatchObject({ seedVersion: 'v2', force: true, status: 'running', lockedBy: 'operator', attempts: 1 });
        expect(await m.claimJob('drainer', 1000, T + 1)).toMatchObject({ id: v1.id }); // only the v1 job was left to take
        expect(await m.finishJob(forced!.id, 'operator', { status: 'done' }, T + 2)).toBe(true);
        const again = await m.claimJobForUser(user.id, 'operator', 1000, T + 3, 'v1', { force: true });
        expect(again).toBeUndefined(); // v1's job is open, held by the drainer: not duplicated
        expect(await m.countJobs()).toBe(2);
      });

      it('lets parallel workers on separate connections claim each of 50 jobs exactly once', { timeout: 120_000 }, async () => {
        const jobs = (await createUsers(m, 50)).map((x) => x.job.id);
        const workers = await Promise.all([1, 2, 3, 4, 5].map(() => t.another()));
        const claimed: Array<[string, SeedJob]> = [];
        await Promise.all(
          workers.map(async (w, i) => {
            const id = `worker-${i}`;
            for (;;) {
              const job = await w.claimJob(id, 60_000);
              if (!job) {
                // SKIP LOCKED may pass over a row another worker is about to take: stop only when none is pending.
                if ((await w.countJobs('pending')) === 0) return;
                continue;
              }
              claimed.push([id, job]);
              expect(await w.finishJob(job.id, id, { status: 'done' })).toBe(true);
            }
          }),
        );
        expect(claimed.map(([, j]) => j.id).sort((a, b) => a - b)).toEqual([...jobs].sort((a, b) => a - b));
        expect(claimed.every(([w, j]) => j.lockedBy === w && j.attempts === 1)).toBe(true);
        expect(await m.countJobs('done')).toBe(50);
      });
    });

    describe('per-user lock', () => {
      if (d.name === 'sqlite') {
        it('is not offered by the SQLite master (the file lock is used instead)', async () => {
          expect(m.capabilities.advisoryLocks).toBe(false);
          await expect(m.acquireUserLock(1, 10)).rejects.toThrow();
        });
        return;
      }

      it('is held by one holder at a time across instances, and freed by release or close', async () => {
        expect(m.capabilities.advisoryLocks).toBe(true);
        const other = await t.another();
        const held = await m.acquireUserLock(7, 1000);
        expect(held).toBeDefined();

        const started = Date.now();
        expect(await other.acquireUserLock(7, 300)).toBeUndefined();
        expect(Date.now() - started).toBeGreaterThanOrEqual(250);
        expect(await m.acquireUserLock(7, 0)).toBeUndefined(); // a second connection of the same instance too

        const neighbour = await other.acquireUserLock(8, 1000);
        expect(neighbour).toBeDefined();
        await neighbour!.release();

        await held!.release();
        await held!.release(); // idempotent
        const next = await other.acquireUserLock(7, 1000);
        expect(next).toBeDefined();

        await other.close(); // closing drops the held lock with its connection
        const after = await m.acquireUserLock(7, 2000);
        expect(after).toBeDefined();
        await after!.release();
      });

      it('named locks: one holder at a time, separate from the per-user locks', async () => {
        const other = await t.another();
        const held = await m.acquireNamedLock('backfill:default', 0);
        expect(held).toBeDefined();
        expect(await other.acquireNamedLock('backfill:default', 0)).toBeUndefined();
        expect(await other.acquireNamedLock('backfill:shard-0-of-2', 0)).toBeDefined();
        const user = await other.acquireUserLock(1, 0);
        expect(user).toBeDefined();
        await user!.release();
        await held!.release();
        const next = await other.acquireNamedLock('backfill:default', 0);
        expect(next).toBeDefined();
        await next!.release();
      });
    });

    describe('backfill progress', () => {
      it('saves, updates, records items, and resets', async () => {
        expect(await m.getBackfill('b1')).toBeUndefined();
        await m.saveBackfill({ name: 'b1', status: 'running', cursor: 10, options: '{"batch":100}', counts: { seeded: 2 } });
        const first = await m.getBackfill('b1');
        expect(first).toMatchObject({ name: 'b1', status: 'running', cursor: 10, options: '{"batch":100}', counts: { seeded: 2 } });
        expect(first!.startedAt).toMatch(/Z$/);

        await m.saveBackfill({ name: 'b1', status: 'interrupted', cursor: 20, options: '{"batch":100}', counts: { seeded: 3, failed: 1 } });
        const second = await m.getBackfill('b1');
        expect(second).toMatchObject({ status: 'interrupted', cursor: 20, counts: { seeded: 3, failed: 1 }, startedAt: first!.startedAt });

        await m.saveBackfill({ name: 'b2', status: 'done', cursor: 5, options: '{}', counts: {} });
        await m.recordBackfillItem('b1', { userId: 9, outcome: 'failed', reason: 'disk' });
        await m.recordBackfillItem('b1', { userId: 3, outcome: 'seeded', reason: null });
        await m.recordBackfillItem('b1', { userId: 9, outcome: 'seeded', reason: null });
        await m.recordBackfillItem('b2', { userId: 1, outcome: 'skipped', reason: 'ready' });
        expect(await m.backfillItems('b1')).toEqual([
          { userId: 3, outcome: 'seeded', reason: null },
          { userId: 9, outcome: 'seeded', reason: null },
        ]);

        await m.resetBackfill('b1');
        expect(await m.getBackfill('b1')).toBeUndefined();
        expect(await m.backfillItems('b1')).toEqual([]);
        expect(await m.getBackfill('b2')).toMatchObject({ status: 'done', cursor: 5 });
        expect(await m.backfillItems('b2')).toEqual([{ userId: 1, outcome: 'skipped', reason: 'ready' }]);
      });

      it('records a page of items at once: upserts in order, beside single items, per name', async () => {
        await m.recordBackfillItem('p', { userId: 5, outcome: 'running', reason: 'migrate' });
        await m.recordBackfillItem('q', { userId: 5, outcome: 'ok', reason: null });
        await m.recordBackfillItems('p', []);
        expect(await m.backfillItems('p')).toEqual([{ userId: 5, outcome: 'running', reason: 'migrate' }]);
        // More rows than one MySQL statement takes, an existing row overwritten, one user twice (the last wins).
        const many = Array.from({ length: 1203 }, (_, i) => ({ userId: 1203 - i, outcome: i % 2 ? 'ok' : 'fail', reason: i % 2 ? null : `[corrupt] user ${1203 - i} it's "bad"` }));
        await m.recordBackfillItems('p', [...many, { userId: 7, outcome: 'seed', reason: null }]);
        const got = await m.backfillItems('p');
        expect(got).toHaveLength(1203);
        expect(got.map((i) => i.userId)).toEqual(Array.from({ length: 1203 }, (_, i) => i + 1));
        const want = new Map(many.map((i) => [i.userId, { userId: i.userId, outcome: i.outcome, reason: i.reason }]));
        want.set(7, { userId: 7, outcome: 'seed', reason: null });
        expect(got).toEqual([...want.values()].sort((a, b) => a.userId - b.userId));
        expect(got.find((i) => i.userId === 5)).toEqual(want.get(5));
        expect(await m.backfillItems('q')).toEqual([{ userId: 5, outcome: 'ok', reason: null }]);
      });
    });

    it('names its place without a password', () => {
      expect(m.dialect).toBe(d.name);
      expect(m.display).toBe(parseMasterUrl(t.url).display);
      expect(m.display).not.toMatch(/:[^/@]*@/);
    });
  });
}

describe('MySQL master: connection failures', () => {
  it('reports an unreachable server in one sentence, exit 3, without the password', async () => {
    const err = await openMaster(parseMasterUrl('mysql://root:secretpw@127.0.0.1:1/x')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).exitCode).toBe(3);
    expect((err as UnavailableError).code).toBe('master_unreachable');
    expect((err as Error).message).toBe('cannot reach MySQL master at 127.0.0.1:1 (ECONNREFUSED)');
    expect((err as Error).message).not.toContain('secretpw');
  });

  it('names an IPv6 server in brackets ([::1]:1), not as ::1:1', async () => {
    const err = await openMaster(parseMasterUrl('mysql://root:secretpw@[::1]:1/x')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/^cannot reach MySQL master at \[::1\]:1 \([A-Z_]+\)$/);
  });

  describe.skipIf(gate.skip)('against the test server', () => {
    beforeAll(() => gate.ready());
    const base = new URL(MYSQL_BASE_URL);

    it("runs every session with the sql_mode its SQL was written for, not the server's", async () => {
      // A server whose default lacks STRICT truncates instead of refusing; one with
      // NO_BACKSLASH_ESCAPES made mysql2's quoting of o'brien@example.com a syntax error (exit 70).
      // The test server runs its own default, so a session that kept it shows a different mode.
      const db = await createMysqlTestDb();
      try {
        const m = await openMaster(parseMasterUrl(db.url));
        try {
          const pool = (m as unknown as { pool: mysql.Pool }).pool;
          const modes = await Promise.all(
            [1, 2, 3].map(async () => {
              const c = await pool.getConnection();
              try {
                const [rows] = await c.query<mysql.RowDataPacket[]>('SELECT @@SESSION.sql_mode AS mode');
                return String(rows[0]!.mode);
              } finally {
                c.release();
              }
            }),
          );
          for (const mode of modes) expect(mode.split(',').sort()).toEqual(['NO_ENGINE_SUBSTITUTION', 'STRICT_TRANS_TABLES']);
          const { user } = await m.createUser({ ...newUser(1), email: "o'brien@example.com" });
          expect((await m.findUserByEmail("o'brien@example.com"))?.id).toBe(user.id);
        } finally {
          await m.close();
        }
      } finally {
        await db.drop();
      }
    });

    it('names the missing database: a typo in --master (exit 2), not an outage', async () => {
      const u = new URL(base);
      u.pathname = '/acm2_no_such_db_x9';
      const err = await openMaster(parseMasterUrl(u.toString())).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UsageError);
      expect((err as UsageError).exitCode).toBe(2);
      expect((err as Error).message).toBe(`MySQL master at ${base.hostname}:${base.port || 3306} has no database 'acm2_no_such_db_x9' (ER_BAD_DB_ERROR): check the database name in --master`);
    });

    it('names a refused login without the password', async () => {
      const u = new URL(base);
      u.username = 'acm2_nobody';
      u.password = 'hunter2pw';
      const err = await openMaster(parseMasterUrl(u.toString())).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as UnavailableError).exitCode).toBe(3);
      expect((err as Error).message).toMatch(/^MySQL master at .+ denied access to user 'acm2_nobody' \(ER_ACCESS_DENIED_ERROR\)$/);
      expect((err as Error).message).not.toContain('hunter2pw');
    });

    it('a read-only account (verify in CI) opens a master that is set up, writing nothing; it is told plainly what it may not do', async () => {
      const db = await createMysqlTestDb();
      const admin = await mysql.createConnection({ host: base.hostname, port: Number(base.port || 3306), user: decodeURIComponent(base.username), password: decodeURIComponent(base.password) });
      const user = `acm2_ro_${randomBytes(4).toString('hex')}`;
      const dbName = new URL(db.url).pathname.slice(1);
      try {
        const setUp = await openMaster(parseMasterUrl(db.url));
        await setUp.close();
        await admin.query(`CREATE USER '${user}'@'%' IDENTIFIED BY 'ro-pw'`);
        await admin.query(`CREATE USER '${user}'@'localhost' IDENTIFIED BY 'ro-pw'`);
        await admin.query(`GRANT SELECT ON \`${dbName}\`.* TO '${user}'@'%'`);
        await admin.query(`GRANT SELECT ON \`${dbName}\`.* TO '${user}'@'localhost'`);
        const ro = new URL(db.url);
        ro.username = user;
        ro.password = 'ro-pw';
        // Up to date: no migration to apply, no CREATE TABLE IF NOT EXISTS (denied to it even so).
        const m = await openMaster(parseMasterUrl(ro.toString()));
        try {
          expect(await m.countUsers()).toBe(0);
          const err = await m.createUser({ username: 'x', email: 'x@example.com', wordpressUserId: null, keyHash: 'h', keyPrefix: 'acm2_abc', keyName: 'default', seedVersion: 'v1' }).catch((e: unknown) => e);
          expect(err).toMatchObject({ exitCode: 3, code: 'master_access_denied', message: expect.stringMatching(new RegExp(`refused user '${user}' a statement acm2 needs: INSERT command denied`)) });
        } finally {
          await m.close();
        }
        // A migration this tool has and the master lacks: it may not apply it, and says so.
        const last = loadMigrations('master/mysql').at(-1)!;
        await admin.query(`DELETE FROM \`${dbName}\`.acm2_master_migrations WHERE id = ?`, [last.id]);
        const refused = await openMaster(parseMasterUrl(ro.toString())).catch((e: unknown) => e);
        expect(refused).toMatchObject({ exitCode: 3, code: 'master_access_denied', message: expect.stringContaining(`needs the tool's migration ${last.name}, which user '${user}' may not apply`) });
        // A migration applied with another checksum is no pending one: the same refusal (exit 2)
        // as for an account that may apply migrations, not a request for more grants.
        const sums = loadMigrations('master/mysql');
        await admin.query(`INSERT INTO \`${dbName}\`.acm2_master_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`, [last.id, last.name, last.checksum, new Date().toISOString()]);
        await admin.query(`UPDATE \`${dbName}\`.acm2_master_migrations SET checksum = ? WHERE id = ?`, ['0'.repeat(64), sums[0]!.id]);
        for (const url of [ro.toString(), db.url]) {
          const changed = await openMaster(parseMasterUrl(url)).catch((e: unknown) => e);
          expect(changed).toMatchObject({ exitCode: 2, code: 'migration_checksum' });
        }
        await admin.query(`UPDATE \`${dbName}\`.acm2_master_migrations SET checksum = ? WHERE id = ?`, [sums[0]!.checksum, sums[0]!.id]);
        // An INSERT refused inside createUser's transaction rolled it back: no "was it created?"
        // question about an outage that never happened.
        await admin.query(`REVOKE SELECT ON \`${dbName}\`.* FROM '${user}'@'%'`);
        await admin.query(`REVOKE SELECT ON \`${dbName}\`.* FROM '${user}'@'localhost'`);
        for (const host of ['%', 'localhost']) {
          for (const t of ['users', 'acm2_master_migrations']) await admin.query(`GRANT SELECT ON \`${dbName}\`.${t} TO '${user}'@'${host}'`);
          await admin.query(`GRANT INSERT ON \`${dbName}\`.users TO '${user}'@'${host}'`);
        }
        const narrow = await openMaster(parseMasterUrl(ro.toString()));
        try {
          const err = await narrow.createUser({ username: 'y', email: 'y@example.com', wordpressUserId: null, keyHash: 'h2', keyPrefix: 'acm2_abd', keyName: 'default', seedVersion: 'v1', maxAttempts: 5 }).catch((e: unknown) => e);
          expect(err).toMatchObject({ exitCode: 3, code: 'master_access_denied', message: expect.stringContaining('INSERT command denied') });
          expect((err as Error).message).not.toMatch(/unknown/);
        } finally {
          await narrow.close();
        }
      } finally {
        await admin.query(`DROP USER IF EXISTS '${user}'@'%'`).catch(() => undefined);
        await admin.query(`DROP USER IF EXISTS '${user}'@'localhost'`).catch(() => undefined);
        await admin.end();
        await db.drop();
      }
    });
    it('an account at its connection limit (MAX_USER_CONNECTIONS) is exit 3 saying what to do, at connect and mid-run; a drain stops there and a rerun with room converges', async () => {
      const db = await createMysqlTestDb();
      const admin = await mysql.createConnection({ host: base.hostname, port: Number(base.port || 3306), user: decodeURIComponent(base.username), password: decodeURIComponent(base.password) });
      const user = `acm2_lim_${randomBytes(4).toString('hex')}`;
      const dbName = new URL(db.url).pathname.slice(1);
      const held: mysql.Connection[] = [];
      const dataDir = mkdtempSync(path.join(tmpdir(), 'acm2-limit-'));
      try {
        for (const host of ['%', 'localhost']) {
          await admin.query(`CREATE USER '${user}'@'${host}' IDENTIFIED BY 'lim-pw' WITH MAX_USER_CONNECTIONS 2`);
          await admin.query(`GRANT ALL ON \`${dbName}\`.* TO '${user}'@'${host}'`);
        }
        const lim = new URL(db.url);
        lim.username = user;
        lim.password = 'lim-pw';
        const connectAs = () => mysql.createConnection({ host: base.hostname, port: Number(base.port || 3306), user, password: 'lim-pw', database: dbName });
        const limitSentence = new RegExp(`^MySQL master at .+ refused user '${user}' another connection or statement \\(ER_USER_LIMIT_REACHED: .*\\); run acm2 with a lower --concurrency or fewer acm2 processes at once, or raise the limit, then run again$`);
        // Set up, with one user queued, by an account without the limit.
        const cli = (url: string, args: string[]) =>
          new Promise<{ code: number; out: Record<string, any> }>((resolve) => {
            execFile(process.execPath, [path.join(REPO, 'bin/acm2.js'), ...args, '--master', url, '--data-dir', dataDir, '--json'], { env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4' } }, (err, stdout) =>
              resolve({ code: err ? Number((err as { code?: unknown }).code) : 0, out: JSON.parse(stdout || '{}') as Record<string, any> }),
            );
          });
        expect((await cli(db.url, ['user', 'create', '--email', 'lim@example.com', '--username', 'lim', '--async'])).code).toBe(0);

        // Both connections taken elsewhere: refused at connect.
        held.push(await connectAs(), await connectAs());
        const atConnect = await openMaster(parseMasterUrl(lim.toString())).catch((e: unknown) => e);
        expect(atConnect).toMatchObject({ exitCode: 3, code: 'master_connection_limit', message: expect.stringMatching(limitSentence) });
        expect((atConnect as Error).message).not.toContain('lim-pw');
        // One left: the master opens on it, and the second connection a statement needs is refused.
        await held.pop()!.end();
        const m = await openMaster(parseMasterUrl(lim.toString()));
        try {
          const err = await Promise.all([m.countUsers(), m.countUsers(), m.countUsers()]).catch((e: unknown) => e);
          expect(err).toMatchObject({ exitCode: 3, code: 'master_connection_limit', message: expect.stringMatching(limitSentence) });
        } finally {
          await m.close();
        }
        // A drain (work and lock connections of its own) stops with exit 3, the job not done.
        const drain = await cli(lim.toString(), ['user', 'seed', '--pending', '--concurrency', '1']);
        expect(drain.code).toBe(3);
        expect(drain.out.error).toMatchObject({ code: 'master_connection_limit', message: expect.stringMatching(limitSentence) });
        const [jobs] = (await admin.query(`SELECT status FROM \`${dbName}\`.acm2_seed_jobs`)) as unknown as [Array<{ status: string }>];
        expect(jobs.map((j) => j.status)).not.toContain('done');
        await held.pop()!.end();
        const again = await cli(db.url, ['user', 'seed', '--pending']);
        expect(again).toMatchObject({ code: 0, out: { done: 1 } });
      } finally {
        for (const c of held) await c.end().catch(() => undefined);
        for (const host of ['%', 'localhost']) await admin.query(`DROP USER IF EXISTS '${user}'@'${host}'`).catch(() => undefined);
        await admin.end();
        await db.drop();
        rmSync(dataDir, { recursive: true, force: true });
      }
    }, 60_000);
  });
});

describe('MySQL master: pure helpers', () => {
  it('knows which servers have SKIP LOCKED', () => {
    expect(supportsSkipLocked('10.11.19-MariaDB-0+deb12u1')).toBe(true);
    expect(supportsSkipLocked('10.6.0-MariaDB')).toBe(true);
    expect(supportsSkipLocked('10.5.23-MariaDB-log')).toBe(false);
    expect(supportsSkipLocked('11.4.2-MariaDB')).toBe(true);
    expect(supportsSkipLocked('8.0.36')).toBe(true);
    expect(supportsSkipLocked('5.7.44-log')).toBe(false);
  });

  it('keeps GET_LOCK names within 64 characters and distinct per database', () => {
    expect(mysqlLockName('acm2:', 'prod', ':user:42')).toBe('acm2:prod:user:42');
    const long = 'd'.repeat(64);
    const name = mysqlLockName('acm2_migrate:', long);
    expect(name.length).toBeLessThanOrEqual(64);
    expect(name).not.toBe(mysqlLockName('acm2_migrate:', `${'d'.repeat(63)}e`));
  });
});
