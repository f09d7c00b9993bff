// Loads ordered, checksummed .sql migrations from the migrations/ folder shipped with the tool.
// The runners (per-user SQLite, master SQLite/MySQL) share this loader and the checksum rule.

import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { TOOL_VERSION } from './config.js';
import { UnavailableError } from './errors.js';

export interface Migration {
  id: number;
  name: string;
  sql: string;
  checksum: string;
}

export const MIGRATIONS_ROOT = fileURLToPath(new URL('../migrations/', import.meta.url));

const cache = new Map<string, Migration[]>();

export function loadMigrations(subdir: string): Migration[] {
  const hit = cache.get(subdir);
  if (hit) return hit;
  const dir = path.join(MIGRATIONS_ROOT, subdir);
  const list = readdirSync(dir)
    .filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const sql = readFileSync(path.join(dir, file), 'utf8');
      return {
        id: Number(file.slice(0, 4)),
        name: file.replace(/\.sql$/, ''),
        sql,
        checksum: createHash('sha256').update(sql).digest('hex'),
      };
    });
  list.forEach((m, i) => {
    if (m.id !== i + 1) throw new Error(`migrations/${subdir}: expected migration ${i + 1}, found ${m.name}`);
  });
  cache.set(subdir, list);
  return list;
}

/** One row of a migration ledger (the master's or a user DB's). */
export interface LedgerRow {
  id: number;
  name: string;
  checksum: string;
}

export interface LedgerCheck {
  /** This tool's migrations the ledger lacks, in order. */
  pending: Migration[];
  /** Ledger rows this tool has no migration for: a newer acm2 applied them. */
  unknown: LedgerRow[];
  /** The first of this tool's migrations the ledger records with another checksum. */
  changed?: Migration;
}

/** A ledger read against the migrations this tool ships: one rule for the master and the user DBs. */
export function checkLedger(all: readonly Migration[], ledger: Iterable<LedgerRow>): LedgerCheck {
  const byId = new Map<number, LedgerRow>();
  for (const r of ledger) byId.set(Number(r.id), r);
  const known = new Set(all.map((m) => m.id));
  const unknown = [...byId.values()].filter((r) => !known.has(Number(r.id))).sort((a, b) => Number(a.id) - Number(b.id));
  const changed = all.find((m) => byId.has(m.id) && byId.get(m.id)!.checksum !== m.checksum);
  return { pending: all.filter((m) => !byId.has(m.id)), unknown, ...(changed ? { changed } : {}) };
}

/**
 * The one sentence for a master or user DB that a newer acm2 migrated (several hosts share them;
 * one upgraded first): this tool does not know its format, so it must neither write nor judge it.
 * Exit 3: the command and its input are right, and the same command works once acm2 is upgraded.
 */
export function newerToolError(place: string, unknown: readonly LedgerRow[], code: 'master_newer' | 'schema_newer', what?: string): UnavailableError {
  return new UnavailableError(`${place} ${newerToolReason(unknown, what)}`, code);
}

/** "has migration …, which this acm2 … does not know: …, so <what>; upgrade acm2 …": newerToolError's words after the place. */
export function newerToolReason(unknown: readonly LedgerRow[], what = 'nothing was changed'): string {
  const names = unknown.map((r) => r.name).join(', ');
  const s = unknown.length > 1 ? 's' : '';
  return `has migration${s} ${names}, which this acm2 (${TOOL_VERSION}) does not know: a newer acm2 applied ${s ? 'them' : 'it'}, so ${what}; upgrade acm2 on this host to the newer version, then run again`;
}

/** Split a .sql file into statements (our files hold no semicolons inside literals). */
export function splitStatements(sql: string): string[] {
  return sql
    .split('\n')
    .filter((line) => !line.trim().startsWith('--'))
    .join('\n')
    .split(';')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
