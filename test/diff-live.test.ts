// diff while ACM2 serves the user: a file or folder ACM2 removes between diff's walk of the
// user's tree and its read of the entry (a run deleted) is simply gone, never an internal error.

import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { runDiff } from '../src/core/diff.js';
import { userRoot } from '../src/userdb/paths.js';

// Entries named vanish-* disappear the moment they are read (readdir still lists them).
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const enoent = (p: unknown) => Object.assign(new Error(`ENOENT: no such file or directory, '${String(p)}'`), { code: 'ENOENT', path: String(p) });
  const gone = (p: unknown, what: string) => typeof p === 'string' && p.includes(`vanish-${what}`);
  const wrapped = {
    ...fs,
    readFileSync: ((p: unknown, ...rest: unknown[]) => {
      if (gone(p, 'read')) throw enoent(p);
      return (fs.readFileSync as (...a: unknown[]) => unknown)(p, ...rest);
    }) as typeof fs.readFileSync,
    lstatSync: ((p: unknown, ...rest: unknown[]) => {
      if (gone(p, 'lstat')) throw enoent(p);
      return (fs.lstatSync as (...a: unknown[]) => unknown)(p, ...rest);
    }) as typeof fs.lstatSync,
    readdirSync: ((p: unknown, ...rest: unknown[]) => {
      if (gone(p, 'dir')) throw enoent(p);
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

describe('diff of a user ACM2 is changing', () => {
  it('skips files and folders removed during the walk instead of failing with an internal error', async () => {
    const run = path.join(userRoot(world.dataDir, ann), 'runs', 'acm2-own-run');
    mkdirSync(path.join(run, 'vanish-dir'), { recursive: true, mode: 0o700 });
    writeFileSync(path.join(run, 'vanish-dir', 'x.md'), 'x', { mode: 0o600 });
    writeFileSync(path.join(run, 'vanish-read.md'), 'gone before it is read', { mode: 0o600 });
    writeFileSync(path.join(run, 'vanish-lstat.md'), 'gone before it is looked at', { mode: 0o600 });
    writeFileSync(path.join(run, 'kept.md'), 'still there', { mode: 0o600 });
    const r = await runDiff({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir }, { kind: 'user-package', user: String(ann) });
    expect(r.files.added).toEqual(['runs/acm2-own-run/kept.md']);
    expect(r.files.removed).toEqual([]);
    expect(r.files.changed).toEqual([]);
  });
});
