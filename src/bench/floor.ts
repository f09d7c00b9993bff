// The baselines ("floors") the benchmarks compare against, as minimal standalone child processes.
// Each does only the physical work its benchmark cannot avoid, so ours/floor is the overhead.
//
//   node dist/bench/floor.js copy <pkgDir> <outDir> <users> <i> <n> [fsync]
//       per user id (1..users, id % n == i): copy seed.db to user_<id>.db and files/ to user_<id>/
//       with fs.copyFileSync; no remap, no master. 'fsync' also fsyncs every file and folder.
//       'write' instead writes the same bytes from memory (read once) with write(): per-user
//       content, which a remap makes of every file, cannot be copied inside the kernel.
//   node dist/bench/floor.js open-stat <dataDir> <users> <i> <n>
//       per user id: open user_<id>.db (better-sqlite3), read user_meta, lstat every file under user_<id>/.
//   node dist/bench/floor.js read-all <dataDir> <users> <i> <n>
//       open-stat, plus what a quick verify cannot avoid reading: PRAGMA quick_check and every row
//       of every table (an informational floor for verify: the reads, none of the checks).
//   node dist/bench/floor.js bcrypt <rounds>
//       one bcryptjs hash of an ACM2-shaped key, as `user create` makes.
//
// Heavy modules are imported only by the mode that needs them, so startup stays a plain node's.

import { closeSync, copyFileSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

function ids(users: number, i: number, n: number): number[] {
  const out: number[] = [];
  for (let id = 1; id <= users; id++) if (id % n === i) out.push(id);
  return out;
}

function fsyncPath(p: string): void {
  const fd = openSync(p, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function copyTree(src: string, dst: string, durable: boolean): void {
  mkdirSync(dst, { recursive: true });
  for (const e of readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, e.name);
    const d = path.join(dst, e.name);
    if (e.isDirectory()) copyTree(s, d, durable);
    else {
      copyFileSync(s, d);
      if (durable) fsyncPath(d);
    }
  }
  if (durable) fsyncPath(dst);
}

/** A tree's files in memory, folders first: what the 'write' floor writes per user. */
function loadTree(src: string, rel = '', out: Array<{ rel: string; data?: Buffer }> = []): Array<{ rel: string; data?: Buffer }> {
  for (const e of readdirSync(path.join(src, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) {
      out.push({ rel: r });
      loadTree(src, r, out);
    } else out.push({ rel: r, data: readFileSync(path.join(src, r)) });
  }
  return out;
}

function statTree(dir: string): number {
  let n = 0;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    lstatSync(p);
    n++;
    if (e.isDirectory()) n += statTree(p);
  }
  return n;
}

async function main(argv: string[]): Promise<void> {
  const [mode, ...a] = argv;
  switch (mode) {
    case 'copy': {
      const [pkgDir, outDir, users, i, n, durable] = a as [string, string, string, string, string, string | undefined];
      const fsync = durable === 'fsync';
      mkdirSync(outDir, { recursive: true });
      if (durable === 'write') {
        const dbBytes = readFileSync(path.join(pkgDir, 'seed.db'));
        const tree = loadTree(path.join(pkgDir, 'files'));
        for (const id of ids(Number(users), Number(i), Number(n))) {
          writeFileSync(path.join(outDir, `user_${id}.db`), dbBytes);
          const root = path.join(outDir, `user_${id}`);
          mkdirSync(root);
          for (const f of tree) {
            if (f.data) writeFileSync(path.join(root, f.rel), f.data);
            else mkdirSync(path.join(root, f.rel));
          }
        }
        return;
      }
      for (const id of ids(Number(users), Number(i), Number(n))) {
        const db = path.join(outDir, `user_${id}.db`);
        copyFileSync(path.join(pkgDir, 'seed.db'), db);
        if (fsync) fsyncPath(db);
        copyTree(path.join(pkgDir, 'files'), path.join(outDir, `user_${id}`), fsync);
      }
      if (fsync) fsyncPath(outDir);
      return;
    }
    case 'open-stat':
    case 'read-all': {
      const readAll = mode === 'read-all';
      const [dataDir, users, i, n] = a as [string, string, string, string];
      const { default: Database } = await import('better-sqlite3');
      let ready = 0;
      let files = 0;
      for (const id of ids(Number(users), Number(i), Number(n))) {
        const file = path.join(dataDir, `user_${id}.db`);
        lstatSync(file);
        const db = new Database(file, { readonly: true, fileMustExist: true });
        try {
          const meta = db.prepare('SELECT seed_status, seed_version FROM user_meta WHERE user_id = ?').get(id) as { seed_status: string } | undefined;
          if (meta?.seed_status === 'ready') ready++;
          if (readAll) {
            db.pragma('quick_check');
            const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).pluck().all() as string[];
            for (const t of tables) for (const row of db.prepare(`SELECT * FROM "${t.replace(/"/g, '""')}"`).raw(true).iterate()) void row;
          }
        } finally {
          db.close();
        }
        files += statTree(path.join(dataDir, `user_${id}`));
      }
      process.stdout.write(`${JSON.stringify({ ready, files })}\n`);
      return;
    }
    case 'bcrypt': {
      const { default: bcrypt } = await import('bcryptjs');
      const key = `acm2_${'x'.repeat(32)}`;
      bcrypt.hashSync(key, bcrypt.genSaltSync(Number(a[0] ?? 12)));
      return;
    }
    default:
      throw new Error(`floor: unknown mode '${mode}'`);
  }
}

await main(process.argv.slice(2));
