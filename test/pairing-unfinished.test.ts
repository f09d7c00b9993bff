// A stamp written for a master at this very URL that the master never recorded (kill -9 between
// the stamp and the master's row, an account that may not write acm2_data_dir, a master restored
// from before the pairing) cannot be told from another master at the same address (another server
// behind the same host name or tunnel, another file at the same path): refused, never paired
// silently; pairing on purpose (ACM2_PAIR_DATA_DIR) finishes it.
import { afterEach, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { parseMasterUrl } from '../src/config.js';
import { openMaster } from '../src/master/factory.js';
import type { MasterDb } from '../src/master/types.js';
import { checkPairing, readDataDirId } from '../src/core/pairing.js';
import { tmpDir } from './helpers/env.js';

const dying = (m: MasterDb): MasterDb =>
  Object.assign(Object.create(m) as MasterDb, {
    pairDataDir: async () => {
      throw new Error('killed between the stamp and the master row');
    },
  });

afterEach(() => {
  delete process.env.ACM2_PAIR_DATA_DIR;
});

describe('a pairing cut short after the stamp', () => {
  it('is refused with its remedy, and finished by pairing on purpose; another master is still refused', async () => {
    const dataDir = path.join(tmpDir('acm2-pair-cut-'), 'data');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    const other = await openMaster(parseMasterUrl(`sqlite:${path.join(tmpDir('acm2-pair-other-'), 'master.db')}`));
    try {
      await expect(checkPairing(dying(master), dataDir, { write: true })).rejects.toThrow(/killed/);
      expect(readDataDirId(dataDir)).toBeDefined();
      expect(await master.pairedDataDir()).toBeUndefined();

      await expect(checkPairing(other, dataDir, { write: true })).rejects.toThrow(/belongs to another master/);
      await expect(checkPairing(master, dataDir, { write: true })).rejects.toThrow(/never recorded the pairing.*ACM2_PAIR_DATA_DIR/);
      expect(await master.pairedDataDir()).toBeUndefined();

      process.env.ACM2_PAIR_DATA_DIR = dataDir;
      await checkPairing(master, dataDir, { write: true });
      delete process.env.ACM2_PAIR_DATA_DIR;
      const id = readDataDirId(dataDir);
      expect((await master.pairedDataDir())?.id).toBe(id);
      await checkPairing(master, dataDir, { write: true });
      await expect(checkPairing(other, dataDir, { write: true })).rejects.toThrow(/belongs to another master/);
    } finally {
      await master.close();
      await other.close();
    }
  });

  it('does not pair another master that answers at the same address with the stamped data dir', async () => {
    const root = tmpDir('acm2-pair-same-url-');
    const dataDir = path.join(root, 'data');
    const file = path.join(root, 'master.db');
    // Production's master stamps the data dir; its row is lost (cut short, or restored from before).
    const prod = await openMaster(parseMasterUrl(`sqlite:${file}`));
    await expect(checkPairing(dying(prod), dataDir, { write: true })).rejects.toThrow(/killed/);
    await prod.close();
    const stamp = readDataDirId(dataDir);
    // Another master (staging) now answers at the very same URL.
    for (const f of [file, `${file}-wal`, `${file}-shm`]) rmSync(f, { force: true });
    const staging = await openMaster(parseMasterUrl(`sqlite:${file}`));
    try {
      await expect(checkPairing(staging, dataDir, { write: true })).rejects.toThrow(/never recorded the pairing/);
      expect(await staging.pairedDataDir()).toBeUndefined();
      expect(readDataDirId(dataDir)).toBe(stamp);
    } finally {
      await staging.close();
    }
  });
});
