// verify while ACM2 serves the user: a run folder ACM2 removes between verify seeing it and
// reading it is gone, not a permissions problem (no false alarm at 3 a.m.).

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userRoot } from '../src/userdb/paths.js';

// A folder named vanish-dir is listed by its parent, then gone when it is read.
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const wrapped = {
    ...fs,
    readdirSync: ((p: unknown, ...rest: unknown[]) => {
      if (typeof p === 'string' && p.endsWith('vanish-dir')) throw Object.assign(new Error(`ENOENT: no such file or directory, scandir '${p}'`), { code: 'ENOENT', path: p });
      return (fs.readdirSync as (...a: unknown[]) => unknown)(p, ...rest);
    }) as typeof fs.readdirSync,
  };
  return { ...wrapped, default: wrapped };
});

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
let world: World;
let ann: number;

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  ann = (await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'ann@example.com', username: 'ann' })).user.id;
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
});

describe('verify of a user ACM2 is changing', () => {
  it('a run folder deleted during the walk is no bad_permissions error', async () => {
    mkdirSync(path.join(userRoot(world.dataDir, ann), 'runs', 'vanish-dir'), { recursive: true, mode: 0o700 });
    const r = await verifyUsers({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir }, { users: [ann] });
    expect(r.users[0]!.problems).toEqual([]);
    expect(r.ok).toBe(true);
  });
});
