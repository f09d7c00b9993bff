// `user create --seed-version <v>` (v not CURRENT) whose seed is stopped by something only an
// operator can move (data already under the new id) names the command to run once it is moved.
// Followed word for word, that command must seed v: a bare `acm2 user seed <id>` seeds CURRENT,
// so the user would end up with another version than the one the create was given.

import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, runCli, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
let world: World;
/** What the test moved out of the data dir, removed with it. */
const movedOut: string[] = [];
beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  freezeSeed({ sourceDb: pkg.source.dbPath, sourceFiles: pkg.source.filesDir, presetId: pkg.source.presetId, runId: pkg.source.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: false, renderReport: true });
  world = await sqliteWorld();
});
afterAll(async () => {
  await world.cleanup();
  for (const p of movedOut) rmSync(p, { recursive: true, force: true });
  pkg.cleanup();
});

const acm2 = (args: string[]) => runCli(world.dataDir, pkg.seedsDir, [...args, '--json']);

/** The command the error says to run once the thing in the way is moved, as acm2 argv. */
function remedyIn(error: string, id: number): string[] {
  const m = /then run: (acm2 user seed [^;]+?)(?:;|$)/.exec(error);
  expect(m, error).not.toBeNull();
  const words = m![1]!.split(' ');
  expect(words.slice(0, 4)).toEqual(['acm2', 'user', 'seed', String(id)]);
  return words.slice(1);
}

describe('user create --seed-version of another version than CURRENT, stopped by data already under the new id', () => {
  it('names that version in its remedy, and following it seeds that version', async () => {
    // The first user takes id 1 and CURRENT (v1); the next id the master gives is 2.
    const first = JSON.parse((await acm2(['user', 'create', '--email', 'first@example.com', '--username', 'first'])).stdout) as { user: { id: number } };
    const next = first.user.id + 1;
    const root = userRoot(world.dataDir, next);
    mkdirSync(root);
    writeFileSync(path.join(root, 'notes.txt'), 'from another master');
    const r = await acm2(['user', 'create', '--email', 'create-remedy@example.com', '--username', 'create-remedy', '--seed-version', 'v2']);
    const doc = JSON.parse(r.stdout) as { user: { id: number }; seed: { status: string; seedVersion: string; error: string } };
    expect(doc.user.id).toBe(next);
    expect(doc.seed).toMatchObject({ status: 'failed', seedVersion: 'v2' });
    const remedy = remedyIn(doc.seed.error, next);
    movedOut.push(`${world.dataDir}-user_${next}.foreign`);
    renameSync(root, movedOut[0]!);
    const again = await acm2(remedy);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ seed: { status: 'ready', seedVersion: 'v2' } });
  }, 60_000);

  it('a create of CURRENT keeps the bare command', async () => {
    const made = JSON.parse((await acm2(['user', 'create', '--email', 'probe@example.com', '--username', 'probe'])).stdout) as { user: { id: number } };
    const next = made.user.id + 1;
    const root = userRoot(world.dataDir, next);
    mkdirSync(root);
    const r = JSON.parse((await acm2(['user', 'create', '--email', 'plain@example.com', '--username', 'plain'])).stdout) as { seed: { status: string; error: string } };
    expect(r.seed.status).toBe('failed');
    expect(remedyIn(r.seed.error, next)).toEqual(['user', 'seed', String(next)]);
    rmSync(root, { recursive: true });
  }, 60_000);
});
