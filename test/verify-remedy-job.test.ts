// verify's job_state_mismatch names a command that closes the job, also when the job is for
// another seed version than the one the user is ready with (an upgrade whose seeder died, or a DB
// restored from a backup taken before the upgrade): following it literally leaves verify clean.

import Database from 'better-sqlite3';
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
const worlds: World[] = [];
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 1 });
  freezeSeed({ sourceDb: pkg.source.dbPath, sourceFiles: pkg.source.filesDir, presetId: pkg.source.presetId, runId: pkg.source.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: false, renderReport: true });
});
afterAll(async () => {
  for (const w of worlds) await w.cleanup();
  pkg.cleanup();
});

async function oneUser() {
  const world = await sqliteWorld();
  worlds.push(world);
  const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
  const r = await createUser(deps, { email: 'ann@example.com', username: 'ann' });
  expect(r.seed).toMatchObject({ status: 'ready', seedVersion: 'v1' });
  return { world, deps, id: r.user.id };
}

/** Runs the `acm2 user seed …` command the job_state_mismatch message names, as an operator would. */
async function followRemedy(deps: Parameters<typeof seedOneUser>[0], message: string): Promise<void> {
  const m = /`acm2 user seed (\d+)(?: --seed-version (\S+))?`/.exec(message);
  expect(m, message).not.toBeNull();
  await seedOneUser(deps, m![1]!, { seedVersion: m![2] });
}

async function mismatch(deps: { master: World['master']; dataDir: string; seedsDir: string }, id: number): Promise<string> {
  const r = await verifyUsers(deps, { users: [id] });
  const p = r.users[0]!.problems;
  expect(p.map((x) => x.code)).toEqual(['job_state_mismatch']);
  return p[0]!.message;
}

describe('job_state_mismatch for a job of another version than the ready one', () => {
  it('a v2 job whose seeder died before changing anything (expired lease): the named command closes it', async () => {
    const { world, deps, id } = await oneUser();
    const m = new Database(path.join(world.dataDir, 'master.db'));
    const now = new Date().toISOString();
    m.prepare(
      `INSERT INTO acm2_seed_jobs (user_id, seed_version, status, attempts, locked_by, locked_until, next_attempt_at, created_at, updated_at) VALUES (?, 'v2', 'running', 1, 'gone', ?, 0, ?, ?)`,
    ).run(id, Date.now() - 60_000, now, now);
    m.close();
    await followRemedy(deps, await mismatch(deps, id));
    expect((await verifyUsers(deps, { users: [id] })).users[0]!.problems).toEqual([]);
  });

  it('a done v2 job, the DB restored from a backup taken at v1: the named command closes it', async () => {
    const { world, deps, id } = await oneUser();
    const backup = path.join(world.dataDir, 'backup.db');
    copyFileSync(userDbPath(world.dataDir, id), backup);
    expect((await seedOneUser(deps, String(id), { seedVersion: 'v2' })).seed.status).toBe('ready');
    copyFileSync(backup, userDbPath(world.dataDir, id));
    await followRemedy(deps, await mismatch(deps, id));
    expect((await verifyUsers(deps, { users: [id] })).users[0]!.problems).toEqual([]);
  });
});
