// A backfill killed (SIGKILL) right after it made a user ready must not leave that user ready with
// the loose permissions ACM2 gave its DB: verify would fail a user ACM2 already serves.
import { describe, expect, it } from 'vitest';
import { statSync } from 'node:fs';
import Database from 'better-sqlite3';
import { backfillKilledAtCommit, buildLegacyFleet, fleetPackage } from './helpers/legacy-fleet.js';
import { verifyUsers } from '../src/core/verify.js';
import { userDbPath } from '../src/userdb/paths.js';

const env = fleetPackage();

describe('backfill killed right after a seed committed', () => {
  it('the user it made ready already has its DB at 0600: verify finds nothing to fix', async () => {
    // ACM2 made this DB (0644, a preset and no run): the backfill seeds the package beside it.
    const fleet = await buildLegacyFleet({ presets_only: 1 }, env.pkg.pkg);
    try {
      const db = userDbPath(fleet.dataDir, 1);
      expect(statSync(db).mode & 0o777).toBe(0o644);
      const killed = backfillKilledAtCommit(fleet.masterUrl, fleet.dataDir, env.pkg.seedsDir);
      expect(killed.signal, killed.stderr).toBe('SIGKILL');

      const meta = new Database(db, { readonly: true });
      try {
        expect(meta.prepare(`SELECT seed_status, seed_version FROM user_meta`).get()).toEqual({ seed_status: 'ready', seed_version: 'v1' });
      } finally {
        meta.close();
      }
      expect(statSync(db).mode & 0o777).toBe(0o600);
      const v = await verifyUsers({ master: fleet.master, dataDir: fleet.dataDir, seedsDir: env.pkg.seedsDir }, { users: [1] });
      expect(v.users.flatMap((u) => u.problems).filter((p) => p.code === 'bad_permissions')).toEqual([]);
    } finally {
      await fleet.cleanup();
    }
  }, 60_000);
});
