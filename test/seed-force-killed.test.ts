// A direct `acm2 user seed <id> --force` killed outright (kill -9, a lost host) leaves its job
// running, with force set. The next `user seed --pending` (cron) takes such a job over: it must
// not do the --force out of the operator's sight when the --force changed nothing of the user
// (still ready), and must finish it when it had begun overwriting (the user not served meanwhile).

import Database from 'better-sqlite3';
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { readyButIncomplete } from './helpers/complete.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { renderSeed } from '../src/ui/users.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const CHILD = fileURLToPath(new URL('./helpers/crash-seed.mjs', import.meta.url));

let pkg: FrozenSource;
const worlds: World[] = [];
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 1 });
  freezeSeed({ sourceDb: pkg.source.dbPath, sourceFiles: pkg.source.filesDir, presetId: pkg.source.presetId, runId: pkg.source.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: false });
});
afterAll(async () => {
  for (const w of worlds) await w.cleanup();
  pkg.cleanup();
});

/** A user seeded with v1 (CURRENT) who then renamed the seeded preset and rewrote a seeded file. */
async function editedUser() {
  const world = await sqliteWorld();
  worlds.push(world);
  const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
  const r = await createUser(deps, { email: 'ann@example.com', username: 'ann' });
  expect(r.seed).toMatchObject({ status: 'ready', seedVersion: 'v1' });
  const id = r.user.id;
  const db = new Database(userDbPath(world.dataDir, id));
  const seededNames = db.prepare(`SELECT name FROM presets WHERE user_id = ?`).pluck().all(id) as string[];
  expect(db.prepare(`UPDATE presets SET name = 'my tuned preset'`).run().changes).toBe(1);
  const seeded = db.prepare(`SELECT path FROM acm2_seed_files WHERE seed_version = 'v1' ORDER BY path LIMIT 1`).pluck().get() as string;
  db.close();
  const file = path.join(userRoot(world.dataDir, id), seeded);
  writeFileSync(file, 'my own words');
  const acm2 = async (args: string[]) => {
    try {
      const out = await run(process.execPath, [BIN, '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir, '--json', ...args], {
        env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '' },
      });
      return { code: 0, stdout: out.stdout };
    } catch (e) {
      const x = e as { code: number; stdout: string };
      return { code: x.code, stdout: x.stdout };
    }
  };
  const edits = () => {
    const d = new Database(userDbPath(world.dataDir, id), { readonly: true });
    try {
      return { presets: d.prepare(`SELECT name FROM presets WHERE user_id = ?`).pluck().all(id), file: readFileSync(file, 'utf8'), meta: d.prepare(`SELECT seed_status, seed_version FROM user_meta`).get() };
    } finally {
      d.close();
    }
  };
  /** `acm2 user seed <id> --force` (of this version: '' for CURRENT) killed with SIGKILL right after the seed's step. */
  const killForceAt = (step: string, version = '') => {
    const k = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(id), step, version, 'force']);
    expect(k.signal, k.stderr.toString()).toBe('SIGKILL');
  };
  return { world, deps, id, seededNames, acm2, edits, killForceAt };
}

/**
 * What verify says of the user's master job. The user's rewritten seeded file is a verify finding
 * of its own (file_size_mismatch), whatever the job: only the job's story is asked here.
 */
async function jobFindings(deps: Parameters<typeof verifyUsers>[0], id: number): Promise<string[]> {
  const v = await verifyUsers(deps, { users: [id] });
  return v.users.flatMap((u) => u.problems).filter((p) => p.code !== 'file_size_mismatch').map((p) => `${p.code}: ${p.message}`);
}

const edited = { presets: ['my tuned preset'], file: 'my own words', meta: { seed_status: 'ready', seed_version: 'v1' } };

