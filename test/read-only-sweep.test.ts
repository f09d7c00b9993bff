// A dead process's private read copy this process may not remove (another user's, in a shared
// /tmp) is left where it is: the read that swept it goes on.
import { describe, expect, it, vi } from 'vitest';
import Database from 'better-sqlite3';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { openForReading } from '../src/userdb/user-db.js';
import { thisPidSpace } from '../src/core/worker-name.js';
import { readOnlyView, tmpDir } from './helpers/env.js';

// rmSync of the dead copy fails as it does for a non-root user on root's 0700 copy in /tmp.
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const rmSync = ((p: string, o?: Parameters<typeof fs.rmSync>[1]) => {
    if (String(p).endsWith('-notmine')) throw Object.assign(new Error(`EACCES: permission denied, scandir '${String(p)}'`), { code: 'EACCES' });
    return fs.rmSync(p, o);
  }) as typeof fs.rmSync;
  return { ...fs, rmSync, default: { ...fs, rmSync } };
});

describe('sweeping dead private copies', () => {
  it('a copy it cannot remove does not fail the read', async () => {
    const dir = tmpDir('acm2-sweep-data-');
    const file = path.join(dir, 'user_1.db');
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (42)');
    db.close(); // the last connection removes the -shm: read in place, it cannot be opened
    const tmp = tmpDir('acm2-sweep-tmp-');
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = tmp;
    const gone = spawn(process.execPath, ['-e', '0']);
    await new Promise((r) => gone.once('exit', r));
    const notMine = path.join(tmp, `acm2-read-${gone.pid}.${thisPidSpace() || 'x'}-notmine`);
    mkdirSync(notMine);
    const view = readOnlyView(dir);
    try {
      if (!view) return expect(process.env.CI).not.toBe('true');
      try {
        const r = openForReading(path.join(view.path, 'user_1.db'));
        try {
          expect(r.name.startsWith(tmp)).toBe(true); // a private copy
          expect(r.prepare('SELECT x FROM t').pluck().get()).toBe(42);
        } finally {
          r.close();
        }
      } finally {
        view.undo();
      }
      expect(readdirSync(tmp)).toEqual([path.basename(notMine)]);
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
      rmSync(tmp, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
