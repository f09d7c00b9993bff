// --legacy-logs: ACM2's global logs/{run_id}/ folders move into their owner's run folder with
// identical bytes; unowned runs stay and are reported; a clash keeps both; a crash mid-move
// loses nothing and a rerun finishes it; a dry run touches nothing.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { snapshotTree, walkFiles } from './helpers/env.js';
import { buildLegacyFleet, fleetPackage, fleetRunId, fleetTmpDir } from './helpers/legacy-fleet.js';
import { runBackfill } from '../src/core/backfill.js';
import { moveLegacyLogs, runsOwnedBy, suffixed } from '../src/core/legacy-logs.js';
import { renderLegacyLogs } from '../src/ui/backfill.js';
import { toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';
import { lockUserFile } from '../src/core/user-lock.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));

const env = fleetPackage();

const UNOWNED = '0badc0de-0000-4000-8000-000000000000';
const EXTRA_RUN = 'e77a0000-1111-4222-8333-444455556666';

/** Users 1-3 with legacy DBs (user 1 holds two runs); a global logs dir with their runs + one nobody owns. */
async function world() {
  const fleet = await buildLegacyFleet({ legacy: 3 }, env.pkg.pkg);
  const db = new Database(userDbPath(fleet.dataDir, 1));
  db.pragma('foreign_keys = OFF');
  db.prepare(`INSERT INTO runs (id, user_id, created_at, title, status, config, total_tasks, completed_tasks, failed_tasks, total_cost_usd, total_tokens)
              VALUES (?, 1, '2026-01-13 10:00:00.000000', 'second run', 'failed', '{}', 0, 0, 0, 0.0, 0)`).run(EXTRA_RUN);
  db.close();
  const logs = fleetTmpDir('acm2-legacy-logs-');
  const put = (rel: string, text: string) => {
    mkdirSync(path.dirname(path.join(logs, rel)), { recursive: true });
    writeFileSync(path.join(logs, rel), text);
  };
  const r1 = fleetRunId(1);
  const r2 = fleetRunId(2);
  const r3 = fleetRunId(3);
  put(`${r1}/run.log`, `run ${r1} started\nrun ${r1} done\n`);
  put(`${r1}/fpf_output.log`, 'fpf says hi\n'.repeat(500));
  put(`${r1}/nested/fpf_${r1}.gen.1.openai_o4-mini.log`, 'per-task log\n');
  put(`${EXTRA_RUN}/run.log`, 'the failed run\n');
  put(`${r2}/run.log`, 'user 2 run log (from the global folder)\n');
  put(`${r3}/run.log`, 'user 3 run log\n');
  put(`${UNOWNED}/run.log`, 'nobody owns me\n');
  // User 2 already has a run.log in its run folder (written by a later ACM2): a clash.
  const clash = path.join(userRoot(fleet.dataDir, 2), 'runs', r2, 'logs', 'run.log');
  mkdirSync(path.dirname(clash), { recursive: true });
  writeFileSync(clash, 'user 2 own newer run log\n');
  return { fleet, logs, r1, r2, r3, clash };
}

function hashes(dir: string): Map<string, string> {
  return new Map(walkFiles(dir).map((rel) => [rel, createHash('sha256').update(readFileSync(path.join(dir, rel))).digest('hex')]));
}

/** The data dir's files and their hashes, without the master (its WAL moves on reads) and .acm2/. */
function userData(dir: string): Record<string, string> {
  return Object.fromEntries([...hashes(dir)].filter(([rel]) => !rel.startsWith('master.db') && !rel.startsWith('.acm2')));
}

describe('moving global logs through backfill', () => {
  let w: Awaited<ReturnType<typeof world>>;
  beforeEach(async () => {
    w = await world();
  });
  afterEach(async () => {
    await w.fleet.cleanup();
    rmSync(w.logs, { recursive: true, force: true });
  });

  it('every owned file lands in its owner’s run folder with identical bytes; the unowned run stays and is reported; a clash keeps both', async () => {
    const before = hashes(w.logs);
    const r = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs });
    const l = r.legacyLogs!;
    expect(l.runs).toBe(5);
    expect(l.unowned).toEqual([UNOWNED]);
    expect(l.ambiguous).toEqual([]);
    expect(l.moved.map((m) => [m.runId, m.userId, m.files]).sort()).toEqual(
      [
        [w.r1, 1, 3],
        [EXTRA_RUN, 1, 1],
        [w.r2, 2, 1],
        [w.r3, 3, 1],
      ].sort(),
    );
    for (const [rel, sha] of before) {
      const [runId, ...rest] = rel.split(path.sep);
      if (runId === UNOWNED) continue;
      const owner = runId === EXTRA_RUN || runId === w.r1 ? 1 : runId === w.r2 ? 2 : 3;
      let target = path.join(userRoot(w.fleet.dataDir, owner), 'runs', runId!, 'logs', ...rest);
      if (runId === w.r2) target = suffixed(target, 1);
      expect(createHash('sha256').update(readFileSync(target)).digest('hex'), rel).toBe(sha);
      expect(statSync(target).mode & 0o777).toBe(0o600);
    }
    // The clash: the user's own file is untouched, the incoming one sits beside it, and it is reported.
    expect(readFileSync(w.clash, 'utf8')).toBe('user 2 own newer run log\n');
    expect(readFileSync(suffixed(w.clash, 1), 'utf8')).toBe('user 2 run log (from the global folder)\n');
    expect(path.basename(suffixed(w.clash, 1))).toBe('run.legacy.log');
    expect(l.clashes).toEqual([{ runId: w.r2, userId: 2, existing: path.join('runs', w.r2, 'logs', 'run.log'), keptAs: path.join('runs', w.r2, 'logs', 'run.legacy.log') }]);
    // Only the unowned run is left in the global folder.
    expect(walkFiles(w.logs)).toEqual([path.join(UNOWNED, 'run.log')]);

    // A second run moves nothing and changes nothing.
    const tree = userData(w.fleet.dataDir);
    const again = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs });
    expect(again.legacyLogs!.moved).toEqual([]);
    expect(again.legacyLogs!.unowned).toEqual([UNOWNED]);
    expect(userData(w.fleet.dataDir)).toEqual(tree);
  });

  it('a shard sees every user as an owner: a run held by users of two shards is left alone by both', async () => {
    // User 2 (shard 0 of 2) holds user 3's run too.
    const db = new Database(userDbPath(w.fleet.dataDir, 2));
    db.pragma('foreign_keys = OFF');
    db.prepare(`INSERT INTO runs (id, user_id, created_at, title, status, config, total_tasks, completed_tasks, failed_tasks, total_cost_usd, total_tokens)
                VALUES (?, 2, '2026-01-13 10:00:00.000000', 'copied run', 'completed', '{}', 0, 0, 0, 0.0, 0)`).run(w.r3);
    db.close();
    const odd = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs, shard: { index: 1, count: 2 } });
    expect(odd.legacyLogs!.ambiguous).toEqual([{ runId: w.r3, userIds: [2, 3] }]);
    // User 2's own run belongs to shard 0: neither moved nor called unowned here.
    expect(odd.legacyLogs!.moved.map((m) => m.runId).sort()).toEqual([w.r1, EXTRA_RUN].sort());
    expect(odd.legacyLogs!.unowned).toEqual([UNOWNED]);
    expect(existsSync(path.join(w.logs, w.r3, 'run.log'))).toBe(true);
    const even = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs, shard: { index: 0, count: 2 } });
    expect(even.legacyLogs!.moved.map((m) => m.runId)).toEqual([w.r2]);
    expect(even.legacyLogs!.ambiguous).toEqual([{ runId: w.r3, userIds: [2, 3] }]);
    expect(existsSync(path.join(w.logs, w.r3, 'run.log'))).toBe(true);
  });

  it("a run whose owner another process holds (a seed, another backfill) is left in place, reported busy, and moved by the next run", async () => {
    const held = lockUserFile(w.fleet.dataDir, 2, 0)!;
    expect(held).toBeDefined();
    let r;
    try {
      r = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs });
    } finally {
      await held.release();
    }
    expect(r.legacyLogs!.busy).toEqual([{ runId: w.r2, userId: 2 }]);
    expect(r.legacyLogs!.moved.map((m) => m.runId)).not.toContain(w.r2);
    expect(readFileSync(path.join(w.logs, w.r2, 'run.log'), 'utf8')).toBe('user 2 run log (from the global folder)\n');
    expect(existsSync(suffixed(w.clash, 1))).toBe(false);
    const again = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs });
    expect(again.legacyLogs!.busy).toEqual([]);
    expect(again.legacyLogs!.moved.map((m) => m.runId)).toEqual([w.r2]);
    expect(readFileSync(suffixed(w.clash, 1), 'utf8')).toBe('user 2 run log (from the global folder)\n');
  });

  it('copying across file systems, a log that grows while it is copied is copied again: no appended line is lost', async () => {
    const log = path.join(w.logs, w.r3, 'run.log');
    let appended = 0;
    const r = await moveLegacyLogs({
      dir: w.logs,
      dataDir: w.fleet.dataDir,
      owners: new Map([[w.r3, [3]]]),
      forceCopy: true,
      // ACM2 appends a line to the run's log once, right after the first copy was made.
      afterCopy: (from) => {
        if (from === log && appended++ === 0) writeFileSync(log, 'a line ACM2 wrote meanwhile\n', { flag: 'a' });
      },
    });
    expect(r.moved).toEqual([expect.objectContaining({ runId: w.r3, userId: 3, files: 1 })]);
    expect(readFileSync(path.join(userRoot(w.fleet.dataDir, 3), 'runs', w.r3, 'logs', 'run.log'), 'utf8')).toBe('user 3 run log\na line ACM2 wrote meanwhile\n');
    expect(existsSync(log)).toBe(false);
  });

  it('a dry run lists the moves and the clash and touches nothing', async () => {
    const logsBefore = snapshotTree(w.logs);
    const dataBefore = userData(w.fleet.dataDir);
    const privateBefore = walkFiles(toolDir(w.fleet.dataDir));
    const r = await runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs, dryRun: true });
    expect(r.legacyLogs!.dryRun).toBe(true);
    expect(r.legacyLogs!.moved).toHaveLength(4);
    expect(r.legacyLogs!.clashes).toHaveLength(1);
    expect(r.legacyLogs!.unowned).toEqual([UNOWNED]);
    expect(snapshotTree(w.logs)).toEqual(logsBefore);
    expect(userData(w.fleet.dataDir)).toEqual(dataBefore);
    expect(walkFiles(toolDir(w.fleet.dataDir))).toEqual(privateBefore);
    expect(await w.fleet.master.getBackfill('default')).toBeUndefined();
  });

  it('a crash mid-move loses nothing and a rerun finishes it (copy path too)', async () => {
    const before = hashes(w.logs);
    // As after a crash between "link into place" and "remove the old name": both names exist.
    const half = path.join(userRoot(w.fleet.dataDir, 1), 'runs', w.r1, 'logs', 'run.log');
    mkdirSync(path.dirname(half), { recursive: true });
    linkSync(path.join(w.logs, w.r1, 'run.log'), half);
    // And a copy left in staging by a run that crashed before linking it (long ago).
    const stale = toolDir(w.fleet.dataDir, 'staging', 'legacy-logs', 'host-1-abcdef');
    mkdirSync(stale, { recursive: true });
    writeFileSync(path.join(stale, 'abc.tmp'), 'partial');
    const hourAgo = new Date(Date.now() - 3600_000);
    utimesSync(stale, hourAgo, hourAgo);

    const owners = new Map<string, number[]>();
    const candidates = new Set([w.r1, w.r2, w.r3, EXTRA_RUN, UNOWNED]);
    for (const id of [1, 2, 3]) for (const run of runsOwnedBy(w.fleet.dataDir, id, candidates)) owners.set(run, [...(owners.get(run) ?? []), id]);
    const r = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners, forceCopy: true });
    expect(r.clashes).toHaveLength(1); // only user 2's real clash: the half-moved file is recognised
    expect(readFileSync(half, 'utf8')).toBe(`run ${w.r1} started\nrun ${w.r1} done\n`);
    expect(existsSync(path.join(w.logs, w.r1))).toBe(false);
    expect(existsSync(stale)).toBe(false);
    expect(existsSync(toolDir(w.fleet.dataDir, 'staging', 'legacy-logs')) ? readdirSync(toolDir(w.fleet.dataDir, 'staging', 'legacy-logs')) : []).toEqual([]);
    for (const [rel, sha] of before) {
      const [runId, ...rest] = rel.split(path.sep);
      if (runId !== w.r1) continue;
      expect(createHash('sha256').update(readFileSync(path.join(userRoot(w.fleet.dataDir, 1), 'runs', runId, 'logs', ...rest))).digest('hex')).toBe(sha);
    }
  });

  it('a run two users hold is left in place and reported', async () => {
    const r = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners: new Map([[w.r3, [3, 2]]]) });
    expect(r.ambiguous).toEqual([{ runId: w.r3, userIds: [2, 3] }]);
    expect(existsSync(path.join(w.logs, w.r3, 'run.log'))).toBe(true);
  });

  it('a run whose logs folder (or a folder above it) is a symlink is left in place, never deleted through it', async () => {
    // An operator bridged the global folder into user 3's run folder during the transition.
    const runDir = path.join(userRoot(w.fleet.dataDir, 3), 'runs', w.r3);
    mkdirSync(runDir, { recursive: true });
    symlinkSync(path.join(w.logs, w.r3), path.join(runDir, 'logs'));
    // User 2's runs folder points somewhere else entirely.
    const elsewhere = fleetTmpDir('acm2-elsewhere-');
    rmSync(path.join(userRoot(w.fleet.dataDir, 2), 'runs'), { recursive: true, force: true });
    symlinkSync(elsewhere, path.join(userRoot(w.fleet.dataDir, 2), 'runs'));
    const before = snapshotTree(w.logs);
    const r = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners: new Map([[w.r3, [3]], [w.r2, [2]]]) });
    expect(r.refused).toEqual([
      { runId: w.r2, userId: 2, path: 'runs' },
      { runId: w.r3, userId: 3, path: `runs/${w.r3}/logs` },
    ]);
    expect(r.moved).toEqual([]);
    expect(snapshotTree(w.logs)).toEqual(before);
    expect(readdirSync(elsewhere)).toEqual([]);
  });

  it('a log with a second hard link (to a file outside, say) is left in place and reported, never linked in or chmodded', async () => {
    const elsewhere = fleetTmpDir('acm2-elsewhere-');
    const secret = path.join(elsewhere, 'secret.conf');
    writeFileSync(secret, 'password=hunter2\n', { mode: 0o644 });
    linkSync(secret, path.join(w.logs, w.r3, 'debug.log'));
    const r = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners: new Map([[w.r3, [3]]]) });
    expect(r.skipped).toEqual([path.join(w.r3, 'debug.log')]);
    expect(r.moved).toEqual([{ runId: w.r3, userId: 3, files: 1, bytes: expect.any(Number) }]);
    expect(statSync(secret).mode & 0o777).toBe(0o644);
    expect(statSync(secret).nlink).toBe(2);
    expect(existsSync(path.join(userRoot(w.fleet.dataDir, 3), 'runs', w.r3, 'logs', 'debug.log'))).toBe(false);
  });

  it('a run folder that is a symlink is left in place and reported, dry run too; plain files beside the runs are not', async () => {
    const elsewhere = fleetTmpDir('acm2-elsewhere-');
    writeFileSync(path.join(elsewhere, 'run.log'), 'not under the logs dir\n');
    const linked = path.join(w.logs, EXTRA_RUN);
    rmSync(linked, { recursive: true, force: true });
    symlinkSync(elsewhere, linked);
    writeFileSync(path.join(w.logs, 'app.log'), "ACM2's own global log\n");
    const owners = new Map([[EXTRA_RUN, [1]], [w.r3, [3]]]);
    const dry = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners, dryRun: true });
    expect(dry.skipped).toEqual([EXTRA_RUN]);
    const r = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners });
    expect(r.skipped).toEqual([EXTRA_RUN]);
    expect(r.moved).toEqual([{ runId: w.r3, userId: 3, files: 1, bytes: expect.any(Number) }]);
    expect(readdirSync(elsewhere)).toEqual(['run.log']);
    expect(existsSync(path.join(userRoot(w.fleet.dataDir, 1), 'runs', EXTRA_RUN, 'logs', 'run.log'))).toBe(false);
  });

  it('a rerun that finds only a skipped entry left in a run folder reports nothing moved (dry run too); the entry stays skipped', async () => {
    const outside = path.join(fleetTmpDir('acm2-elsewhere-'), 'target.log');
    writeFileSync(outside, 'not a log of this run\n');
    symlinkSync(outside, path.join(w.logs, w.r3, 'link.log'));
    const skipped = [path.join(w.r3, 'link.log')];
    const pass = (dryRun = false) => runBackfill({ master: w.fleet.master, dataDir: w.fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: w.logs, dryRun, userIds: [3] });
    const first = (await pass()).legacyLogs!;
    expect(first.moved).toEqual([{ runId: w.r3, userId: 3, files: 1, bytes: expect.any(Number) }]);
    expect(first.skipped).toEqual(skipped);
    expect(renderLegacyLogs(first)).toMatch(/; moved 1 \(1 files, /);
    const tree = snapshotTree(w.logs);
    const data = userData(w.fleet.dataDir);
    for (const dryRun of [false, true]) {
      // A seed holds the owner's lock meanwhile: with nothing to move, the run is not busy (no exit 1).
      const held = lockUserFile(w.fleet.dataDir, 3, 0)!;
      expect(held).toBeDefined();
      let again;
      try {
        again = (await pass(dryRun)).legacyLogs!;
      } finally {
        await held.release();
      }
      expect(again.busy, `dry run: ${dryRun}`).toEqual([]);
      expect(again.moved, `dry run: ${dryRun}`).toEqual([]);
      expect(again.skipped).toEqual(skipped);
      // The human line agrees with the JSON: nothing was (or would be) moved.
      expect(renderLegacyLogs(again)).toMatch(dryRun ? /; would move 0 \(0 files, / : /; moved 0 \(0 files, /);
      expect(renderLegacyLogs(again)).toContain(skipped[0]);
    }
    expect(snapshotTree(w.logs)).toEqual(tree);
    expect(userData(w.fleet.dataDir)).toEqual(data);
    expect(readFileSync(outside, 'utf8')).toBe('not a log of this run\n');
  });

  it('a log whose name is not valid UTF-8 is left in place and reported; the rest of its run moves (no crash, dry run too)', async () => {
    writeFileSync(Buffer.concat([Buffer.from(path.join(w.logs, w.r3) + '/'), Buffer.from([0xfe, 0x2e, 0x6c, 0x6f, 0x67])]), 'odd name\n');
    const dry = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners: new Map([[w.r3, [3]]]), dryRun: true });
    expect(dry.skipped).toEqual([path.join(w.r3, '\uFFFD.log')]);
    const r = await moveLegacyLogs({ dir: w.logs, dataDir: w.fleet.dataDir, owners: new Map([[w.r3, [3]]]) });
    expect(r.skipped).toEqual([path.join(w.r3, '\uFFFD.log')]);
    expect(r.moved).toEqual([{ runId: w.r3, userId: 3, files: 1, bytes: expect.any(Number) }]);
    expect(readdirSync(path.join(w.logs, w.r3), { encoding: 'buffer' })).toEqual([Buffer.from([0xfe, 0x2e, 0x6c, 0x6f, 0x67])]);
  });

  it("the CLI refuses a --legacy-logs inside the data dir (a user's own runs/) or holding it, moving nothing", () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [BIN, 'backfill', '--data-dir', w.fleet.dataDir, '--master', w.fleet.masterUrl, '--seeds', env.pkg.seedsDir, ...args], { encoding: 'utf8' });
    const runs = path.join(userRoot(w.fleet.dataDir, 2), 'runs');
    const before = snapshotTree(w.fleet.dataDir);
    for (const dir of [runs, path.dirname(w.fleet.dataDir), env.pkg.seedsDir]) {
      const r = cli('--legacy-logs', dir, '--json');
      expect(r.status, r.stdout).toBe(2);
      expect(JSON.parse(r.stdout).error.message, r.stdout).toMatch(/(is inside|holds) the (data|seeds) dir/);
    }
    expect(snapshotTree(w.fleet.dataDir)).toEqual(before);
  });

  it('the CLI exits 1 for a run refused for a symlink in its owner’s folder, says what to do, and 0 once it is cleared', () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [BIN, 'backfill', '--data-dir', w.fleet.dataDir, '--master', w.fleet.masterUrl, '--seeds', env.pkg.seedsDir, '--legacy-logs', w.logs, ...args], { encoding: 'utf8' });
    const runDir = path.join(userRoot(w.fleet.dataDir, 3), 'runs', w.r3);
    mkdirSync(runDir, { recursive: true });
    const elsewhere = fleetTmpDir('acm2-elsewhere-');
    symlinkSync(elsewhere, path.join(runDir, 'logs'));
    const json = cli('--json');
    expect(json.status, json.stderr).toBe(1);
    const doc = JSON.parse(json.stdout) as { legacyLogs: { refused: unknown[]; moved: Array<{ runId: string }> } };
    expect(doc.legacyLogs.refused).toEqual([{ runId: w.r3, userId: 3, path: `runs/${w.r3}/logs` }]);
    expect(doc.legacyLogs.moved.map((m) => m.runId)).not.toContain(w.r3);
    expect(readdirSync(elsewhere)).toEqual([]);
    // A plan is not a batch: it lists the refusal and exits 0.
    const plan = cli('--dry-run');
    expect(plan.status, plan.stderr).toBe(0);
    expect(plan.stdout).toMatch(new RegExp(`run ${w.r3}: user 3's runs/${w.r3}/logs is a symlink or not a folder, so the run's logs would be left in place; make it a plain folder`));
    const human = cli();
    expect(human.status, human.stderr).toBe(1);
    expect(human.stdout).toMatch(new RegExp(`run ${w.r3}: user 3's runs/${w.r3}/logs is a symlink or not a folder, so the run's logs were left in place; make it a plain folder \\(or move it away\\), then run the backfill again`));
    // The operator clears it: the next run moves the run and exits 0.
    rmSync(path.join(runDir, 'logs'));
    const after = cli('--json');
    expect(after.status, after.stderr).toBe(0);
    const done = JSON.parse(after.stdout) as { legacyLogs: { refused: unknown[]; moved: Array<{ runId: string }> } };
    expect(done.legacyLogs.refused).toEqual([]);
    expect(done.legacyLogs.moved.map((m) => m.runId)).toEqual([w.r3]);
    expect(readFileSync(path.join(runDir, 'logs', 'run.log'), 'utf8')).toBe('user 3 run log\n');
  });

  it('the CLI reports the moves in its JSON and refuses a --legacy-logs that is not a folder', () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [BIN, 'backfill', '--data-dir', w.fleet.dataDir, '--master', w.fleet.masterUrl, '--seeds', env.pkg.seedsDir, ...args], { encoding: 'utf8' });
    const bad = cli('--legacy-logs', path.join(w.logs, 'nope'), '--json');
    expect(bad.status).toBe(2);
    expect(JSON.parse(bad.stdout).error.message).toMatch(/is not a folder/);
    const ok = cli('--legacy-logs', w.logs, '--json');
    expect(ok.status, ok.stderr).toBe(0);
    const doc = JSON.parse(ok.stdout) as { dryRun: boolean; counts: Record<string, number>; legacyLogs: { unowned: string[]; moved: unknown[]; clashes: unknown[] } };
    expect(doc.dryRun).toBe(false);
    expect(doc.counts).toEqual({ meta_legacy: 3 });
    expect(doc.legacyLogs.unowned).toEqual([UNOWNED]);
    expect(doc.legacyLogs.moved).toHaveLength(4);
    expect(doc.legacyLogs.clashes).toHaveLength(1);
  });
});
