// Two drainers (a pool's threads, or two drains) that start together right after a kill -9: one
// takes over the dead process's job while the other's orphan sweep looks at it.

import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { frozenSource, sqliteWorld, type FrozenSource } from './helpers/env.js';
import { createUser, drainQueue } from '../src/core/users.js';
import { thisPidSpace } from '../src/core/worker-name.js';
import { lockUserFile } from '../src/core/user-lock.js';

let pkg: FrozenSource;
beforeAll(() => {
  pkg = frozenSource();
});
afterAll(() => pkg.cleanup());

/** The pid of a process of this host that ran and is gone. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

it.skipIf(thisPidSpace() === '')("a kill -9's job is taken over by the next drain even when its user's lock is held at that moment", async () => {
  const world = await sqliteWorld();
  try {
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
    const { user } = await createUser(deps, { email: 'k@example.com', username: 'killed', async: true });
    // The job as a drain killed right after its claim leaves it: running, a ten-minute lease, its worker gone.
    const dead = `${hostname()}:${deadPid()}:abcdef:${thisPidSpace()}`;
    expect(await world.master.claimJob(dead, 10 * 60 * 1000)).toBeDefined();
    // The user's lock held for a moment by another drainer (a pool's other thread that took the
    // job over, or its own sweep) just as this drain sweeps.
    const held = lockUserFile(world.dataDir, user.id, 0)!;
    expect(held).toBeDefined();
    await drainQueue(deps, { lanes: 1 });
    await held.release();
    const job = await world.master.latestJob(user.id);
    // Before: the sweep found the lock taken and left the dead worker's lease for its ten minutes.
    expect(job?.lockedBy, "the dead worker's lease ended").not.toBe(dead);
    expect(job?.status).toBe('pending');
    // Handed back as "user busy", due again a second later (made due now, not waited for).
    await world.master.makeJobDue(job!.id);
    const next = await drainQueue(deps, { lanes: 1 });
    expect(next.done).toBe(1);
    expect((await world.master.latestJob(user.id))?.status).toBe('done');
  } finally {
    await world.cleanup();
  }
});
