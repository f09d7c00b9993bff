// user_meta and the tool's seed record (acm2_seed_state) are written in one transaction, so they
// only disagree after a hand edit or a DB pieced together: user_meta ready with a version whose
// seed the record does not have finished. verify says so, naming the --force that ends it (a
// plain seed finds the user ready and changes nothing), and that command does end it.

import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { userDbPath } from '../src/userdb/paths.js';
import type { Problem } from '../src/core/verify.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const CHILD = fileURLToPath(new URL('./helpers/crash-seed.mjs', import.meta.url));

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

async function acm2(world: World, args: string[]) {
  return execa('node', [BIN, ...args, '--data-dir', world.dataDir, '--seeds', pkg.seedsDir], { reject: false });
}

async function problemsOf(world: World, id: number): Promise<Problem[]> {
  const r = await acm2(world, ['verify', '--json', '--user', String(id)]);
  return (JSON.parse(r.stdout) as { users: Array<{ problems: Problem[] }> }).users[0]!.problems;
}

/** A user seeded with v1 (CURRENT) and then v2: ready with v2, both recorded ready. */
async function userWithTwoVersions(): Promise<{ world: World; id: number }> {
  const world = await sqliteWorld();
  worlds.push(world);
  const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
  const id = (await createUser(deps, { email: 'ann@example.com', username: 'ann' })).user.id;
  expect((await seedOneUser(deps, String(id), { seedVersion: 'v2' })).seed.status).toBe('ready');
  expect(await problemsOf(world, id)).toEqual([]);
  return { world, id };
}

function sql(world: World, id: number, ...statements: string[]): void {
  const db = new Database(userDbPath(world.dataDir, id));
  try {
    for (const s of statements) db.prepare(s).run();
  } finally {
    db.close();
  }
}

/** The seed_version_unknown about the seed record, and the command its message names. */
async function recordProblem(world: World, id: number): Promise<{ problem: Problem; remedy: string[] }> {
  const problems = await problemsOf(world, id);
  const found = problems.filter((p) => p.code === 'seed_version_unknown');
  expect(found, JSON.stringify(problems)).toHaveLength(1);
  const problem = found[0]!;
  expect(problem).toMatchObject({ severity: 'error', table: 'acm2_seed_state' });
  const remedy = /`acm2 ([^`]+)`/.exec(problem.message)?.[1];
  expect(remedy, problem.message).toBeDefined();
  return { problem, remedy: remedy!.split(' ') };
}

async function applyRemedy(world: World, id: number, remedy: string[]): Promise<void> {
  const r = await acm2(world, remedy);
  expect(r.exitCode, r.stderr).toBe(0);
  expect(await problemsOf(world, id)).toEqual([]);
}

describe('user_meta ready with a version the seed record does not have finished', () => {
  it('a --force killed part way, then user_meta set back to ready by hand: reported, and the --force it names ends it', async () => {
    const { world, id } = await userWithTwoVersions();
    const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(id), 'files_moved', 'v2', 'force']);
    expect(r.signal).toBe('SIGKILL');
    expect((await problemsOf(world, id)).map((p) => p.code)).toContain('not_ready');
    // The operator's quick fix for the 425s.
    sql(world, id, `UPDATE user_meta SET seed_status = 'ready'`);
    const { problem, remedy } = await recordProblem(world, id);
    expect(problem.message).toMatch(/user_meta is ready with seed version 'v2', but the tool's seed record \(acm2_seed_state\) says 'in_progress'/);
    expect(remedy).toEqual(['user', 'seed', String(id), '--force', '--seed-version', 'v2']);
    // A plain seed finds the user ready and leaves the record as it is.
    expect((await acm2(world, ['user', 'seed', String(id), '--seed-version', 'v2'])).exitCode).toBe(0);
    expect((await recordProblem(world, id)).remedy).toEqual(remedy);
    await applyRemedy(world, id, remedy);
  });

  it('no record of the version at all (a DB pieced together from two copies): reported, and the --force ends it', async () => {
    const { world, id } = await userWithTwoVersions();
    sql(world, id, `DELETE FROM acm2_seed_state WHERE seed_version = 'v2'`);
    const { problem, remedy } = await recordProblem(world, id);
    expect(problem.message).toMatch(/acm2_seed_state\) has no row for v2/);
    await applyRemedy(world, id, remedy);
  });

  it('user_meta moved back to an earlier version whose last seed failed: reported for that version', async () => {
    const { world, id } = await userWithTwoVersions();
    sql(world, id, `UPDATE user_meta SET seed_version = 'v1'`, `UPDATE acm2_seed_state SET status = 'failed', last_error = 'x' WHERE seed_version = 'v1'`);
    const { problem, remedy } = await recordProblem(world, id);
    expect(problem.message).toMatch(/ready with seed version 'v1'.*says 'failed'/);
    expect(remedy).toEqual(['user', 'seed', String(id), '--force', '--seed-version', 'v1']);
    // (The master's latest job becomes the --force's, of v1: the job disagrees no more either.)
    await applyRemedy(world, id, remedy);
  });

  it('a user moved back to a version it was made complete with (both recorded ready) is fine', async () => {
    const { world, id } = await userWithTwoVersions();
    const r = await acm2(world, ['user', 'seed', String(id), '--seed-version', 'v1']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await problemsOf(world, id)).toEqual([]);
  });
});
