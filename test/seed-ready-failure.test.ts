// A seed of a user that is ready (`--force`, or another version) that fails before it changed any
// of the user's rows or files leaves the user ready: anything else in user_meta makes ACM2 answer
// 425 to every request of a user who was fine. One that began overwriting (--force) is not ready.

import Database from 'better-sqlite3';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { frozenSource, snapshotTree, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { seedUserAsync, type SeedStep } from '../src/core/seed-user.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
let v2: FrozenSource;
let world: World;
let flags: string;
const holders: ChildProcess[] = [];

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  v2 = frozenSource({ sourceDocs: 1 }, 'v2');
  world = await sqliteWorld();
  flags = tmpDir('acm2-held-');
});
afterAll(async () => {
  for (const h of holders) h.kill('SIGKILL');
  await world.cleanup();
  pkg.cleanup();
  v2.cleanup();
  rmSync(flags, { recursive: true, force: true });
});

const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 });

async function readyUser(name: string): Promise<number> {
  const u = await createUser(deps(), { email: `${name}@example.com`, username: name });
  expect(u.seed.status).toBe('ready');
  return u.user.id;
}

function state(id: number): { meta: unknown; seedState: unknown } {
  const db = new Database(userDbPath(world.dataDir, id), { readonly: true });
  try {
    return {
      meta: db.prepare(`SELECT seed_status, seed_version, seeded_at FROM user_meta WHERE user_id = ?`).get(id),
      seedState: db.prepare(`SELECT seed_version, status, started_at, finished_at, last_error FROM acm2_seed_state ORDER BY seed_version`).all(),
    };
  } finally {
    db.close();
  }
}

/**
 * ACM2 in a long write on the user's DB, begun by another process while the seed is at `step`
 * (`how`: BEGIN EXCLUSIVE keeps readers out too, as a write that spilled its cache does) and
 * ended `ms` later: past the seed's 5 s wait, within the wait of what the seed writes after it.
 * Returns the onStep hook; it comes back once the other process holds the lock.
 */
