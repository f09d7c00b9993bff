// A read command never changes the master: on a master the tool never set up (ACM2's own users and
// api_keys, nothing of the tool's), user list, user show, verify and diff read it as it is, with no
// seed jobs and no backfill progress, and add none of the tool's tables.

import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadMigrations } from '../src/migrations.js';
import { frozenSource, tmpDir, type FrozenSource } from './helpers/env.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
let pkg: FrozenSource;
let dataDir: string;

beforeAll(() => {
  pkg = frozenSource();
  dataDir = tmpDir('acm2-unset-');
  const db = new Database(path.join(dataDir, 'master.db'));
  db.exec(loadMigrations('master/sqlite')[0]!.sql);
  db.prepare(`INSERT INTO users (username, email) VALUES ('ann', 'ann@example.com')`).run();
  db.close();
});
afterAll(() => {
  pkg.cleanup();
  rmSync(dataDir, { recursive: true, force: true });
});

async function acm2(args: string[]) {
  try {
    const r = await run(process.execPath, [BIN, '--data-dir', dataDir, '--seeds', pkg.seedsDir, ...args, '--json'], { env: { ...process.env, ACM2_MASTER_URL: '' } });
    return { code: 0, stdout: r.stdout };
  } catch (e) {
    const x = e as { code: number; stdout: string };
    return { code: x.code, stdout: x.stdout };
  }
}

function tables(): string[] {
  const db = new Database(path.join(dataDir, 'master.db'), { readonly: true });
  try {
    return db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).pluck().all() as string[];
  } finally {
    db.close();
  }
}

describe('read commands on a master the tool never set up', () => {
  it('read it as it is and add none of the tool tables', async () => {
    const before = tables();
    const list = await acm2(['user', 'list']);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout)).toMatchObject({ users: [{ id: 1, username: 'ann', status: 'missing', job: null }] });
    const show = await acm2(['user', 'show', '1']);
    expect(show.code).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({ id: 1, status: 'missing', job: null });
    // Findings about the user (no DB yet), not an error about the master.
    const verify = await acm2(['verify']);
    expect(verify.code).toBe(1);
    expect(JSON.parse(verify.stdout)).toMatchObject({ checked: 1, users: [{ id: 1, problems: [{ code: 'db_missing' }] }] });
    const diff = await acm2(['diff', '--user', '1']);
    expect(JSON.parse(diff.stdout)).toMatchObject({ error: { code: 'db_missing' } });
    expect(tables()).toEqual(before);
    expect(before.filter((t) => t.startsWith('acm2_'))).toEqual([]);
  });
});
