// The MySQL master behind a network that misbehaves: a TCP proxy between the tool and the
// server that can stop forwarding (a silent cut) or lose the server's answer to a COMMIT.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import mysql from 'mysql2/promise';
import { createMysqlTestDb, mysqlOrSkip } from './helpers/mysql.js';
import { parseMasterUrl } from '../src/config.js';
import { openMaster } from '../src/master/factory.js';
import type { NewUser } from '../src/master/types.js';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import bcrypt from 'bcryptjs';

const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

const gate = await mysqlOrSkip();

/** A proxy to the server; `mode` changes what it does from then on. */
function proxy(target: URL) {
  const state = {
    mode: 'forward' as 'forward' | 'silent' | 'lose-commit-answer' | 'hold-create-commit-answer' | 'deadlock-once',
    /** deadlock-once: a query starting with this is answered, once, with InnoDB's deadlock error and never reaches the server */
    deadlockOn: '',
    /** In forward mode, a query starting with this turns the proxy silent (it and all after it are dropped). */
    silentOn: '',
    /** The next lockWaitTimes queries starting with lockWaitOn are answered with InnoDB's lock wait timeout, never reaching the server. */
    lockWaitOn: '',
    lockWaitTimes: 0,
    /** hold-create-commit-answer: called when the COMMIT after an api_keys insert has reached the server; its answer is held until release() */
    onHeld: undefined as undefined | ((release: () => void) => void),
  };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 3306), target.hostname);
    sockets.add(client).add(upstream);
    let answersLost = false;
    let keyInserted = false;
    let held: Buffer[] | undefined;
    client.on('data', (d) => {
      if (state.silentOn && d[4] === 0x03 && d.subarray(5).toString().startsWith(state.silentOn)) state.mode = 'silent';
      if (state.mode === 'silent') return;
      if (state.lockWaitTimes > 0 && d[4] === 0x03 && d.subarray(5).toString().startsWith(state.lockWaitOn)) {
        state.lockWaitTimes--;
        // ERR packet, sequence 1: 0xff, 1205 (ER_LOCK_WAIT_TIMEOUT), '#HY000', the message.
        const body = Buffer.concat([Buffer.from([0xff, 0xb5, 0x04]), Buffer.from('#HY000Lock wait timeout exceeded; try restarting transaction')]);
        client.write(Buffer.concat([Buffer.from([body.length & 0xff, (body.length >> 8) & 0xff, 0, 1]), body]));
        return;
      }
      if (state.mode === 'deadlock-once' && d[4] === 0x03 && d.subarray(5).toString().startsWith(state.deadlockOn)) {
        state.mode = 'forward';
        // ERR packet, sequence 1: 0xff, 1213 (ER_LOCK_DEADLOCK), '#40001', the message.
        const body = Buffer.concat([Buffer.from([0xff, 0xbd, 0x04]), Buffer.from('#40001Deadlock found when trying to get lock; try restarting transaction')]);
        client.write(Buffer.concat([Buffer.from([body.length & 0xff, (body.length >> 8) & 0xff, 0, 1]), body]));
        return;
      }
      upstream.write(d);
      if (state.mode === 'hold-create-commit-answer') {
        if (d.includes('INSERT INTO api_keys')) keyInserted = true;
        else if (keyInserted && d[4] === 0x03 && d.subarray(5).toString() === 'COMMIT') {
          keyInserted = false;
          held = [];
          state.onHeld?.(() => {
            for (const b of held ?? []) client.write(b);
            held = undefined;
          });
        }
      }
      // A COMMIT reaches the server; its answer never reaches the client.
      // (A COM_QUERY packet of exactly COMMIT: not READ COMMITTED in a session's set-up.)
      if (state.mode === 'lose-commit-answer' && d[4] === 0x03 && d.subarray(5).toString() === 'COMMIT') {
        answersLost = true;
        setTimeout(() => client.destroy(), 200);
      }
    });
    upstream.on('data', (d) => {
      if (held) held.push(d);
      else if (state.mode !== 'silent' && !answersLost) client.write(d);
    });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });
  return {
    state,
    async listen(): Promise<number> {
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      return (server.address() as net.AddressInfo).port;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

const newUser = (i: number): NewUser => ({
  username: `net${i}`,
  email: `net${i}@example.com`,
  wordpressUserId: null,
  keyHash: `$2b$10$nethash${i}`,
  keyPrefix: `acm2_net${String(i).padStart(4, '0')}`,
  keyName: `WordPress API Key for net${i}`,
  seedVersion: 'v1',
  maxAttempts: 3,
});

describe.skipIf(gate.skip)('the MySQL master behind a misbehaving network', () => {
  let db: { url: string; drop(): Promise<void> };
  let p: ReturnType<typeof proxy>;
  let proxied: string;
  beforeAll(async () => {
    gate.ready();
    db = await createMysqlTestDb();
    p = proxy(new URL(db.url));
    const u = new URL(db.url);
    u.port = String(await p.listen());
    proxied = u.toString();
    process.env.ACM2_MYSQL_QUERY_TIMEOUT_MS = '1500';
  });
  afterAll(async () => {
    delete process.env.ACM2_MYSQL_QUERY_TIMEOUT_MS;
    await p?.close();
    await db?.drop();
  });

  it('a master that stops answering is exit 3 within the query timeout, not after TCP gives up', async () => {
    p.state.mode = 'forward';
    const m = await openMaster(parseMasterUrl(proxied));
    try {
      expect(await m.getUser(1)).toBeUndefined();
      p.state.mode = 'silent';
      const started = Date.now();
      const err = (await m.getUser(1).then(
        () => undefined,
        (e: unknown) => e,
      )) as { code?: string; exitCode?: number; message?: string } | undefined;
      // Fields one by one: the error's cause holds the whole connection, too big to diff.
      expect(err?.code).toBe('master_unreachable');
      expect(err?.exitCode).toBe(3);
      expect(err?.message).toMatch(/PROTOCOL_SEQUENCE_TIMEOUT/);
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      p.state.mode = 'forward';
      await m.close().catch(() => undefined);
    }
  });

  it('a process whose master stopped answering exits once it has closed the master, not when TCP gives up', async () => {
    // Connections the master left idle when it went silent get their QUIT, which is never
    // answered: their sockets used to keep the process alive, exit 3 said, for ~15 minutes.
    const dist = (f: string) => new URL(`../dist/${f}`, import.meta.url).href;
    const script = `
      const { openMaster } = await import(${JSON.stringify(dist('master/factory.js'))});
      const { parseMasterUrl } = await import(${JSON.stringify(dist('config.js'))});
      const m = await openMaster(parseMasterUrl(process.argv[1]));
      await Promise.all([1, 2, 3, 4].map(() => m.countUsers()));
      await (await m.acquireUserLock(4343, 0)).release();
      const err = await m.getUser(434343).then(() => undefined, (e) => e);
      await m.close();
      process.stdout.write(String(err?.code) + '\\n');`;
    p.state.mode = 'forward';
    p.state.silentOn = 'SELECT * FROM users WHERE id = 434343';
    try {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script, proxied], { env: { ...process.env, ACM2_MYSQL_QUERY_TIMEOUT_MS: '1000' } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      let closedAt = 0;
      child.stdout.once('data', () => (closedAt = Date.now()));
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await exited;
      clearTimeout(timer);
      expect(stdout.trim(), stderr).toBe('master_unreachable');
      expect(code).toBe(0);
      expect(Date.now() - closedAt).toBeLessThan(5_000);
    } finally {
      p.state.silentOn = '';
      p.state.mode = 'forward';
    }
  }, 30_000);

  it('releasing a user lock on a master that stopped answering gives up within the query timeout', async () => {
    p.state.mode = 'forward';
    const m = await openMaster(parseMasterUrl(proxied));
    try {
      const lock = await m.acquireUserLock(4242, 0);
      expect(lock).toBeDefined();
      p.state.mode = 'silent';
      const started = Date.now();
      // It used to wait for as long as the connection stayed open: a backfill hung at its end.
      await lock!.release();
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      p.state.mode = 'forward';
      await m.close().catch(() => undefined);
    }
  });

  it('user create whose COMMIT reached the server but whose answer was lost returns the user it made', async () => {
    p.state.mode = 'forward';
    const m = await openMaster(parseMasterUrl(proxied));
    try {
      p.state.mode = 'lose-commit-answer';
      const created = await m.createUser(newUser(1));
      p.state.mode = 'forward';
      expect(created.user).toMatchObject({ username: 'net1', email: 'net1@example.com' });
      expect(created.job).toMatchObject({ userId: created.user.id, status: 'pending' });
      // Straight from the server: exactly one user, with the key.
      const c = await mysql.createConnection(db.url);
      const [rows] = await c.query(`SELECT u.id, k.key_hash FROM users u JOIN api_keys k ON k.user_id = u.id`);
      await c.end();
      expect(rows).toEqual([{ id: created.user.id, key_hash: '$2b$10$nethash1' }]);
    } finally {
      p.state.mode = 'forward';
      await m.close().catch(() => undefined);
    }
  });

  it('user create interrupted twice while the master commits the user still shows its API key', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'acm2-net-create-'));
    try {
      p.state.mode = 'hold-create-commit-answer';
      let stderr = '';
      let stdout = '';
      const child = spawn(process.execPath, [BIN, 'user', 'create', '--master', proxied, '--data-dir', dataDir, '--email', 'held@example.com', '--username', 'held', '--no-color'], {
        env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_MYSQL_QUERY_TIMEOUT_MS: '20000', ACM2_PAIR_DATA_DIR: dataDir },
      });
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      const release = await new Promise<() => void>((r) => (p.state.onHeld = r));
      // The COMMIT is at the server, its answer held: two signals now.
      child.kill('SIGINT');
      await new Promise((r) => setTimeout(r, 200));
      child.kill('SIGINT');
      await new Promise((r) => setTimeout(r, 300));
      release();
      expect(await exited, stderr).toBe(130);
      const key = /API key \(shown once, store it now\): (acm2_\S+)/.exec(stdout)?.[1];
      expect(key, stdout).toBeDefined();
      const c = await mysql.createConnection(db.url);
      const [rows] = (await c.query(`SELECT k.key_hash FROM users u JOIN api_keys k ON k.user_id = u.id WHERE u.email = 'held@example.com'`)) as unknown as [{ key_hash: string }[]];
      await c.end();
      expect(rows).toHaveLength(1);
      expect(bcrypt.compareSync(key!, rows[0]!.key_hash)).toBe(true);
    } finally {
      p.state.mode = 'forward';
      p.state.onHeld = undefined;
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('a statement on its own that InnoDB picks as a deadlock victim is run again, not a crash', async () => {
    p.state.mode = 'forward';
    const m = await openMaster(parseMasterUrl(proxied));
    try {
      const { user, job } = await m.createUser(newUser(7));
      expect((await m.claimJobForUser(user.id, 'w', 60_000))?.id).toBe(job.id);
      p.state.deadlockOn = "UPDATE acm2_seed_jobs SET status = 'done'";
      p.state.mode = 'deadlock-once';
      expect(await m.finishJob(job.id, 'w', { status: 'done' })).toBe(true);
      expect(p.state.mode).toBe('forward'); // the deadlock was answered, then the retry went through
      expect(await m.latestJob(user.id)).toMatchObject({ status: 'done' });
    } finally {
      p.state.mode = 'forward';
      await m.close().catch(() => undefined);
    }
  });
  it('a row another transaction keeps locked through every retry is exit 3 (master_busy), not an internal error; nothing is changed', async () => {
    p.state.mode = 'forward';
    const m = await openMaster(parseMasterUrl(proxied));
    try {
      const { user, job } = await m.createUser(newUser(8));
      expect((await m.claimJobForUser(user.id, 'w', 60_000))?.id).toBe(job.id);
      // A statement on its own: run again four times, then given up.
      p.state.lockWaitOn = "UPDATE acm2_seed_jobs SET status = 'done'";
      p.state.lockWaitTimes = 5;
      const err = (await m.finishJob(job.id, 'w', { status: 'done' }).then(
        () => undefined,
        (e: unknown) => e,
      )) as { code?: string; exitCode?: number; message?: string } | undefined;
      expect(p.state.lockWaitTimes).toBe(0);
      expect(err?.exitCode).toBe(3);
      expect(err?.code).toBe('master_busy');
      expect(err?.message).toMatch(/held rows acm2 needs, through 5 tries \(ER_LOCK_WAIT_TIMEOUT\)/);
      expect(await m.latestJob(user.id)).toMatchObject({ status: 'running', lockedBy: 'w' });
    } finally {
      p.state.lockWaitTimes = 0;
      await m.close().catch(() => undefined);
    }
  });

  it('acm2 user seed whose job stays locked by another transaction exits 3 in one sentence, its job and data dir untouched', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'acm2-net-busy-'));
    const cli = (args: string[]) =>
      new Promise<{ code: number | null; out: Record<string, any> }>((resolve) => {
        const child = spawn(process.execPath, [BIN, ...args, '--master', proxied, '--data-dir', dataDir, '--json'], {
          // The database is shared with the tests above, which paired it with their own data dirs.
          env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_PAIR_DATA_DIR: dataDir },
        });
        let stdout = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.once('exit', (code) => resolve({ code, out: JSON.parse(stdout || '{}') as Record<string, any> }));
      });
    try {
      p.state.mode = 'forward';
      const created = await cli(['user', 'create', '--email', 'busy@example.com', '--username', 'busy', '--async']);
      expect(created.code).toBe(0);
      const id = created.out.user.id as number;
      // The transaction that claims the user's job waits on its rows every time (the first
      // statement of claimJobForUser): five transactions, then exit 3.
      p.state.lockWaitOn = 'SELECT id, status, next_attempt_at FROM acm2_seed_jobs FORCE INDEX';
      p.state.lockWaitTimes = 5;
      const r = await cli(['user', 'seed', String(id)]);
      expect(p.state.lockWaitTimes).toBe(0);
      expect(r.code).toBe(3);
      expect(r.out.error.code).toBe('master_busy');
      expect(r.out.error.message).toMatch(/^another transaction on MySQL master .* held rows acm2 needs, through 5 tries \(ER_LOCK_WAIT_TIMEOUT\)/);
      const c = await mysql.createConnection(db.url);
      const [jobs] = (await c.query('SELECT status, attempts, locked_by FROM acm2_seed_jobs WHERE user_id = ?', [id])) as unknown as [Record<string, unknown>[]];
      await c.end();
      expect(jobs).toEqual([{ status: 'pending', attempts: 0, locked_by: null }]);
      expect(existsSync(path.join(dataDir, `user_${id}.db`))).toBe(false);
      expect(existsSync(path.join(dataDir, `user_${id}`))).toBe(false);
      // Once the rows are free, the same command seeds the user.
      const again = await cli(['user', 'seed', String(id)]);
      expect(again.code).toBe(0);
      expect(again.out.seed.status).toBe('ready');
    } finally {
      p.state.lockWaitTimes = 0;
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
