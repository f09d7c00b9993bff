// A user seeded with v1 then v2 holds both copies; verify checks both. A problem in the v1 copy
// must say it is v1's: `user show` says v2, and --force --seed-version v2 does not restore it.

import Database from 'better-sqlite3';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

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

describe('problems in an earlier seed version name that version', () => {
  it('seed_row_missing and file_missing of the v1 copy say v1, and --force with it restores them', async () => {
    const world = await sqliteWorld();
    worlds.push(world);
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'ann@example.com', username: 'ann' })).user.id;
    expect((await seedOneUser(deps, String(id), { seedVersion: 'v2' })).seed.status).toBe('ready');
    const db = new Database(userDbPath(world.dataDir, id));
    db.pragma('foreign_keys = OFF');
    const run = (db.prepare(`SELECT target_id FROM acm2_id_map WHERE kind = 'runs' AND seed_version = 'v1'`).pluck().get()) as string;
    const file = (db.prepare(`SELECT path FROM acm2_seed_files WHERE seed_version = 'v1' AND path LIKE '%/logs/%' LIMIT 1`).pluck().get()) as string;
    db.prepare(`DELETE FROM runs WHERE id = ?`).run(run);
    db.close();
    rmSync(path.join(userRoot(world.dataDir, id), file));

    const problems = (await verifyUsers(deps, { users: [id] })).users[0]!.problems;
    const seedProblems = problems.filter((p) => p.code === 'file_missing' || p.code === 'seed_row_missing');
    expect(seedProblems.map((p) => p.code).sort()).toEqual(['file_missing', 'seed_row_missing']);
    const versions = seedProblems.map((p) => /\(seed ([^,)]+)[,)]/.exec(p.message)?.[1]);
    expect(versions, JSON.stringify(problems)).toEqual(['v1', 'v1']);
    await seedOneUser(deps, String(id), { force: true, seedVersion: versions[0] });
    expect((await verifyUsers(deps, { users: [id] })).users[0]!.problems).toEqual([]);
  });
});
