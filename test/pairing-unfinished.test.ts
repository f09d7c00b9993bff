// A first pairing is written master first: the master records the data dir's new id (unfinished),
// the data dir is stamped with it, the master's record is finished. A kill -9 between any two
// steps leaves a state that only this master's own pairing can leave (a stamp is written only for
// an id its master already holds), and the next writing command finishes it by itself. What it
// cannot prove its own is refused as before: a stamp the master has no record of (another master,
// even at the same address, a master restored from before the pairing, or the state an older acm2
// left when killed between its stamp and its record), a master restored from a backup paired with
// another data dir, a data dir another master stamped meanwhile.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { copyFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseMasterUrl } from '../src/config.js';
import { openMaster } from '../src/master/factory.js';
import type { MasterDb } from '../src/master/types.js';
import { checkPairing, readDataDirId } from '../src/core/pairing.js';
import { frozenSource, snapshotTree, tmpDir, type FrozenSource } from './helpers/env.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const CRASH = fileURLToPath(new URL('./helpers/crash-pair.mjs', import.meta.url));
const ENV = { ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '', ACM2_DATA_DIR: '', ACM2_PAIR_DATA_DIR: '' };

let pkg: FrozenSource;
beforeAll(() => {
  pkg = frozenSource();
});

async function acm2(args: string[], env: Record<string, string> = {}) {
  try {
    const r = await run(process.execPath, [BIN, '--seeds', pkg.seedsDir, ...args], { env: { ...process.env, ...ENV, ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

const create = (dataDir: string, name: string, master?: string) =>
  acm2(['--data-dir', dataDir, ...(master ? ['--master', master] : []), 'user', 'create', '--email', `${name}@example.com`, '--username', name, '--json']);

/** The first `user create` in a fresh data dir, SIGKILLed in the middle of pairing its master with it. */
async function killedPairing(point: 'stamped' | 'recorded', master?: string): Promise<{ dataDir: string; file: string }> {
  const dataDir = path.join(tmpDir('acm2-pair-kill-'), 'data');
  const args = [CRASH, point, dataDir, '--data-dir', dataDir, ...(master ? ['--master', master] : []), '--seeds', pkg.seedsDir, 'user', 'create', '--email', 'first@example.com', '--username', 'first', '--json'];
  const killed = await run(process.execPath, args, { env: { ...process.env, ...ENV } }).then(
    () => undefined,
    (e: { signal?: string }) => e.signal,
  );
  expect(killed).toBe('SIGKILL');
  return { dataDir, file: path.join(dataDir, 'master.db') };
}

type Row = { data_dir_id: string; data_dir_path: string; paired_at: string };

/** The master's record of its data dir, as the file holds it. */
function record(file: string): Row | undefined {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT data_dir_id, data_dir_path, paired_at FROM acm2_data_dir').get() as Row | undefined;
  } finally {
    db.close();
  }
}

function users(file: string): number {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare('SELECT COUNT(*) AS n FROM users').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

describe('a first pairing killed half way is finished by the next writing command', () => {
  it('killed once the stamp is written, before the master recorded the pairing as done: the next user create pairs and creates', async () => {
    const { dataDir, file } = await killedPairing('stamped');
    const stamp = readDataDirId(dataDir);
    expect(stamp).toBeDefined();
    expect(users(file)).toBe(0);
    const r = await create(dataDir, 'first');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).user).toMatchObject({ id: 1 });
    expect(r.stderr).toBe('');
    expect(readDataDirId(dataDir)).toBe(stamp);
    expect(record(file)).toMatchObject({ data_dir_id: stamp, data_dir_path: dataDir, paired_at: expect.stringMatching(/^\d{4}-/) });
    expect((await acm2(['--data-dir', dataDir, 'backfill'])).code).toBe(0);
  });

  it('killed once the master recorded the id, before the stamp: the next command stamps that id and pairs', async () => {
    const { dataDir, file } = await killedPairing('recorded');
    const rec = record(file);
    expect(rec).toMatchObject({ data_dir_path: dataDir, paired_at: '' });
    expect(readDataDirId(dataDir)).toBeUndefined();
    const r = await create(dataDir, 'first');
    expect(r.code, r.stderr).toBe(0);
    expect(readDataDirId(dataDir)).toBe(rec!.data_dir_id);
    expect(record(file)).toMatchObject({ data_dir_id: rec!.data_dir_id, paired_at: expect.stringMatching(/^\d{4}-/) });
  });
});

describe('what a killed pairing does not make safe is still refused', () => {
  it('another master put at the same address as the killed one (a staging file at the same path): refused, nothing written', async () => {
    const { dataDir, file } = await killedPairing('stamped');
    const stamp = readDataDirId(dataDir);
    for (const f of [file, `${file}-wal`, `${file}-shm`]) rmSync(f, { force: true });
    const staging = await openMaster(parseMasterUrl(`sqlite:${file}`));
    await staging.close();
    const before = snapshotTree(dataDir);
    const r = await acm2(['--data-dir', dataDir, 'backfill']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^acm2: the data dir .*data was stamped for a master at sqlite:.*master\.db, which has no record of it: .*ACM2_PAIR_DATA_DIR=.*; nothing was written$/m);
    expect(snapshotTree(dataDir)).toEqual(before);
    expect(readDataDirId(dataDir)).toBe(stamp);
    expect(record(file)).toBeUndefined();
  });

  it('the killed master restored from a backup that was paired with another data dir: refused, nothing written', async () => {
    const other = path.join(tmpDir('acm2-pair-backup-'), 'data');
    expect((await create(other, 'old')).code).toBe(0);
    const { dataDir, file } = await killedPairing('stamped');
    for (const f of [`${file}-wal`, `${file}-shm`]) rmSync(f, { force: true });
    copyFileSync(path.join(other, 'master.db'), file);
    const before = snapshotTree(dataDir);
    const r = await create(dataDir, 'second');
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).error.message).toMatch(/is not the one the master sqlite:.*master\.db belongs with \(.*acm2-pair-backup-.*data\)/);
    expect(snapshotTree(dataDir)).toEqual(before);
    expect(users(file)).toBe(1);
  });

  it('killed before the stamp, and the data dir stamped by another master meanwhile: refused', async () => {
    const { dataDir, file } = await killedPairing('recorded');
    const otherMaster = `sqlite:${path.join(tmpDir('acm2-pair-other-'), 'master.db')}`;
    expect((await create(dataDir, 'theirs', otherMaster)).code).toBe(0);
    const stamp = readDataDirId(dataDir);
    const r = await acm2(['--data-dir', dataDir, 'backfill']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/is where the master .* was paired, but its stamp is another data dir’s/);
    expect(readDataDirId(dataDir)).toBe(stamp);
    expect(record(file)?.paired_at).toBe('');
  });

  it('killed before the stamp, then given another data dir (a typo): refused, naming the unfinished pairing', async () => {
    const { dataDir } = await killedPairing('recorded');
    const typo = path.join(path.dirname(dataDir), 'dta');
    const r = await acm2(['--data-dir', typo, '--master', `sqlite:${path.join(dataDir, 'master.db')}`, 'backfill']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/is not the one the master .* belongs with \(.*data, a first pairing not finished\)/);
    expect(existsSync(typo)).toBe(false);
  });
});

describe('a stamp the master has no record of (as an acm2 that stamped first left it when killed)', () => {
  /** Paired, then the master's record lost: a stamp its master has no record of. */
  async function unrecorded(master: MasterDb, file: string, dataDir: string): Promise<void> {
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

  it('is refused with its remedy, and paired on purpose; another master is still refused', async () => {
    const dataDir = path.join(tmpDir('acm2-pair-cut-'), 'data');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    const other = await openMaster(parseMasterUrl(`sqlite:${path.join(tmpDir('acm2-pair-other-'), 'master.db')}`));
    try {
      await unrecorded(master, path.join(dataDir, 'master.db'), dataDir);
      expect(readDataDirId(dataDir)).toBeDefined();
      expect(await master.pairedDataDir()).toBeUndefined();

      await expect(checkPairing(other, dataDir, { write: true })).rejects.toThrow(/belongs to another master/);
      await expect(checkPairing(master, dataDir, { write: true })).rejects.toThrow(/which has no record of it.*ACM2_PAIR_DATA_DIR/);
      expect(await master.pairedDataDir()).toBeUndefined();

      process.env.ACM2_PAIR_DATA_DIR = dataDir;
      const notices: string[] = [];
      await checkPairing(master, dataDir, { write: true, notice: (m) => notices.push(m) });
      expect(notices).toEqual([expect.stringMatching(/^paired the master .* with the data dir .* on purpose \(ACM2_PAIR_DATA_DIR\).*unset ACM2_PAIR_DATA_DIR/)]);
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

  it('a master that will not record the pairing (an account that may not write) leaves no stamp', async () => {
    const dataDir = path.join(tmpDir('acm2-pair-refused-'), 'data');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(dataDir, 'master.db')}`));
    const refusing = Object.assign(Object.create(master) as MasterDb, {
      pairDataDir: async () => {
        throw new Error('INSERT command denied to user for table acm2_data_dir');
      },
    });
    try {
      await expect(checkPairing(refusing, dataDir, { write: true })).rejects.toThrow(/denied/);
      expect(readDataDirId(dataDir)).toBeUndefined();
      // The next command, with an account that may write, pairs them as a first use.
      await checkPairing(master, dataDir, { write: true });
      expect((await master.pairedDataDir())?.id).toBe(readDataDirId(dataDir));
    } finally {
      await master.close();
    }
  });
});

describe('a first pairing whose stamp cannot be written', () => {
  it('takes back the master\'s unfinished record, so the right data dir given next pairs as a first use', async () => {
    const root = tmpDir('acm2-pair-nostamp-');
    const master = await openMaster(parseMasterUrl(`sqlite:${path.join(root, 'master.db')}`));
    try {
      // A mistyped data dir that cannot be made: its path runs through a plain file.
      writeFileSync(path.join(root, 'notes'), 'not a folder');
      const typo = path.join(root, 'notes', 'data');
      await expect(checkPairing(master, typo, { write: true })).rejects.toThrow(/ENOTDIR|EEXIST/);
      expect(await master.pairedDataDir()).toBeUndefined();

      const dataDir = path.join(root, 'data');
      await checkPairing(master, dataDir, { write: true });
      expect(await master.pairedDataDir()).toMatchObject({ id: readDataDirId(dataDir), path: dataDir, pairedAt: expect.stringMatching(/^\d{4}-/) });
    } finally {
      await master.close();
    }
  });
});
