// Invariant 2 against power loss, which a SIGKILL test cannot show: the page cache survives a
// killed process, so deleting a durability barrier would not fail crash.test.ts. Here the seed is
// driven with a recorder in place of fsync/syncfs, and a model of what is on disk after a power
// cut (file contents synced by inode; folder entries as they were when the folder was synced) is
// checked at every step and barrier:
//  - a file under the user root exists only once the staged DB whose map names it is durable,
//    under its name (otherwise a power cut could leave that file orphaned, its ids forgotten);
//  - a DB that says `ready` in place only has files and folders that are durable;
//  - a seed reports done only once its DB's name in the data dir is durable;
//  - --force's backup of what it overwrites is durable, data and names, before it writes anything.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { frozenSource, tmpDir, walkFiles, type FrozenSource } from './helpers/env.js';
import { seedUserWith, type SeedStep, type ToSync } from '../src/core/seed-user.js';
import { toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';

let pkg: FrozenSource;
let sharedDataDir: string;
beforeAll(() => {
  pkg = frozenSource({ sourceDocs: 2 });
  sharedDataDir = tmpDir('acm2-durable-order-');
});
afterAll(() => {
  pkg.cleanup();
  rmSync(sharedDataDir, { recursive: true, force: true });
});

const hash = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** What a power cut would leave, as far as the seed's barriers made it durable. */
class DiskModel {
  private data = new Map<number, string>(); // inode -> content hash when synced
  // A folder's fsync makes its entries durable, whatever it is called later (a folder written as
  // `.partial`, synced, then renamed keeps them): keyed by inode, as the data.
  private entries = new Map<number, Set<string>>(); // folder inode -> its names when synced

  /** What was there before the seed started counts as durable (an earlier seed made it so). */
  constructor(top: string) {
    const walk = (dir: string) => {
      const names = readdirSync(dir);
      this.entries.set(lstatSync(dir).ino, new Set(names));
      for (const n of names) {
        const p = path.join(dir, n);
        const st = lstatSync(p);
        if (st.isDirectory()) walk(p);
        else if (st.isFile()) this.data.set(st.ino, hash(p));
      }
    };
    walk(top);
  }

  sync(t: ToSync): void {
    for (const f of t.files) this.data.set(lstatSync(f).ino, hash(f));
    for (const d of t.dirs) this.entries.set(lstatSync(d).ino, new Set(readdirSync(d)));
  }

  /** The file's current contents are durable (synced since they last changed). */
  dataDurable(file: string): boolean {
    return this.data.get(lstatSync(file).ino) === hash(file);
  }

  /** The path's name is durable in its folder, and so is every folder's up to `top`. */
  nameDurable(p: string, top: string): boolean {
    for (let cur = p; cur !== top; cur = path.dirname(cur)) {
      if (!this.entries.get(lstatSync(path.dirname(cur)).ino)?.has(path.basename(cur))) return false;
    }
    return true;
  }
}

function seedRecorded(userId: number, opts: { force?: boolean; skip?: number; dataDir?: string; before?: () => void } = {}) {
  const dataDir = opts.dataDir ?? sharedDataDir;
  const top = path.resolve(dataDir); // the data dir's own name is the operator's to keep
  const disk = new DiskModel(top);
  opts.before?.(); // changes made after the snapshot: not durable until a barrier syncs them
  const root = userRoot(dataDir, userId);
  const target = userDbPath(dataDir, userId);
  const staging = toolDir(dataDir, 'staging');
  const violations: string[] = [];
  const saysReady = () => {
    if (!existsSync(target)) return false;
    const db = new Database(target, { readonly: true });
    try {
      return (db.prepare(`SELECT seed_status FROM user_meta WHERE user_id = ?`).pluck().get(userId) as string | undefined) === 'ready';
    } finally {
      db.close();
    }
  };
  const check = (when: string) => {
    const files = walkFiles(root).map((f) => path.join(root, f));
    if (files.length > 0 && !existsSync(target)) {
      const staged = existsSync(staging) ? readdirSync(staging).filter((n) => n.startsWith(`user_${userId}-`) && n.endsWith('.db')) : [];
      const durable = staged.map((n) => path.join(staging, n)).filter((f) => disk.dataDurable(f) && disk.nameDurable(f, top));
      if (durable.length === 0) violations.push(`${when}: files under the user root, but no staged DB naming them is durable`);
    }
    if (saysReady()) {
      for (const f of files) {
        if (!disk.dataDurable(f)) violations.push(`${when}: ready, but ${path.relative(root, f)} is not durable`);
        if (!disk.nameDurable(f, top)) violations.push(`${when}: ready, but the name of ${path.relative(root, f)} (or a folder above it) is not durable`);
      }
    }
  };
  let barrier = 0;
  const result = seedUserWith(
    {
      dataDir,
      userId,
      pkg: pkg.pkg,
      force: opts.force,
      onStep: (s: SeedStep) => {
        check(`step '${s}'`);
        if (s !== 'migrated') {
          const backups = toolDir(dataDir, 'backups', `user_${userId}`);
          const whole = existsSync(backups) ? readdirSync(backups).filter((n) => !n.endsWith('.partial')) : [];
          for (const f of whole.flatMap((n) => walkFiles(path.join(backups, n)).map((rel) => path.join(backups, n, rel)))) {
            if (!disk.dataDurable(f)) violations.push(`step '${s}': the backup's ${path.relative(backups, f)} is not durable`);
            if (!disk.nameDurable(f, top)) violations.push(`step '${s}': the name of the backup's ${path.relative(backups, f)} (or a folder above it) is not durable`);
          }
        }
        if (s === 'committed' && !disk.nameDurable(target, top)) violations.push(`step 'committed': the DB's name in the data dir is not durable`);
      },
    },
    (t) => {
      barrier++;
      check(`before barrier ${barrier}`);
      if (barrier !== opts.skip) disk.sync(t);
      check(`after barrier ${barrier}`);
    },
  );
  return { result, violations, barriers: barrier };
}

describe('durability barriers, checked against a model of a power cut', () => {
  it('a fresh seed keeps every rule at every step and barrier', () => {
    const r = seedRecorded(1);
    expect(r.result.outcome).toBe('seeded');
    expect(r.violations).toEqual([]);
    expect(r.barriers).toBeGreaterThanOrEqual(4);
  });

  it('so does --force over a ready user, which rewrites its files in place', () => {
    const r = seedRecorded(1, { force: true });
    expect(r.result.outcome).toBe('restored');
    expect(r.violations).toEqual([]);
  });

  it("the first seed in a data dir whose .acm2 was just made (by the user's lock) syncs .acm2's name too", () => {
    const fresh = tmpDir('acm2-durable-order-');
    try {
      // lockUserFile makes .acm2/locks before the seed; nothing syncs the data dir for it.
      const r = seedRecorded(1, { dataDir: fresh, before: () => mkdirSync(toolDir(fresh, 'locks'), { recursive: true }) });
      expect(r.violations).toEqual([]);
    } finally {
      rmSync(fresh, { recursive: true, force: true });
    }
  });

  it("--force over a user's edits: its backup is durable before the first overwrite, and each of its barriers is needed", () => {
    const fresh = tmpDir('acm2-durable-order-');
    try {
      const edit = () => {
        const db = new Database(userDbPath(fresh, 1));
        db.prepare(`UPDATE presets SET name = 'tuned' WHERE user_id = 1`).run();
        const doc = db.prepare(`SELECT path FROM acm2_seed_files ORDER BY path LIMIT 1`).pluck().get() as string;
        db.close();
        writeFileSync(path.join(userRoot(fresh, 1), doc), 'edited');
      };
      seedRecorded(1, { dataDir: fresh });
      edit();
      const r = seedRecorded(1, { dataDir: fresh, force: true });
      expect(r.result.backup).toMatchObject({ rows: 1, files: 1 });
      expect(r.violations).toEqual([]);
      // The backup's barriers come right after the first (the lock's): its data, then its name.
      for (const skip of [2, 3]) {
        edit();
        const broken = seedRecorded(1, { dataDir: fresh, force: true, skip });
        expect(broken.violations.filter((v) => v.includes("the backup's")).length, `barrier ${skip} left out`).toBeGreaterThan(0);
      }
    } finally {
      rmSync(fresh, { recursive: true, force: true });
    }
  });

  it('leaving out any one barrier of a fresh seed breaks a rule', () => {
    const { barriers } = seedRecorded(2);
    for (let skip = 1; skip <= barriers; skip++) {
      const r = seedRecorded(100 + skip, { skip });
      expect(r.violations.length, `barrier ${skip} of ${barriers} left out`).toBeGreaterThan(0);
    }
  });
});
