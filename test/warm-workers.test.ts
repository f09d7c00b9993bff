// Threads started early (warm-workers) are a head start, never a new way to fail: where the system
// starts no more threads (a pids or process limit: `new Worker` throws ERR_WORKER_INIT_FAILED), a
// command does what it did before it started threads early. The built CLI runs with a preload that
// makes every `new Worker` fail so (as `prlimit --nproc` does for real, at a limit that varies by host).

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;
let world: World;
let preloadDir: string;
let noThreads: string;
beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  for (const name of ['a', 'b', 'c']) await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: `${name}@example.com`, username: name });
  await world.master.close();
  preloadDir = mkdtempSync(path.join(os.tmpdir(), 'acm2-nothreads-'));
  noThreads = path.join(preloadDir, 'no-threads.mjs');
  writeFileSync(
    noThreads,
    [
      `import { createRequire, syncBuiltinESMExports } from 'node:module';`,
      `const wt = createRequire(import.meta.url)('node:worker_threads');`,
      `wt.Worker = class { constructor() { throw Object.assign(new Error('EAGAIN'), { code: 'ERR_WORKER_INIT_FAILED' }); } };`,
      `syncBuiltinESMExports();`,
    ].join('\n'),
  );
});
afterAll(() => {
  rmSync(world.dataDir, { recursive: true, force: true });
  rmSync(preloadDir, { recursive: true, force: true });
  pkg.cleanup();
});

/** `acm2 <args> --json` on the world where no thread can be started: exit code and document. */
function withoutThreads(args: string[]): Promise<{ code: number; doc: Record<string, any>; stderr: string }> {
  const argv = ['--import', noThreads, BIN, ...args, '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir, '--json'];
  return new Promise((resolve) => {
    execFile(process.execPath, argv, { env: { ...process.env, NO_COLOR: '1' }, timeout: 60_000 }, (e, stdout, stderr) =>
      resolve({ code: e ? Number((e as { code?: unknown }).code) : 0, doc: JSON.parse(stdout || '{}') as Record<string, any>, stderr }),
    );
  });
}

describe('a host that starts no more threads', () => {
  it('backfill --concurrency 2 plans every user in this thread, as it did before its threads started early', async () => {
    const r = await withoutThreads(['backfill', '--dry-run', '--concurrency', '2']);
    expect(r.code, JSON.stringify(r.doc) + r.stderr).toBe(0);
    expect(r.doc.counts).toEqual({ ok: 3 });
  });

  it('a command that still needs a thread it cannot get says so, exit 3 (the host, not a bug)', async () => {
    const r = await withoutThreads(['verify', '--concurrency', '2']);
    expect(r.code, JSON.stringify(r.doc) + r.stderr).toBe(3);
    expect(r.doc.error).toMatchObject({ code: 'threads_unavailable', message: expect.stringMatching(/^the system would not start a worker thread \(EAGAIN\): raise the process or thread limit .* or run with --concurrency 1$/) });
  });
});