function acm2WritesAt(file: string, at: SeedStep, how: 'BEGIN EXCLUSIVE' | 'BEGIN IMMEDIATE', ms = 7500): (s: SeedStep) => void {
  return (s) => {
    if (s !== at) return;
    const flag = path.join(flags, `${path.basename(file)}-${s}`);
    const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec(process.argv[2]); require('fs').writeFileSync(process.argv[3], ''); setTimeout(() => { d.exec('ROLLBACK'); d.close(); }, Number(process.argv[4]));`;
    holders.push(spawn(process.execPath, ['-e', script, file, how, flag, String(ms)], { cwd: REPO, stdio: 'ignore' }));
    // The seed is synchronous between its steps: wait here until the lock is held.
    const nap = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 0; !existsSync(flag); i++) {
      if (i > 2000) throw new Error('the holder never took the lock');
      Atomics.wait(nap, 0, 0, 10);
    }
  };
}

describe('a seed of a ready user that fails before it changed anything of the user', () => {
  it('--force whose in_progress cannot be written (the DB locked past the wait): exit 3, the user stays ready, and says so', async () => {
    const id = await readyUser('force-busy');
    const file = userDbPath(world.dataDir, id);
    const before = state(id);
    const files = snapshotTree(userRoot(world.dataDir, id));
    const err = await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: pkg.pkg, force: true, onStep: acm2WritesAt(file, 'backed_up', 'BEGIN EXCLUSIVE') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'db_busy', message: expect.stringMatching(new RegExp(`is locked by another process .*; user ${id} stays ready with v1, its rows and files as they were$`)) });
    // user_meta and the tool's seed state as they were: ACM2 goes on serving the user.
    expect(state(id)).toEqual(before);
    expect(snapshotTree(userRoot(world.dataDir, id))).toEqual(files);
  }, 60_000);

  it('--force whose read of user_meta is locked out: the user stays ready', async () => {
    const id = await readyUser('force-busy-read');
    const file = userDbPath(world.dataDir, id);
    const before = state(id);
    const err = await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: pkg.pkg, force: true, onStep: acm2WritesAt(file, 'migrated', 'BEGIN EXCLUSIVE') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'db_busy', message: expect.stringMatching(new RegExp(`; user ${id} stays ready with v1, its rows and files as they were$`)) });
    expect(state(id)).toEqual(before);
  }, 60_000);

  it('user seed --force whose very first read is locked out (BEGIN EXCLUSIVE held past the wait): exit 3, says nothing was changed', async () => {
    const id = await readyUser('force-busy-first-read');
    const file = userDbPath(world.dataDir, id);
    const before = state(id);
    const files = snapshotTree(userRoot(world.dataDir, id));
    // ACM2 in a long write that keeps readers out, begun before the seed opens the DB and held
    // until the command is done: the seed never reads user_meta, so it cannot name a version.
    const flag = path.join(flags, `first-read-${id}`);
    const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec('BEGIN EXCLUSIVE'); require('fs').writeFileSync(process.argv[2], ''); setTimeout(() => { d.exec('ROLLBACK'); d.close(); }, 60000);`;
    const holder = spawn(process.execPath, ['-e', script, file, flag], { cwd: REPO, stdio: 'ignore' });
    holders.push(holder);
    for (let i = 0; !existsSync(flag); i++) {
      if (i > 2000) throw new Error('the holder never took the lock');
      await new Promise((r) => setTimeout(r, 10));
    }
    let r: Awaited<ReturnType<typeof execa>>;
    try {
      r = await execa(process.execPath, [path.join(REPO, 'bin', 'acm2.js'), 'user', 'seed', String(id), '--force', '--json', '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });
    } finally {
      holder.kill('SIGKILL');
      await new Promise((res) => (holder.exitCode !== null || holder.signalCode !== null ? res(undefined) : holder.once('exit', res)));
    }
    expect(r.exitCode).toBe(3);
    const doc = JSON.parse(String(r.stdout)) as { error: { code: string; message: string } };
    expect(doc.error.code).toBe('db_busy');
    expect(doc.error.message).toMatch(
      new RegExp(`is locked by another process .*; user ${id}'s user_meta could not be read, so nothing of the user was changed: it stays as it was, its rows and files as they were; job #\\d+ is closed, not queued: a --force runs only when asked \\(acm2 user seed ${id} --force\\)$`),
    );
    expect(state(id)).toEqual(before);
    expect(snapshotTree(userRoot(world.dataDir, id))).toEqual(files);
  }, 60_000);

  it('--force locked out of user_meta and still locked out when it would record the failure: says nothing was changed', async () => {
    const id = await readyUser('force-busy-read-long');
    const file = userDbPath(world.dataDir, id);
    const before = state(id);
    // Held past both waits (the read of user_meta, then the one of the failure's record).
    const err = await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: pkg.pkg, force: true, onStep: acm2WritesAt(file, 'migrated', 'BEGIN EXCLUSIVE', 30_000) }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      exitCode: 3,
      code: 'db_busy',
      message: expect.stringMatching(new RegExp(`is locked by another process .*; user ${id}'s user_meta could not be read, so nothing of the user was changed: it stays as it was, its rows and files as they were$`)),
    });
    const holder = holders[holders.length - 1]!;
    holder.kill('SIGKILL');
    await new Promise((res) => (holder.exitCode !== null || holder.signalCode !== null ? res(undefined) : holder.once('exit', res)));
    expect(state(id)).toEqual(before);
  }, 60_000);

  it('another version (--seed-version v2) whose commit is locked out after its files were written: back to ready with v1', async () => {
    const id = await readyUser('v2-busy');
    const file = userDbPath(world.dataDir, id);
    const before = state(id);
    const err = await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: v2.pkg, onStep: acm2WritesAt(file, 'files_moved', 'BEGIN IMMEDIATE') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'db_busy', message: expect.stringMatching(new RegExp(`; user ${id} stays ready with v1, its rows and files as they were$`)) });
    const after = state(id);
    expect(after.meta).toEqual(before.meta);
    // v1's record as it was; v2's says it failed.
    expect(after.seedState).toEqual([(before.seedState as unknown[])[0], expect.objectContaining({ seed_version: 'v2', status: 'failed', last_error: expect.stringMatching(/locked/) })]);
  }, 60_000);

  it('user seed --force with something in the way of the user folder: the job fails at once, the user stays ready', async () => {
    const id = await readyUser('force-root-file');
    const root = userRoot(world.dataDir, id);
    // Not the tool's doing: the user's folder moved aside and a plain file left in its place.
    renameSync(root, `${root}.moved`);
    writeFileSync(root, 'in the way');
    const before = state(id);
    const cli = (args: string[]) => execa(process.execPath, [path.join(REPO, 'bin', 'acm2.js'), ...args, '--json', '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });
    const r = await cli(['user', 'seed', String(id), '--force']);
    expect(r.exitCode).toBe(1);
    const doc = JSON.parse(r.stdout) as { seed: { status: string; error: string; retry?: string } };
    expect(doc.seed.error).toMatch(new RegExp(`user_${id} is a plain file, not the user's folder: .*move it aside, then run: acm2 user seed ${id} --force; user ${id} stays ready with v1, its rows and files as they were; job #\\d+ is closed, not queued: a --force runs only when asked$`));
    expect(doc.seed.retry).toBeUndefined();
    expect(state(id)).toEqual(before);
    const shown = JSON.parse((await cli(['user', 'show', String(id)])).stdout) as { status: string; job: { status: string; attempts: number } };
    expect(shown).toMatchObject({ status: 'ready', job: { status: 'failed', attempts: 1 } });
    expect(readFileSync(root, 'utf8')).toBe('in the way');
    // Moved back, --force goes through.
    rmSync(root);
    renameSync(`${root}.moved`, root);
    const again = JSON.parse((await cli(['user', 'seed', String(id), '--force'])).stdout) as { seed: { status: string } };
    expect(again.seed.status).toBe('ready');
  }, 60_000);

  it('--force of an edited user with something in the way of its folder: refused before any backup is made', async () => {
    const id = await readyUser('force-root-edited');
    const file = userDbPath(world.dataDir, id);
    // An edited seeded row: a --force that went ahead would back the DB up first.
    const db = new Database(file);
    try {
      const preset = db.prepare(`SELECT target_id FROM acm2_id_map WHERE kind = 'presets' LIMIT 1`).pluck().get();
      expect(db.prepare(`UPDATE presets SET name = 'edited by the user' WHERE id = ?`).run(preset).changes).toBe(1);
    } finally {
      db.close();
    }
    const root = userRoot(world.dataDir, id);
    renameSync(root, `${root}.moved`);
    writeFileSync(root, 'in the way');
    const before = state(id);
    const err = await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: pkg.pkg, force: true }).catch((e: unknown) => e);
    expect(err).toMatchObject({ needsOperator: true, message: expect.stringMatching(/is a plain file, not the user's folder/) });
    expect(state(id)).toEqual(before);
    // Nothing was overwritten, so there is nothing to keep: no backup the operator would wonder about.
    const backups = path.join(world.dataDir, '.acm2', 'backups', `user_${id}`);
    expect(existsSync(backups) ? readdirSync(backups) : []).toEqual([]);
  }, 60_000);
});

describe('a --force that began overwriting and then failed', () => {
  it('is not ready (ACM2 does not serve a half-restored user): failed, with the error', async () => {
    const id = await readyUser('force-late');
    const file = userDbPath(world.dataDir, id);
    const err = await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: pkg.pkg, force: true, onStep: acm2WritesAt(file, 'files_moved', 'BEGIN IMMEDIATE') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'db_busy' });
    expect((err as Error).message).not.toMatch(/stays ready/);
    // Its files are rewritten: "nothing was seeded" would be untrue.
    expect((err as Error).message).toMatch(/for more than 5 s: the seed stopped after writing its files, before its rows; run it again when the DB is free/);
    expect(state(id).meta).toMatchObject({ seed_status: expect.stringMatching(/^(failed|in_progress)$/) });
  }, 60_000);
});

