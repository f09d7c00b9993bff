// Benchmark plumbing: spawning timed child processes (with peak RSS), medians, the machine record.
// Nothing here asserts a time: the harness only measures and reports ratios to a baseline
// measured in the same run, because this machine is shared and noisy.

import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statfsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

/** Repository root (dist/bench/util.js → ../../). */
export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = path.join(REPO, 'bin', 'acm2.js');
export const FLOOR = fileURLToPath(new URL('./floor.js', import.meta.url));
export const TIME_BIN = '/usr/bin/time';

export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Proc {
  code: number | null;
  signal: NodeJS.Signals | null;
  ms: number;
  /** Peak RSS in KiB (VmHWM), when measured. */
  rssKb?: number;
  stdout: string;
  stderr: string;
}

export interface SpawnOpts {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Measure peak RSS (through /usr/bin/time when present, else by polling /proc/<pid>/status). */
  rss?: boolean;
  /** Keep stdout (default: yes, up to 64 MiB). */
  maxOut?: number;
}

/** Run a command to completion; wall time is from spawn to exit, as a person would see it. */
export function run(cmd: string, args: string[], opts: SpawnOpts = {}): Promise<Proc> {
  const useTime = Boolean(opts.rss) && existsSync(TIME_BIN);
  let timeFile: string | undefined;
  let file = cmd;
  let argv = args;
  if (useTime) {
    timeFile = path.join(os.tmpdir(), `acm2-bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
    file = TIME_BIN;
    argv = ['-f', '%M', '-o', timeFile, cmd, ...args];
  }
  const maxOut = opts.maxOut ?? 64 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(file, argv, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    child.stdout.on('data', (b: Buffer) => {
      if (outLen < maxOut) out.push(b);
      outLen += b.length;
    });
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 4096) err.push(b);
    });
    let hwm = 0;
    const poll =
      opts.rss && !useTime
        ? setInterval(() => {
            try {
              const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
              if (m) hwm = Math.max(hwm, Number(m[1]));
            } catch {
              /* exited */
            }
          }, 20)
        : undefined;
    child.on('error', (e) => {
      if (poll) clearInterval(poll);
      reject(e);
    });
    child.on('close', (code, signal) => {
      const ms = performance.now() - t0;
      if (poll) clearInterval(poll);
      let rssKb: number | undefined = opts.rss ? hwm || undefined : undefined;
      if (timeFile) {
        try {
          const lines = readFileSync(timeFile, 'utf8').trim().split('\n');
          const kb = Number(lines[lines.length - 1]);
          if (Number.isFinite(kb) && kb > 0) rssKb = kb;
        } catch {
          /* time wrote nothing */
        }
        rmSync(timeFile, { force: true });
      }
      resolve({ code, signal, ms, rssKb, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** Run and insist on exit 0 (or one of okCodes). */
export async function runOk(cmd: string, args: string[], opts: SpawnOpts & { okCodes?: number[] } = {}): Promise<Proc> {
  const p = await run(cmd, args, opts);
  const ok = opts.okCodes ?? [0];
  if (p.code === null || !ok.includes(p.code)) {
    throw new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${p.code ?? p.signal}: ${p.stderr.trim().slice(0, 2000) || p.stdout.trim().slice(0, 2000)}`);
  }
  return p;
}

/** The built CLI as a child process. */
export function acm2(args: string[], opts: SpawnOpts & { okCodes?: number[] } = {}): Promise<Proc> {
  return runOk(process.execPath, [CLI, ...args], opts);
}

/** One of the floor scripts (dist/bench/floor.js) as a child process. */
export function floor(args: string[], opts: SpawnOpts = {}): Promise<Proc> {
  return runOk(process.execPath, [FLOOR, ...args], opts);
}

/** Jiffies of the whole machine since boot (/proc/stat): busy (everything but idle and iowait) and total. */
export interface CpuTimes {
  busy: number;
  total: number;
}

export function cpuTimes(): CpuTimes | undefined {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
  } catch {
    return undefined;
  }
}

/** Fraction of all cores that were busy between two readings (any process: ours, MariaDB, the kernel). */
export function busyFraction(a: CpuTimes | undefined, b: CpuTimes | undefined): number | undefined {
  if (!a || !b || b.total <= a.total) return undefined;
  return (b.busy - a.busy) / (b.total - a.total);
}

/** Several processes started together; wall time until the last one exits. */
export async function together(starts: Array<() => Promise<Proc>>): Promise<{ ms: number; procs: Proc[] }> {
  const t0 = performance.now();
  const procs = await Promise.all(starts.map((s) => s()));
  return { ms: performance.now() - t0, procs };
}

/** The run's work dir; finished samples' trees are set aside inside it (see setAside). */
export function tmpRoot(): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'acm2-bench-'));
  setAsideIn(root);
  return root;
}

export function freshDir(dir: string): string {
  setAside(dir);
  mkdirSync(dir, { recursive: true });
  return dir;
}

