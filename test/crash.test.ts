// Invariant 2: a crash at any instant (SIGKILL) never leaves a user ready-but-incomplete;
// a rerun converges and no staging is left behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { readyButIncomplete } from './helpers/complete.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { toolDir } from '../src/userdb/paths.js';

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
