// A package cut from a user's own DB (`seed freeze --source user_1.db`, the admin's account, say)
// has that user's ids as its package ids. Seeding that same user with it (`--seed-version v2`)
// must not make verify report the user's own rows as leaks of the package for ever: its ids are
// its own, not another user's. Every other user seeded from it is still checked against them.

import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { fileWorld } from './helpers/env.js';
import { freezeSeed } from '../src/core/freeze.js';
import { createUser, seedOneUser } from '../src/core/users.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

const env = fileWorld({ sourceDocs: 1 });

describe('a package frozen from a user, then seeded into that same user', () => {
  it('verify finds that user clean; another user seeded from it is still checked for its ids', async () => {
    const deps = { master: env.world.master, dataDir: env.world.dataDir, seedsDir: env.pkg.seedsDir, lockTimeoutMs: 5000 };
    const admin = (await createUser(deps, { email: 'admin@example.com', username: 'admin' })).user.id;
    const db = new Database(userDbPath(env.world.dataDir, admin), { readonly: true });
    const presetId = db.prepare(`SELECT id FROM presets`).pluck().get() as string;
    const runId = db.prepare(`SELECT id FROM runs`).pluck().get() as string;
    db.close();
    freezeSeed({ sourceDb: userDbPath(env.world.dataDir, admin), sourceFiles: userRoot(env.world.dataDir, admin), presetId, runId, version: 'v2', seedsDir: env.pkg.seedsDir, setCurrent: false });

    expect((await seedOneUser(deps, String(admin), { seedVersion: 'v2' })).seed).toMatchObject({ status: 'ready', seedVersion: 'v2' });
    const other = (await createUser(deps, { email: 'bea@example.com', username: 'bea', seedVersion: 'v2' })).user.id;
    const r = await verifyUsers(deps, {});
    expect(r.users.flatMap((u) => u.problems)).toEqual([]);
    expect(r.ok).toBe(true);

    // The admin's run id is a v2 package id: in another user's row it is a leak, and said so.
    const o = new Database(userDbPath(env.world.dataDir, other));
    expect(o.prepare(`UPDATE presets SET name = ?`).run(`copy of ${runId}`).changes).toBe(1);
    o.close();
    const again = await verifyUsers(deps, { users: [other] });
    expect(again.users[0]!.problems).toEqual([expect.objectContaining({ code: 'seed_id_leaked', userId: other, table: 'presets', message: expect.stringContaining(`holds package id ${runId}`) })]);
  }, 60_000);
});
