// A stamp written for a master at this very URL that the master never recorded (kill -9 between
// the stamp and the master's row, an account that may not write acm2_data_dir, a master restored
// from before the pairing) cannot be told from another master at the same address (another server
// behind the same host name or tunnel, another file at the same path): refused, never paired
// silently; pairing on purpose (ACM2_PAIR_DATA_DIR) finishes it.
import { afterEach, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { parseMasterUrl } from '../src/config.js';
import { openMaster } from '../src/master/factory.js';
import type { MasterDb } from '../src/master/types.js';
import { checkPairing, readDataDirId } from '../src/core/pairing.js';
import { tmpDir } from './helpers/env.js';

const refusing = (m: MasterDb): MasterDb =>
  Object.assign(Object.create(m) as MasterDb, {
    pairDataDir: async () => {
      throw new Error('INSERT command denied to user for table acm2_data_dir');
    },
  });

/** A pairing cut short after the stamp (kill -9 before the master's row, or the master restored from before it). */
async function cutShort(master: MasterDb, file: string, dataDir: string): Promise<void> {
  await checkPairing(master, dataDir, { write: true });
  const db = new Database(file);
  try {
    db.exec('DELETE FROM acm2_data_dir');
  } finally {
    db.close();
  }
}

afterEach(() => {
  delete process.env.ACM2_PAIR_DATA_DIR;
});

describe('a pairing cut short after the stamp', () => {
  it('is refused with its remedy, and finished by pairing on purpose; another master is still refused', async () => {
    const dataDir = path.join(tmpDir('acm2-pair-cut-'), 'data');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    const other = await openMaster(parseMasterUrl(`sqlite:${path.join(tmpDir('acm2-pair-other-'), 'master.db')}`));
    try {
      await cutShort(master, path.join(dataDir, 'master.db'), dataDir);
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
    await cutShort(prod, file, dataDir);
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

  it('a master that will not record the pairing (an account that may not write) takes back the stamp it made', async () => {
    const dataDir = path.join(tmpDir('acm2-pair-refused-'), 'data');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    try {
      await expect(checkPairing(refusing(master), dataDir, { write: true })).rejects.toThrow(/denied/);
      expect(readDataDirId(dataDir)).toBeUndefined();
      // The next command, with an account that may write, pairs them as a first use.
      await checkPairing(master, dataDir, { write: true });
      expect((await master.pairedDataDir())?.id).toBe(readDataDirId(dataDir));
    } finally {
      await master.close();
    }
  });
});
