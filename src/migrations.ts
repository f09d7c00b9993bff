// Loads ordered, checksummed .sql migrations from the migrations/ folder shipped with the tool.
// The runners (per-user SQLite, master SQLite/MySQL) share this loader and the checksum rule.

import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

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
