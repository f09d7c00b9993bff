// A direct `acm2 user seed <id> --force` that fails closes its job: left queued, a later
// `user seed --pending` (cron) did the --force once the cause passed, overwriting the user's edits
// out of the operator's sight, after the operator saw it fail. A plain seed's job stays queued.

import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, drainQueue, seedOneUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;
const worlds: World[] = [];
const dirs: string[] = [];
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 1 });
  freezeSeed({ sourceDb: pkg.source.dbPath, sourceFiles: pkg.source.filesDir, presetId: pkg.source.presetId, runId: pkg.source.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: false, renderReport: true });
});
afterAll(async () => {
  for (const w of worlds) await w.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  pkg.cleanup();
});

function presetNames(dataDir: string, id: number): string[] {
  const db = new Database(userDbPath(dataDir, id), { readonly: true });
  try {
    return db.prepare(`SELECT name FROM presets WHERE user_id = ? ORDER BY name`).pluck().all(id) as string[];
  } finally {
    db.close();
  }
}

describe('acm2 user seed <id> --force that fails on something that may pass', () => {
  it('closes its job: a later drain does not force out of sight, the user stays ready with its edits, verify is clean', async () => {
    const dataDir = tmpDir('acm2-force-failed-');
    dirs.push(dataDir);
    const acm2 = async (args: string[]) => {
      try {
        const r = await run(process.execPath, [BIN, '--data-dir', dataDir, '--seeds', pkg.seedsDir, '--json', ...args], {
          env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_RETRY_BASE_MS: '0', ACM2_MASTER_URL: '' },
        });
        return { code: 0, stdout: r.stdout };
      } catch (e) {
        const x = e as { code: number; stdout: string };
        return { code: x.code, stdout: x.stdout };
      }
    };
    expect((await acm2(['user', 'create', '--email', 'ann@example.com', '--username', 'ann'])).code).toBe(0);
    const seededNames = presetNames(dataDir, 1);

    // The user tuned a seeded preset; ACM2 is in a long write on the DB (past the seed's wait).
    const acm2Db = new Database(userDbPath(dataDir, 1));
    try {
      acm2Db.prepare(`UPDATE presets SET name = 'my tuned preset'`).run();
      acm2Db.exec('BEGIN IMMEDIATE');
      acm2Db.exec('CREATE TABLE acm2_probe (a)');
      const force = await acm2(['user', 'seed', '1', '--force']);
      expect(force.code).toBe(3);
      const err = (JSON.parse(force.stdout) as { error: { code: string; message: string } }).error;
      expect(err.code).toBe('db_busy');
      // One sentence: why, that the user is as it was, that nothing will do it later, and how to do it again.
      expect(err.message).toMatch(/is locked by another process .*; user 1 stays ready with v1, its rows and files as they were; job #\d+ is closed, not queued: a --force runs only when asked \(acm2 user seed 1 --force\)$/);
      acm2Db.exec('ROLLBACK');
    } finally {
      acm2Db.close();
    }

    // ACM2's write is over: cron's drain finds nothing to do, and the user's edit is still there.
    const drain = await acm2(['user', 'seed', '--pending']);
    expect(drain.code, drain.stdout).toBe(0);
    expect(JSON.parse(drain.stdout)).toMatchObject({ claimed: 0, done: 0, retrying: 0 });
    expect(presetNames(dataDir, 1)).toEqual(['my tuned preset']);

    // user show: ready as it was, its last job the failed --force; verify accepts that.
    const shown = JSON.parse((await acm2(['user', 'show', '1'])).stdout) as { status: string; job: { status: string } };
    expect(shown).toMatchObject({ status: 'ready', job: { status: 'failed' } });
    const verified = await acm2(['verify']);
    expect(verified.code, verified.stdout).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ ok: true, failed: 0 });

    // The operator runs it again, as told: restored, with a backup of the edit.
    const again = await acm2(['user', 'seed', '1', '--force']);
    expect(again.code, again.stdout).toBe(0);
    expect(JSON.parse(again.stdout).seed).toMatchObject({ status: 'ready', outcome: 'restored', backup: expect.any(String) });
    expect(presetNames(dataDir, 1)).toEqual(seededNames);
    expect((await acm2(['verify'])).code).toBe(0);
  }, 60_000);
});

describe('a direct seed that fails (exit 1): the command to run again is the one that was run', () => {
  async function readyUser() {
    const world = await sqliteWorld();
    worlds.push(world);
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const r = await createUser(deps, { email: 'ben@example.com', username: 'ben' });
    expect(r.seed).toMatchObject({ status: 'ready', seedVersion: 'v1' });
    return { world, deps, id: r.user.id };
  }
  // A fault of no known kind once the backup is made (before anything of the user is changed).
  const failAt = (s: string) => {
    if (s === 'backed_up' || s === 'files_staged') throw new Error('something went wrong');
  };

  it('--force: its job is closed and retry names --force; no drain takes it', async () => {
    const { world, deps, id } = await readyUser();
    const r = await seedOneUser({ ...deps, onStep: failAt }, String(id), { force: true });
    expect(r.seed).toMatchObject({ status: 'failed', retry: `acm2 user seed ${id} --force` });
    expect(r.seed.error).toMatch(new RegExp(`^something went wrong; user ${id} stays ready with v1, its rows and files as they were; job #${r.seed.jobId} is closed, not queued: a --force runs only when asked$`));
    expect(await world.master.latestJob(id)).toMatchObject({ id: r.seed.jobId, status: 'failed', force: true, attempts: 1 });
    expect(await drainQueue(deps, {})).toMatchObject({ claimed: 0 });
    expect((await verifyUsers(deps, { users: [id] })).ok).toBe(true);
  });

  it('another version, no --force: its job stays queued for a retry, and retry names the version', async () => {
    const { world, deps, id } = await readyUser();
    const r = await seedOneUser({ ...deps, onStep: failAt }, String(id), { seedVersion: 'v2' });
    expect(r.seed).toMatchObject({ status: 'failed', retry: `acm2 user seed ${id} --seed-version v2` });
    expect(r.seed.error).not.toMatch(/closed/);
    expect(await world.master.latestJob(id)).toMatchObject({ id: r.seed.jobId, seedVersion: 'v2', status: 'pending', force: false, attempts: 1 });
  });
  it('one an operator must clear first: the remedy it names is the seed that was run, flags and all', async () => {
    const { world, deps, id } = await readyUser();
    // Not the tool's doing: a plain file where the user's folder goes.
    const root = userRoot(world.dataDir, id);
    renameSync(root, `${root}.moved`);
    writeFileSync(root, 'in the way');
    const v2 = await seedOneUser(deps, String(id), { seedVersion: 'v2' });
    expect(v2.seed).toMatchObject({ status: 'failed' });
    expect(v2.seed.retry).toBeUndefined();
    // A bare `acm2 user seed <id>` would find the user ready with CURRENT (v1) and close v2's job.
    expect(v2.seed.error).toMatch(new RegExp(`move it aside, then run: acm2 user seed ${id} --seed-version v2; user ${id} stays ready with v1`));
    expect(await world.master.latestJob(id)).toMatchObject({ id: v2.seed.jobId, status: 'failed', lastError: v2.seed.error });
    const force = await seedOneUser(deps, String(id), { force: true });
    expect(force.seed.error).toMatch(new RegExp(`move it aside, then run: acm2 user seed ${id} --force; user ${id} stays ready with v1, its rows and files as they were; job #${force.seed.jobId} is closed, not queued: a --force runs only when asked$`));
  });
});