// ---- removing trees between timed samples ----------------------------------------------------
//
// On ext4 without a journal (this machine's disk), allocating an inode skips every free inode
// freed in the last 60 s, or in the last 360 s while its inode-table block is dirty — and
// allocating a new inode in that block makes it dirty again (fs/ext4/ialloc.c, recently_deleted;
// RECENTCY_MIN 60, RECENTCY_DIRTY 300). Each skipped inode costs a buffer lookup. Removing the
// previous sample's tree (1,600 to 20,000 inodes) between timed samples therefore made every later
// sample's file creation scan thousands of freed inodes: 20 users of the large package took 4.0 s
// wall with 4.1 s of system CPU within 6 minutes of a removal, 3.1 s with 2.3 s of system CPU
// after 6 minutes without one, and the floors (which do little else) were inflated the most.
// So a sample's trees are set aside (renamed) and removed when the run ends; only if they pass a
// budget (40 % of the free space when the run started, at most 30 GB) are they
// removed mid-run, and the report says from when its samples ran beside freshly freed inodes.

let trashDir: string | undefined;
let trashBudget = 0;
let trashBytes = 0;
let trashSeq = 0;
/** Mid-run removals, for the report's notes. */
export const removals: string[] = [];

/** Bytes under a tree (apparent sizes; folders count nothing). */
function treeBytes(p: string): number {
  const st = lstatSync(p);
  if (!st.isDirectory()) return st.size;
  let n = 0;
  for (const e of readdirSync(p)) n += treeBytes(path.join(p, e));
  return n;
}

/** The work dir's folder for set-aside trees, and the budget from its free space now. */
function setAsideIn(workDir: string): void {
  trashDir = path.join(workDir, '.set-aside');
  mkdirSync(trashDir, { recursive: true });
  const fs = statfsSync(workDir);
  trashBudget = Math.min(30e9, (fs.bavail * fs.bsize * 2) / 5);
}

/** Move a tree a sample made out of the way (a rename within the work dir), removed at the end. */
export function setAside(dir: string): void {
  if (!existsSync(dir)) return;
  if (!trashDir || path.dirname(dir) !== path.dirname(trashDir)) {
    rmSync(dir, { recursive: true, force: true }); // not a sample's tree (outside the work dir)
    return;
  }
  trashBytes += treeBytes(dir);
  renameSync(dir, path.join(trashDir, String(++trashSeq)));
}

/** Before a timed sample: remove the set-aside trees only if they pass the budget. */
export function makeRoom(): void {
  if (!trashDir || trashBytes <= trashBudget) return;
  const gb = (trashBytes / 1e9).toFixed(1);
  log(`removing ${gb} GB of finished samples to free disk space: later samples run beside freshly freed inodes`);
  removals.push(`${new Date().toISOString().slice(11, 19)}: ${gb} GB of finished samples were removed mid-run for disk space; samples after it ran beside freshly freed inodes (slower file creation on ext4 without a journal).`);
  rmSync(trashDir, { recursive: true, force: true });
  mkdirSync(trashDir);
  trashBytes = 0;
}

export interface Machine {
  cores: number;
  cpuModel: string;
  memGiB: number;
  node: string;
  platform: string;
  kernel: string;
  fs: string;
  commit: string;
  timeBin: boolean;
  /**
   * NODE_EXTRA_CA_CERTS, when set (this workplace's machines set it): node parses that file at
   * every process start, ours and the floors' alike (~420 M of `node -e 0`'s ~500 M instructions
   * here, counted with callgrind), so fixed costs here are larger than where it is unset.
   */
  extraCaCerts: string | null;
}

export async function machine(dir: string): Promise<Machine> {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpuModel = m[1]!.trim();
  } catch {
    /* not Linux */
  }
  const [device, fsName] = await run('df', ['-T', dir]).then(
    (p) => (p.stdout.trim().split('\n').pop()?.split(/\s+/) ?? []) as Array<string | undefined>,
    () => [],
  );
  let fsType = fsName ?? 'unknown';
  // ext4 without a journal behaves differently after mass deletes (see setAside): say which it is.
  if (fsType === 'ext4' && device?.startsWith('/dev/')) {
    const name = path.basename(device);
    const jbd2 = existsSync('/proc/fs/jbd2') ? readdirSync('/proc/fs/jbd2') : undefined;
    if (jbd2) fsType = jbd2.some((j) => j.startsWith(`${name}-`)) ? 'ext4 (journaled)' : 'ext4 (no journal)';
  }
  const commit = await run('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO }).then(
    (p) => (p.code === 0 ? p.stdout.trim() : 'unknown'),
    () => 'unknown',
  );
  return {
    cores: os.availableParallelism(),
    cpuModel,
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    kernel: os.release(),
    fs: fsType,
    commit,
    timeBin: existsSync(TIME_BIN),
    extraCaCerts: process.env.NODE_EXTRA_CA_CERTS || null,
  };
}

export function fmt(n: number | undefined, digits = 1): string {
  if (n === undefined || !Number.isFinite(n)) return '–';
  if (Math.abs(n) >= 100) return n.toFixed(0);
  return n.toFixed(digits);
}

export function fmtMs(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return '–';
  return ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`;
}

export function fmtMiB(kb: number | undefined): string {
  return kb === undefined ? '–' : `${(kb / 1024).toFixed(0)} MiB`;
}
