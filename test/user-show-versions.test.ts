// A user seeded with v1 and then v2 holds both copies on disk: `user show` counts the files of
// every version it holds (and each version's), not only those of the version user_meta names.

import Database from 'better-sqlite3';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, walkFiles, type FrozenSource, type World } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, seedOneUser, type UserStatus } from '../src/core/users.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';
import { formatBytes } from '../src/ui/reporter.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;
let world: World;
beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  freezeSeed({ sourceDb: pkg.source.dbPath, sourceFiles: pkg.source.filesDir, presetId: pkg.source.presetId, runId: pkg.source.runId, version: 'v2', seedsDir: pkg.seedsDir, setCurrent: false, renderReport: true });
  world = await sqliteWorld();
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
});

async function acm2(args: string[]) {
  const r = await execa('node', [BIN, ...args, '--data-dir', world.dataDir, '--seeds', pkg.seedsDir, '--no-color'], { reject: false });
  expect(r.exitCode, r.stderr).toBe(0);
  return r.stdout;
}

/** What acm2_seed_files lists per version: [version, count, bytes]. */
function listed(id: number): Map<string, { count: number; bytes: number }> {
  const db = new Database(userDbPath(world.dataDir, id), { readonly: true });
  try {
    const rows = db.prepare(`SELECT seed_version AS v, COUNT(*) AS n, SUM(bytes) AS b FROM acm2_seed_files GROUP BY seed_version`).all() as Array<{ v: string; n: number; b: number }>;
    return new Map(rows.map((r) => [r.v, { count: r.n, bytes: r.b }]));
  } finally {
    db.close();
  }
}

describe('user show of a user holding two seed versions', () => {
  it('counts every version the user holds, and each one, in JSON and text', async () => {
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'ann@example.com', username: 'ann' })).user.id;
    const one = JSON.parse(await acm2(['user', 'show', String(id), '--json'])) as UserStatus;
    const perPackage = pkg.pkg.manifest.files.length;
    expect({ count: one.files.count, bytes: one.files.bytes }).toEqual({ count: perPackage, bytes: listed(id).get('v1')!.bytes });
    const only = listed(id).get('v1')!;
    expect(only.count).toBe(perPackage);
    expect(await acm2(['user', 'show', String(id)])).toMatch(new RegExp(`files +\\S+ \\(${perPackage} seeded files, [^:]+\\)$`, 'm'));

    expect((await seedOneUser(deps, String(id), { seedVersion: 'v2' })).seed.status).toBe('ready');
    const lists = listed(id);
    const v1 = lists.get('v1')!;
    const v2 = lists.get('v2')!;
    // Both copies are on disk, and every file there is one of them.
    expect(walkFiles(userRoot(world.dataDir, id))).toHaveLength(v1.count + v2.count);

    const show = JSON.parse(await acm2(['user', 'show', String(id), '--json'])) as UserStatus;
    expect(show.seedVersion).toBe('v2');
    expect({ count: show.files.count, bytes: show.files.bytes }).toEqual({ count: v1.count + v2.count, bytes: v1.bytes + v2.bytes });
    expect(show.files).toEqual({
      count: v1.count + v2.count,
      bytes: v1.bytes + v2.bytes,
      byVersion: [
        { version: 'v2', ...v2 },
        { version: 'v1', ...v1 },
      ],
    });
    const text = await acm2(['user', 'show', String(id)]);
    expect(text).toContain(`(${v1.count + v2.count} seeded files, ${formatBytes(v1.bytes + v2.bytes)}: ${v2.count} of v2 (${formatBytes(v2.bytes)}), ${v1.count} of v1 (${formatBytes(v1.bytes)}))`);
    const list = JSON.parse(await acm2(['user', 'list', '--json'])) as { users: UserStatus[] };
    expect(list.users.find((u) => u.id === id)!.files.count).toBe(v1.count + v2.count);
    // With one version, its one entry.
    expect(one.files.byVersion).toEqual([{ version: 'v1', ...only }]);
  });
});
