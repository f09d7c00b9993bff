// What a user DB that exists needs before it may be used as that user's: refused (another owner,
// not ACM2's, drift only a table rebuild could mend), or adopted and migrated. One decision for
// backfill's planner and for a seed of an existing DB, which word it each in their own way.

import { checkLedger, type LedgerRow, type Migration } from '../migrations.js';
import { ACM2_TABLES, detectSchemaDrift, ledgerVerdict, type SchemaDrift, type SqliteDb } from '../userdb/user-db.js';
import type { UserId } from '../userdb/paths.js';

export type SchemaWork =
  | { ok: false; code: 'foreign_data'; owners: string[] }
  | { ok: false; code: 'unrecognised'; tables: string[] }
  | { ok: false; code: 'schema_unrepairable'; unrepairable: string[] }
  /** A newer acm2 migrated it (its ledger names migrations this tool does not ship): not this tool's to touch. */
  | { ok: false; code: 'schema_newer'; unknown: LedgerRow[] }
  | {
      ok: true;
      /** A DB ACM2 made itself (no ledger): repair this drift and record migration 1 as applied. */
      adopt?: SchemaDrift;
      /** A DB with a ledger that lost part of migration 1's schema (only when ledgerDrift is given). */
      repair?: SchemaDrift;
      migrations: Migration[];
    };

/**
 * `tables`: the DB's tables (not empty). `ledgerDrift`: how to read the drift of a DB that has the
 * ledger (backfill caches it per schema); without it such a DB is only migrated.
 */
export function schemaWork(db: SqliteDb, tables: Set<string>, userId: UserId, migrations: Migration[], ledgerDrift?: () => SchemaDrift): SchemaWork {
  // Another user's data under this id is never adopted, migrated or seeded as this user's.
  const owners = otherOwners(db, tables, userId);
  if (owners.length > 0) return { ok: false, code: 'foreign_data', owners };
  if (!tables.has('acm2_migrations')) {
    if (!ACM2_TABLES.some((t) => tables.has(t))) return { ok: false, code: 'unrecognised', tables: [...tables] };
    const drift = detectSchemaDrift(db);
    if (drift.unrepairable.length > 0) return { ok: false, code: 'schema_unrepairable', unrepairable: drift.unrepairable };
    return { ok: true, adopt: drift, migrations: migrations.filter((m) => m.id > 1) };
  }
  // The ledger is read once here, before anything else is decided about a DB that has it: a DB a
  // newer acm2 migrated is neither repaired nor migrated by this one, whatever else it looks like.
  const ledger = db.prepare(`SELECT id, name, checksum FROM acm2_migrations`).all() as LedgerRow[];
  const unknown = checkLedger(migrations, ledger).unknown;
  if (unknown.length > 0) return { ok: false, code: 'schema_newer', unknown };
  let repair: SchemaDrift | undefined;
  if (ledgerDrift) {
    // The ledger says what was applied, not what is still there: a table, column or index of
    // migration 1 lost since (dropped by hand, a restore of part of the file) is put back.
    const drift = ledgerDrift();
    if (drift.unrepairable.length > 0) return { ok: false, code: 'schema_unrepairable', unrepairable: drift.unrepairable };
    if (drift.missingTables.length + drift.missingColumns.length + drift.missingIndexes.length > 0) repair = drift;
  }
  return { ok: true, ...(repair ? { repair } : {}), migrations: ledgerVerdict(db.name, migrations, ledger) };
}

/** Rows of ACM2's per-user tables that name another owner (a DB copied or reused under this id). */
export function otherOwners(db: SqliteDb, tables: Set<string>, userId: UserId): string[] {
  // user_meta (one row, its owner's) decides for a DB that has one: one small statement, since
  // backfill asks this of every user. Only a DB without it (legacy ACM2) is asked of its rows.
  if (tables.has('user_meta')) {
    try {
      const owners = db.prepare(`SELECT user_id FROM user_meta LIMIT 2`).pluck().all() as unknown[];
      if (owners.length > 0) return owners.filter((o) => String(o) !== String(userId)).map((o) => `user_meta of user ${String(o)}`);
    } catch (e) {
      lacksUserId(e); // no user_id column: ask the rows
    }
  }
  const present = OWNED_TABLES.filter((t) => tables.has(t) && t !== 'user_meta');
  if (present.length === 0) return [];
  // One statement over the tables (backfill asks this of every user), each part two index ranges
  // (ix_<t>_user_id), not a scan: INTEGER affinity stores ids as integers; text that is not a
  // number sorts above every integer and is another owner too.
  const part = (t: string) => `SELECT '${t}' AS t, user_id FROM ${t} WHERE user_id < ? OR user_id > ?`;
  try {
    const rows = db.prepare(present.map((t) => `SELECT * FROM (${part(t)} LIMIT 1)`).join(' UNION ALL ')).raw(true).all(...present.flatMap(() => [userId, userId])) as [string, unknown][];
    return rows.map(([t, other]) => `${t} of user ${String(other)}`);
  } catch (e) {
    // A table of this DB's ACM2 version without user_id: ask the others one by one.
    lacksUserId(e);
    const out: string[] = [];
    for (const t of present) {
      try {
        const other = db.prepare(`${part(t)} LIMIT 1`).raw(true).get(userId, userId) as [string, unknown] | undefined;
        if (other) out.push(`${t} of user ${String(other[1])}`);
      } catch (e) {
        lacksUserId(e); // no user_id column here
      }
    }
    return out;
  }
}

/**
 * The one failure otherOwners reads past: a table without user_id (an older ACM2's). Anything
 * else (a corrupt page, a DB locked by another process) is rethrown, not taken for "no other
 * owner": a check that cannot read must not pass.
 */
function lacksUserId(e: unknown): void {
  if (!/no such column/i.test(e instanceof Error ? e.message : String(e))) throw e;
}

const OWNED_TABLES = ['user_meta', 'presets', 'runs', 'contents'];
