// Invariant 6: bad input gets one clear sentence, the SPEC exit code, and no change at all:
// master and data dir are byte-identical before and after. Runs the built binary.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { cpSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { frozenSource, snapshotTree, tmpDir, type FrozenSource } from './helpers/env.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

let pkg: FrozenSource;
let dataDir: string;
let tampered: string;

async function acm2(args: string[], env: Record<string, string> = {}) {
  const base = ['--data-dir', dataDir, '--seeds', pkg.seedsDir];
  try {
    const r = await run(process.execPath, [BIN, ...base, ...args], { env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4', ACM2_MASTER_URL: '', ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

beforeAll(async () => {
  pkg = frozenSource();
  dataDir = tmpDir('acm2-bad-');
  // One existing user, so duplicates and seeds have something to clash with.
  const r = await acm2(['user', 'create', '--email', 'ada@example.com', '--username', 'ada', '--wordpress-user-id', '7']);
  expect(r.code).toBe(0);
  writeFileSync(path.join(dataDir, 'notes.txt'), 'an operator’s notes, not a database\n'.repeat(100));
  tampered = tmpDir('acm2-tampered-');
  cpSync(pkg.seedsDir, tampered, { recursive: true });
  const f = path.join(tampered, 'v1', 'files', pkg.pkg.manifest.files[0]!.path);
  const buf = readFileSync(f);
  buf[0] = buf[0]! ^ 1;
  writeFileSync(f, buf);
});
afterAll(() => {
  pkg.cleanup();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(tampered, { recursive: true, force: true });
});

const CASES: Array<{ name: string; args: () => string[]; env?: Record<string, string>; code: number; message: RegExp }> = [
  { name: 'bad email', args: () => ['user', 'create', '--email', 'not-an-email', '--username', 'x1'], code: 2, message: /'not-an-email' is not a valid email address/ },
  { name: 'email with two dots in a row', args: () => ['user', 'create', '--email', 'a..b@example.com', '--username', 'x2'], code: 2, message: /^acm2: 'a\.\.b@example\.com' is not a valid email address \(the part before '@' may not begin or end with '\.', nor hold '\.\.'\)$/m },
  { name: 'email ending its local part with a dot', args: () => ['user', 'create', '--email', 'ab.@example.com', '--username', 'x2'], code: 2, message: /'ab\.@example\.com' is not a valid email address \(the part before '@'/ },
  { name: 'email whose local part is over 64 characters', args: () => ['user', 'create', '--email', `${'a'.repeat(65)}@example.com`, '--username', 'x2'], code: 2, message: /is not a valid email address \(the part before '@' is 65 characters: at most 64\)/ },
  { name: 'email over 254 characters', args: () => ['user', 'create', '--email', `a@${['b', 'c', 'd', 'e'].map((c) => c.repeat(63)).join('.')}.com`, '--username', 'x2'], code: 2, message: /is not a valid email address \(261 characters: at most 254\)$/m },
  { name: 'duplicate email', args: () => ['user', 'create', '--email', 'ada@example.com', '--username', 'other'], code: 2, message: /email 'ada@example.com' already exists/ },
  { name: 'duplicate username', args: () => ['user', 'create', '--email', 'new@example.com', '--username', 'ada'], code: 2, message: /username 'ada' already exists/ },
  { name: 'duplicate wordpress id', args: () => ['user', 'create', '--email', 'n2@example.com', '--username', 'n2', '--wordpress-user-id', '7'], code: 2, message: /WordPress user id 7 already exists/ },
  // Blanks around it are trimmed, as around a user id: ' 7' is WordPress id 7, which ada holds.
  { name: 'duplicate wordpress id typed with blanks', args: () => ['user', 'create', '--email', 'n9@example.com', '--username', 'n9', '--wordpress-user-id', ' 7 '], code: 2, message: /WordPress user id 7 already exists/ },
  { name: 'bad username', args: () => ['user', 'create', '--email', 'n3@example.com', '--username', 'a b'], code: 2, message: /'a b' is not a valid username/ },
  { name: 'bad wordpress id', args: () => ['user', 'create', '--email', 'n4@example.com', '--username', 'n4', '--wordpress-user-id', 'x'], code: 2, message: /--wordpress-user-id 'x'/ },
  {
    name: 'wordpress id out of range',
    args: () => ['user', 'create', '--email', 'n5@example.com', '--username', 'n5', '--wordpress-user-id', '99999999999'],
    code: 2,
    message: /--wordpress-user-id '99999999999' is more than 2147483647/,
  },
  { name: 'missing --email', args: () => ['user', 'create', '--username', 'n5'], code: 2, message: /--email/ },
  { name: 'unknown version', args: () => ['user', 'create', '--email', 'n6@example.com', '--username', 'n6', '--seed-version', 'v9'], code: 2, message: /unknown seed version 'v9'/ },
  { name: 'bad version name', args: () => ['user', 'seed', '1', '--seed-version', '../x'], code: 2, message: /'..\/x' is not a valid seed version name/ },
  { name: 'tampered package', args: () => ['user', 'create', '--email', 'n7@example.com', '--username', 'n7', '--seeds', tampered], code: 2, message: /seed package v1 .*(sha256|tampered)/ },
  { name: 'unknown user id', args: () => ['user', 'seed', '999'], code: 2, message: /no user with id 999/ },
  { name: 'unknown user id to backfill', args: () => ['backfill', '--user', '999'], code: 2, message: /no user with id 999 in the master/ },
  { name: 'unknown user email', args: () => ['user', 'show', 'nobody@example.com'], code: 2, message: /no user with email 'nobody@example.com'/ },
  { name: 'non-numeric id', args: () => ['user', 'seed', 'abc'], code: 2, message: /'abc' is not a valid user id/ },
  { name: 'unreachable master', args: () => ['user', 'create', '--email', 'n8@example.com', '--username', 'n8', '--master', 'mysql://root:s3cret@127.0.0.1:1/x'], code: 3, message: /^acm2: cannot reach MySQL master at 127\.0\.0\.1:1 \(ECONNREFUSED\)$/m },
  {
    name: 'a --master file that is not a database',
    args: () => ['verify', '--master', `sqlite:${path.join(dataDir, 'notes.txt')}`],
    code: 2,
    message: /^acm2: the master .*notes\.txt is not a SQLite database \(SQLITE_NOTADB\): check --master and --data-dir$/m,
  },
  { name: 'malformed master url', args: () => ['user', 'list', '--master', 'postgres://x'], code: 2, message: /master URL 'postgres:\/\/x' is malformed/ },
  { name: 'user and --pending together', args: () => ['user', 'seed', '1', '--pending'], code: 2, message: /either a user or --pending/ },
  { name: 'bad --concurrency', args: () => ['user', 'seed', '--pending', '--concurrency', '0'], code: 2, message: /--concurrency '0' must be a whole number/ },
  { name: 'unknown option', args: () => ['user', 'list', '--frobnicate'], code: 2, message: /^acm2: unknown option '--frobnicate'$/m },
  { name: 'bad --status', args: () => ['user', 'list', '--status', 'weird'], code: 2, message: /weird/ },
  { name: 'verify --junit into a missing folder (refused before any user is checked)', args: () => ['verify', '--junit', path.join(dataDir, 'no-such-dir', 'r.xml')], code: 2, message: /cannot write the JUnit report .*r\.xml: folder .*no-such-dir does not exist/ },
  // A mistyped data dir: the commands that read users must not create a new, empty master there
  // (verify would then pass a fleet of zero users). Only `user create` makes the embedded master.
  ...[['verify'], ['user', 'list'], ['user', 'show', '1'], ['user', 'seed', '1'], ['user', 'seed', '--pending'], ['backfill'], ['backfill', '--dry-run'], ['diff', '--user', '1']].map((cmd) => ({
    name: `${cmd.join(' ')} on a data dir with no master`,
    args: () => [...cmd, '--data-dir', path.join(dataDir, 'typo')],
    code: 2,
    message: /^acm2: the master sqlite:.*typo\/master\.db does not exist: check --data-dir/m,
  })),
];

describe('bad input: one sentence, documented exit code, nothing changed', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const before = snapshotTree(dataDir);
      const r = await acm2(c.args(), c.env);
      expect(r.code).toBe(c.code);
      expect(r.stderr).toMatch(c.message);
      expect(r.stderr).not.toMatch(/s3cret|at .*\.js:\d+/);
      expect(snapshotTree(dataDir)).toEqual(before);
    });
  }

  it('--json gives one error document with the same code', async () => {
    const r = await acm2(['user', 'create', '--email', 'bad', '--username', 'x', '--json']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toEqual({ error: { code: 'bad_email', message: "'bad' is not a valid email address" } });
  });
});

describe('an email two users of the embedded master hold, differing only in case (written by hand)', () => {
  it('the exact email is that user; one matching both by case only is refused, nothing changed', async () => {
    const db = new Database(path.join(dataDir, 'master.db'));
    const other = Number(db.prepare(`INSERT INTO users (username, email) VALUES ('ada2', 'ADA@example.com')`).run().lastInsertRowid);
    db.close();
    const shown = await acm2(['user', 'show', 'ADA@example.com', '--json']);
    expect(shown.code, shown.stderr).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({ id: other, email: 'ADA@example.com' });
    const before = snapshotTree(dataDir);
    const seed = await acm2(['user', 'seed', 'Ada@example.com', '--force']);
    expect(seed.code).toBe(2);
    expect(seed.stderr.trim()).toBe(
      `acm2: email 'Ada@example.com' matches more than one user, their emails differing only in case (users 1 'ada@example.com' and ${other} 'ADA@example.com'): give the exact email or the user id`,
    );
    const create = await acm2(['user', 'create', '--email', 'Ada@example.com', '--username', 'ada3', '--json']);
    expect(create.code).toBe(2);
    expect(JSON.parse(create.stdout).error).toEqual({ code: 'duplicate_email', message: "a user with email 'Ada@example.com' already exists (more than one: their emails differ from it only in case)" });
    expect(snapshotTree(dataDir)).toEqual(before);
  });
});
