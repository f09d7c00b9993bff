// Version skew between hosts sharing one master and data dir: while acm2 is upgraded host by host,
// a newer acm2 migrates a user DB (or the master) and an older one then meets it. The older tool
// refuses to write there (exit 3, upgrade acm2), batches go on with their other users, and the
// read commands report it instead of judging or comparing a format they do not know.

import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMasterUrl, TOOL_VERSION } from '../src/config.js';
import { usingMaster } from '../src/master/factory.js';
import { loadMigrations } from '../src/migrations.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';
import { userMigrations } from '../src/userdb/user-db.js';
import { frozenSource, snapshotTree, tmpDir, type FrozenSource } from './helpers/env.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
let pkg: FrozenSource;
const dirs: string[] = [];

beforeAll(() => {
  pkg = frozenSource();
});
afterAll(() => {
  pkg.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function acm2(dataDir: string, args: string[]) {
  try {
    const r = await run(process.execPath, [BIN, '--data-dir', dataDir, '--seeds', pkg.seedsDir, ...args], {
      env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_RETRY_BASE_MS: '0', ACM2_MASTER_URL: '' },
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/** A data dir with two seeded users, 1 and 2, on the embedded master. */
async function twoUsers(): Promise<string> {
  const dataDir = tmpDir('acm2-skew-');
  dirs.push(dataDir);
  for (const n of ['ann', 'ben']) expect((await acm2(dataDir, ['user', 'create', '--email', `${n}@example.com`, '--username', n])).code).toBe(0);
  return dataDir;
}

/** The name of the next migration, as a newer acm2 would have applied it (this tool does not ship it). */
function future(shipped: number): { id: number; name: string } {
  return { id: shipped + 1, name: `${String(shipped + 1).padStart(4, '0')}_from_a_newer_acm2` };
}

/** What a newer acm2 leaves in user 1's ledger after migrating its DB. */
function migrateByNewerTool(dataDir: string, id = 1): string {
  const f = future(userMigrations().length);
  const db = new Database(userDbPath(dataDir, id));
  try {
    db.prepare(`INSERT INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(f.id, f.name, 'f'.repeat(64), new Date().toISOString());
  } finally {
    db.close();
  }
  return f.name;
}

function refusal(dataDir: string, name: string): string {
  return `the user DB ${userDbPath(dataDir, 1)} has migration ${name}, which this acm2 (${TOOL_VERSION}) does not know: a newer acm2 applied it, so nothing was changed; upgrade acm2 on this host to the newer version, then run again`;
}

/** User 1's DB and file tree, byte for byte. */
function userState(dataDir: string) {
  return { db: snapshotTree(path.dirname(userDbPath(dataDir, 1)))[path.basename(userDbPath(dataDir, 1))], tree: snapshotTree(userRoot(dataDir, 1)) };
}

async function jobs(dataDir: string) {
  return usingMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`), async (m) => [await m.latestJob(1), await m.latestJob(2)]);
}

describe('a user DB a newer acm2 migrated', () => {
  it('user seed <id> refuses it: exit 3, one sentence naming the DB and the migration; nothing changed, nothing left queued', async () => {
    const dataDir = await twoUsers();
    const name = migrateByNewerTool(dataDir);
    const before = userState(dataDir);
    const jobsBefore = await jobs(dataDir);
    const r = await acm2(dataDir, ['user', 'seed', '1', '--force']);
    expect(r.code).toBe(3);
    expect(r.stderr.trim()).toBe(`acm2: ${refusal(dataDir, name)}`);
    const j = await acm2(dataDir, ['user', 'seed', '1', '--json']);
    expect(j.code).toBe(3);
    expect(JSON.parse(j.stdout)).toEqual({ error: { code: 'schema_newer', message: refusal(dataDir, name) } });
    expect(userState(dataDir)).toEqual(before);
    // No --force job was queued for a newer acm2 to run later on the operator's behalf.
    expect(await jobs(dataDir)).toEqual(jobsBefore);
  });

  it('user seed --pending: that job waits for an upgraded acm2, its attempts untouched; the other users are seeded; exit 1 with the reason', async () => {
    const dataDir = await twoUsers();
    const name = migrateByNewerTool(dataDir);
    // Two seeds the queue has to finish (each user's last one failed): a queued --force of a ready
    // user would be closed unrun instead (seed-force-killed), before its DB's schema is looked at.
    for (const id of [1, 2]) {
      const db = new Database(userDbPath(dataDir, id));
      db.prepare(`UPDATE user_meta SET seed_status = 'failed'`).run();
      db.close();
    }
    await usingMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`), async (m) => {
      for (const id of [1, 2]) await m.enqueueSeedJob(id, 'v1');
    });
    const before = userState(dataDir);
    const r = await acm2(dataDir, ['user', 'seed', '--pending', '--concurrency', '1', '--json']);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { done: number; retrying: number; failed: number; failures: Array<{ userId: number; error: string; final: boolean }> };
    expect(out).toMatchObject({ done: 1, retrying: 1, failed: 0 });
    expect(out.failures).toEqual([{ userId: 1, jobId: expect.any(Number), final: false, error: expect.stringContaining(refusal(dataDir, name)) }]);
    expect(out.failures[0]!.error).toMatch(/the job stays queued, its attempts untouched, for an upgraded acm2/);
    const [one, two] = await jobs(dataDir);
    expect(one).toMatchObject({ status: 'pending', attempts: 0, lastError: refusal(dataDir, name) });
    expect(one!.nextAttemptAt).toBeGreaterThan(Date.now());
    expect(two).toMatchObject({ status: 'done' });
    expect(userState(dataDir)).toEqual(before);
  });

  it('backfill fails that user with schema_newer and the reason, and goes on with the others', async () => {
    const dataDir = await twoUsers();
    const name = migrateByNewerTool(dataDir);
    const before = userState(dataDir);
    const r = await acm2(dataDir, ['backfill', '--json']);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { failures: unknown[]; users: Array<{ id: number; outcome: string }> };
    expect(out.failures).toEqual([{ id: 1, action: 'fail', code: 'schema_newer', reason: `${userDbPath(dataDir, 1)} ${refusal(dataDir, name).replace(/^the user DB \S+ /, '')}` }]);
    expect(out.users.find((u) => u.id === 2)).toMatchObject({ outcome: 'ok' });
    expect(userState(dataDir)).toEqual(before);
  });

  it('diff --user refuses to compare it (exit 3, the sentence); user show reads it and says a newer acm2 migrated it', async () => {
    const dataDir = await twoUsers();
    const name = migrateByNewerTool(dataDir);
    const d = await acm2(dataDir, ['diff', '--user', '1']);
    expect(d.code).toBe(3);
    expect(d.stderr.trim()).toBe(
      `acm2: user 1's database ${userDbPath(dataDir, 1)} has migration ${name}, which this acm2 (${TOOL_VERSION}) does not know: a newer acm2 applied it, so this acm2 did not compare it; upgrade acm2 on this host to the newer version, then run again`,
    );
    expect((await acm2(dataDir, ['diff', '--user', '2'])).code).toBe(0);
    const s = await acm2(dataDir, ['user', 'show', '1', '--json']);
    expect(s.code).toBe(0);
    expect(JSON.parse(s.stdout)).toMatchObject({ status: 'ready', db: { newerMigrations: [name] } });
    expect(JSON.parse((await acm2(dataDir, ['user', 'show', '2', '--json'])).stdout).db).not.toHaveProperty('newerMigrations');
    const human = await acm2(dataDir, ['user', 'show', '1']);
    expect(human.stdout).toContain(`migrated by a newer acm2 (${name}): upgrade acm2 here to seed or verify it`);
  });
});

describe('a master a newer acm2 migrated', () => {
  it('every command refuses it with exit 3 (master_newer) before using it, read commands too', async () => {
    const dataDir = await twoUsers();
    const f = future(loadMigrations('master/sqlite').length);
    const file = path.join(dataDir, 'master.db');
    const db = new Database(file);
    db.prepare(`INSERT INTO acm2_master_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(f.id, f.name, 'f'.repeat(64), new Date().toISOString());
    db.close();
    const message = `the master sqlite:${file} has migration ${f.name}, which this acm2 (${TOOL_VERSION}) does not know: a newer acm2 applied it, so nothing was changed; upgrade acm2 on this host to the newer version, then run again`;
    const before = snapshotTree(dataDir);
    for (const args of [['user', 'list'], ['verify'], ['backfill', '--dry-run'], ['user', 'seed', '--pending'], ['user', 'create', '--email', 'cat@example.com', '--username', 'cat']]) {
      const r = await acm2(dataDir, [...args, '--json']);
      expect(r.code, args.join(' ')).toBe(3);
      expect(JSON.parse(r.stdout), args.join(' ')).toEqual({ error: { code: 'master_newer', message } });
    }
    expect(snapshotTree(dataDir)).toEqual(before);
  });
});
