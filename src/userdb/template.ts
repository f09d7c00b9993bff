// A fresh user DB is a copy of a per-schema template (ACM2's schema plus the tool's tables, all
// migrations applied), not a run of every migration: copying a prepared file is close to the
// floor, executing DDL and committing each migration is not.

import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { fsyncPath, processAlive } from '../durable.js';
import { migrateUserDb, openSqlite, userMigrations } from './user-db.js';
import { toolDir } from './paths.js';

const made = new Set<string>();

/** The template for the current migrations, built once per data dir (atomically). */
export function userDbTemplate(dataDir: string): string {
  const key = createHash('sha256').update(userMigrations().map((m) => m.checksum).join(',')).digest('hex').slice(0, 16);
  const file = toolDir(dataDir, 'templates', `user-${key}.db`);
  if (made.has(file) || existsSync(file)) {
    made.add(file);
    return file;
  }
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  removeDeadBuilds(path.dirname(file));
  const tmp = `${file}.${hostname()}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const db = openSqlite(tmp, { create: true });
  try {
    migrateUserDb(db);
  } finally {
    db.close();
  }
  fsyncPath(tmp);
  renameSync(tmp, file);
  fsyncPath(path.dirname(file));
  made.add(file);
  return file;
}

/**
 * Templates a killed process was building (`<name>.<host>.<pid>.<hex>.tmp`): never used, only
 * litter. A build of this host is dead when its pid is; another host's (a data dir shared over
 * the network, containers on one volume) cannot be asked, so only one untouched for an hour goes.
 */
function removeDeadBuilds(dir: string): void {
  for (const name of readdirSync(dir)) {
    const m = /^user-[0-9a-f]+\.db\.(?:(.+)\.)?(\d+)\.[0-9a-f]+\.tmp(-journal|-wal|-shm)?$/.exec(name);
    if (!m) continue;
    const full = path.join(dir, name);
    const here = m[1] === hostname();
    const pid = Number(m[2]);
    try {
      if (here ? pid !== process.pid && !processAlive(pid) : Date.now() - statSync(full).mtimeMs > STALE_MS) rmSync(full, { force: true });
    } catch {
      /* gone already */
    }
  }
}

const STALE_MS = 60 * 60 * 1000;
