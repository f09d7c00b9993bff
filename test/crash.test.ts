// Invariant 2: a crash at any instant (SIGKILL) never leaves a user ready-but-incomplete;
// a rerun converges and no staging is left behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { frozenSource, sqliteWorld, walkFiles, type FrozenSource, type World } from './helpers/env.js';
import { userDbTemplate } from '../src/userdb/template.js';
import { readyButIncomplete, unlistedFiles } from './helpers/complete.js';
import { createUser, seedOneUser, userStatus } from '../src/core/users.js';
import { renderStatus } from '../src/ui/users.js';
import { toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';
import { freezeSeed } from '../src/core/freeze.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const CHILD = fileURLToPath(new URL('./helpers/crash-seed.mjs', import.meta.url));
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;
let world: World;
beforeAll(async () => {
  // Big enough that seeding takes a while, so random kills land in the middle.
  pkg = frozenSource({ models: ['openai:o4-mini', 'google:gemini-2.5-flash', 'anthropic:claude-sonnet-4', 'openrouter:meta-llama/llama-3'], sourceDocs: 3, docBytes: 30_000, contents: 40 });
  world = await sqliteWorld();
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
});

const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 10_000 });
/** A second version of the package (the same source), beside v1, which stays CURRENT. */
const ensureV2 = () => {
  if (!existsSync(path.join(pkg.seedsDir, 'v2'))) freezeSeed({ sourceDb: pkg.source.dbPath, sourceFiles: pkg.source.filesDir, presetId: pkg.source.presetId, runId: pkg.source.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: false });
};
const files = () => pkg.pkg.manifest.files.length;

function stagingLeft(userId: number): string[] {
  const dir = toolDir(world.dataDir, 'staging');
  return existsSync(dir) ? readdirSync(dir).filter((n) => n.startsWith(`user_${userId}-`)) : [];
}

async function converge(userId: number) {
  const r = await seedOneUser(deps(), String(userId), {});
  expect(r.seed.status).toBe('ready');
  const after = readyButIncomplete(world.dataDir, userId, files());
  expect(after).toEqual({ ready: true, problems: [] });
  expect(stagingLeft(userId)).toEqual([]);
  // The rerun wrote the same paths as the killed attempt: nothing it wrote is left unlisted.
  expect(unlistedFiles(world.dataDir, userId)).toEqual([]);
  // The job the killed attempt held (running, its lease still live) is the rerun's to close.
  expect(await world.master.latestJob(userId)).toMatchObject({ status: 'done', lockedBy: null });
}

describe('SIGKILL at each step of seeding', () => {
  for (const step of ['db_staged', 'migrated', 'map_persisted', 'files_staged', 'files_moved']) {
    it(`killed after '${step}': not ready, rerun converges`, async () => {
      const u = await createUser(deps(), { email: `${step}@example.com`, username: step.replace('_', '-'), async: true });
      const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(u.user.id), step]);
      expect(r.signal).toBe('SIGKILL');
      const state = readyButIncomplete(world.dataDir, u.user.id, files());
      expect(state.ready).toBe(false);
      await converge(u.user.id);
    });
  }

  for (const step of ['linked', 'committed']) {
    it(`killed right after '${step}': ready and complete`, async () => {
      const u = await createUser(deps(), { email: `${step}@example.com`, username: step, async: true });
      const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(u.user.id), step]);
      expect(r.signal).toBe('SIGKILL');
      expect(readyButIncomplete(world.dataDir, u.user.id, files())).toEqual({ ready: true, problems: [] });
      await converge(u.user.id);
    });
  }
});