describe('what a failed seed records', () => {
  it('a --force of another version seeded to the end before, failing before it wrote any file: that version stays ready', async () => {
    const id = await readyUser('force-other-ready');
    // Ready with v2 once, then back on v1 (CURRENT rolled back): v2's record says it was seeded to the end.
    expect(await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: v2.pkg })).toMatchObject({ outcome: 'seeded' });
    expect(await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: pkg.pkg })).toMatchObject({ outcome: 'already_ready', readyAgain: { from: 'v2' } });
    const before = state(id);
    expect(before.seedState).toEqual([expect.objectContaining({ seed_version: 'v1', status: 'ready' }), expect.objectContaining({ seed_version: 'v2', status: 'ready' })]);
    const files = snapshotTree(userRoot(world.dataDir, id));
    // The disk fails a read once v2's map is in the DB, before any of v2's files is written.
    const err = await seedUserAsync({
      dataDir: world.dataDir,
      userId: id,
      pkg: v2.pkg,
      force: true,
      onStep: (s) => {
        if (s === 'map_persisted') throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'io_error', message: expect.stringMatching(new RegExp(`; user ${id} stays ready with v1, its rows and files as they were$`)) });
    // Nothing of v2 was touched: its record still says it was seeded to the end.
    expect(state(id)).toEqual(before);
    expect(snapshotTree(userRoot(world.dataDir, id))).toEqual(files);
    // So a plain seed of v2 makes the user ready with it again, rewriting nothing.
    expect(await seedUserAsync({ dataDir: world.dataDir, userId: id, pkg: v2.pkg })).toMatchObject({ outcome: 'already_ready', readyAgain: { from: 'v1' } });
  }, 60_000);

  it("user show's last error of a failed --force is the sentence the command printed, not the driver's text", async () => {
    const id = await readyUser('force-busy-commit');
    // ACM2 holds the DB past the wait as the seed commits (after its files were rewritten).
    const err = await seedUserAsync({
      dataDir: world.dataDir,
      userId: id,
      pkg: pkg.pkg,
      force: true,
      onStep: (s) => {
        if (s === 'files_moved') throw Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' });
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'db_busy' });
    const sentence = (err as Error).message;
    expect(sentence).toMatch(/is locked by another process \(ACM2\?\) for more than 5 s/);
    expect(state(id).meta).toMatchObject({ seed_status: 'failed' });
    expect(state(id).seedState).toEqual([expect.objectContaining({ seed_version: 'v1', status: 'failed', last_error: sentence })]);
    const r = await execa(process.execPath, [path.join(REPO, 'bin', 'acm2.js'), 'user', 'show', String(id), '--json', '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 'failed', lastError: sentence });
  }, 60_000);
  it("a first seed that failed after naming its files records the printed sentence too", async () => {
    const id = 9001; // no master row needed: the seed itself, as a drain runs it
    const err = await seedUserAsync({
      dataDir: world.dataDir,
      userId: id,
      pkg: pkg.pkg,
      onStep: (s) => {
        if (s === 'files_staged') throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 3, code: 'disk_full', message: expect.stringMatching(/^disk full while writing /) });
    expect(state(id)).toMatchObject({ meta: { seed_status: 'failed' }, seedState: [{ seed_version: 'v1', status: 'failed', last_error: (err as Error).message }] });
  }, 60_000);
});
