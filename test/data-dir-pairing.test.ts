// A master and its data dir are paired on first use: a writing command run with a data dir that
// is not its master's (a mistyped or cwd-relative --data-dir beside ACM2_MASTER_URL, a staging
// master against production's files, a mistyped master path) is refused with exit 2 before it
// writes anything, instead of seeding a fresh DB for every user in the wrong place, or another
// person's user 7 beside user_7.db. Runs the built binary.
import { beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { chmodSync, cpSync, existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { frozenSource, snapshotTree, tmpDir, type FrozenSource } from './helpers/env.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;

async function acm2(args: string[], env: Record<string, string> = {}) {
  try {
    const r = await run(process.execPath, [BIN, '--seeds', pkg.seedsDir, ...args], {
      env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '', ACM2_DATA_DIR: '', ACM2_PAIR_DATA_DIR: '', ...env },
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/** A fleet: an embedded master in its data dir, with `n` seeded users. */
async function fleet(n: number): Promise<{ dataDir: string; master: string }> {
  const dataDir = path.join(tmpDir('acm2-pair-'), 'data');
  for (let i = 1; i <= n; i++) {
    const r = await acm2(['--data-dir', dataDir, 'user', 'create', '--email', `u${i}@example.com`, '--username', `u${i}`]);
    expect(r.code).toBe(0);
  }
  return { dataDir, master: `sqlite:${path.join(dataDir, 'master.db')}` };
}

beforeAll(() => {
  pkg = frozenSource();
});

describe('a data dir that is not the master’s', () => {
  let a: { dataDir: string; master: string };
  beforeAll(async () => {
    a = await fleet(3);
  });

  for (const cmd of [['backfill'], ['backfill', '--dry-run'], ['user', 'seed', '--pending'], ['user', 'seed', '2'], ['user', 'create', '--email', 'n@example.com', '--username', 'n']]) {
    it(`${cmd.join(' ')} with a mistyped --data-dir beside the master's URL: exit 2, nothing made`, async () => {
      const typo = path.join(path.dirname(a.dataDir), 'dta');
      const before = snapshotTree(a.dataDir);
      const r = await acm2(['--data-dir', typo, ...cmd], { ACM2_MASTER_URL: a.master });
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/^acm2: the data dir .*dta is not the one the master sqlite:.*master\.db belongs with \(.*data\).*nothing was written$/m);
      expect(existsSync(typo)).toBe(false);
      expect(snapshotTree(a.dataDir)).toEqual(before);
    });
  }

  it('read commands with a mistyped --data-dir beside the master’s URL: exit 2 naming the data dir, not every user missing', async () => {
    const typo = path.join(path.dirname(a.dataDir), 'dta');
    for (const cmd of [['user', 'list'], ['user', 'show', '2'], ['diff', '--user', '2'], ['verify']]) {
      const r = await acm2(['--data-dir', typo, ...cmd], { ACM2_MASTER_URL: a.master });
      expect(r.code, `${cmd.join(' ')}: ${r.stdout}`).toBe(2);
      expect(r.stderr).toMatch(/^acm2: the data dir .*dta is not the one the master sqlite:.*master\.db belongs with \(.*data\)/m);
      expect(existsSync(typo)).toBe(false);
    }
    // The fleet's own data dir, and a copy of it elsewhere (a backup snapshot, which keeps its stamp), read as before.
    const copy = path.join(tmpDir('acm2-pair-copy-'), 'data');
    cpSync(a.dataDir, copy, { recursive: true });
    // A copy of the users' DBs and files without the tool's own folder (no stamp) reads too.
    const bare = path.join(tmpDir('acm2-pair-bare-'), 'data');
    cpSync(a.dataDir, bare, { recursive: true, filter: (src) => path.basename(src) !== '.acm2' });
    expect(existsSync(path.join(bare, '.acm2'))).toBe(false);
    for (const dir of [a.dataDir, copy, bare]) {
      const show = await acm2(['--data-dir', dir, 'user', 'show', '2', '--json'], { ACM2_MASTER_URL: a.master });
      expect(show.code).toBe(0);
      expect(JSON.parse(show.stdout)).toMatchObject({ id: 2, status: 'ready' });
      expect((await acm2(['--data-dir', dir, 'diff', '--user', '2'], { ACM2_MASTER_URL: a.master })).code).toBe(0);
    }
  });

  // ACM2 writes its data dir and DBs with umask 022 (0755, 0644); the tool's own .acm2/ is 0700. An
  // account that may read the users' DBs but not .acm2/ (monitoring, CI) read them before pairing
  // was checked by the read commands, and must still: not exit 70 "internal error: EACCES".
  it.skipIf(process.getuid?.() !== 0)('read commands as an account that may read the DBs but not .acm2/: read as before, no internal error', async () => {
    const f = await fleet(1);
    const NOBODY = 65534;
    const parent = path.dirname(f.dataDir);
    chmodSync(parent, 0o755);
    chmodSync(f.dataDir, 0o755);
    for (const n of readdirSync(f.dataDir)) if (n.endsWith('.db')) chmodSync(path.join(f.dataDir, n), 0o644);
    const seeds = path.join(parent, 'seeds');
    cpSync(pkg.seedsDir, seeds, { recursive: true });
    execFileSync('chmod', ['-R', 'a+rX', seeds]);
    const asNobody = async (args: string[]) => {
      try {
        const r = await run(process.execPath, [BIN, '--seeds', seeds, '--data-dir', f.dataDir, ...args], {
          uid: NOBODY,
          gid: NOBODY,
          cwd: parent,
          env: { ...process.env, ACM2_MASTER_URL: '', ACM2_DATA_DIR: '', ACM2_PAIR_DATA_DIR: '', HOME: parent },
        });
        return { code: 0, stdout: r.stdout, stderr: r.stderr };
      } catch (e) {
        const x = e as { code: number; stdout: string; stderr: string };
        return { code: x.code, stdout: x.stdout, stderr: x.stderr };
      }
    };
    const show = await asNobody(['user', 'show', '1', '--json']);
    expect(show.code, show.stdout + show.stderr).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({ id: 1, status: 'ready' });
    const list = await asNobody(['user', 'list', '--json']);
    expect(list.code, list.stdout + list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { users: unknown[] }).users).toHaveLength(1);
    // A folder of the user's it may not read (the tool makes them 0700): the environment, not a bug.
    const diff = await asNobody(['diff', '--user', '1', '--json']);
    expect(diff.code, diff.stdout + diff.stderr).toBe(3);
    expect(JSON.parse(diff.stdout).error).toMatchObject({ code: 'permission_denied', message: expect.stringContaining('user_1') });
    // A write command cannot check the pairing there: said as the environment (exit 3), not a bug.
    const seed = await asNobody(['user', 'seed', '1', '--json']);
    expect(seed.code, seed.stdout + seed.stderr).toBe(3);
    expect(JSON.parse(seed.stdout).error).toMatchObject({ code: 'permission_denied' });
    expect(JSON.parse(seed.stdout).error.message).toMatch(/data-dir\.json/);
  });

  it('another fleet’s master against this data dir (user ids that are other people): exit 2, nothing changed', async () => {
    const b = await fleet(4);
    const before = snapshotTree(a.dataDir);
    for (const cmd of [['backfill'], ['user', 'seed', '2', '--force'], ['user', 'seed', '--pending']]) {
      const r = await acm2(['--data-dir', a.dataDir, '--master', b.master, ...cmd]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/is not the one the master .* belongs with/);
    }
    expect(snapshotTree(a.dataDir)).toEqual(before);
    expect(existsSync(path.join(a.dataDir, 'user_4.db'))).toBe(false);
  });

  it('names the lost stamp instead of calling the folder "not the one" it is (an unmounted or restored data dir)', async () => {
    const f = await fleet(1);
    rmSync(path.join(f.dataDir, '.acm2', 'data-dir.json'));
    const r = await acm2(['--data-dir', f.dataDir, 'user', 'seed', '1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^acm2: the data dir .*data is where the master sqlite:.*master\.db was paired, but it has lost its stamp \(.*data-dir\.json\), .*ACM2_PAIR_DATA_DIR=.*data; nothing was written$/m);
    expect(r.stderr).not.toMatch(/is not the one/);
  });

  it('user create with a mistyped embedded master path makes no new master beside the fleet', async () => {
    const before = snapshotTree(a.dataDir);
    const r = await acm2(['--data-dir', a.dataDir, '--master', `sqlite:${path.join(a.dataDir, 'mastr.db')}`, 'user', 'create', '--email', 'x@example.com', '--username', 'x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^acm2: the master sqlite:.*mastr\.db does not exist yet, but the data dir .* belongs to another master/m);
    expect(snapshotTree(a.dataDir)).toEqual(before);
  });
});

/** The fleet as it was before pairing: no stamp in its data dir, no record in its master (and `also` run there). */
function unpair(dataDir: string, also = ''): void {
  rmSync(path.join(dataDir, '.acm2', 'data-dir.json'));
  const db = new Database(path.join(dataDir, 'master.db'));
  try {
    db.exec(`DELETE FROM acm2_data_dir; ${also}`);
  } finally {
    db.close();
  }
}

describe('pairing on first use', () => {
  it('a fleet from before pairing is paired by its first writing command; an empty folder for a master with users is not', async () => {
    const f = await fleet(2);
    // As a tool without pairing left it: no stamp, no record.
    unpair(f.dataDir);
    const empty = tmpDir('acm2-pair-empty-');
    const r1 = await acm2(['--data-dir', empty, '--master', f.master, 'backfill']);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toMatch(/the master .* has 2 seeded users but the data dir .* holds none of their DBs/);
    expect(readdirSync(empty)).toEqual([]);
    expect((await acm2(['--data-dir', f.dataDir, 'backfill'])).code).toBe(0);
    expect(existsSync(path.join(f.dataDir, '.acm2', 'data-dir.json'))).toBe(true);
    // Paired now: the empty folder is refused as another data dir, unless the operator names it.
    expect((await acm2(['--data-dir', empty, '--master', f.master, 'backfill', '--dry-run'])).code).toBe(2);
    const r2 = await acm2(['--data-dir', empty, '--master', f.master, 'backfill'], { ACM2_PAIR_DATA_DIR: empty });
    expect(r2.code).toBe(0);
    expect(r2.stderr).toMatch(/^acm2: paired the master sqlite:.*master\.db with the data dir .* on purpose \(ACM2_PAIR_DATA_DIR\), where this check would have refused: the data dir .* is not the one the master .* belongs with .*; unset ACM2_PAIR_DATA_DIR now/m);
    expect(readdirSync(empty).filter((n) => n.endsWith('.db')).sort()).toEqual(['user_1.db', 'user_2.db']);
    // …and the master now belongs with that one.
    expect((await acm2(['--data-dir', f.dataDir, 'backfill'])).code).toBe(2);
  });
});

describe('an upgraded fleet whose users ACM2 made (no seed jobs)', () => {
  it('a cwd-relative or mistyped empty data dir is refused, not paired and seeded for every user', async () => {
    const f = await fleet(2);
    // As ACM2 left it before this tool: users and their DBs, no seed job, no pairing.
    unpair(f.dataDir, 'DELETE FROM acm2_seed_jobs');
    const cron = tmpDir('acm2-pair-cron-');
    const r = await acm2(['--data-dir', path.join(cron, 'data'), '--master', f.master, 'backfill']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^acm2: the master .* has 2 users but the data dir .*data holds none of their DBs: .*nothing was written$/m);
    expect(readdirSync(cron)).toEqual([]);
    // The fleet's own data dir is still the one the master pairs with.
    expect((await acm2(['--data-dir', f.dataDir, 'backfill'])).code).toBe(0);
  });
});

/** The data dir's stamp and the master's record of it, as files. */
function pairState(dataDir: string, master = path.join(dataDir, 'master.db')): { stamp: string; record: unknown } {
  const db = new Database(master, { readonly: true });
  try {
    return { stamp: readFileSync(path.join(dataDir, '.acm2', 'data-dir.json'), 'utf8'), record: db.prepare('SELECT * FROM acm2_data_dir').get() };
  } finally {
    db.close();
  }
}

describe('ACM2_PAIR_DATA_DIR left set (an operator shell, a cron environment)', () => {
  it('does nothing where the pair is already right, and says it is not needed; re-pairs only what would be refused, and says so', async () => {
    const f = await fleet(1);
    const env = { ACM2_PAIR_DATA_DIR: f.dataDir };
    const before = pairState(f.dataDir);
    for (const cmd of [['backfill', '--json'], ['user', 'seed', '1', '--force', '--json'], ['user', 'create', '--email', 'b@example.com', '--username', 'b', '--json'], ['user', 'list', '--json']]) {
      const r = await acm2(['--data-dir', f.dataDir, ...cmd], env);
      expect(r.code, `${cmd.join(' ')}: ${r.stderr}`).toBe(0);
      expect(() => JSON.parse(r.stdout)).not.toThrow();
      expect(r.stderr).toMatch(/^acm2: ACM2_PAIR_DATA_DIR=.*data is set but not needed \(the master and this data dir go together\): nothing was re-paired; unset it$/m);
      expect(r.stderr).not.toMatch(/paired the master/);
      // Not re-paired: the stamp and the master's record are as they were.
      expect(pairState(f.dataDir)).toEqual(before);
    }
    // Another fleet's master given with it (a staging master against this data dir): paired on
    // purpose, as the variable says, and said on stderr, stdout keeping its one JSON document.
    const b = await fleet(1);
    const r = await acm2(['--data-dir', f.dataDir, '--master', b.master, 'backfill', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toBeTypeOf('object');
    expect(r.stderr).toMatch(/^acm2: paired the master sqlite:.*master\.db with the data dir .*data on purpose \(ACM2_PAIR_DATA_DIR\), where this check would have refused: the data dir .* is not the one the master .* belongs with .*; unset ACM2_PAIR_DATA_DIR now: while it names this data dir, any master given with it is paired instead of refused$/m);
    expect(pairState(f.dataDir, path.join(b.dataDir, 'master.db')).stamp).not.toEqual(before.stamp);
    // A dry run or a read with it, where the pair is refused, goes on without pairing, and says so.
    const dry = await acm2(['--data-dir', f.dataDir, 'backfill', '--dry-run', '--json'], env);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stderr).toMatch(/^acm2: ACM2_PAIR_DATA_DIR=.*data: went on although the data dir .* was paired, but its stamp is another data dir’s .*; only a command that writes pairs them$/m);
    expect((await acm2(['--data-dir', f.dataDir, 'backfill', '--dry-run'])).code).toBe(2);
  });
});