describe("an earlier attempt's staged build", () => {
  const mapOf = (file: string) => {
    const db = new Database(file, { readonly: true });
    try {
      return db.prepare(`SELECT seed_version, source_id, target_id FROM acm2_id_map ORDER BY seed_version, source_id`).all();
    } finally {
      db.close();
    }
  };
  const statusOf = (userId: number) => {
    const db = new Database(userDbPath(world.dataDir, userId), { readonly: true });
    try {
      return db.prepare(`SELECT seed_status FROM user_meta`).pluck().get();
    } finally {
      db.close();
    }
  };
  const killAt = async (name: string, step: string) => {
    const u = await createUser(deps(), { email: `${name}@example.com`, username: name, async: true });
    const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(u.user.id), step]);
    expect(r.signal).toBe('SIGKILL');
    return u.user.id;
  };

  it('is adopted when whole; torn, truncated and unfinished ones are ignored and removed', async () => {
    const id = await killAt('staged', 'files_staged');
    const [whole] = stagingLeft(id);
    expect(whole).toMatch(/\.db$/);
    const dir = toolDir(world.dataDir, 'staging');
    const wholeFile = path.join(dir, whole!);
    const wholeMap = mapOf(wholeFile);
    expect(wholeMap.length).toBeGreaterThan(0);
    // All newer than the whole one, so "newest wins" would pick them if they were trusted.
    writeFileSync(path.join(dir, `user_${id}-v1-00000001.db`), Buffer.alloc(8192, 7));
    const bytes = readFileSync(wholeFile);
    writeFileSync(path.join(dir, `user_${id}-v1-00000002.db`), bytes.subarray(0, Math.floor(bytes.length / 2)));
    const unfinished = path.join(dir, `user_${id}-v1-00000003.building`);
    copyFileSync(wholeFile, unfinished);
    const db = new Database(unfinished);
    db.prepare(`UPDATE acm2_id_map SET target_id = 'x' || target_id`).run();
    db.close();

    await converge(id);
    expect(mapOf(userDbPath(world.dataDir, id))).toEqual(wholeMap);
  });

  it('of an older version is adopted when the package has moved on: its files stay listed', async () => {
    const id = await killAt('moved-on', 'files_moved');
    const v1Map = mapOf(path.join(toolDir(world.dataDir, 'staging'), stagingLeft(id)[0]!));
    ensureV2();
    const r = await seedOneUser(deps(), String(id), { seedVersion: 'v2' });
    expect(r.seed).toMatchObject({ status: 'ready', seedVersion: 'v2' });
    expect(readyButIncomplete(world.dataDir, id, files())).toEqual({ ready: true, problems: [] });
    expect(stagingLeft(id)).toEqual([]);
    // The v1 attempt's files are still named by its seeded-file list, under the ids it wrote them with.
    expect(unlistedFiles(world.dataDir, id)).toEqual([]);
    expect(mapOf(userDbPath(world.dataDir, id))).toEqual(expect.arrayContaining(v1Map));
  });

  it('of another version, beside a DB that appeared meanwhile, goes with the files it wrote; nothing is left unlisted', async () => {
    const id = await killAt('beside-db', 'files_moved');
    const [build] = stagingLeft(id);
    const written = walkFiles(userRoot(world.dataDir, id));
    expect(written.length).toBe(files()); // the killed v1 attempt wrote every file
    // ACM2 made the user's DB before the next seed, which comes with the package moved on.
    copyFileSync(userDbTemplate(world.dataDir), userDbPath(world.dataDir, id));
    // A file of the user's own that happens to sit in one of the build's folders stays.
    const own = path.join(userRoot(world.dataDir, id), path.dirname(written[0]!), 'mine.txt');
    writeFileSync(own, 'mine');
    ensureV2();
    const r = await seedOneUser(deps(), String(id), { seedVersion: 'v2' });
    expect(r.seed).toMatchObject({ status: 'ready', seedVersion: 'v2' });
    expect(build).toBeDefined();
    expect(stagingLeft(id)).toEqual([]);
    expect(readyButIncomplete(world.dataDir, id, files())).toEqual({ ready: true, problems: [] });
    expect(unlistedFiles(world.dataDir, id)).toEqual([path.relative(userRoot(world.dataDir, id), own)]);
    expect(readFileSync(own, 'utf8')).toBe('mine');
  });

  it('killed between its link into place and dropping its staged name is the live DB, not a leftover: an upgrade after it loses no file', async () => {
    const id = await killAt('linked-then-upgrade', 'linked');
    expect(stagingLeft(id)).toHaveLength(1); // the same file as user_{id}.db, under its staged name
    ensureV2();
    const r = await seedOneUser(deps(), String(id), { seedVersion: 'v2' });
    expect(r.seed).toMatchObject({ status: 'ready', seedVersion: 'v2' });
    expect(stagingLeft(id)).toEqual([]);
    const db = new Database(userDbPath(world.dataDir, id), { readonly: true });
    const listed = db.prepare(`SELECT seed_version AS v, path FROM acm2_seed_files ORDER BY path`).all() as { v: string; path: string }[];
    db.close();
    expect(listed.filter((f) => f.v === 'v1')).toHaveLength(files());
    expect(listed.filter((f) => f.v === 'v2')).toHaveLength(files());
    for (const f of listed) expect(existsSync(path.join(userRoot(world.dataDir, id), f.path)), f.path).toBe(true);
  });

  it('that fails after its barrier is put in place failed, never ready; the retry reuses its ids', async () => {
    const u = await createUser(deps(), { email: 'in-the-way@example.com', username: 'in-the-way', async: true });
    const id = u.user.id;
    writeFileSync(userRoot(world.dataDir, id), 'in the way'); // the user's folder cannot be made
    const r = await seedOneUser(deps(), String(id), {});
    expect(r.seed.status).toBe('failed');
    expect(statusOf(id)).toBe('failed');
    expect(stagingLeft(id)).toEqual([]);
    const failedMap = mapOf(userDbPath(world.dataDir, id));
    rmSync(userRoot(world.dataDir, id));
    await converge(id);
    expect(mapOf(userDbPath(world.dataDir, id))).toEqual(failedMap);
  });
});

