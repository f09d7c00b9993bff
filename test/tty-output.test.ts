// What an operator's terminal and a CI log are shown: text the tool did not write (names and
// emails ACM2 stored, errors, file names in a user's tree) never reaches them with raw control
// characters; the JUnit report stays XML 1.0 and names such files legibly; the progress line
// has a total (so an ETA) for a drain too, and never wraps.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import Database from 'better-sqlite3';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { frozenSource, sqliteWorld, tmpDir, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';
import { userDbPath, userRoot } from '../src/userdb/paths.js';
import { generateSource } from '../src/fixtures/source.js';
import { cellWidth, fitEnd, fitStart, visible, visibleDeep } from '../src/ui/text.js';
import { fitLine } from '../src/ui/reporter.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const BIN = path.join(REPO, 'bin', 'acm2.js');

/** Any character a terminal acts on rather than shows (a newline between lines aside). */
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

const HOSTILE_NAME = 'evil\u001b[2J\u001b]0;PWNED\u0007\rall users ok\u202eabc\u009b2J';
const HOSTILE_EMAIL = 'e\u001b[31m@x.com\nall users ok';
const HOSTILE_ERROR = 'boom\u001b[2J\r\nall ok\u202e';
const HOSTILE_FILE = 'evil\nname\u001b[2J.md';
/** A stored error whose 60th character, where user list cuts its last-error column, is an emoji: two UTF-16 code units. */
const EMOJI_ERROR = `${'x'.repeat(59)}😀 and more`;
/** Backslash, x, 1, b: four plain characters that must not read like the ESC in HOSTILE_NAME. */
const BACKSLASH_NAME = 'fake\\x1b[2J';
const BACKSLASH_FILE = 'fake\\x1b[2J.md';

let pkg: FrozenSource;
let world: World;
let hostile: number;
let failed: number;
let treeUser: number;
let backslashed: number;
let emojiFailed: number;

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  const deps = { master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
  hostile = (await createUser(deps, { email: 'named@example.com', username: 'named' })).user.id;
  failed = (await createUser(deps, { email: 'failed@example.com', username: 'failed' })).user.id;
  treeUser = (await createUser(deps, { email: 'tree@example.com', username: 'tree' })).user.id;
  backslashed = (await createUser(deps, { email: 'slash@example.com', username: 'slash' })).user.id;
  emojiFailed = (await createUser(deps, { email: 'emoji@example.com', username: 'emoji' })).user.id;
  await world.master.close();
  // What ACM2 (or anyone with the master) can write: acm2's own validation is not the master's.
  const master = new Database(path.join(world.dataDir, 'master.db'));
  master.prepare('UPDATE users SET username = ?, email = ? WHERE id = ?').run(HOSTILE_NAME, HOSTILE_EMAIL, hostile);
  master.prepare('UPDATE users SET username = ? WHERE id = ?').run(BACKSLASH_NAME, backslashed);
  master.close();
  const db = new Database(userDbPath(world.dataDir, failed));
  db.prepare(`UPDATE user_meta SET seed_status = 'failed'`).run();
  db.prepare('UPDATE acm2_seed_state SET last_error = ?').run(HOSTILE_ERROR);
  db.close();
  const emojiDb = new Database(userDbPath(world.dataDir, emojiFailed));
  emojiDb.prepare(`UPDATE user_meta SET seed_status = 'failed'`).run();
  emojiDb.prepare('UPDATE acm2_seed_state SET last_error = ?').run(EMOJI_ERROR);
  emojiDb.close();
  // Linux allows any byte but '/' and NUL in a file name.
  writeFileSync(path.join(userRoot(world.dataDir, treeUser), HOSTILE_FILE), 'x', { mode: 0o644 });
  writeFileSync(path.join(userRoot(world.dataDir, treeUser), BACKSLASH_FILE), 'x', { mode: 0o644 });
});
afterAll(async () => {
  rmSync(world.dataDir, { recursive: true, force: true });
  pkg.cleanup();
});

