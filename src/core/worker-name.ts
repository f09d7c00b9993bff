// Who claimed a seed job: a worker name says which process, on which host and in which pid space,
// so a drain (and verify) can tell a job whose seeder is gone from one still at work.

import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { processAlive } from '../durable.js';

/** `host:pid:tag:pid space`, unique per claim-making process. */
export function workerName(): string {
  const space = thisPidSpace();
  return `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}${space ? `:${space}` : ''}`;
}

let pidSpace: string | undefined;
/**
 * Where this process's pid means something: the boot and the pid namespace. Containers can share
 * a host name (host networking) and not their pids; '' where /proc does not say.
 */
export function thisPidSpace(): string {
  if (pidSpace !== undefined) return pidSpace;
  try {
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().slice(0, 8);
    const ns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1];
    pidSpace = boot && ns ? `${boot}.${ns}` : '';
  } catch {
    pidSpace = '';
  }
  return pidSpace;
}

/** `<host>+<pid space>` (just the host where /proc does not say): whose pids a name's pid is. */
export function whereAmI(): string {
  const space = thisPidSpace();
  return space ? `${hostname()}+${space}` : hostname();
}

/**
 * Whether a pid a name records beside `where` (its maker's whereAmI()) is one of this pid space,
 * so that whether it runs says whether the maker does. Another host's, or another pid space's of
 * this host name (a container, a boot since), says nothing here.
 */
export function pidIsOfHere(where: string): boolean {
  const [, host, space] = /^(.*?)(?:\+([0-9a-f]+\.\d+))?$/.exec(where) ?? [];
  return host === hostname() && (space === undefined || space === thisPidSpace());
}

/**
 * How long a leftover whose maker cannot be checked from here (another host's, another pid
 * space's) must stay untouched before it is taken for abandoned.
 */
export const STALE_ELSEWHERE_MS = 60 * 60 * 1000;

/** Whether a worker name (`host:pid:tag:pid space`, see workerName) is a process of this pid space that is gone. */
export function deadHere(worker: string): boolean {
  const [host, pid, , space] = worker.split(':');
  const here = thisPidSpace();
  return here !== '' && space === here && host === hostname() && /^[1-9][0-9]*$/.test(pid ?? '') && !processAlive(Number(pid));
}

/**
 * The pid of the process a worker name names, if it is another process of this pid space that
 * is still running. A pid reused since is taken for it (the caller errs on the side of waiting),
 * unless `since` (ms since the epoch) says when that worker was already at work and the process
 * now holding the pid started after it: the worker's process is gone, its pid given to another.
 */
export function aliveHere(worker: string, since?: number): number | undefined {
  const [host, pid, , space] = worker.split(':');
  const here = thisPidSpace();
  if (here === '' || space !== here || host !== hostname() || !/^[1-9][0-9]*$/.test(pid ?? '')) return undefined;
  const n = Number(pid);
  if (n === process.pid || !processAlive(n)) return undefined;
  const started = since === undefined || !Number.isFinite(since) ? undefined : processStartedAt(n);
  return started !== undefined && started > since! + START_SLACK_MS ? undefined : n;
}

/** Clock slack when comparing a process's start with a time a worker wrote (ticks, clock adjustments). */
const START_SLACK_MS = 2000;

/**
 * When process `pid` started, in ms since the epoch by this clock; undefined where /proc does not
 * say. From its start in clock ticks after boot (field 22 of /proc/<pid>/stat, in USER_HZ, 100 on
 * Linux) and the time since boot (/proc/uptime), both on the same clock.
 */
export function processStartedAt(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: fields 3 on follow the last ')'.
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    const uptime = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    if (!Number.isFinite(ticks) || !Number.isFinite(uptime)) return undefined;
    return Date.now() - (uptime - ticks / 100) * 1000;
  } catch {
    return undefined;
  }
}