describe('a seeder killed mid-seed, as user show tells it', () => {
  it('names the dead worker holding the job, until when, and the command that takes it over', async () => {
    const u = await createUser(deps(), { email: 'held-job@example.com', username: 'held-job', async: true });
    const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(u.user.id), 'files_moved']);
    expect(r.signal).toBe('SIGKILL');
    const s = await userStatus({ master: world.master, dataDir: world.dataDir }, (await world.master.getUser(u.user.id))!);
    expect(s.job).toMatchObject({ status: 'running', lockedBy: expect.stringMatching(/:\d+:/), lockedUntil: expect.stringMatching(/^\d{4}-/) });
    // The worker was a process of this host, and it is gone: said as a fact, not an "if".
    expect(renderStatus(s)).toContain(`(held by ${s.job!.lockedBy}, a process of this host that is gone: acm2 user seed ${u.user.id} or the next acm2 user seed --pending takes it over now)`);
    // A worker of another host (or one this host cannot look up) may be at work: until when, and an "if".
    const elsewhere = { ...s, job: { ...s.job!, lockedBy: `other-host:${process.pid}:abcdef` } };
    expect(renderStatus(elsewhere)).toContain(`(held by other-host:${process.pid}:abcdef until ${s.job!.lockedUntil}; if that process is gone, acm2 user seed ${u.user.id} takes it over now)`);
    await converge(u.user.id);
  });
});

describe('a worker killed on the last attempt of a seed that had finished', () => {
  it('leaves a ready user with a failed job; user seed closes it with a job of its own, once', async () => {
    const u = await createUser(deps(), { email: 'last-attempt@example.com', username: 'last-attempt' });
    const id = u.user.id;
    expect(u.seed?.status).toBe('ready');
    // What the queue leaves when the worker died after the commit on its last attempt.
    const job = await world.master.enqueueSeedJob(id, 'v1', { force: true, maxAttempts: 1 });
    expect((await world.master.claimJobForUser(id, 'dead', 1000, undefined, 'v1'))?.id).toBe(job.id);
    expect(await world.master.finishJob(job.id, 'dead', { status: 'failed', error: 'lease expired on its last attempt' })).toBe(true);
    const jobs = await world.master.countJobs();

    const r = await seedOneUser(deps(), String(id), {});
    expect(r.seed).toMatchObject({ status: 'ready', outcome: 'already_ready' });
    expect(await world.master.latestJob(id)).toMatchObject({ status: 'done', seedVersion: 'v1' });
    expect(await world.master.countJobs()).toBe(jobs + 1);
    await seedOneUser(deps(), String(id), {});
    expect(await world.master.countJobs()).toBe(jobs + 1);
  });
});

