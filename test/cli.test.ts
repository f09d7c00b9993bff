// The built binary: help lists every command, configuration precedence, exit codes for the master.
import { describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { resolveConfig, parseMasterUrl, redactUrl } from '../src/config.js';
import { EXIT, UnavailableError, UsageError, classifyFsError, fromWire, isAcm2Error, toWire } from '../src/errors.js';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { registerUsers } from '../src/bench/fleet.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
async function acm2(args: string[], env: Record<string, string> = {}) {
  try {
    const r = await run(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

describe('acm2 binary', () => {
  it('--help lists every command of the SPEC', async () => {
    const top = await acm2(['--help']);
    expect(top.code).toBe(0);
    for (const c of ['seed', 'user', 'backfill', 'verify', 'diff']) expect(top.stdout).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
    const seed = await acm2(['seed', '--help']);
    for (const c of ['freeze', 'list', 'show', 'check']) expect(seed.stdout).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
    const user = await acm2(['user', '--help']);
    for (const c of ['create', 'seed', 'show', 'list']) expect(user.stdout).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
    expect((await acm2(['user', 'create', '--help'])).stdout).toMatch(/Example:\n\s+\$ acm2 user create/);
    // `help <cmd> <sub>` answers for the subcommand, not its parent.
    const viaHelp = await acm2(['help', 'user', 'create']);
    expect(viaHelp.code).toBe(0);
    expect(viaHelp.stdout).toMatch(/^Usage: acm2 user create/);
  });

  it('every command and subcommand has --help with an example, as README says', async () => {
    const paths = [[], ['seed'], ['user'], ['backfill'], ['verify'], ['diff'], ...['freeze', 'list', 'show', 'check', 'set-current'].map((c) => ['seed', c]), ...['create', 'seed', 'show', 'list'].map((c) => ['user', c])];
    for (const p of paths) {
      const r = await acm2([...p, '--help']);
      expect(r.code, p.join(' ')).toBe(0);
      const m = /\n(Examples?):\n((?:\s+\$ .*acm2 .*\n?)+)$/.exec(r.stdout);
      expect(m, `acm2 ${p.join(' ')} --help`).not.toBeNull();
      // "Example:" heads one example, "Examples:" more than one.
      expect(m![1], `acm2 ${p.join(' ')} --help`).toBe(m![2]!.trim().split('\n').length > 1 ? 'Examples' : 'Example');
    }
  });

  it('an unreachable MySQL master exits 3 with the documented sentence and no password', async () => {
    const r = await acm2(['user', 'list'], { ACM2_MASTER_URL: 'mysql://root:hunter2@127.0.0.1:1/x' });
    expect(r.code).toBe(3);
    expect(r.stderr.trim()).toBe('acm2: cannot reach MySQL master at 127.0.0.1:1 (ECONNREFUSED)');
    const j = await acm2(['user', 'list', '--json'], { ACM2_MASTER_URL: 'mysql://root:hunter2@127.0.0.1:1/x' });
    expect(JSON.parse(j.stdout)).toEqual({ error: { code: 'master_unreachable', message: 'cannot reach MySQL master at 127.0.0.1:1 (ECONNREFUSED)' } });
  });

  it('a malformed master URL exits 2 and hides the password', async () => {
    const r = await acm2(['user', 'list'], { ACM2_MASTER_URL: 'mysql://root:hunter2@' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/master URL .* is malformed/);
    expect(r.stderr).not.toContain('hunter2');
  });
});

describe('errors crossing from a worker thread', () => {
  it('keep their class and exit code (a master lost mid-drain is 3, not an internal error)', () => {
    const wire = (e: unknown) => fromWire(structuredClone(toWire(e)));
    const lost = wire(new UnavailableError('cannot reach MySQL master at h:3306 (PROTOCOL_CONNECTION_LOST)', 'master_unreachable'));
    expect(isAcm2Error(lost) && [lost.exitCode, lost.code, lost.message]).toEqual([EXIT.unavailable, 'master_unreachable', 'cannot reach MySQL master at h:3306 (PROTOCOL_CONNECTION_LOST)']);
    const bad = wire(new UsageError("unknown seed version 'v9'", 'unknown_version'));
    expect(isAcm2Error(bad) && bad.exitCode).toBe(EXIT.usage);
    const bug = wire(new TypeError('x is undefined'));
    expect(isAcm2Error(bug)).toBe(false);
    expect(bug.message).toBe('x is undefined');
  });

  it("keep a system error's code and path, so a worker's EMFILE is exit 3 as in the main thread, not an internal error", () => {
    const wire = (e: unknown) => fromWire(structuredClone(toWire(e)));
    const emfile = Object.assign(new Error("EMFILE: too many open files, open '/data/.acm2/locks/user_7.lock'"), { code: 'EMFILE', path: '/data/.acm2/locks/user_7.lock' });
    const back = wire(emfile) as NodeJS.ErrnoException;
    expect([back.code, back.path, back.message]).toEqual(['EMFILE', '/data/.acm2/locks/user_7.lock', emfile.message]);
    // What main.ts does with an error of a system code that is no Acm2Error.
    const said = classifyFsError(back, 'acm2');
    expect(said && isAcm2Error(said) && [said.exitCode, said.code]).toEqual([EXIT.unavailable, 'too_many_open_files']);
    expect(said?.message).toContain('/data/.acm2/locks/user_7.lock');
  });
});

describe('a reader that goes away', () => {
  it('does not crash the tool: no stack trace, and the exit code the work earned', async () => {
    // The parent closes its end of stdout at once, so the tool's first write meets EPIPE.
    const child = spawn(process.execPath, [BIN, '--json', 'seed', 'list'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });

  // /dev/full answers every write with ENOSPC, as a file on a full disk does (`acm2 verify > report`).
  it.skipIf(!existsSync('/dev/full'))('a stdout on a full disk: one sentence and exit 3, no stack trace, never exit 1 ("findings")', async () => {
    const full = openSync('/dev/full', 'w');
    try {
      for (const args of [['seed', 'list'], ['--json', 'seed', 'list']]) {
        const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', full, 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
        expect(stderr).toBe('acm2: disk full while writing stdout: the output was lost; the work itself finished (exit 0 before this), run it again with stdout where it can be written\n');
        expect(code).toBe(3);
      }
      // A stderr that cannot be written loses its message, not the exit code: a usage error stays 2.
      const child = spawn(process.execPath, [BIN, 'no-such-command'], { stdio: ['ignore', 'pipe', full] });
      expect(await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)))).toBe(2);
    } finally {
      closeSync(full);
    }
  });
});

describe('configuration precedence: flag > env > default', () => {
  it('resolves each setting', () => {
    const env = { ACM2_DATA_DIR: '/env/data', ACM2_MASTER_URL: 'sqlite:/env/m.db', ACM2_SEED_DIR: '/env/seeds', SEED_VERSION: 'v2' };
    const fromEnv = resolveConfig({}, env);
    expect([fromEnv.dataDir, fromEnv.master.display, fromEnv.seedsDir, fromEnv.seedVersion]).toEqual(['/env/data', 'sqlite:/env/m.db', '/env/seeds', 'v2']);
    const fromFlags = resolveConfig({ dataDir: '/f/data', master: 'mysql://u:p@h:3307/db', seeds: '/f/seeds', seedVersion: 'v3' }, env);
    expect([fromFlags.dataDir, fromFlags.master.display, fromFlags.seedsDir, fromFlags.seedVersion]).toEqual(['/f/data', 'mysql://u@h:3307/db', '/f/seeds', 'v3']);
    const defaults = resolveConfig({ dataDir: '/d' }, {});
    expect(defaults.master.display).toBe('sqlite:/d/master.db');
    expect(defaults.seedVersion).toBeUndefined();
    expect(resolveConfig({}, { NO_COLOR: '1' }).color).toBe(false);
  });

  it('parses MySQL URLs and never shows the password', () => {
    const u = parseMasterUrl('mysql://acm2:p%40ss@db.internal:3307/acm2_master');
    expect(u).toMatchObject({ kind: 'mysql', host: 'db.internal', port: 3307, user: 'acm2', password: 'p@ss', database: 'acm2_master' });
    expect(u.display).not.toContain('p@ss');
    expect(() => parseMasterUrl('mysql://h')).toThrow(/malformed/);
  });

  it('names an IPv6 master in brackets, as it is written', () => {
    expect(parseMasterUrl('mysql://acm2:pw@[::1]:3307/m')).toMatchObject({ host: '::1', port: 3307, display: 'mysql://acm2@[::1]:3307/m' });
    expect(parseMasterUrl('mysql://acm2:pw@[fd00::5]/m').display).toBe('mysql://acm2@[fd00::5]:3306/m');
  });

  it('hides a password typed where the host should be (no @): a port is still shown', () => {
    expect(redactUrl('mysql://acm2:Zq9secret/acm2_master')).toBe('mysql://acm2:***/acm2_master');
    expect(redactUrl('mysql://acm2:Zq9secret')).toBe('mysql://acm2:***');
    expect(redactUrl('mysql://db.internal:3306/acm2_master')).toBe('mysql://db.internal:3306/acm2_master');
  });

  it('refuses options after the database (?ssl=, ?socketPath=, #…) with exit 2 naming them, never their values: they would not be used', async () => {
    for (const [url, named] of [
      ['mysql://acm2:Zq9secretZq9@127.0.0.1:1/m?ssl=true', /has options \(ssl\) after the database name, which acm2 does not take/],
      ['mysql://acm2:Zq9secretZq9@127.0.0.1:1/m?socketPath=/run/mysqld/mysqld.sock&password=Zq9other', /has options \(socketPath, password\) after/],
      ['mysql://acm2:Zq9secretZq9@127.0.0.1:1/m#Zq9frag', /has a #fragment after the database name/],
    ] as const) {
      for (const json of [false, true]) {
        const r = await acm2(['user', 'list', ...(json ? ['--json'] : [])], { ACM2_MASTER_URL: url });
        expect(r.code, url).toBe(2);
        const said = json ? (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error : { code: 'bad_master_url', message: r.stderr };
        expect(said.code).toBe('bad_master_url');
        expect(said.message).toMatch(named);
        expect(r.stdout + r.stderr).not.toMatch(/Zq9|mysqld\.sock/);
      }
    }
  });
});

describe('user list --json to a reader that falls behind', () => {
  it('waits for the reader instead of queueing the fleet in memory: peak RSS as with a reader that keeps up', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'acm2-slow-reader-'));
    try {
      await registerUsers(parseMasterUrl(`sqlite:${path.join(dir, 'master.db')}`), 40_000, { seedVersion: 'v1', jobStatus: 'done' });
      // The CLI's own peak RSS, reported by a preload at exit (no external tool needed).
      const preload = path.join(dir, 'maxrss.cjs');
      writeFileSync(preload, `process.on('exit', () => process.stderr.write('maxrss ' + process.resourceUsage().maxRSS + '\\n'));\n`);
      const list = async (readerDelayS: number) => {
        // A shell pipe whose reader reads nothing at first: a writer that ignores backpressure
        // queues everything it produces meanwhile (16 MB of JSON: 177 MB peak against 93 MB).
        const sh = `${JSON.stringify(process.execPath)} -r ${JSON.stringify(preload)} ${JSON.stringify(BIN)} --data-dir ${JSON.stringify(dir)} user list --json | (sleep ${readerDelayS}; cat)`;
        const child = spawn('/bin/bash', ['-o', 'pipefail', '-c', sh], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += String(d)));
        const chunks: Buffer[] = [];
        child.stdout.on('data', (d: Buffer) => chunks.push(d));
        const code = await new Promise<number | null>((r) => child.once('close', r));
        expect(code, stderr).toBe(0);
        const doc = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { users: Array<{ id: number }> };
        expect(doc.users).toHaveLength(40_000);
        return Number(/maxrss (\d+)/.exec(stderr)![1]);
      };
      const keepsUp = await list(0);
      const behind = await list(4);
      expect(behind / keepsUp, `${behind} vs ${keepsUp}`).toBeLessThan(1.3);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
