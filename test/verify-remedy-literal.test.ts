// verify names, in the problem's own message, the command that clears it, and that command,
// followed word for word, leaves verify clean: a plain file where user_<id>/ must be (path_escape,
// whose what-to-do line spoke only of symlinks), and a done job the user DB disagrees with
// (job_state_mismatch, whose what-to-do line points at "the command its message names").

import Database from 'better-sqlite3';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, runCli, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

let pkg: FrozenSource;
let world: World;
/** What the tests moved out of the data dir, removed with it. */
const movedOut: string[] = [];
beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
});
afterAll(async () => {
  await world.cleanup();
  for (const p of movedOut) rmSync(p, { recursive: true, force: true });
  pkg.cleanup();
});

const acm2 = (args: string[]) => runCli(world.dataDir, pkg.seedsDir, args);

async function json<T>(args: string[]): Promise<T> {
  return JSON.parse((await acm2([...args, '--json'])).stdout) as T;
}

async function readyUser(name: string): Promise<number> {
  const r = await json<{ user: { id: number }; seed: { status: string } }>(['user', 'create', '--email', `${name}@example.com`, '--username', name]);
  expect(r.seed.status).toBe('ready');
  return r.user.id;
}

/** A plain file where the user's folder goes, the folder itself moved out of the data dir. */
function fileInTheWay(id: number): () => void {
  const root = userRoot(world.dataDir, id);
  movedOut.push(`${world.dataDir}-user_${id}.moved`);
  renameSync(root, movedOut[movedOut.length - 1]!);
  writeFileSync(root, 'in the way');
  // What the error says to do first: move it aside (the user's files stay gone).
  return () => rmSync(root);
}

describe('verify names a remedy that works when followed literally', () => {
  it('path_escape of a plain file at user_<id> names how to clear it, and following that leaves the user ok', async () => {
    const id = await readyUser('verify-remedy');
    const moveAside = fileInTheWay(id);
    type Doc = { users: Array<{ id: number; problems: Array<{ code: string; message: string }> }> };
    const first = await acm2(['verify', '--user', String(id), '--json']);
    expect(first.code).toBe(1);
    const problems = (JSON.parse(first.stdout) as Doc).users[0]!.problems;
    const escape = problems.find((p) => p.code === 'path_escape');
    expect(escape?.message).toMatch(new RegExp(`^user_${id} is a plain file, not the user's folder, .*move it aside`));
    const m = /then (acm2 user seed \d+ --force --seed-version) </.exec(escape!.message);
    expect(m, escape!.message).not.toBeNull();
    // The placeholder is the version each file_missing names.
    const versions = new Set(problems.filter((p) => p.code === 'file_missing').map((p) => /\(seed ([^)]+)\)/.exec(p.message)?.[1]));
    expect([...versions]).toEqual(['v1']);
    const human = await acm2(['verify', '--user', String(id)]);
    expect(human.stdout).toMatch(/path_escape .*a plain file, a FIFO\): move it aside, then acm2 user seed <id> --force --seed-version <its version>/);
    moveAside();
    const again = await acm2([...m![1]!.split(' ').slice(1), 'v1']);
    expect(again.code, again.stderr).toBe(0);
    const after = await acm2(['verify', '--user', String(id)]);
    expect(after.code, after.stdout).toBe(0);
  }, 60_000);

  it('job_state_mismatch of a done job names the command its what-to-do line points at, and that command clears it', async () => {
    const id = await readyUser('job-mismatch');
    const db = new Database(userDbPath(world.dataDir, id));
    db.prepare('DELETE FROM user_meta').run();
    db.close();
    type Doc = { users: Array<{ problems: Array<{ code: string; message: string }> }> };
    const first = await acm2(['verify', '--user', String(id), '--json']);
    expect(first.code).toBe(1);
    const mismatch = (JSON.parse(first.stdout) as Doc).users[0]!.problems.find((p) => p.code === 'job_state_mismatch');
    const m = /`(acm2 user seed [^`]+)`/.exec(mismatch?.message ?? '');
    expect(m, mismatch?.message).not.toBeNull();
    const again = await acm2(m![1]!.split(' ').slice(1));
    expect(again.code, again.stderr).toBe(0);
    const after = await acm2(['verify', '--user', String(id)]);
    expect(after.code, after.stdout).toBe(0);
  }, 60_000);
});
