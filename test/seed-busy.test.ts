// A user DB that ACM2 holds locked past the wait (a long write while the app still serves users):
// `acm2 user seed <id>` is the environment failing, exit 3, with one sentence naming the DB; the
// user stays ready and nothing is half-done.

import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { userDbPath } from '../src/userdb/paths.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
let world: World;
let ann: number;

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  ann = (await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'ann@example.com', username: 'ann' })).user.id;
});
afterAll(async () => {
  await world.cleanup();
  pkg.cleanup();
});

/** ACM2 in a long write: WAL, BEGIN IMMEDIATE held for `ms`. Resolves once held. */
function holdWrite(file: string, ms: number, how: { wal: boolean; begin: string } = { wal: true, begin: 'BEGIN IMMEDIATE' }): Promise<() => void> {
  const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); ${how.wal ? "d.pragma('journal_mode = WAL');" : ''} d.exec('${how.begin}'); process.stdout.write('held\\n'); setTimeout(() => { d.exec('ROLLBACK'); d.close(); }, ${ms});`;
  const child = spawn(process.execPath, ['-e', script, file], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve(() => child.kill('SIGKILL')));
    child.once('exit', (code) => reject(new Error(`holder exited early (${code})`)));
  });
}

describe('user seed of a DB ACM2 holds locked', () => {
  it('exits 3 with one sentence naming the locked DB, and the user stays ready', async () => {
    const file = userDbPath(world.dataDir, ann);
    const release = await holdWrite(file, 9000);
    try {
      const r = await execa('node', [path.join(REPO, 'bin', 'acm2.js'), 'user', 'seed', String(ann), '--force', '--json', '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });
      expect(r.exitCode).toBe(3);
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      expect(doc.error.code).toBe('db_busy');
      expect(doc.error.message).toContain(file);
    } finally {
      release();
    }
    const db = new Database(file, { readonly: true });
    try {
      expect(db.prepare(`SELECT seed_status FROM user_meta WHERE user_id = ?`).pluck().get(ann)).toBe('ready');
    } finally {
      db.close();
    }
  }, 60_000);

  it('a rollback-journal DB held exclusively (readers blocked too) is exit 3 db_busy as well', async () => {
    const bob = (await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'bob@example.com', username: 'bob' })).user.id;
    const file = userDbPath(world.dataDir, bob);
    const release = await holdWrite(file, 9000, { wal: false, begin: 'BEGIN EXCLUSIVE' });
    try {
      const r = await execa('node', [path.join(REPO, 'bin', 'acm2.js'), 'user', 'seed', String(bob), '--force', '--json', '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false });
      expect(r.exitCode).toBe(3);
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      expect(doc.error.code).toBe('db_busy');
      expect(doc.error.message).toContain(file);
    } finally {
      release();
    }
  }, 60_000);
});
