// A user DB that goes corrupt while it is being seeded (its first look passed it; a page torn
// since, met by the seed's reads or writes): an operator's to mend, as when the first look finds
// it. The job fails at once with the sentence, and nothing more is written into the DB.

import { readFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { corruptIndex, fileWorld } from './helpers/env.js';
import { createUser, drainQueue, seedOneUser, type UserDeps } from '../src/core/users.js';
import { seedUser, type SeedStep } from '../src/core/seed-user.js';
import { userDbPath } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
process.env.ACM2_RETRY_BASE_MS = '0';

const env = fileWorld({ sourceDocs: 1 });

/** A user with a queued seed job and a DB the tool seeded whose seed then stopped part way. */
async function stoppedSeed(deps: UserDeps, name: string): Promise<{ id: number; file: string }> {
  const id = (await createUser(deps, { email: `${name}@example.com`, username: name, async: true })).user.id;
  const file = userDbPath(env.world.dataDir, id);
  seedUser({ dataDir: env.world.dataDir, userId: id, pkg: env.pkg.pkg });
  const db = new Database(file);
  db.prepare(`UPDATE user_meta SET seed_status = 'in_progress'`).run();
  db.close();
  return { id, file };
}

/** Tears `index` of `file` when the seed reaches `at`, and keeps the DB's bytes as they are then. */
function tearAt(file: string, at: SeedStep, index: string) {
  const torn: { bytes?: Buffer } = {};
  const onStep = (s: SeedStep) => {
    if (s !== at) return;
    corruptIndex(file, index);
    torn.bytes = readFileSync(file);
  };
  return { onStep, torn };
}

const escaped = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const sentence = (file: string, id: number, done: string, then = `acm2 user seed ${id}`) =>
  new RegExp(
    `^${escaped(file)} is corrupt \\(database disk image is malformed\\): ${escaped(done)}; ` +
      `restore it from a backup \\(the tool keeps its migration backups in .*user_${id}\\) or move it aside, then run: ${escaped(then)}$`,
  );

describe('a user DB that goes corrupt during its seed', () => {
  it('after the seed wrote its files: the job fails at once, and no failure record is written into the DB', async () => {
    const base = { master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
    const { id, file } = await stoppedSeed(base, 'torn-late');
    // The runs' index, which only the seed's last transaction (its rows) writes.
    const { onStep, torn } = tearAt(file, 'files_moved', 'ix_runs_user_id');

    const r = await seedOneUser({ ...base, onStep }, String(id), {});
    expect(torn.bytes).toBeDefined();
    expect(r.seed.status).toBe('failed');
    expect(r.seed.retry).toBeUndefined();
    expect(r.seed.error).toMatch(sentence(file, id, "the seed stopped after writing the user's files, before its rows, and wrote nothing more into it (user_meta says in_progress)"));
    expect(await env.world.master.latestJob(id)).toMatchObject({ status: 'failed', attempts: 1, lastError: r.seed.error });
    expect(readFileSync(file)).toEqual(torn.bytes);
  });

  it('before the seed wrote anything: drained from the queue, the job fails for good at its first attempt and the DB is left as it was', async () => {
    const base = { master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
    const { id, file } = await stoppedSeed(base, 'torn-early');
    // The ID map's key, which the seed reads first of all when it takes up its map.
    const { onStep, torn } = tearAt(file, 'migrated', 'sqlite_autoindex_acm2_id_map_1');

    const drained = await drainQueue({ ...base, onStep }, {});
    expect(torn.bytes).toBeDefined();
    expect(drained.failures.filter((f) => f.userId === id)).toEqual([
      // A drain names the job's version: a bare `user seed <id>` seeds CURRENT, whichever that is then.
      expect.objectContaining({ final: true, error: expect.stringMatching(sentence(file, id, 'nothing was seeded and it was left alone', `acm2 user seed ${id} --seed-version ${env.pkg.pkg.version}`)) }),
    ]);
    expect(await env.world.master.latestJob(id)).toMatchObject({ status: 'failed', attempts: 1 });
    // Not queued again: a drain after it (retries are due at once here) takes nothing.
    expect(await drainQueue(base, {})).toMatchObject({ claimed: 0 });
    expect(readFileSync(file)).toEqual(torn.bytes);
  });
});
