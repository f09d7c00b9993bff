// Deterministic bytes for seed packages: canonical JSON, sha256, table dumps in primary-key order
// and sorted file listings. Freeze and check both go through here, so they cannot disagree.

import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type Database from 'better-sqlite3';

export function sha256(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function sha256File(file: string): { bytes: number; sha256: string } {
  const buf = readFileSync(file);
  return { bytes: buf.length, sha256: sha256(buf) };
}

/**
 * JSON with sorted object keys and no whitespace. BigInt (SQLite INTEGER read with safeIntegers)
 * is written as a JSON number with all its digits; blobs as {"$blob": base64}.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`cannot encode ${value} as canonical JSON`);
      return JSON.stringify(value);
    case 'bigint':
      return value.toString();
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object': {
      if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
      if (value instanceof Uint8Array) return canonicalJson({ $blob: Buffer.from(value).toString('base64') });
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
    }
    default:
      throw new TypeError(`cannot encode a ${typeof value} as canonical JSON`);
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export interface ColumnInfo {
  name: string;
  notnull: boolean;
  hasDefault: boolean;
  pk: number;
}

export function tableColumns(db: Database.Database, table: string): ColumnInfo[] {
  const rows = db.prepare(`PRAGMA table_info(${quoteIdent(table)})`).all() as Array<{
    name: string;
    notnull: number;
    dflt_value: unknown;
    pk: number;
  }>;
  return rows.map((r) => ({ name: r.name, notnull: r.notnull === 1, hasDefault: r.dflt_value !== null, pk: r.pk }));
}

export function tableExists(db: Database.Database, table: string): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(table) !== undefined;
}

/** `ORDER BY` clause for a table's primary key (rowid when it has none). */
export function primaryKeyOrder(db: Database.Database, table: string): string {
  const pk = tableColumns(db, table)
    .filter((c) => c.pk > 0)
    .sort((a, b) => a.pk - b.pk)
    .map((c) => quoteIdent(c.name));
  return pk.length > 0 ? pk.join(', ') : 'rowid';
}

/** Every row of a table in primary-key order, integers as BigInt so nothing is rounded. */
export function readTableExact(db: Database.Database, table: string): Record<string, unknown>[] {
  return db
    .prepare(`SELECT * FROM ${quoteIdent(table)} ORDER BY ${primaryKeyOrder(db, table)}`)
    .safeIntegers(true)
    .all() as Record<string, unknown>[];
}

/** Row count and sha256 of the canonical dump (a JSON array of row objects in PK order). */
export function dumpTable(db: Database.Database, table: string): { rows: number; sha256: string } {
  const rows = readTableExact(db, table);
  return { rows: rows.length, sha256: sha256(canonicalJson(rows)) };
}

export type TreeEntry =
  | { kind: 'file'; rel: string; bytes: number; mtimeMs: number; ino: number }
  | { kind: 'dir'; rel: string }
  | { kind: 'symlink'; rel: string }
  | { kind: 'other'; rel: string };

/**
 * Everything under root (root itself excluded), never following symlinks, sorted by '/'-joined
 * relative path so every listing of the same tree is identical.
 */
export function walkTree(root: string, opts: { live?: boolean } = {}): TreeEntry[] {
  const out: TreeEntry[] = [];
  // A live tree (a user's folder while ACM2 serves it): an entry removed while it is walked is
  // simply not there, not an error.
  const gone = (e: unknown) => opts.live === true && (e as NodeJS.ErrnoException).code === 'ENOENT';
  const visit = (dir: string, prefix: string) => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch (e) {
      if (gone(e) && dir !== root) return;
      throw e;
    }
    for (const name of names) {
      const rel = prefix ? `${prefix}/${name}` : name;
      const full = path.join(dir, name);
      let st;
      try {
        st = lstatSync(full);
      } catch (e) {
        // A name that is not UTF-8 comes back from readdir with U+FFFD in it, and no entry has
        // that name: it cannot be read by name, so it is something other than a file here.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' && name.includes('\uFFFD')) {
          out.push({ kind: 'other', rel });
          continue;
        }
        if (gone(e)) continue;
        throw e;
      }
      if (st.isSymbolicLink()) out.push({ kind: 'symlink', rel });
      else if (st.isDirectory()) {
        out.push({ kind: 'dir', rel });
        visit(full, rel);
      } else if (st.isFile()) out.push({ kind: 'file', rel, bytes: st.size, mtimeMs: st.mtimeMs, ino: st.ino });
      else out.push({ kind: 'other', rel });
    }
  };
  visit(root, '');
  return out.sort((a, b) => compareStrings(a.rel, b.rel));
}

/** Code-unit order, independent of locale. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
