// Odd or hostile things on disk where the tool expects its own files: it never writes, chmods or
// deletes through them, never hangs on them, and says what it found.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { frozenSource, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser, drainQueue, seedOneUser, userStatus } from '../src/core/users.js';
import { renderStatus } from '../src/ui/users.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';
import { verifyUsers } from '../src/core/verify.js';
import { lockUserFile } from '../src/core/user-lock.js';
import { runBackfill } from '../src/core/backfill.js';
import { diffUserWithPackage } from '../src/core/diff.js';
import { checkPackage } from '../src/seed/package.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
let world: World;
let outside: string;

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  outside = tmpDir('acm2-outside-');
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
  rmSync(outside, { recursive: true, force: true });
});

const deps = () => ({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 });
let n = 0;
async function readyUser(): Promise<{ id: number; runDir: string; log: string }> {
  n++;
  const u = await createUser(deps(), { email: `odd${n}@example.com`, username: `odd${n}` });
  expect(u.seed?.status).toBe('ready');
  const runs = path.join(userRoot(world.dataDir, u.user.id), 'runs');
  const runDir = path.join(runs, readdirSync(runs)[0]!);
  const logs = path.join(runDir, 'logs');
  const log = path.join(logs, readdirSync(logs).find((f) => f.endsWith('.log'))!);
  return { id: u.user.id, runDir, log };
}

describe('user seed --force over a seeded path that is no longer a plain file of its own', () => {
  it('a hard link to a file outside the data dir: the outside file keeps its bytes and mode', async () => {
    const u = await readyUser();
    const seeded = readFileSync(u.log);
    const precious = path.join(outside, 'precious.txt');
    writeFileSync(precious, 'the operator’s own file\n', { mode: 0o644 });
    rmSync(u.log);
    linkSync(precious, u.log);
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed.status).toBe('ready');
    expect(readFileSync(precious, 'utf8')).toBe('the operator’s own file\n');
    expect(statSync(precious).mode & 0o777).toBe(0o644);
    expect(statSync(precious).nlink).toBe(1);
    expect(readFileSync(u.log)).toEqual(seeded);
    expect((await verifyUsers(deps(), { users: [u.id] })).users[0]!.problems).toEqual([]);
  });

  it('a FIFO: the seed does not wait for a reader, and the file is restored', async () => {
    const u = await readyUser();
    const seeded = readFileSync(u.log);
    rmSync(u.log);
    execFileSync('mkfifo', [u.log]);
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed.status).toBe('ready');
    expect(statSync(u.log).isFile()).toBe(true);
    expect(readFileSync(u.log)).toEqual(seeded);
  });

  it('a symlink to a file outside: the link is replaced, its target untouched', async () => {
    const u = await readyUser();
    const target = path.join(outside, 'linked.txt');
    writeFileSync(target, 'not yours\n');
    rmSync(u.log);
    symlinkSync(target, u.log);
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed.status).toBe('ready');
    expect(readFileSync(target, 'utf8')).toBe('not yours\n');
    expect(statSync(u.log).isFile()).toBe(true);
    expect(readdirSync(path.dirname(u.log)).filter((f) => f.includes('.acm2-'))).toEqual([]);
    expect(readdirSync(path.join(world.dataDir, '.acm2', 'staging')).filter((f) => f.startsWith(`user_${u.id}-`))).toEqual([]);
  });
});