const acm2 = (...args: string[]) =>
  execa('node', [BIN, ...args, '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir], { reject: false, env: { NO_COLOR: '1' } });

describe('visible()', () => {
  it('escapes what a terminal acts on and keeps every other character', () => {
    expect(visible(HOSTILE_NAME)).toBe('evil\\x1b[2J\\x1b]0;PWNED\\x07\\rall users ok\\u202eabc\\x9b2J');
    expect(visible('a\tb\nc\u009bd\u007f\u2066')).toBe('a\\tb\\nc\\x9bd\\x7f\\u2066');
    expect(visible('Zoë 中文 😀 user_1/runs/a b.md')).toBe('Zoë 中文 😀 user_1/runs/a b.md');
    expect(visibleDeep({ [HOSTILE_FILE]: [HOSTILE_ERROR, 3, null] })).toEqual({ 'evil\\nname\\x1b[2J.md': ['boom\\x1b[2J\\r\\nall ok\\u202e', 3, null] });
  });

  it('escapes a backslash, so that a shown escape is never the text itself', () => {
    expect(visible(BACKSLASH_NAME)).toBe('fake\\\\x1b[2J');
    expect(visible(BACKSLASH_NAME)).not.toBe(visible('fake\u001b[2J'));
    expect(visible('C:\\new\\\n')).toBe('C:\\\\new\\\\\\n');
    expect(visibleDeep({ [BACKSLASH_FILE]: ['a\\b'] })).toEqual({ 'fake\\\\x1b[2J.md': ['a\\\\b'] });
  });

  it('escapes half of a surrogate pair, which a terminal would be sent as U+FFFD, and keeps whole pairs', () => {
    expect(visible('a\ud800b')).toBe('a\\ud800b');
    expect(visible('a\udc00')).toBe('a\\udc00');
    expect(visible('\udc00\ud800')).toBe('\\udc00\\ud800');
    // Two names that differ only in which half is lone no longer look the same.
    expect(visible('x\ud83d')).not.toBe(visible('x\ude00'));
    expect(visible('\ud83d\ude00 \ud83d')).toBe('\ud83d\ude00 \\ud83d');
  });
});

describe('text output shows stored and found names escaped, never raw', () => {
  it('a backslash in a stored name is shown doubled, unlike an escaped control character; --json escapes it once, as JSON does', async () => {
    const shown = (await acm2('user', 'show', String(backslashed))).stdout;
    expect(shown).toContain(`${backslashed} (fake\\\\x1b[2J, slash@example.com)`);
    const listed = (await acm2('user', 'list')).stdout;
    expect(listed).toContain('fake\\\\x1b[2J');
    expect(listed).toContain('evil\\x1b[2J');
    const json = (await acm2('user', 'show', String(backslashed), '--json')).stdout;
    expect(json).toContain('"username": "fake\\\\x1b[2J"');
    expect(JSON.parse(json)).toMatchObject({ username: BACKSLASH_NAME });
    const r = await acm2('user', 'show', 'x\\y@example.com');
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toBe("acm2: no user with email 'x\\\\y@example.com' in the master");
  });

  it('user list cuts a long last error to 60 cells between characters, never inside an emoji', async () => {
    const r = await acm2('user', 'list', '--status', 'failed');
    expect(r.exitCode).toBe(0);
    // Half a surrogate pair reaches the terminal as U+FFFD.
    expect(r.stdout).not.toContain('\ufffd');
    const row = r.stdout.split('\n').find((l) => l.includes('emoji@example.com'))!;
    expect(row).toContain(`${'x'.repeat(59)} `);
    expect(row).not.toContain('😀');
  });

  it('user list and user show: a username and email from the master, a stored last error', async () => {
    for (const args of [['user', 'list'], ['user', 'show', String(hostile)], ['user', 'show', String(failed)], ['user', 'list', '--status', 'failed']]) {
      const r = await acm2(...args);
      expect(r.exitCode, args.join(' ')).toBe(0);
      expect(r.stdout, args.join(' ')).not.toMatch(RAW);
      expect(r.stderr, args.join(' ')).not.toMatch(RAW);
    }
    expect((await acm2('user', 'show', String(hostile))).stdout).toContain('evil\\x1b[2J\\x1b]0;PWNED\\x07\\rall users ok\\u202eabc\\x9b2J');
    expect((await acm2('user', 'show', String(failed))).stdout).toContain('boom\\x1b[2J\\r\\nall ok\\u202e');
  });

  it('verify, diff and a backfill plan: a file name with a newline and an ESC in a user tree', async () => {
    for (const args of [['verify'], ['diff', '--user', String(treeUser)], ['backfill', '--dry-run']]) {
      const r = await acm2(...args);
      expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBeLessThan(2);
      expect(r.stdout, args.join(' ')).not.toMatch(RAW);
      expect(r.stderr, args.join(' ')).not.toMatch(RAW);
    }
    const v = await acm2('verify', '--user', String(treeUser));
    expect(v.stdout).toContain('evil\\nname\\x1b[2J.md');
    expect(v.stdout).toContain('fake\\\\x1b[2J.md');
    expect((await acm2('diff', '--user', String(treeUser))).stdout).toContain('+ evil\\nname\\x1b[2J.md');
  });

  it('the one-sentence error on stderr quotes what it was given escaped', async () => {
    const r = await acm2('user', 'show', 'x\u001b[2J@example.com');
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toBe("acm2: no user with email 'x\\x1b[2J@example.com' in the master");
    const c = await acm2('user', 'list', '--bogus\u001b]0;T\u0007');
    expect(c.exitCode).toBe(2);
    expect(c.stderr).not.toMatch(RAW);
    expect(c.stderr).toContain("unknown option '--bogus\\x1b]0;T\\x07'");
  });

  it('--json keeps the values as they are, JSON-escaped (C1 controls too, which JSON.stringify leaves raw)', async () => {
    const r = await acm2('user', 'show', String(hostile), '--json');
    // U+202E is text to a JSON reader, and JSON.stringify leaves it (and U+2028) as it is.
    expect(r.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
    expect(r.stdout).toContain('\\u009b2J');
    expect(JSON.parse(r.stdout)).toMatchObject({ username: HOSTILE_NAME, email: HOSTILE_EMAIL });
  });
});

describe('verify --junit', () => {
  it('is XML 1.0 with every character allowed, and names a hostile file legibly, one line per problem', async () => {
    const dir = tmpDir('acm2-junit-');
    try {
      const file = path.join(dir, 'verify.xml');
      const r = await acm2('verify', '--junit', file);
      expect(r.exitCode).toBe(1);
      const xml = readFileSync(file, 'utf8');
      // XML 1.0's Char: tab, LF, CR and U+0020 on (a parser refuses an ESC or a NUL outright).
      expect(xml).not.toMatch(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/);
      expect(xml).not.toContain('\r');
      const failure = /<testcase classname="acm2\.verify\.users" name="user (\d+)">\s*<failure message="([^"]*)" type="[^"]*">([^<]*)<\/failure>/g;
      const byUser = new Map([...xml.matchAll(failure)].map((m) => [Number(m[1]), { message: m[2]!, body: m[3]! }]));
      const tree = byUser.get(treeUser)!;
      expect(tree.body).toContain('(path user_' + treeUser + '/evil\\nname\\x1b[2J.md)');
      expect(tree.body).toContain('(path user_' + treeUser + '/fake\\\\x1b[2J.md)');
      // Each problem on its own line: the name's newline does not split one in two.
      const lines = tree.body.split('\n');
      expect(lines.every((l) => l.startsWith('[error] ') || l.startsWith('[warning] '))).toBe(true);
      expect(Number(/^(\d+) problems?/.exec(tree.message)![1])).toBe(lines.length);
      // Counts: one testcase per user plus the data dir's, failures as many as failed testcases.
      const tests = Number(/<testsuites [^>]*tests="(\d+)"/.exec(xml)![1]);
      const failures = Number(/<testsuites [^>]*failures="(\d+)"/.exec(xml)![1]);
      expect(tests).toBe((xml.match(/<testcase /g) ?? []).length);
      expect(failures).toBe((xml.match(/<failure /g) ?? []).length);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Runs the built CLI with stderr taken for a terminal this many columns wide (stderr is a pipe the test reads). */
function asTty(columns: number, args: string[], env: Record<string, string> = {}) {
  const preload = path.join(tmpDir('acm2-tty-'), 'tty.mjs');
  writeFileSync(preload, `Object.defineProperty(process.stderr, 'isTTY', { value: true });\nObject.defineProperty(process.stderr, 'columns', { value: ${columns} });\n`);
  return execa('node', ['--import', preload, BIN, ...args], { reject: false, env: { NO_COLOR: '1', ...env } }).finally(() => rmSync(path.dirname(preload), { recursive: true, force: true }));
}

/** The progress line's frames as they were drawn (each starts with CR and clear-line). */
const frames = (stderr: string) => stderr.split('\r\u001b[2K').slice(1).map((f) => f.replace(/\n$/, ''));

describe('progress on a terminal', () => {
  it('a drain of the queue counts down to the jobs due, with an ETA', async () => {
    const w = await sqliteWorld();
    try {
      const deps = { master: w.master, dataDir: w.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 };
      for (let i = 0; i < 3; i++) await createUser(deps, { email: `q${i}@example.com`, username: `q${i}`, async: true });
      await w.master.close();
      const r = await asTty(100, ['user', 'seed', '--pending', '--concurrency', '1', '--data-dir', w.dataDir, '--master', w.masterUrl, '--seeds', pkg.seedsDir]);
      expect(r.exitCode, r.stderr).toBe(0);
      const drawn = frames(r.stderr);
      expect(drawn[0]).toMatch(/^seeding {2}0\/3 {2}/);
      expect(drawn.at(-1)).toMatch(/^seeding {2}3\/3 {2}[\d.]+\/s {2}ETA \d+s$/);
    } finally {
      rmSync(w.dataDir, { recursive: true, force: true });
    }
  });

  it('seed freeze: a long file name is cut to the terminal width, never wrapped', async () => {
    const root = tmpDir('acm2-freeze-tty-');
    try {
      const src = generateSource(path.join(root, 'source'), { sourceDocs: 2 });
      mkdirSync(path.join(root, 'data'));
      const r = await asTty(50, ['seed', 'freeze', '--source', src.dbPath, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId, '--version', 'v1', '--seeds', path.join(root, 'seeds'), '--data-dir', path.join(root, 'data')]);
      expect(r.exitCode, r.stderr).toBe(0);
      const drawn = frames(r.stderr);
      expect(drawn.length).toBeGreaterThan(1);
      for (const f of drawn) expect(f.length, f).toBeLessThan(50);
      expect(drawn.at(-1)).toMatch(/^copying run files {2}\d+\/\d+ .*…/);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('seed freeze: a CJK or emoji file name is cut to the width in cells, never mid-character', async () => {
    const root = tmpDir('acm2-freeze-tty-wide-');
    try {
      const src = generateSource(path.join(root, 'source'), { sourceDocs: 1 });
      // Sorted after every ASCII name: the last file copied, so drawn by the final frame.
      writeFileSync(path.join(src.filesDir, 'runs', src.runId, `報告書${'文😀'.repeat(15)}.md`), 'x');
      mkdirSync(path.join(root, 'data'));
      const r = await asTty(60, ['seed', 'freeze', '--source', src.dbPath, '--source-files', src.filesDir, '--preset', src.presetId, '--run', src.runId, '--version', 'v1', '--seeds', path.join(root, 'seeds'), '--data-dir', path.join(root, 'data')]);
      expect(r.exitCode, r.stderr).toBe(0);
      const drawn = frames(r.stderr);
      // Cells counted apart from cellWidth: the wide characters of these names take two.
      const cells = (f: string) => [...f].reduce((n, ch) => n + (/[\u3000-\u9fff\u{1F300}-\u{1FAFF}]/u.test(ch) ? 2 : 1), 0);
      for (const f of drawn) {
        expect(cells(f), f).toBeLessThan(60);
        expect(f, f).not.toContain('\ufffd');
      }
      expect(drawn.at(-1)).toMatch(/^copying run files {2}\d+\/\d+ .*…(文|😀)+\.md$/u);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('fitLine keeps the counts and the end of the path', () => {
    expect(fitLine('backfill  3/9', 'short', 80)).toBe('backfill  3/9  short');
    expect(fitLine('backfill  3/9', 'runs/abc/generated/long-name.md', 30)).toBe('backfill  3/9  …/long-name.md');
    expect(fitLine('a very long label that does not fit', '', 10)).toBe('a very lo');
    expect(fitLine('no width known', 'x'.repeat(300), undefined)).toHaveLength(14 + 2 + 300);
  });

  it('widths count terminal cells: CJK and emoji two, combining marks none', () => {
    expect(cellWidth('abc')).toBe(3);
    expect(cellWidth('中文')).toBe(4);
    expect(cellWidth('日本語ｱ')).toBe(7); // halfwidth katakana is narrow
    expect(cellWidth('😀a')).toBe(3);
    expect(cellWidth('e\u0301\u0323')).toBe(1);
    expect(cellWidth('❤\ufe0f')).toBe(2);
    expect(cellWidth('한국어')).toBe(6);
    expect(cellWidth('')).toBe(0);
  });

  it('a cut keeps whole characters and escapes: never half a surrogate pair, a mark without its letter, or half of \\x1b', () => {
    expect(fitStart('😀😀😀', 3)).toBe('😀');
    expect(fitEnd('😀😀😀', 3)).toBe('😀');
    expect(fitStart('中文字', 5)).toBe('中文');
    expect(fitEnd('ab中', 1)).toBe('');
    expect(fitEnd('ae\u0301', 1)).toBe('e\u0301');
    expect(fitStart('ae\u0301', 1)).toBe('a');
    expect(fitEnd('👍🏻', 2)).toBe('');
    const escaped = visible('a\u001bb\\c');
    expect(escaped).toBe('a\\x1bb\\\\c');
    expect(fitEnd(escaped, 5)).toBe('b\\\\c');
    expect(fitEnd(escaped, 3)).toBe('\\\\c');
    expect(fitEnd(escaped, 2)).toBe('c');
    expect(fitStart(escaped, 4)).toBe('a');
    expect(fitStart(escaped, 5)).toBe('a\\x1b');
  });

  it('fitLine cuts a CJK or emoji path to the width in cells', () => {
    const head = 'copying run files  3/9';
    const line = fitLine(head, 'runs/abc/報告書報告書報告書報告書.md', 40);
    expect(line).toBe(`${head}  …告書報告書.md`);
    // 39 cells of room; a wide character would need the 39th and a 40th: left out.
    expect(cellWidth(line)).toBe(38);
    const emoji = fitLine(head, `runs/abc/${'😀'.repeat(20)}`, 40);
    expect(emoji).toBe(`${head}  …${'😀'.repeat(7)}`);
    expect(fitLine('見出し見出し見出し', '', 8)).toBe('見出し');
  });

  it('with stderr a file, nothing of the progress line is in it', async () => {
    const r = await acm2('verify');
    expect(r.stderr).toBe('');
  });
});
