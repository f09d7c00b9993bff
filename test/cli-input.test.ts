// What a review of the command line found: each case is what an operator typed, and what the
// tool must answer (one sentence, the documented exit code, nothing changed or lost).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { tmpDir } from './helpers/env.js';
import { redactUrl } from '../src/config.js';
import { classifyFsError } from '../src/errors.js';
import { lockUserFile } from '../src/core/user-lock.js';
import { createAcm2Db, generateSource } from '../src/fixtures/source.js';
import { backoffMs } from '../src/core/users.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const SEEDS = fileURLToPath(new URL('../seed-packages', import.meta.url));

let dir: string;
beforeAll(() => {
  dir = tmpDir('acm2-cli-input-');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function acm2(args: string[], dataDir = path.join(dir, 'data'), seeds = SEEDS, env: Record<string, string> = {}) {
  try {
    const r = await run(process.execPath, [BIN, '--data-dir', dataDir, '--seeds', seeds, ...args], { env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '', ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

const jobs = (dataDir: string) => {
  const db = new Database(path.join(dataDir, 'master.db'), { readonly: true });
  try {
    return db.prepare(`SELECT COUNT(*) FROM acm2_seed_jobs`).pluck().get() as number;
  } finally {
    db.close();
  }
};

describe('the command line, as an operator types it', () => {
  it('user create --quiet still prints the API key, which exists nowhere else', async () => {
    const r = await acm2(['user', 'create', '--email', 'quiet@example.com', '--username', 'quiet', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^acm2_[A-Za-z0-9_-]{32}\n$/);
  });

  it('a drain that finds only a retry not due yet says so, rather than looking like an empty queue', async () => {
    const data = path.join(dir, 'data-not-due');
    const id = JSON.parse((await acm2(['user', 'create', '--email', 'later@example.com', '--username', 'later', '--async', '--json'], data)).stdout).user.id as number;
    // ACM2's first request holds the user's new DB in a long write: the seed fails on something
    // that may pass, so its retry backs off (5 s here).
    const held = createAcm2Db(path.join(data, `user_${id}.db`));
    try {
      held.exec('BEGIN IMMEDIATE');
      held.exec('CREATE TABLE acm2_probe (a)');
      expect((await acm2(['user', 'seed', String(id)], data)).code).toBe(3);
    } finally {
      held.close();
    }
    const drain = await acm2(['user', 'seed', '--pending', '--concurrency', '1', '--json'], data);
    expect(drain.code, drain.stderr).toBe(0);
    expect(JSON.parse(drain.stdout)).toMatchObject({ claimed: 0, notDue: { count: 1, nextAttemptAt: expect.stringMatching(/^\d{4}-/) } });
    const human = await acm2(['user', 'seed', '--pending', '--concurrency', '1', '--no-color'], data);
    expect(human.stdout).toMatch(/1 job waiting for a retry, the first due at \S+: a later drain takes it, or acm2 user seed <id> runs one now\./);
  });

  it('an empty ACM2_RETRY_BASE_MS counts as unset: a failed seed still backs off, not retried at once', () => {
    const saved = process.env.ACM2_RETRY_BASE_MS;
    try {
      // As a CI template or `export ACM2_RETRY_BASE_MS=` leaves it, or a value that is no number.
      for (const v of ['', ' ', 'soon']) {
        process.env.ACM2_RETRY_BASE_MS = v;
        expect([backoffMs(1), backoffMs(2)], JSON.stringify(v)).toEqual([5000, 10000]);
      }
      process.env.ACM2_RETRY_BASE_MS = '0'; // set on purpose (the tests): no delay
      expect(backoffMs(3)).toBe(0);
      process.env.ACM2_RETRY_BASE_MS = '250';
      expect(backoffMs(2)).toBe(500);
    } finally {
      if (saved === undefined) delete process.env.ACM2_RETRY_BASE_MS;
      else process.env.ACM2_RETRY_BASE_MS = saved;
    }
  });

  it('a second `user seed` of a ready user changes nothing, not even the job list', async () => {
    const data = path.join(dir, 'data');
    const before = jobs(data);
    for (let i = 0; i < 2; i++) expect((await acm2(['user', 'seed', 'quiet@example.com', '--json'])).code).toBe(0);
    expect(jobs(data)).toBe(before);
  });

  it('lock files are 0600 like every file the tool makes', async () => {
    const locks = path.join(dir, 'data', '.acm2', 'locks');
    const names = readdirSync(locks);
    expect(names.length).toBeGreaterThan(0);
    for (const n of names) expect(statSync(path.join(locks, n)).mode & 0o777, n).toBe(0o600);
  });

  it('--concurrency beyond 64 is refused before anything starts', async () => {
    for (const cmd of [['user', 'seed', '--pending'], ['verify'], ['backfill', '--dry-run']]) {
      const r = await acm2([...cmd, '--concurrency', '10000']);
      expect(r.code, cmd.join(' ')).toBe(2);
      expect(r.stderr.trim()).toBe(`acm2: --concurrency '10000' is more than 64`);
    }
  });

  it('an empty --data-dir or --seeds is refused, never taken as the current folder', async () => {
    const cwd = process.cwd();
    const had = existsSync(path.join(cwd, 'master.db'));
    const r = await acm2(['user', 'create', '--email', 'e@example.com', '--username', 'e'], '');
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('acm2: --data-dir is empty: give a path');
    expect(existsSync(path.join(cwd, 'master.db'))).toBe(had);
    expect((await acm2(['seed', 'list'], path.join(dir, 'data'), '')).stderr.trim()).toBe('acm2: --seeds is empty: give a path');
  });

  it('verify does not call users ok against a package that has been tampered with', async () => {
    const seeds = path.join(dir, 'seeds');
    cpSync(SEEDS, seeds, { recursive: true });
    const data = path.join(dir, 'data');
    expect((await acm2(['verify', '--json'], data, seeds)).code).toBe(0);
    const f = readdirSync(path.join(seeds, 'v1', 'files'), { recursive: true, withFileTypes: true }).find((e) => e.isFile())!;
    writeFileSync(path.join(f.parentPath, f.name), 'tampered\n');
    const r = await acm2(['verify', '--json'], data, seeds);
    expect(r.code).toBe(1);
    const problems = (JSON.parse(r.stdout) as { users: Array<{ problems: Array<{ code: string; message: string }> }> }).users.flatMap((u) => u.problems);
    expect(problems[0]).toMatchObject({ code: 'seed_version_unknown', message: expect.stringContaining('seed package v1 cannot be read') });
  });

  it('flags that cannot apply together are refused, not ignored', async () => {
    const one = await acm2(['user', 'seed', '1', '--limit', '3', '--watch']);
    expect(one.code).toBe(2);
    expect(one.stderr.trim()).toBe('acm2: --limit, --watch apply to --pending, not to one user');
    const v = await acm2(['verify', '--user', '1', '--shard', '0/2']);
    expect(v.code).toBe(2);
    expect(v.stderr.trim()).toBe('acm2: give either --user or --shard, not both');
    const b = await acm2(['backfill', '--user', '1', '--shard', '0/2']);
    expect(b.code).toBe(2);
    expect(b.stderr.trim()).toBe('acm2: give either --user or --shard, not both');
    const pending = await acm2(['user', 'seed', '--pending', '--seed-version', 'doesnotexist']);
    expect(pending.code).toBe(2);
    expect(pending.stderr.trim()).toBe('acm2: --seed-version applies to one user, not to --pending: each queued job carries its own version');
  });

  it('backfill takes --seed-version like the other seeding commands, and checks it', async () => {
    const bad = await acm2(['backfill', '--dry-run', '--seed-version', 'v9']);
    expect(bad.code, bad.stderr).toBe(2);
    expect(bad.stderr).toMatch(/v9/);
    const good = await acm2(['backfill', '--dry-run', '--seed-version', 'v1', '--json']);
    expect(good.code, good.stderr).toBe(0);
  });

  it('a command group without its subcommand says which are there, also in JSON', async () => {
    const j = await acm2(['seed', '--json']);
    expect(j.code).toBe(2);
    expect(JSON.parse(j.stdout).error).toEqual({ code: 'usage', message: 'acm2 seed needs one of: freeze, list, show, check, set-current' });
    expect(j.stderr).toBe(''); // stderr is not a terminal here: with --json it carries nothing
    const bogus = await acm2(['verify', '--bogus', '--json']);
    expect(bogus.code).toBe(2);
    expect(JSON.parse(bogus.stdout).error).toEqual({ code: 'usage', message: "unknown option '--bogus'" });
    expect(bogus.stderr).toBe('');
    const u = await acm2(['help', 'nosuch', '--json']);
    expect(u.code).toBe(2);
    expect(JSON.parse(u.stdout).error.message).toBe("unknown command 'nosuch': acm2 has seed, user, backfill, verify, diff");
  });

  it('a --data-dir or --seeds that is a file is named as such, for every command', async () => {
    const file = path.join(dir, 'a-file');
    writeFileSync(file, 'not a folder\n');
    const c = await acm2(['user', 'create', '--email', 'f@example.com', '--username', 'f'], file);
    expect(c.code).toBe(2);
    expect(c.stderr.trim()).toBe(`acm2: --data-dir '${file}' is not a folder`);
    const l = await acm2(['seed', 'list'], path.join(dir, 'data'), file);
    expect(l.code).toBe(2);
    expect(l.stderr.trim()).toBe(`acm2: --seeds '${file}' is not a folder`);
  });

  it('a bad lock timeout names where it came from; 1e3 is not a number of seconds here', async () => {
    const env = await acm2(['seed', 'list'], path.join(dir, 'data'), SEEDS, { ACM2_LOCK_TIMEOUT: 'abc' });
    expect(env.code).toBe(2);
    expect(env.stderr.trim()).toBe("acm2: ACM2_LOCK_TIMEOUT 'abc' is not a number of seconds");
    expect((await acm2(['seed', 'list', '--lock-timeout', '1e3'])).stderr.trim()).toBe("acm2: --lock-timeout '1e3' is not a number of seconds");
  });

  it('seed check of a version that does not exist is a usage error, not a failed check', async () => {
    const r = await acm2(['seed', 'check', 'v9']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(`acm2: no seed version 'v9' in ${SEEDS}`);
  });

  it('a version folder that is a symlink is refused by every seed command in seed show\'s words, and listed and checked as refused', async () => {
    const seeds = path.join(dir, 'seeds-linked');
    cpSync(SEEDS, seeds, { recursive: true });
    symlinkSync('v1', path.join(seeds, 'v8'));
    const data = path.join(dir, 'data');
    const said = `acm2: seed package v8 is unsafe: ${path.join(seeds, 'v8')} is a symlink`;
    for (const cmd of [['seed', 'show', 'v8'], ['seed', 'check', 'v8'], ['seed', 'check', 'v1', 'v8'], ['seed', 'set-current', 'v8']]) {
      const r = await acm2(cmd, data, seeds);
      expect(r.code, cmd.join(' ')).toBe(2);
      expect(r.stderr.trim(), cmd.join(' ')).toBe(said);
      const j = await acm2([...cmd, '--json'], data, seeds);
      expect(JSON.parse(j.stdout).error, cmd.join(' ')).toEqual({ code: 'bad_package', message: said.slice('acm2: '.length) });
    }
    expect(readFileSync(path.join(seeds, 'CURRENT'), 'utf8')).toBe('v1\n');
    // The whole folder is not 'ok' with it in: a finding, exit 1, the symlink named.
    const all = await acm2(['seed', 'check', '--json'], data, seeds);
    expect(all.code).toBe(1);
    expect(JSON.parse(all.stdout).packages).toEqual([
      { version: 'v1', ok: true, problems: [] },
      { version: 'v8', ok: false, problems: [`${path.join(seeds, 'v8')} is a symlink`] },
    ]);
    expect((await acm2(['seed', 'check'], data, seeds)).stdout).toMatch(/^v8 {2}FAILED\n {2}- .*v8 is a symlink$/m);
    // Listed as a version that cannot be used, as one whose manifest cannot be read is.
    const list = await acm2(['seed', 'list', '--json'], data, seeds);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout).packages[1]).toEqual({ version: 'v8', current: false, rows: 0, files: 0, bytes: 0, packageSha256: '', createdAt: '', error: `${path.join(seeds, 'v8')} is a symlink` });
    expect((await acm2(['seed', 'list'], data, seeds)).stdout).toMatch(/v8 .*not usable: .*v8 is a symlink/);
    // Freezing onto a symlinked version is refused, even one leading nowhere (which was an internal error).
    symlinkSync('nowhere', path.join(seeds, 'v7'));
    const src = generateSource(path.join(dir, 'linked-source'));
    const freeze = ['seed', 'freeze', '--source', src.dbPath, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId];
    for (const v of ['v7', 'v8']) {
      for (const dry of [[], ['--dry-run']]) {
        const r = await acm2([...freeze, '--version', v, ...dry, '--json'], data, seeds);
        expect(r.code, `${v} ${dry.join('')}`).toBe(2);
        expect(JSON.parse(r.stdout).error, `${v} ${dry.join('')}`).toEqual({
          code: 'version_exists',
          message: expect.stringContaining(`not an intact package (${path.join(seeds, v)} is a symlink); it was not overwritten`),
        });
      }
    }
    expect(readdirSync(seeds).sort()).toEqual(['CURRENT', 'v1', 'v7', 'v8']);
  });

  it('a version name no version can have is bad_version for seed show, check and set-current alike', async () => {
    const show = await acm2(['seed', 'show', '../x', '--json']);
    expect(show.code).toBe(2);
    expect(JSON.parse(show.stdout).error.code).toBe('bad_version');
    for (const cmd of [['seed', 'check', '../x'], ['seed', 'check', 'v1', '../x'], ['seed', 'set-current', '../x']]) {
      const r = await acm2([...cmd, '--json']);
      expect(r.code, cmd.join(' ')).toBe(2);
      expect(r.stdout, cmd.join(' ')).toBe(show.stdout);
    }
  });

  it('an unknown option is named before a required option is missed, for every command', async () => {
    for (const cmd of [['seed', 'freeze'], ['user', 'create'], ['user', 'create', '--email', 'x@example.com'], ['verify'], ['seed', 'list'], ['seed', 'check'], ['diff'], ['user', 'seed', '1'], ['backfill']]) {
      const r = await acm2([...cmd, '--bogus']);
      expect(r.code, cmd.join(' ')).toBe(2);
      expect(r.stderr.split('\n')[0], cmd.join(' ')).toBe("acm2: unknown option '--bogus'");
      const j = await acm2([...cmd, '--bogus', '--json']);
      expect(JSON.parse(j.stdout).error, cmd.join(' ')).toEqual({ code: 'usage', message: "unknown option '--bogus'" });
    }
    // Without a typo, a missing required option is still said as before.
    const none = await acm2(['seed', 'freeze', '--json']);
    expect(none.code).toBe(2);
    expect(JSON.parse(none.stdout).error).toEqual({ code: 'usage', message: "required option '--source <db>' not specified" });
    expect((await acm2(['user', 'create', '--email', 'x@example.com'])).stderr.split('\n')[0]).toBe("acm2: required option '--username <name>' not specified");
  });

  it('a --seeds folder that does not exist is said as such by diff, user create and backfill, as by seed list, check, show and set-current', async () => {
    const missing = path.join(dir, 'no-such-seeds');
    const commands = [['seed', 'list'], ['seed', 'check'], ['seed', 'check', 'v1'], ['seed', 'show', 'v1'], ['seed', 'set-current', 'v1'], ['diff', 'v1', 'v2']];
    // Without --seed-version these read CURRENT first: not "CURRENT does not exist" of a folder that is not there.
    commands.push(['user', 'create', '--email', 'seedless@example.com', '--username', 'seedless'], ['backfill']);
    for (const cmd of commands) {
      const r = await acm2(cmd, path.join(dir, 'data-seedless'), missing);
      expect(r.code, cmd.join(' ')).toBe(2);
      expect(r.stderr.trim(), cmd.join(' ')).toBe(`acm2: seed packages folder ${missing} does not exist`);
    }
    expect(existsSync(missing)).toBe(false);
    expect(existsSync(path.join(dir, 'data-seedless'))).toBe(false);
  });

  it('the command groups show examples too', async () => {
    expect((await acm2(['seed', '--help'])).stdout).toMatch(/Examples:\n\s+\$ acm2 seed list/);
    expect((await acm2(['user', '--help'])).stdout).toMatch(/Examples:\n\s+\$ acm2 user create/);
  });

  it('a password holding @ is hidden whole', () => {
    expect(redactUrl('mysql://u:top@secret@h:99999/db')).toBe('mysql://u:***@h:99999/db');
    expect(redactUrl('mysql://u:p@h/db')).toBe('mysql://u:***@h/db');
    expect(redactUrl('mysql://u:Se/cr@et@h/db')).toBe('mysql://u:***@h/db');
  });

  it.each([
    ['a password holding an unencoded /', 'mysql://acm2:Se/cret@db.internal:3306/acm2_master', 'Se/cret'],
    ['a password holding a bare %', 'mysql://acm2:50%off@127.0.0.1:1/m', '50%off'],
  ])('a master URL with %s is refused with exit 2, the password hidden', async (_what, url, secret) => {
    for (const json of [false, true]) {
      const r = await acm2(['verify', ...(json ? ['--json'] : [])], undefined, undefined, { ACM2_MASTER_URL: url });
      expect(r.code).toBe(2);
      const said = json ? JSON.parse(r.stdout).error.message : r.stderr;
      expect(said).toMatch(/is malformed .*percent-encode/);
      expect(r.stdout + r.stderr).not.toContain(secret);
    }
  });
});

describe('environment failures', () => {
  it('name the path the system call failed on, and take SQLite\'s full disk for a full disk (exit 3)', () => {
    const denied = classifyFsError(Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES', path: '/data/.acm2/staging' }), "user 2's data");
    expect(denied?.message).toBe("permission denied on /data/.acm2/staging (user 2's data) (EACCES)");
    expect(denied?.exitCode).toBe(3);
    const full = classifyFsError(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' }), "user 2's data");
    expect(full?.message).toBe("disk full while writing user 2's data");
    expect(full).toMatchObject({ code: 'disk_full', exitCode: 3 });
    // A failing disk, the open-file limit: the machine's state, exit 3.
    expect(classifyFsError(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }), "user 2's data")).toMatchObject({ code: 'io_error', exitCode: 3, message: "I/O error at user 2's data (EIO): check the disk it is on, then run again" });
    expect(classifyFsError(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_FSYNC' }), 'x')).toMatchObject({ code: 'io_error', exitCode: 3 });
    expect(classifyFsError(Object.assign(new Error('too many open files'), { code: 'EMFILE' }), 'x')).toMatchObject({ code: 'too_many_open_files', exitCode: 3 });
    // A path too long is what was given, not the machine: exit 2.
    expect(classifyFsError(Object.assign(new Error('name too long'), { code: 'ENAMETOOLONG' }), 'x')).toMatchObject({ code: 'path_too_long', exitCode: 2 });
  });

  it('the open-file limit met while loading a command is exit 3 in one sentence, not an internal error', async () => {
    const withLimit = (n: number) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        execFile('bash', ['-c', `ulimit -n ${n}; exec "${process.execPath}" "${BIN}" --data-dir /nonexistent-acm2-dir seed list`], (e, _o, stderr) => resolve({ code: e ? ((e as { code?: number }).code ?? null) : 0, stderr }));
      });
    // The highest limit that fails is met by the last files opened: the command's own modules,
    // loaded after main's error handling is in place. (How many that is moves as modules are
    // added or loaded lazily, so the limit is found, not fixed.)
    let r = await withLimit(64);
    expect(r.code, r.stderr).toBe(0);
    for (let n = 40; n > 8 && r.code === 0; n--) r = await withLimit(n);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/^acm2: too many open files at .* \(EMFILE\): raise the limit \(ulimit -n\)/);
  });

  it('user create whose key hashing cannot be loaded (the open-file limit) leaves the data dir as it was', async () => {
    // bcryptjs is loaded by user create alone, after the command's other modules, so a ulimit
    // cannot pick it out: its load is failed here the way the limit fails it, by Node's loader.
    const pre = tmpDir('acm2-no-bcrypt-');
    writeFileSync(
      path.join(pre, 'hooks.mjs'),
      [
        `import { fileURLToPath } from 'node:url';`,
        `export async function load(url, context, next) {`,
        `  if (!url.includes('/node_modules/bcryptjs/')) return next(url, context);`,
        `  const file = fileURLToPath(url);`,
        `  throw Object.assign(new Error('EMFILE: too many open files, open ' + file), { code: 'EMFILE', errno: -24, syscall: 'open', path: file });`,
        `}`,
      ].join('\n'),
    );
    writeFileSync(path.join(pre, 'pre.mjs'), `import { register } from 'node:module';\nregister(new URL('./hooks.mjs', import.meta.url));\n`);
    const create = (dataDir: string) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const argv = ['--import', path.join(pre, 'pre.mjs'), BIN, '--data-dir', dataDir, '--seeds', SEEDS, 'user', 'create', '--email', 'nohash@example.com', '--username', 'nohash'];
        execFile(process.execPath, argv, { env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '' } }, (e, _o, stderr) => resolve({ code: e ? ((e as { code?: number }).code ?? null) : 0, stderr }));
      });
    try {
      // A data dir not there yet, and an empty one: no master.db, no pairing stamp, no dir.
      const absent = path.join(dir, 'data-no-hash');
      let r = await create(absent);
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/^acm2: too many open files at .*bcryptjs.* \(EMFILE\): raise the limit \(ulimit -n\)/);
      expect(existsSync(absent)).toBe(false);
      const empty = path.join(dir, 'data-no-hash-empty');
      mkdirSync(empty);
      r = await create(empty);
      expect(r.code, r.stderr).toBe(3);
      expect(readdirSync(empty)).toEqual([]);
    } finally {
      rmSync(pre, { recursive: true, force: true });
    }
  });

  it('a lock file whose path is longer than SQLite opens is exit 3 naming it, not an internal error', () => {
    const long = path.join(tmpDir('acm2-long-'), 'a'.repeat(200), 'b'.repeat(200), 'c'.repeat(200));
    mkdirSync(long, { recursive: true });
    try {
      expect(() => lockUserFile(long, 1, 0)).toThrow(expect.objectContaining({ exitCode: 3, code: 'lock_unavailable', message: expect.stringMatching(/use a shorter --data-dir/) }));
    } finally {
      rmSync(path.dirname(path.dirname(path.dirname(long))), { recursive: true, force: true });
    }
  });
});
