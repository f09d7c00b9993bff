// The migration lock's RELEASE_LOCK given up on (the master did not answer in time): the connection
// that holds the lock must not go back to the pool, where it would keep the lock and hang the next
// statement given it behind the unanswered one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import mysql from 'mysql2/promise';
import { createMysqlTestDb, mysqlOrSkip } from './helpers/mysql.js';
import { parseMasterUrl } from '../src/config.js';
import { mysqlLockName } from '../src/master/mysql-master.js';
import { openMaster } from '../src/master/factory.js';

const gate = await mysqlOrSkip();

describe.skipIf(gate.skip)('a migration lock whose release the master did not answer', () => {
  let db: { url: string; drop(): Promise<void> };
  let server: net.Server;
  const sockets = new Set<net.Socket>();
  let swallow = false;
  let proxied: string;
  beforeAll(async () => {
    gate.ready();
    db = await createMysqlTestDb();
    const target = new URL(db.url);
    // Forwards everything but, while `swallow` is set, the first RELEASE_LOCK (never answered).
    server = net.createServer((client) => {
      const up = net.connect(Number(target.port || 3306), target.hostname);
      sockets.add(client).add(up);
      client.on('data', (d) => {
        if (swallow && d[4] === 0x03 && d.subarray(5).toString().includes('RELEASE_LOCK')) {
          swallow = false;
          return;
        }
        up.write(d);
      });
      up.on('data', (d) => client.write(d));
      client.on('error', () => up.destroy());
      up.on('error', () => client.destroy());
      client.on('close', () => up.destroy());
      up.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const u = new URL(db.url);
    u.port = String((server.address() as net.AddressInfo).port);
    proxied = u.toString();
    process.env.ACM2_MYSQL_QUERY_TIMEOUT_MS = '1000';
  });
  afterAll(async () => {
    delete process.env.ACM2_MYSQL_QUERY_TIMEOUT_MS;
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server?.close(() => r()));
    await db?.drop();
  });

  it('is dropped: the lock is freed and the next statement answers', async () => {
    swallow = true;
    const m = await openMaster(parseMasterUrl(proxied)); // a fresh database: the migrations run
    try {
      expect(swallow).toBe(false); // the release was swallowed
      const u = new URL(db.url);
      const admin = await mysql.createConnection({ host: u.hostname, port: Number(u.port || 3306), user: decodeURIComponent(u.username) || 'root', password: decodeURIComponent(u.password) });
      try {
        // The server frees a dropped connection's locks once it sees it gone: a moment, not a run.
        let holder: unknown;
        for (const until = Date.now() + 3000; Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
          const [rows] = await admin.query('SELECT IS_USED_LOCK(?) AS holder', [mysqlLockName('acm2_migrate:', u.pathname.slice(1))]);
          holder = (rows as { holder: unknown }[])[0]!.holder;
          if (holder === null) break;
        }
        expect(holder).toBeNull();
      } finally {
        await admin.end();
      }
      const started = Date.now();
      const n = await Promise.race([m.countUsers(), new Promise((r) => setTimeout(() => r('hung'), 5000))]);
      expect(n).toBe(0);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      // A connection stuck in the pool would keep close() waiting for the answer that never comes.
      await Promise.race([m.close(), new Promise((r) => setTimeout(r, 2000))]);
    }
  }, 20_000);
});
