// The "ready means complete" invariant as a check: returns what is missing for a ready user.
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { userDbPath, userRoot } from '../../src/userdb/paths.js';
import { walkFiles } from './env.js';

export function readyButIncomplete(dataDir: string, userId: number, expectFiles: number): { ready: boolean; problems: string[] } {
  const file = userDbPath(dataDir, userId);
  if (!existsSync(file)) return { ready: false, problems: [] };
  // Read-write, as ACM2 opens it: a hot journal left by a killed writer is rolled back first.
  const db = new Database(file);
  try {
    const hasMeta = db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'user_meta'`).get();
    const meta = hasMeta ? (db.prepare(`SELECT seed_status, seed_version FROM user_meta WHERE user_id = ?`).get(userId) as { seed_status: string; seed_version: string } | undefined) : undefined;
    if (meta?.seed_status !== 'ready') return { ready: false, problems: [] };
    const problems: string[] = [];
    const files = db.prepare(`SELECT path, bytes, sha256 FROM acm2_seed_files WHERE seed_version = ?`).all(meta.seed_version) as { path: string; bytes: number; sha256: string }[];
    if (files.length !== expectFiles) problems.push(`seeded file list has ${files.length} entries, package has ${expectFiles}`);
    for (const f of files) {
      const abs = path.join(userRoot(dataDir, userId), f.path);
      if (!existsSync(abs)) problems.push(`missing ${f.path}`);
      else if (createHash('sha256').update(readFileSync(abs)).digest('hex') !== f.sha256) problems.push(`changed ${f.path}`);
    }
    const kinds = db.prepare(`SELECT kind, target_id FROM acm2_id_map WHERE seed_version = ? AND kind IN ('contents','documents','presets','runs','tasks','artifacts')`).all(meta.seed_version) as { kind: string; target_id: string }[];
    for (const k of kinds) if (!db.prepare(`SELECT 1 FROM ${k.kind} WHERE id = ?`).get(k.target_id)) problems.push(`missing ${k.kind} row ${k.target_id}`);
    if (kinds.length === 0) problems.push('no seeded rows recorded');
    return { ready: true, problems };
  } finally {
    db.close();
  }
}

/** Files under the user's root that its DB's seeded-file list does not name (a crashed attempt's orphans). */
export function unlistedFiles(dataDir: string, userId: number): string[] {
  const db = new Database(userDbPath(dataDir, userId), { readonly: true });
  try {
    const listed = new Set((db.prepare(`SELECT path FROM acm2_seed_files`).all() as { path: string }[]).map((r) => r.path));
    return walkFiles(userRoot(dataDir, userId)).filter((p) => !listed.has(p));
  } finally {
    db.close();
  }
}
