// The user's folder failing for a reason that may pass (the disk's EIO, too many open files) is
// not something in the way: the job stays queued and is retried with backoff, unlike a plain file
// or symlink at user_{id}/, which fails the job at once (seed-failures.test.ts).

import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { fileWorld } from './helpers/env.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { userRoot } from '../src/userdb/paths.js';

// The system call on the path named by `fault.path` fails with `fault.code` while it is set.
const fault: { path?: string; call?: 'lstatSync' | 'mkdirSync'; code?: string } = {};
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const failing = (call: string, p: unknown) => fault.call === call && typeof p === 'string' && path.resolve(p) === fault.path;
  const error = (call: string, p: unknown) => Object.assign(new Error(`${fault.code}: simulated, ${call} '${String(p)}'`), { code: fault.code, path: String(p) });
  const wrapped = {
    ...fs,
    lstatSync: ((p: unknown, ...rest: unknown[]) => {
      if (failing('lstatSync', p)) throw error('lstat', p);
      return (fs.lstatSync as (...a: unknown[]) => unknown)(p, ...rest);
    }) as typeof fs.lstatSync,
    mkdirSync: ((p: unknown, ...rest: unknown[]) => {
      if (failing('mkdirSync', p)) throw error('mkdir', p);
      return (fs.mkdirSync as (...a: unknown[]) => unknown)(p, ...rest);
    }) as typeof fs.mkdirSync,
  };
  return { ...wrapped, default: wrapped };
});

process.env.ACM2_BCRYPT_ROUNDS = '4';
process.env.ACM2_RETRY_BASE_MS = '0';

const env = fileWorld({ sourceDocs: 1 });

describe("the user's folder failing for a reason that may pass", () => {
  it('is exit 3 with the cause, and the job is retried with backoff (not failed at once); the next try seeds the user', async () => {
    const deps = { master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'eio@example.com', username: 'eio', async: true })).user.id;
    fault.path = userRoot(env.world.dataDir, id);
    try {
      const tries = [
        { call: 'lstatSync', code: 'EIO', acm2: 'io_error' },
        { call: 'mkdirSync', code: 'EMFILE', acm2: 'too_many_open_files' },
        { call: 'mkdirSync', code: 'EIO', acm2: 'io_error' },
      ] as const;
      for (const [n, t] of tries.entries()) {
        Object.assign(fault, { call: t.call, code: t.code });
        await expect(seedOneUser(deps, String(id), {})).rejects.toMatchObject({ exitCode: 3, code: t.acm2, message: expect.stringContaining(`user_${id}`) });
        expect(await env.world.master.latestJob(id)).toMatchObject({ status: 'pending', attempts: n + 1, lastError: expect.stringContaining(t.code) });
      }
    } finally {
      fault.call = undefined;
    }
    const r = await seedOneUser(deps, String(id), {});
    expect(r.seed).toMatchObject({ status: 'ready' });
    expect(await env.world.master.latestJob(id)).toMatchObject({ status: 'done' });
  });
});
