// path_escape for the user's DB or folder being a symlink (moved to another volume, say): the
// link is the way to the user's data. Following verify's words must keep that data, not delete
// the link and reseed a fresh user over it.

import Database from 'better-sqlite3';
import { execSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, runCli, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
const worlds: World[] = [];
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 1 });
});
/** Folders outside the data dir (another volume, a place data was moved aside): removed after. */
const scratchDirs: string[] = [];
function scratch(prefix: string): string {
  const d = tmpDir(prefix);
  scratchDirs.push(d);
  return d;
}
afterAll(async () => {
  for (const w of worlds) await w.cleanup();
  for (const d of scratchDirs) rmSync(d, { recursive: true, force: true });
  pkg.cleanup();
});

/** The shell command in the message, in parentheses after "(mv " or "(rm ". */
function command(message: string): string {
  const m = /\(((?:rm|mv) [^)]*)\)/.exec(message);
  expect(m, message).not.toBeNull();
  return m![1]!;
}

/** The shell commands as `acm2 verify` shows them on a terminal (escaped), one per problem. */
async function shownCommands(world: World, id: number): Promise<string[]> {
  const r = await runCli(world.dataDir, pkg.seedsDir, ['verify', '--user', String(id)]);
  expect(r.code, r.stderr).toBe(1);
  return [...r.stdout.matchAll(/\(((?:rm|mv) [^)]*)\)/g)].map((m) => m[1]!);
}

describe('path_escape: the user DB or folder itself is a symlink', () => {
  it('the command verify names puts the data back in place, and verify is then clean with the user\'s own row and file kept', async () => {
    const world = await sqliteWorld();
    worlds.push(world);
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'ann@example.com', username: 'ann' })).user.id;
    const db = new Database(userDbPath(world.dataDir, id));
    db.prepare(`INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('00000000-0000-4000-8000-0000000000aa', ?, '2026-01-01', 'MINE', 'input_document', 'mine', '{}', '[]', 0)`).run(id);
    db.close();
    mkdirSync(path.join(userRoot(world.dataDir, id), 'notes'), { mode: 0o700 });
    writeFileSync(path.join(userRoot(world.dataDir, id), 'notes', 'mine.txt'), 'keep', { mode: 0o600 });

    // Ops moved both to another volume and linked them back.
    // A volume path a shell would split: the printed command must quote it.
    const vol = path.join(scratch('acm2-vol-'), "ops' volume");
    mkdirSync(vol);
    renameSync(userDbPath(world.dataDir, id), path.join(vol, 'user.db'));
    symlinkSync(path.join(vol, 'user.db'), userDbPath(world.dataDir, id));
    renameSync(userRoot(world.dataDir, id), path.join(vol, 'tree'));
    symlinkSync(path.join(vol, 'tree'), userRoot(world.dataDir, id));

    const problems = (await verifyUsers(deps, { users: [id] })).users[0]!.problems;
    expect(problems.map((p) => p.code)).toEqual(['path_escape', 'path_escape']);
    // Pasted from the terminal, where the message is shown escaped: the quote in the path is
    // quoted without a backslash, which the terminal would show doubled.
    const shown = await shownCommands(world, id);
    expect(shown).toEqual(problems.map((p) => command(p.message)));
    for (const c of shown) execSync(c);

    expect((await verifyUsers(deps, { users: [id] })).users[0]!.problems).toEqual([]);
    const check = new Database(userDbPath(world.dataDir, id), { readonly: true });
    expect(check.prepare(`SELECT name FROM contents WHERE id = '00000000-0000-4000-8000-0000000000aa'`).get()).toEqual({ name: 'MINE' });
    check.close();
    expect(existsSync(path.join(userRoot(world.dataDir, id), 'notes', 'mine.txt'))).toBe(true);
  });
});

describe('path_escape: the user DB or folder is a symlink to another user\'s', () => {
  it('the command verify names leaves the other user\'s data where it is', async () => {
    const world = await sqliteWorld();
    worlds.push(world);
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const ann = (await createUser(deps, { email: 'ann2@example.com', username: 'ann2' })).user.id;
    const bob = (await createUser(deps, { email: 'bob2@example.com', username: 'bob2' })).user.id;
    // Someone "shared" bob's data with ann by linking it.
    const annDb = userDbPath(world.dataDir, ann);
    renameSync(annDb, path.join(scratch('acm2-aside-'), 'ann.db'));
    symlinkSync(path.basename(userDbPath(world.dataDir, bob)), annDb);
    const annRoot = userRoot(world.dataDir, ann);
    renameSync(annRoot, path.join(scratch('acm2-aside-'), 'ann'));
    symlinkSync(path.basename(userRoot(world.dataDir, bob)), annRoot);

    const problems = (await verifyUsers(deps, { users: [ann] })).users[0]!.problems.filter((p) => p.code === 'path_escape');
    expect(problems).toHaveLength(2);
    for (const p of problems) execSync(command(p.message));

    expect((await verifyUsers(deps, { users: [bob] })).users[0]!.problems).toEqual([]);
  });
});

describe('path_escape: the user DB or folder is a symlink to the user\'s own data elsewhere in the data dir', () => {
  it('a DB restored beside its name and a renamed folder are moved into place, not abandoned for a fresh seed', async () => {
    const world = await sqliteWorld();
    worlds.push(world);
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'cat@example.com', username: 'cat' })).user.id;
    const db = new Database(userDbPath(world.dataDir, id));
    db.prepare(`INSERT INTO contents (id, user_id, created_at, name, content_type, body, variables, tags, is_deleted) VALUES ('00000000-0000-4000-8000-0000000000bb', ?, '2026-01-01', 'MINE', 'input_document', 'mine', '{}', '[]', 0)`).run(id);
    db.close();
    // Ops restored the DB beside its name and renamed the folder, then linked both back.
    const dbFile = userDbPath(world.dataDir, id);
    renameSync(dbFile, `${dbFile}.restored`);
    symlinkSync(`${path.basename(dbFile)}.restored`, dbFile);
    const root = userRoot(world.dataDir, id);
    renameSync(root, `${root}.old`);
    symlinkSync(`${path.basename(root)}.old`, root);

    const problems = (await verifyUsers(deps, { users: [id] })).users[0]!.problems;
    expect(problems.map((p) => p.code)).toEqual(['path_escape', 'path_escape']);
    for (const p of problems) expect(p.message).not.toMatch(/not this user's/);
    for (const p of problems) execSync(command(p.message));
    expect((await verifyUsers(deps, { users: [id] })).users[0]!.problems).toEqual([]);
    const check = new Database(dbFile, { readonly: true });
    expect(check.prepare(`SELECT name FROM contents WHERE id = '00000000-0000-4000-8000-0000000000bb'`).get()).toEqual({ name: 'MINE' });
    check.close();
  });
});
