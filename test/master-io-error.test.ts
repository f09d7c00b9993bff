// The embedded master on a failing disk: SQLite's "disk I/O error" (SQLITE_IOERR_*) from any master
// call is exit 3 naming the master (SPEC §2), never an internal error (exit 70).
import { afterAll, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { tmpDir } from './helpers/env.js';
import { openMaster } from '../src/master/factory.js';
import { parseMasterUrl } from '../src/config.js';
import { isAcm2Error } from '../src/errors.js';

const dir = tmpDir('acm2-master-eio-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('embedded master, I/O error', () => {
  it('a disk I/O error on a master call is exit 3 naming the master', async () => {
    const file = path.join(dir, 'master.db');
    const master = await openMaster(parseMasterUrl(`sqlite:${file}`));
    try {
      // What a failing disk under the master does to SQLite (seen on a loop device cut short:
      // claimJobForUser threw SqliteError 'disk I/O error', code SQLITE_IOERR_READ).
      (master as unknown as Record<string, unknown>).countUsers = async () => {
        throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
      };
      const err = await master.countUsers().then(() => undefined, (e: unknown) => e);
      expect(isAcm2Error(err)).toBe(true);
      expect(err).toMatchObject({ exitCode: 3 });
      expect((err as Error).message).toContain(file);
    } finally {
      await master.close();
    }
  });
});
