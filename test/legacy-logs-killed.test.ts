// --legacy-logs after a kill -9: the rerun that finishes the move leaves the user's tree as a
// move that was never stopped would (every moved log 0600, verify clean) and the killed pass's
// staging gone (SPEC §6.2: a rerun converges; staging is cleaned up).
import { afterEach, beforeEach, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildLegacyFleet, fleetPackage, fleetRunId, fleetTmpDir, type Fleet } from './helpers/legacy-fleet.js';
import { runBackfill } from '../src/core/backfill.js';
import { verifyUsers } from '../src/core/verify.js';
import { toolDir, userRoot } from '../src/userdb/paths.js';
import { whereAmI } from '../src/core/worker-name.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';
const LEGACY_LOGS = fileURLToPath(new URL('../dist/core/legacy-logs.js', import.meta.url));

const env = fleetPackage();

let fleet: Fleet;
let logs: string;
beforeEach(async () => {
  fleet = await buildLegacyFleet({ legacy: 2 }, env.pkg.pkg);
  logs = fleetTmpDir('acm2-legacy-logs-');
  for (const id of [1, 2]) {
    mkdirSync(path.join(logs, fleetRunId(id)), { recursive: true });
    // As ACM2 wrote them: world-readable (umask 022).
    writeFileSync(path.join(logs, fleetRunId(id), 'run.log'), `run log of user ${id}\n`, { mode: 0o644 });
  }
});
afterEach(async () => {
  await fleet.cleanup();
  rmSync(logs, { recursive: true, force: true });
});

const staged = () => {
  const d = toolDir(fleet.dataDir, 'staging', 'legacy-logs');
  return existsSync(d) ? readdirSync(d) : [];
};

it('a pass killed mid-copy (across file systems) leaves a staging copy; the rerun moves the log and removes it', async () => {
  // The copy path, killed right after the log was copied to staging, before it was placed.
  const child = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { moveLegacyLogs } = await import(${JSON.stringify(LEGACY_LOGS)});
       await moveLegacyLogs({ dir: ${JSON.stringify(logs)}, dataDir: ${JSON.stringify(fleet.dataDir)}, owners: new Map([[${JSON.stringify(fleetRunId(1))}, [1]]]),
         forceCopy: true, afterCopy: () => process.kill(process.pid, 'SIGKILL') });`,
    ],
    { encoding: 'utf8' },
  );
  expect(child.signal, child.stderr).toBe('SIGKILL');
  expect(staged()).toHaveLength(1);
  expect(existsSync(path.join(logs, fleetRunId(1), 'run.log'))).toBe(true);

  const r = await runBackfill({ master: fleet.master, dataDir: fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: logs });
  expect(r.legacyLogs!.moved.map((m) => m.userId).sort()).toEqual([1, 2]);
  expect(readFileSync(path.join(userRoot(fleet.dataDir, 1), 'runs', fleetRunId(1), 'logs', 'run.log'), 'utf8')).toBe('run log of user 1\n');
  // The killed pass's copy went with the rerun, not ten minutes later.
  expect(staged()).toEqual([]);
});

it('a pass killed between placing a log and tightening its mode: the rerun tightens it, and verify finds nothing', async () => {
  // As a kill -9 right after linkSync(old, new) leaves it: both names, one file, still 0644.
  const placed = path.join(userRoot(fleet.dataDir, 1), 'runs', fleetRunId(1), 'logs', 'run.log');
  mkdirSync(path.dirname(placed), { recursive: true, mode: 0o700 });
  linkSync(path.join(logs, fleetRunId(1), 'run.log'), placed);
  expect(statSync(placed).mode & 0o777).toBe(0o644);

  const r = await runBackfill({ master: fleet.master, dataDir: fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: logs });
  expect(r.legacyLogs!.moved.map((m) => m.userId).sort()).toEqual([1, 2]);
  expect(existsSync(path.join(logs, fleetRunId(1)))).toBe(false);
  expect(statSync(placed).nlink).toBe(1);
  expect(statSync(placed).mode & 0o777).toBe(0o600);
  const v = await verifyUsers({ master: fleet.master, dataDir: fleet.dataDir, seedsDir: env.pkg.seedsDir }, { users: [1, 2] });
  expect(v.users.flatMap((u) => u.problems.map((p) => p.code))).toEqual([]);
});

it("keeps fresh staging it cannot call dead: a live pass's here, another host's or pid space's, an older acm2's name", async () => {
  const live = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    const d = toolDir(fleet.dataDir, 'staging', 'legacy-logs');
    const kept = [
      `${live.pid}.a1b2c3@${whereAmI()}`,
      `${deadPid()}.a1b2c3@another-host+0badf00d.4026531836`,
      `${deadPid()}.a1b2c3@${hostname()}+0badf00d.1`,
      `${hostname()}-${deadPid()}-a1b2c3`,
    ];
    const gone = `${deadPid()}.d4e5f6@${whereAmI()}`;
    for (const name of [...kept, gone]) {
      mkdirSync(path.join(d, name), { recursive: true, mode: 0o700 });
      writeFileSync(path.join(d, name, 'run.log'), 'a copy in flight\n');
    }
    await runBackfill({ master: fleet.master, dataDir: fleet.dataDir, pkg: env.pkg.pkg }, { legacyLogsDir: logs });
    expect(staged().sort()).toEqual([...kept].sort());
  } finally {
    live.kill('SIGKILL');
  }
});

/** A pid of this pid space that runs no process now. */
function deadPid(): number {
  const c = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(c.stdout);
}
