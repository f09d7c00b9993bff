// One error tree for the whole tool; each class carries the exit code of SPEC §2.
// main.ts is the only place that turns these into an exit code and a message.

export const EXIT = {
  ok: 0,
  findings: 1,
  usage: 2,
  unavailable: 3,
  internal: 70,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export abstract class Acm2Error extends Error {
  abstract readonly exitCode: ExitCode;
  /** Stable machine-readable code for `--json` error documents. */
  abstract readonly code: string;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Bad flag, bad value, bad package: nothing was changed. Exit 2. */
export class UsageError extends Acm2Error {
  readonly exitCode = EXIT.usage;
  readonly code: string;
  constructor(message: string, code = 'usage', options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** A seed package that is missing, malformed or tampered with. Exit 2. */
export class PackageError extends UsageError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'bad_package', options);
  }
}

/** Master unreachable, lock held past the wait, disk full. Exit 3. */
export class UnavailableError extends Acm2Error {
  readonly exitCode = EXIT.unavailable;
  readonly code: string;
  constructor(message: string, code = 'unavailable', options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** A command finished but found problems or had failed items. Exit 1. */
export class FindingsError extends Acm2Error {
  readonly exitCode = EXIT.findings;
  readonly code: string;
  constructor(message: string, code = 'findings', options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export function isAcm2Error(e: unknown): e is Acm2Error {
  return e instanceof Acm2Error;
}

/**
 * No space left: the OS's word (ENOSPC) or SQLite's (SQLITE_FULL, "database or disk is full";
 * SQLITE_IOERR_SHMSIZE, a WAL DB's -shm file that cannot grow, "disk I/O error").
 */
export function isDiskFull(e: unknown): boolean {
  const code = (e as { code?: unknown } | undefined)?.code;
  return code === 'ENOSPC' || code === 'SQLITE_IOERR_SHMSIZE' || (typeof code === 'string' && code.startsWith('SQLITE_FULL'));
}

/**
 * SQLite could not write because the file, its folder or its file system is read-only
 * (SQLITE_READONLY and its extended codes, e.g. SQLITE_READONLY_DIRECTORY, SQLITE_READONLY_DBMOVED).
 */
export function isReadOnly(e: unknown): boolean {
  const code = (e as { code?: unknown } | undefined)?.code;
  return code === 'EROFS' || (typeof code === 'string' && code.startsWith('SQLITE_READONLY'));
}

/** Map low-level environment failures (disk full, permission) to exit 3 with one sentence. */
export function classifyFsError(e: unknown, what: string): Acm2Error | undefined {
  const err = e as (NodeJS.ErrnoException & { dest?: string }) | undefined;
  const code = err?.code;
  // The path the system call failed on says more than `what` (a staging folder, one file).
  const where = typeof err?.path === 'string' && err.path !== what ? `${err.path} (${what})` : what;
  if (isDiskFull(e)) return new UnavailableError(`disk full while writing ${where}`, 'disk_full', { cause: e });
  if (code === 'EACCES' || code === 'EPERM' || code === 'SQLITE_READONLY')
    return new UnavailableError(`permission denied on ${where} (${code})`, 'permission_denied', { cause: e });
  if (code === 'EROFS') return new UnavailableError(`read-only file system at ${where}`, 'read_only', { cause: e });
  // The disk failed a read or write (EIO; SQLite says SQLITE_IOERR_READ, _WRITE, _FSYNC…).
  if (code === 'EIO' || (typeof code === 'string' && code.startsWith('SQLITE_IOERR')))
    return new UnavailableError(`I/O error at ${where} (${code}): check the disk it is on, then run again`, 'io_error', { cause: e });
  if (code === 'EMFILE' || code === 'ENFILE')
    return new UnavailableError(`too many open files at ${where} (${code}): raise the limit (ulimit -n), then run again`, 'too_many_open_files', { cause: e });
  // A path longer than the file system takes comes from what was given (a data dir, a report
  // name), not the machine's state: bad input, exit 2.
  if (code === 'ENAMETOOLONG') return new UsageError(`path too long: ${where} (${code}); give a shorter one`, 'path_too_long', { cause: e });
  return undefined;
}

/**
 * A seed that cannot succeed until someone acts (another user's data in the way, a DB that is not
 * a database): the job is failed at once, not retried with backoff, and the message says what to do.
 */
/**
 * The embedded master held locked by another process (ACM2, a second acm2, an sqlite3 shell) past
 * SQLite's busy wait (`wait`, e.g. "15 s"): the lock held past the wait (SPEC §2), not a bug.
 */
export function masterBusyError(display: string, wait: string, code: string, cause: unknown): UnavailableError {
  return new UnavailableError(`the master ${display} stayed locked by another process past the ${wait} wait (${code}): let that process finish, or stop it, then run again`, 'master_busy', { cause });
}

export class NeedsOperatorError extends Error {
  readonly needsOperator = true;
}

export function needsOperator(e: unknown): boolean {
  return e instanceof NeedsOperatorError || (e as { needsOperator?: unknown } | undefined)?.needsOperator === true;
}

/** An error as it crosses from a worker thread (structured clone keeps no class). */
export interface WireError {
  message: string;
  exitCode?: ExitCode;
  /** An Acm2Error's code, or the system's (EMFILE) of any other error. */
  code?: string;
  /** The path a system call failed on (a system error's). */
  path?: string;
  stack?: string;
}

export function toWire(e: unknown): WireError {
  if (isAcm2Error(e)) return { message: e.message, exitCode: e.exitCode, code: e.code };
  if (!(e instanceof Error)) return { message: String(e) };
  // The system's code (EMFILE, EIO, ENOSPC…) and path go along: main.ts reads them to tell the
  // machine's state (exit 3) from a bug (exit 70), as for the same error in the main thread.
  const { code, path } = e as NodeJS.ErrnoException;
  return { message: e.message, stack: e.stack, ...(typeof code === 'string' ? { code } : {}), ...(typeof path === 'string' ? { path } : {}) };
}

/** The error a worker reported, with its class (and so its exit code) back. */
export function fromWire(w: WireError): Error {
  if (w.exitCode === EXIT.usage) return new UsageError(w.message, w.code);
  if (w.exitCode === EXIT.unavailable) return new UnavailableError(w.message, w.code);
  if (w.exitCode === EXIT.findings) return new FindingsError(w.message, w.code);
  const e: NodeJS.ErrnoException = new Error(w.message);
  if (w.stack) e.stack = w.stack;
  if (w.code !== undefined) e.code = w.code;
  if (w.path !== undefined) e.path = w.path;
  return e;
}
