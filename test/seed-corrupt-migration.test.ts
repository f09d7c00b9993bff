// A user DB the migration before a seed finds corrupt (migrate-safe's own quick_check, or a read
// that says SQLITE_CORRUPT) though the seed's first look passed it (damaged in between): an
// operator's to mend, as when the first look finds it. The job fails at once; the DB is left alone.

import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { corruptIndex, corruptTable, fileWorld } from './helpers/env.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { userDbPath } from '../src/userdb/paths.js';
import { createAcm2Db } from '../src/fixtures/source.js';
import { seedUser } from '../src/core/seed-user.js';
import Database from 'better-sqlite3';

// The seed's first look (migrate-safe's exported quickCheck) passes the DB; migrateSafely's own
// check, inside its module, still runs and finds the damage.
vi.mock('../src/core/migrate-safe.js', async (importOriginal) => ({ ...(await importOriginal<typeof import('../src/core/migrate-safe.js')>()), quickCheck: () => undefined }));

process.env.ACM2_BCRYPT_ROUNDS = '4';
process.env.ACM2_RETRY_BASE_MS = '0';

const env = fileWorld({ sourceDocs: 1 });

describe('a user DB the migration before the seed finds corrupt', () => {
  it('fails the job at once (no retry offered), names the DB and the remedy, and leaves the DB as it was', async () => {
    const deps = { master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'torn@example.com', username: 'torn', async: true })).user.id;
    const file = userDbPath(env.world.dataDir, id);
    // ACM2 created it: the seed adopts and migrates it first.
    createAcm2Db(file).close();
    // An index no read before the migration uses (otherOwners reads presets', runs' and contents' own): only quick_check meets it.
    corruptIndex(file, 'ix_documents_user_id');
    const before = readFileSync(file);

    const r = await seedOneUser(deps, String(id), {});
    expect(r.seed.status).toBe('failed');
    expect(r.seed.retry).toBeUndefined();
    expect(r.seed.error).toMatch(
      new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is corrupt \\(quick_check failed before migrating: .*\\): nothing was seeded and it was left alone; restore it from a backup .* or move it aside, then run: acm2 user seed ${id}$`),
    );
    expect(await env.world.master.latestJob(id)).toMatchObject({ status: 'failed', attempts: 1 });
    expect(readFileSync(file)).toEqual(before);
  });

  it('a read of it before the migration that SQLite answers with SQLITE_CORRUPT: the same', async () => {
    const deps = { master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
    const id = (await createUser(deps, { email: 'torn-read@example.com', username: 'torn-read', async: true })).user.id;
    const file = userDbPath(env.world.dataDir, id);
    // A DB the tool seeded whose seed stopped part way, its migration ledger torn: read to learn
    // whether it needs migrating, before anything is migrated or seeded.
    seedUser({ dataDir: env.world.dataDir, userId: id, pkg: env.pkg.pkg });
    const db = new Database(file);
    db.prepare(`UPDATE user_meta SET seed_status = 'in_progress'`).run();
    db.close();
    corruptTable(file, 'acm2_migrations');
    const before = readFileSync(file);

    const r = await seedOneUser(deps, String(id), {});
    expect(r.seed.status).toBe('failed');
    expect(r.seed.retry).toBeUndefined();
    expect(r.seed.error).toMatch(
      new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is corrupt \\(database disk image is malformed\\): nothing was seeded and it was left alone; restore it from a backup .* or move it aside, then run: acm2 user seed ${id}$`),
    );
    expect(await env.world.master.latestJob(id)).toMatchObject({ status: 'failed', attempts: 1 });
    expect(readFileSync(file)).toEqual(before);
  });
});
