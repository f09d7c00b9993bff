// Invariant 2: a crash at any instant (SIGKILL) never leaves a user ready-but-incomplete;
// a rerun converges and no staging is left behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { readyButIncomplete, unlistedFiles } from './helpers/complete.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { toolDir, userDbPath } from '../src/userdb/paths.js';

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

  it("killed right after 'committed': ready and complete", async () => {
    const u = await createUser(deps(), { email: 'committed@example.com', username: 'committed', async: true });
    const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(u.user.id), 'committed']);
    expect(r.signal).toBe('SIGKILL');
    expect(readyButIncomplete(world.dataDir, u.user.id, files())).toEqual({ ready: true, problems: [] });
    await converge(u.user.id);
  });
});

describe("an earlier attempt's staged DB", () => {
  const mapOf = (file: string) => new Database(file, { readonly: true }).prepare(`SELECT source_id, target_id FROM acm2_id_map ORDER BY source_id`).all();

  it('is taken over only when whole and ready inside; torn or unfinished ones are ignored and removed', async () => {
    const u = await createUser(deps(), { email: 'staged@example.com', username: 'staged', async: true });
    const r = spawnSync(process.execPath, [CHILD, world.dataDir, world.masterUrl, pkg.seedsDir, String(u.user.id), 'files_staged']);
    expect(r.signal).toBe('SIGKILL');
    const [whole] = stagingLeft(u.user.id);
    const dir = toolDir(world.dataDir, 'staging');
    const wholeMap = mapOf(path.join(dir, whole!));
    expect(wholeMap.length).toBeGreaterThan(0);
    // Newer than the whole one, so "newest wins" would pick them if they were trusted.
    writeFileSync(path.join(dir, `user_${u.user.id}-v1-00000001.db`), Buffer.alloc(8192, 7));
    const unfinished = path.join(dir, `user_${u.user.id}-v1-00000002.db`);
    copyFileSync(path.join(dir, whole!), unfinished);
    const db = new Database(unfinished);
    db.prepare(`UPDATE user_meta SET seed_status = 'in_progress'`).run();
    db.prepare(`UPDATE acm2_id_map SET target_id = 'x' || target_id`).run();
    db.close();

    await converge(u.user.id);
    expect(mapOf(userDbPath(world.dataDir, u.user.id))).toEqual(wholeMap);
  });
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
