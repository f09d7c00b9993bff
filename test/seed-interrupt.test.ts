// `acm2 user seed <id>` and Ctrl-C or SIGTERM: as for a batch, the first signal lets the seed in
// flight finish and close its job; dying at once left the job running for the next taker, an
// unattended `user seed --pending` included, which then did an interrupted --force later.
import { spawn } from 'node:child_process';
import { appendFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openMaster } from '../src/master/factory.js';
import { parseMasterUrl } from '../src/config.js';
import { lockUser } from '../src/core/user-lock.js';
import { frozenSource, tmpDir, walkFiles, type FrozenSource } from './helpers/env.js';

const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
let pkg: FrozenSource;

beforeAll(() => {
  // Big enough that a seed takes a while, so the signal lands in the middle of it.
  pkg = frozenSource({ sourceDocs: 8, contents: 40, docBytes: 120_000 });
});
afterAll(() => pkg.cleanup());

function acm2(dataDir: string, args: string[]) {
  const child = spawn(process.execPath, [BIN, '--data-dir', dataDir, '--seeds', pkg.seedsDir, '--json', ...args], { env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4' } });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.resume();
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return { child, done, stdout: () => stdout };
}

/** A name under the tool's backups folder: a --force under way, its backup made, its overwrites to come. */
function underWay(dataDir: string): boolean {
  for (const d of ['backups']) {
    try {
      if (readdirSync(path.join(dataDir, '.acm2', d)).length > 0) return true;
    } catch {
      /* not there yet */
    }
  }
  return false;
}

describe('user seed <id> interrupted', () => {
  it('a signal while it waits for the user\'s lock (another seeder holds it) stops at once, nothing made or claimed', async () => {
    const dataDir = path.join(tmpDir('acm2-seed-int-'), 'data');
    const made = acm2(dataDir, ['user', 'create', '--email', 'ben@example.com', '--username', 'ben']);
    expect((await made.done).code).toBe(0);
    const id = (JSON.parse(made.stdout()) as { user: { id: number } }).user.id;
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    const held = await lockUser(master, dataDir, id, 1000);
    try {
      const before = await master.latestJob(id);
      const force = acm2(dataDir, ['user', 'seed', String(id), '--force']);
      await new Promise((r) => setTimeout(r, 1500));
      expect(force.child.exitCode).toBeNull(); // still waiting for the lock
      force.child.kill('SIGINT');
      expect(await force.done).toEqual({ code: null, signal: 'SIGINT' });
      expect(await master.latestJob(id)).toEqual(before);
    } finally {
      await held.release();
      await master.close();
    }
  });

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`a first ${sig} during --force lets the seed finish and close its job: none is left running for a later drain`, async () => {
      const dataDir = path.join(tmpDir('acm2-seed-int-'), 'data');
      const made = acm2(dataDir, ['user', 'create', '--email', 'ann@example.com', '--username', 'ann']);
      expect((await made.done).code).toBe(0);
      const id = (JSON.parse(made.stdout()) as { user: { id: number } }).user.id;

      // An edit of a seeded file, which --force backs up before it puts the package's bytes back.
      const edited = walkFiles(path.join(dataDir, `user_${id}`)).find((f) => f.endsWith('.md'))!;
      appendFileSync(path.join(dataDir, `user_${id}`, edited), '\nedited by the user\n');

      const force = acm2(dataDir, ['user', 'seed', String(id), '--force']);
      const deadline = Date.now() + 20_000;
      while (!underWay(dataDir) && force.child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
      // The signal must land while the seed runs, or this case proves nothing.
      expect(force.child.exitCode).toBeNull();
      expect(underWay(dataDir)).toBe(true);
      force.child.kill(sig);
      const r = await force.done;
      expect(r, force.stdout()).toEqual({ code: 0, signal: null });
      expect(JSON.parse(force.stdout())).toMatchObject({ seed: { status: 'ready', backup: expect.any(String) } });

      const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
      try {
        expect(await master.latestJob(id)).toMatchObject({ status: 'done', force: true });
      } finally {
        await master.close();
      }
    });
  }
});