describe('acm2 user seed <id> --force killed outright', () => {
  it('before it changed anything: the next drain closes its job, failed, without doing it; --force again works', async () => {
    const { world, deps, id, seededNames, acm2, edits, killForceAt } = await editedUser();
    // Its backup is whole; the user is untouched (still ready with v1), the job left running.
    killForceAt('backed_up');
    const held = await world.master.latestJob(id);
    expect(held).toMatchObject({ status: 'running', force: true });
    expect(edits()).toEqual(edited);

    const drain = await acm2(['user', 'seed', '--pending', '--concurrency', '1']);
    expect(drain.code, drain.stdout).toBe(1);
    const error = `the acm2 user seed ${id} --force that ran this job stopped, its process gone (kill -9, a lost host), before it changed anything: user ${id} stays ready with v1, its rows and files as they were; job #${held!.id} is closed, not taken over: a --force runs only when asked (to restore the user's seeded rows and files, run: acm2 user seed ${id} --force)`;
    expect(JSON.parse(drain.stdout)).toMatchObject({ claimed: 1, done: 0, failed: 1, failures: [{ userId: id, jobId: held!.id, error, final: true }] });
    expect(await world.master.latestJob(id)).toMatchObject({ id: held!.id, status: 'failed', force: true, lastError: error });
    expect(edits()).toEqual(edited);
    // Nothing is left for a later drain; verify accepts a ready user whose last job is a failed --force.
    expect(JSON.parse((await acm2(['user', 'seed', '--pending', '--concurrency', '1'])).stdout)).toMatchObject({ claimed: 0 });
    expect(await jobFindings(deps, id)).toEqual([]);

    // The operator's --force, run again as told, restores the user (with a backup of the edits).
    const again = await seedOneUser(deps, String(id), { force: true });
    expect(again.seed).toMatchObject({ status: 'ready', outcome: 'restored', backup: expect.any(String) });
    expect(edits().presets).toEqual(seededNames);
    expect(await world.master.latestJob(id)).toMatchObject({ status: 'done', force: true });
  }, 60_000);

  it('of another version, before it changed anything: the closed job names --seed-version', async () => {
    const { world, id, acm2, edits, killForceAt } = await editedUser();
    killForceAt('migrated', 'v2');
    const drain = await acm2(['user', 'seed', '--pending', '--concurrency', '1']);
    expect(drain.code, drain.stdout).toBe(1);
    expect(await world.master.latestJob(id)).toMatchObject({
      status: 'failed',
      seedVersion: 'v2',
      lastError: expect.stringMatching(new RegExp(`^the acm2 user seed ${id} --force --seed-version v2 that ran this job .*: user ${id} stays ready with v1, .*run: acm2 user seed ${id} --force --seed-version v2\\)$`)),
    });
    expect(edits()).toEqual(edited);
  }, 60_000);

  it('after it began overwriting: the next drain takes it over and finishes it, the user ready at the package state', async () => {
    const { world, deps, id, seededNames, acm2, edits, killForceAt } = await editedUser();
    killForceAt('files_moved');
    expect(edits().meta).toEqual({ seed_status: 'in_progress', seed_version: 'v1' });
    const drain = await acm2(['user', 'seed', '--pending', '--concurrency', '1']);
    expect(drain.code, drain.stdout).toBe(0);
    expect(JSON.parse(drain.stdout)).toMatchObject({ claimed: 1, done: 1, failed: 0 });
    expect(await world.master.latestJob(id)).toMatchObject({ status: 'done', force: true });
    expect(readyButIncomplete(world.dataDir, id, pkg.pkg.manifest.files.length)).toEqual({ ready: true, problems: [] });
    expect(edits().presets).toEqual(seededNames);
    expect(edits().file).not.toBe('my own words');
    expect((await verifyUsers(deps, { users: [id] })).ok).toBe(true);
  }, 60_000);

  it('after it finished, before it closed its job: the next drain closes it, done, without doing it again', async () => {
    const { world, deps, id, seededNames, acm2, edits, killForceAt } = await editedUser();
    killForceAt('committed');
    expect(edits().presets).toEqual(seededNames);
    // ACM2 serves the restored user, who edits it again: no drain may overwrite that.
    const db = new Database(userDbPath(world.dataDir, id));
    db.prepare(`UPDATE presets SET name = 'tuned again'`).run();
    db.close();
    const drain = await acm2(['user', 'seed', '--pending', '--concurrency', '1']);
    expect(drain.code, drain.stdout).toBe(0);
    expect(JSON.parse(drain.stdout)).toMatchObject({ claimed: 1, done: 1, failed: 0 });
    expect(await world.master.latestJob(id)).toMatchObject({ status: 'done', force: true });
    expect(edits().presets).toEqual(['tuned again']);
    expect((await verifyUsers(deps, { users: [id] })).ok).toBe(true);
  }, 60_000);

  it('before it changed anything, then a plain user seed <id>: the --force is closed, not done; nothing to do', async () => {
    const { world, deps, id, acm2, edits, killForceAt } = await editedUser();
    killForceAt('backed_up');
    const held = await world.master.latestJob(id);
    const plain = await acm2(['user', 'seed', String(id)]);
    expect(plain.code, plain.stdout).toBe(0);
    const seed = JSON.parse(plain.stdout).seed;
    expect(seed).toMatchObject({ status: 'ready', outcome: 'already_ready' });
    // Said, not only done: "nothing to do" alone would hide that the --force never happened.
    expect(seed.closedForceJobs).toEqual([{ id: held!.id, status: 'failed', error: expect.stringMatching(/before it changed anything: user \d+ stays ready with v1.*run: acm2 user seed \d+ --force\)$/) }]);
    expect(renderSeed(seed, id).split('\n')).toEqual([
      expect.stringMatching(new RegExp(`^Job #${held!.id} is closed as failed: the acm2 user seed ${id} --force that ran this job stopped`)),
      `User ${id} is already ready with v1; nothing to do.`,
    ]);
    expect(await world.master.latestJob(id)).toMatchObject({ id: held!.id, status: 'failed', force: true, lastError: expect.stringMatching(/before it changed anything: user \d+ stays ready with v1/) });
    expect(edits()).toEqual(edited);
    expect(JSON.parse((await acm2(['user', 'seed', '--pending', '--concurrency', '1'])).stdout)).toMatchObject({ claimed: 0 });
    expect(await jobFindings(deps, id)).toEqual([]);
  }, 60_000);

  it('before it changed anything, then a plain user seed <id> that fails on a locked DB (exit 3): its error still names the closed --force', async () => {
    const { world, deps, id, killForceAt } = await editedUser();
    killForceAt('backed_up');
    const held = await world.master.latestJob(id);
    // ACM2 holds the user's DB in a write from the moment the plain seed has checked the --force's
    // job (and closed it) until past the seed's 5 s wait.
    let holder: Database.Database | undefined;
    const onStep = (step: string) => {
      if (step !== 'migrated' || holder) return;
      holder = new Database(userDbPath(world.dataDir, id));
      holder.exec('BEGIN EXCLUSIVE');
    };
    try {
      const err = await seedOneUser({ ...deps, onStep }, String(id), {}).then(
        () => undefined,
        (e: unknown) => e as { message: string; exitCode?: number },
      );
      expect(err?.exitCode).toBe(3);
      expect(err?.message).toMatch(/is locked by another process/);
      // The --force the operator asked for did not happen: said here too, not only in the master.
      expect(err?.message).toContain(`job #${held!.id}, of an earlier acm2 user seed ${id} --force whose process is gone, is closed as failed`);
    } finally {
      holder?.exec('ROLLBACK');
      holder?.close();
    }
    expect(await world.master.latestJob(id)).toMatchObject({ id: held!.id, status: 'failed', force: true });
  }, 60_000);
});