describe('user_{id}.db that is not a database file of the user’s own', () => {
  it('a symlink to an empty file outside: user seed builds nothing there and says what to do', async () => {
    n++;
    const u = await createUser(deps(), { email: `odd${n}@example.com`, username: `odd${n}`, async: true });
    const target = path.join(outside, `empty-${u.user.id}.db`);
    writeFileSync(target, '');
    symlinkSync(target, userDbPath(world.dataDir, u.user.id));
    const r = await seedOneUser(deps(), String(u.user.id), {});
    expect(r.seed.status).toBe('failed');
    expect(r.seed.error).toMatch(/is a symlink, not the user's own database file/);
    expect(r.seed.retry).toBeUndefined();
    expect(statSync(target).size).toBe(0);
    expect(readdirSync(outside).filter((f) => f.startsWith(`empty-${u.user.id}.db`))).toEqual([`empty-${u.user.id}.db`]);
  });

  it('a symlink to a ready user’s DB moved outside: --force writes nothing into it', async () => {
    const u = await readyUser();
    const moved = path.join(outside, `moved-${u.id}.db`);
    execFileSync('mv', [userDbPath(world.dataDir, u.id), moved]);
    symlinkSync(moved, userDbPath(world.dataDir, u.id));
    const before = readFileSync(moved);
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed.status).toBe('failed');
    expect(readFileSync(moved)).toEqual(before);
  });

  it('a FIFO: verify, user seed and the backfill plan say so at once instead of waiting for a writer', async () => {
    n++;
    const u = await createUser(deps(), { email: `odd${n}@example.com`, username: `odd${n}`, async: true });
    execFileSync('mkfifo', [userDbPath(world.dataDir, u.user.id)]);
    const v = await verifyUsers(deps(), { users: [u.user.id] });
    expect(v.users[0]!.problems).toEqual([expect.objectContaining({ code: 'db_corrupt', message: expect.stringMatching(/is a FIFO, not a database file/) })]);
    const r = await seedOneUser(deps(), String(u.user.id), {});
    expect(r.seed).toMatchObject({ status: 'failed', error: expect.stringMatching(/is a FIFO/) });
    const plan = await runBackfill({ master: world.master, dataDir: world.dataDir, pkg: pkg.pkg }, { dryRun: true, userIds: [u.user.id] });
    expect(plan.users[0]).toMatchObject({ id: u.user.id, action: 'fail', reason: expect.stringMatching(/is a FIFO/) });
  });
});

