// A pairing cut short between the data dir's stamp and the master's record (kill -9, an account
// that may not write acm2_data_dir, a master restored from before the pairing) is finished by the
// next writing command on that same master, not refused as "another master's" data dir.
import { describe, expect, it } from 'vitest';
import path from 'node:path';
import { parseMasterUrl } from '../src/config.js';
import { openMaster } from '../src/master/factory.js';
import type { MasterDb } from '../src/master/types.js';
import { checkPairing, readDataDirId } from '../src/core/pairing.js';
import { tmpDir } from './helpers/env.js';

describe('a pairing cut short after the stamp', () => {
  it('is finished by the next writing command on the same master; another master is still refused', async () => {
    const dataDir = path.join(tmpDir('acm2-pair-cut-'), 'data');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    const other = await openMaster(parseMasterUrl(`sqlite:${path.join(tmpDir('acm2-pair-other-'), 'master.db')}`));
    try {
      // The process dies (or is denied) right after the stamp, before the master's row.
      const dying: MasterDb = Object.assign(Object.create(master) as MasterDb, {
        pairDataDir: async () => {
          throw new Error('killed between the stamp and the master row');
        },
      });
      await expect(checkPairing(dying, dataDir, { write: true })).rejects.toThrow(/killed/);
      const id = readDataDirId(dataDir);
      expect(id).toBeDefined();
      expect(await master.pairedDataDir()).toBeUndefined();

      await expect(checkPairing(other, dataDir, { write: true })).rejects.toThrow(/belongs to another master/);
      await checkPairing(master, dataDir, { write: true });
      expect((await master.pairedDataDir())?.id).toBe(id);
      expect(readDataDirId(dataDir)).toBe(id);
      await expect(checkPairing(other, dataDir, { write: true })).rejects.toThrow(/belongs to another master/);
    } finally {
      await master.close();
      await other.close();
    }
  });
});