describe('SIGKILL during an upgrade of a ready user', () => {
  it("leaves the user's edits of the version it had alone: a seed of that version after the crash makes it ready again, rewriting nothing", async () => {
    const u = await createUser(deps(), { email: 'upgrading@example.com', username: 'upgrading' });
    const id = u.user.id;
    expect(u.seed?.status).toBe('ready');
    // The user renames the seeded preset and edits a seeded file.
    const db = new Database(userDbPath(world.dataDir, id));
    expect(db.prepare(`UPDATE presets SET name = 'my own preset'`).run().changes).toBe(1);
    const seeded = db.prepare(`SELECT path FROM acm2_seed_files WHERE seed_version = 'v1' ORDER BY path LIMIT 1`).pluck().get() as string;
    db.close();
    const edited = path.join(userRoot(world.dataDir, id), seeded);
    writeFileSync(edited, 'my own words');
    ensureV2();
    const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(id), 'files_moved', 'v2']);
    expect(r.signal).toBe('SIGKILL');

    const again = await seedOneUser(deps(), String(id), {}); // CURRENT is still v1
    expect(again.seed).toMatchObject({ status: 'ready', seedVersion: 'v1', outcome: 'already_ready' });
    const after = new Database(userDbPath(world.dataDir, id), { readonly: true });
    try {
      expect(after.prepare(`SELECT name FROM presets WHERE user_id = ?`).pluck().all(id)).toEqual(['my own preset']);
      expect(after.prepare(`SELECT seed_status, seed_version FROM user_meta`).get()).toEqual({ seed_status: 'ready', seed_version: 'v1' });
      expect(after.prepare(`SELECT status FROM acm2_seed_state WHERE seed_version = 'v2'`).pluck().get()).toBe('failed');
    } finally {
      after.close();
    }
    expect(readFileSync(edited, 'utf8')).toBe('my own words');
    // Upgrading later still works, from where the crashed attempt stopped.
    const up = await seedOneUser(deps(), String(id), { seedVersion: 'v2' });
    expect(up.seed).toMatchObject({ status: 'ready', seedVersion: 'v2' });
    expect(readFileSync(edited, 'utf8')).toBe('my own words');
  });
});

describe('SIGKILL during user seed --force over a user who edited seeded rows and files', () => {
  for (const step of ['backed_up', 'map_persisted', 'files_staged', 'files_moved']) {
    it(`killed after '${step}': the backup of the edits is already whole; --force again converges`, async () => {
      const u = await createUser(deps(), { email: `force-${step}@example.com`, username: `force-${step.replace('_', '-')}` });
      const id = u.user.id;
      const db = new Database(userDbPath(world.dataDir, id));
      expect(db.prepare(`UPDATE presets SET name = 'my own preset'`).run().changes).toBe(1);
      const seeded = db.prepare(`SELECT path FROM acm2_seed_files WHERE path LIKE '%/generated/%' ORDER BY path LIMIT 1`).pluck().get() as string;
      db.close();
      writeFileSync(path.join(userRoot(world.dataDir, id), seeded), 'my own words');
      const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(id), step, '', 'force']);
      expect(r.signal).toBe('SIGKILL');
      // Every overwrite comes after the backup: it is whole (no .partial), with the edits in it.
      const dir = toolDir(world.dataDir, 'backups', `user_${id}`);
      const kept = readdirSync(dir);
      expect(kept).toEqual([expect.stringMatching(new RegExp(`^user_${id}-force-\\d{8}T\\d{6}Z-[0-9a-f]{6}$`))]);
      const backup = new Database(path.join(dir, kept[0]!, `user_${id}.db`), { readonly: true });
      try {
        expect(backup.prepare(`SELECT name FROM presets`).pluck().all()).toEqual(['my own preset']);
      } finally {
        backup.close();
      }
      expect(readFileSync(path.join(dir, kept[0]!, `user_${id}`, seeded), 'utf8')).toBe('my own words');
      // The operator's --force again converges: ready and complete, the rows and files at the package state.
      const again = await seedOneUser(deps(), String(id), { force: true });
      expect(again.seed.status).toBe('ready');
      expect(readyButIncomplete(world.dataDir, id, files())).toEqual({ ready: true, problems: [] });
      expect(stagingLeft(id)).toEqual([]);
      expect(unlistedFiles(world.dataDir, id)).toEqual([]);
      expect(readdirSync(dir).filter((n) => n.endsWith('.partial'))).toEqual([]);
    });
  }
});

describe('SIGKILL at random instants', () => {
  it('never leaves a user ready but incomplete, and every rerun converges', async () => {
    const kills = 12;
    let killedMidway = 0;
    for (let i = 0; i < kills; i++) {
      const u = await createUser(deps(), { email: `rnd${i}@example.com`, username: `rnd${i}`, async: true });
      const child = spawn(process.execPath, [BIN, 'user', 'seed', String(u.user.id), '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir, '--quiet'], { stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      const delay = 80 + Math.floor(Math.random() * 400);
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      await exited;
      const state = readyButIncomplete(world.dataDir, u.user.id, files());
      expect(state.problems, `kill at ${delay} ms`).toEqual([]);
      if (!state.ready) killedMidway++;
      await converge(u.user.id);
    }
    // The kills must actually interrupt some seeds, or the test proves nothing.
    expect(killedMidway).toBeGreaterThan(0);
  });
});