describe('a symlinked .acm2/staging', () => {
  it('is refused: nothing is built or removed where it leads', async () => {
    const w = await sqliteWorld();
    const elsewhere = path.join(outside, 'staging-elsewhere');
    try {
      const d = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      const u = await createUser(d, { email: 'staging@example.com', username: 'staging', async: true });
      mkdirSync(path.join(elsewhere, `user_${u.user.id}-keep`), { recursive: true });
      writeFileSync(path.join(elsewhere, `user_${u.user.id}-precious.txt`), 'not the tool’s\n');
      mkdirSync(path.join(w.dataDir, '.acm2'), { recursive: true });
      symlinkSync(elsewhere, path.join(w.dataDir, '.acm2', 'staging'));
      // The environment's fault, alike for every user: exit 3 before a job is claimed.
      await expect(seedOneUser(d, String(u.user.id), {})).rejects.toMatchObject({ exitCode: 3, message: expect.stringMatching(/staging is a symlink, not a folder of the tool's own/) });
      await expect(drainQueue(d, {})).rejects.toMatchObject({ exitCode: 3 });
      expect(await w.master.latestJob(u.user.id)).toMatchObject({ status: 'pending', attempts: 0 });
      expect(readdirSync(elsewhere).sort()).toEqual([`user_${u.user.id}-keep`, `user_${u.user.id}-precious.txt`]);
    } finally {
      await w.cleanup();
    }
  });
});

describe('names that are not valid UTF-8 (Linux allows any bytes)', () => {
  it('in a user’s tree: verify reports what it cannot check, backfill does not fail the user, diff shows it', async () => {
    const u = await readyUser();
    const bad = Buffer.concat([Buffer.from(`${u.runDir}/`), Buffer.from([0x64, 0xe9, 0x6a, 0xe0])]);
    mkdirSync(bad, { mode: 0o700 });
    symlinkSync(outside, Buffer.concat([bad, Buffer.from('/escape')]));
    const v = await verifyUsers(deps(), { users: [u.id] });
    expect(v.users[0]!.problems).toEqual([expect.objectContaining({ code: 'path_escape', message: expect.stringMatching(/not valid UTF-8/) })]);
    const plan = await runBackfill({ master: world.master, dataDir: world.dataDir, pkg: pkg.pkg }, { dryRun: true, userIds: [u.id] });
    expect(plan.users[0]).toMatchObject({ id: u.id, action: 'ok' });
    const d = diffUserWithPackage(deps(), u.id);
    expect(d.equal).toBe(false);
    expect(d.files.added).toEqual([expect.stringMatching(/\uFFFD/)]);
  });

  it('in a package: seed check names it (no crash), and the package is refused', () => {
    const seeds = tmpDir('acm2-badname-seeds-');
    try {
      cpSync(pkg.seedsDir, seeds, { recursive: true });
      writeFileSync(Buffer.concat([Buffer.from(path.join(seeds, 'v1', 'files') + '/'), Buffer.from([0x78, 0xff])]), 'stray\n');
      const c = checkPackage(seeds, 'v1');
      expect(c.ok).toBe(false);
      expect(c.problems).toEqual([expect.stringMatching(/has a name that is not valid UTF-8/)]);
    } finally {
      rmSync(seeds, { recursive: true, force: true });
    }
  });
});

describe('user show of a user whose DB was deleted by hand', () => {
  it('says there is no list of seeded files and how to seed it, not "0 files listed by the unfinished seed"', async () => {
    const u = await readyUser();
    rmSync(userDbPath(world.dataDir, u.id));
    const s = await userStatus(deps(), (await world.master.getUser(u.id))!);
    expect(s.status).toBe('missing');
    const text = renderStatus(s);
    expect(text).toContain(`no DB, so no list of seeded files; acm2 user seed ${u.id} seeds the user`);
    expect(text).not.toMatch(/unfinished seed/);
  });
});

describe('user show of a user_{id}.db that is not this user\'s', () => {
  it('a copy of another user\'s DB: failed, naming the owner and the remedy, not "missing"', async () => {
    const a = await readyUser();
    const b = await readyUser();
    copyFileSync(userDbPath(world.dataDir, a.id), userDbPath(world.dataDir, b.id));
    const s = await userStatus(deps(), (await world.master.getUser(b.id))!);
    expect(s.status).toBe('failed');
    expect(s.db.error).toBe(`the DB holds another user's data (user_meta of user ${a.id}), not user ${b.id}'s: move it out of the data dir, then run: acm2 user seed ${b.id}`);
    expect(s.lastError).toBe(s.db.error);
  });

  it('an empty DB (0 bytes): no user_meta, said so, not "0 files listed by the unfinished seed"', async () => {
    n++;
    const b = await createUser(deps(), { email: `odd${n}@example.com`, username: `odd${n}`, async: true });
    writeFileSync(userDbPath(world.dataDir, b.user.id), '');
    const s = await userStatus(deps(), (await world.master.getUser(b.user.id))!);
    const text = renderStatus(s);
    expect(text).toContain(`the DB has no user_meta of this user, so no list of seeded files`);
    expect(text).not.toMatch(/unfinished seed/);
  });
});

describe('a folder where the seed writes a file', () => {
  it('is left alone with one clear sentence, and the job fails at once (no retries burnt)', async () => {
    const u = await readyUser();
    rmSync(u.log);
    mkdirSync(u.log);
    writeFileSync(path.join(u.log, 'mine.txt'), 'the user’s\n');
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed).toMatchObject({ status: 'failed', error: expect.stringMatching(/is a folder where the seed writes a file: it was left alone; move it aside/) });
    expect(r.seed.retry).toBeUndefined();
    expect(readFileSync(path.join(u.log, 'mine.txt'), 'utf8')).toBe('the user’s\n');
  });

  it('is found by --force before it writes anything: the user stays ready, its edited seeded files as they were', async () => {
    const u = await readyUser();
    // The user rewrote every seeded generated doc (written before the logs)...
    const gen = path.join(u.runDir, 'generated');
    const edited = readdirSync(gen).map((name) => path.join(gen, name));
    expect(edited.length).toBeGreaterThan(0);
    for (const f of edited) writeFileSync(f, 'my own rewrite\n');
    // ...and a folder of theirs sits where the seed writes its log.
    rmSync(u.log);
    mkdirSync(u.log);
    writeFileSync(path.join(u.log, 'mine.txt'), 'the user’s\n');
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed).toMatchObject({ status: 'failed', error: expect.stringMatching(/is a folder where the seed writes a file: it was left alone; move it aside.*; user \d+ stays ready with v1, its rows and files as they were/) });
    for (const f of edited) expect(readFileSync(f, 'utf8')).toBe('my own rewrite\n');
    const s = await userStatus(deps(), (await world.master.getUser(u.id))!);
    expect(s.status).toBe('ready');
  });

  it('a symlink out of the user folder on the way to a seeded file is found by --force before it writes anything', async () => {
    const u = await readyUser();
    const gen = path.join(u.runDir, 'generated');
    const edited = readdirSync(gen).map((name) => path.join(gen, name));
    expect(edited.length).toBeGreaterThan(0);
    for (const f of edited) writeFileSync(f, 'my own rewrite\n');
    // The logs folder (written after the generated docs) is now a symlink to a folder outside.
    const elsewhere = path.join(outside, `logs-of-${u.id}`);
    mkdirSync(elsewhere);
    const logs = path.dirname(u.log);
    rmSync(logs, { recursive: true });
    symlinkSync(elsewhere, logs);
    const r = await seedOneUser(deps(), String(u.id), { force: true });
    expect(r.seed).toMatchObject({ status: 'failed', error: expect.stringMatching(/is a symlink out of .*; user \d+ stays ready with v1, its rows and files as they were/) });
    for (const f of edited) expect(readFileSync(f, 'utf8')).toBe('my own rewrite\n');
    expect(readdirSync(elsewhere)).toEqual([]);
    const s = await userStatus(deps(), (await world.master.getUser(u.id))!);
    expect(s.status).toBe('ready');
  });
});

describe('user show of a user_{id}.db that is a dangling symlink', () => {
  it('says what is there instead of calling the user missing', async () => {
    const u = await readyUser();
    rmSync(userDbPath(world.dataDir, u.id));
    symlinkSync(path.join(outside, 'gone.db'), userDbPath(world.dataDir, u.id));
    const s = await userStatus(deps(), (await world.master.getUser(u.id))!);
    expect(s.status).toBe('failed');
    expect(s.db).toMatchObject({ present: true, error: expect.stringMatching(/is a symlink, not the user's own database file/) });
    expect(renderStatus(s)).toContain('(the DB cannot be read, so its list of seeded files neither)');
  });
});

describe('user create --async with a drainer running elsewhere', () => {
  it('the drainer cannot take the new job before create has looked at the data dir: foreign data is reported, never adopted', async () => {
    const w = await sqliteWorld();
    try {
      const d = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      // An earlier master's user 1 left its DB and files in this data dir.
      const other = await sqliteWorld();
      try {
        await createUser({ ...d, master: other.master, dataDir: other.dataDir }, { email: 'alice@example.com', username: 'alice' });
        cpSync(userDbPath(other.dataDir, 1), userDbPath(w.dataDir, 1));
        cpSync(userRoot(other.dataDir, 1), userRoot(w.dataDir, 1), { recursive: true });
      } finally {
        await other.cleanup();
      }
      const before = readFileSync(userDbPath(w.dataDir, 1));
      // The moment the master has committed bob (user 1), a whole drain runs before create goes
      // on: it must find no job it may take.
      const racing = new Proxy(w.master, {
        get(target, prop, receiver) {
          if (prop !== 'createUser') return Reflect.get(target, prop, receiver);
          return async (...args: Parameters<typeof target.createUser>) => {
            const made = await target.createUser(...args);
            expect(await drainQueue({ ...d, master: target }, {})).toMatchObject({ claimed: 0 });
            return made;
          };
        },
      });
      const r = await createUser({ ...d, master: racing }, { email: 'bob@example.com', username: 'bob', async: true });
      expect(r.seed).toMatchObject({ status: 'failed', error: expect.stringMatching(/already holds user_1\.db, user_1 from before user 1 existed/) });
      expect(readFileSync(userDbPath(w.dataDir, 1))).toEqual(before);
      expect(await w.master.latestJob(1)).toMatchObject({ status: 'failed' });
    } finally {
      await w.cleanup();
    }
  });

  it('a `user seed <id>` that took the job at once (it does not wait for the hold) is not called foreign', async () => {
    let held: { release(): Promise<void> | void } | undefined;
    n++;
    const r = await createUser(
      deps(),
      { email: `raced${n}@example.com`, username: `raced${n}`, async: true },
      {
        // Right after the master commits: an operator's user seed takes the user's lock and
        // starts its build in staging.
        onCreated: ({ user }) => {
          held = lockUserFile(world.dataDir, user.id, 0);
          mkdirSync(path.join(world.dataDir, '.acm2', 'staging'), { recursive: true });
          writeFileSync(path.join(world.dataDir, '.acm2', 'staging', `user_${user.id}-v1-0badc0de.building`), '');
        },
      },
    );
    try {
      expect(held).toBeDefined();
      expect(r.seed).toMatchObject({ status: 'pending' });
    } finally {
      await held?.release();
    }
  });

  it('with nothing there, the job is due as soon as create returns, and a drain seeds it', async () => {
    const w = await sqliteWorld();
    try {
      const d = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      const r = await createUser(d, { email: 'carol@example.com', username: 'carol', async: true });
      expect(r.seed).toMatchObject({ status: 'pending' });
      expect(await drainQueue(d, {})).toMatchObject({ done: 1 });
    } finally {
      await w.cleanup();
    }
  });
});
