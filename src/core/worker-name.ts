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

/** Whether a worker name (`host:pid:tag:pid space`, see workerName) is a process of this pid space that is gone. */
export function deadHere(worker: string): boolean {
  const [host, pid, , space] = worker.split(':');
  const here = thisPidSpace();
  return here !== '' && space === here && host === hostname() && /^[1-9][0-9]*$/.test(pid ?? '') && !processAlive(Number(pid));
}

/**
 * The pid of the process a worker name names, if it is another process of this pid space that
 * is still running (a pid reused since is taken for it: the caller errs on the side of waiting).
 */
export function aliveHere(worker: string): number | undefined {
  const [host, pid, , space] = worker.split(':');
  const here = thisPidSpace();
  if (here === '' || space !== here || host !== hostname() || !/^[1-9][0-9]*$/.test(pid ?? '')) return undefined;
  const n = Number(pid);
  return n !== process.pid && processAlive(n) ? n : undefined;
}
