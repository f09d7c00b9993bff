// Resolves configuration with the precedence of SPEC §1: flag > environment > default.
// Also parses and redacts master URLs, so no password ever reaches output or logs.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from './errors.js';

export const TOOL_NAME = 'acm2';
export const TOOL_VERSION = '0.1.0';
export const SHIPPED_SEEDS_DIR = fileURLToPath(new URL('../seed-packages/', import.meta.url));

export type MasterUrl =
  | { kind: 'sqlite'; file: string; display: string }
  | { kind: 'mysql'; host: string; port: number; user: string; password: string; database: string; display: string };

export interface GlobalFlags {
  master?: string;
  dataDir?: string;
  seeds?: string;
  seedVersion?: string;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  color?: boolean;
  lockTimeout?: string;
}

export interface Config {
  dataDir: string;
  master: MasterUrl;
  seedsDir: string;
  /** Explicit version from flag or SEED_VERSION; undefined means "read CURRENT". */
  seedVersion: string | undefined;
  json: boolean;
  quiet: boolean;
  verbose: boolean;
  color: boolean;
  lockTimeoutMs: number;
}

/** Colour only for a person at a terminal: never in --json, NO_COLOR, --no-color or a pipe. */
export function wantsColor(flags: GlobalFlags, env: NodeJS.ProcessEnv = process.env): boolean {
  return flags.color !== false && !env.NO_COLOR && !flags.json && Boolean(process.stdout.isTTY);
}

export function resolveConfig(flags: GlobalFlags, env: NodeJS.ProcessEnv = process.env): Config {
  // An empty environment variable counts as unset, as shells and CI systems often leave them.
  const e = (name: string) => env[name] || undefined;
  // An empty flag is a mistake (an unset shell variable), never "the current folder".
  for (const [flag, v] of [['--data-dir', flags.dataDir], ['--seeds', flags.seeds], ['--master', flags.master]] as const) {
    if (v !== undefined && v.trim() === '') throw new UsageError(`${flag} is empty: give a path${flag === '--master' ? ' or URL' : ''}`);
  }
  const dataDir = path.resolve(flags.dataDir ?? e('ACM2_DATA_DIR') ?? './data');
  const rawMaster = flags.master ?? e('ACM2_MASTER_URL') ?? `sqlite:${path.join(dataDir, 'master.db')}`;
  const seedVersion = flags.seedVersion ?? e('SEED_VERSION');
  if (seedVersion !== undefined) assertVersionName(seedVersion);
  const lockRaw = flags.lockTimeout ?? e('ACM2_LOCK_TIMEOUT') ?? '60';
  const lockFrom = flags.lockTimeout !== undefined ? '--lock-timeout' : 'ACM2_LOCK_TIMEOUT';
  // Plain decimal seconds, as every other number the tool takes (not 1e3 or 0x10).
  if (!/^\d+(\.\d+)?$/.test(lockRaw.trim())) throw new UsageError(`${lockFrom} '${lockRaw}' is not a number of seconds`);
  const lockSeconds = Number(lockRaw);
  return {
    dataDir,
    master: parseMasterUrl(rawMaster),
    seedsDir: path.resolve(flags.seeds ?? e('ACM2_SEED_DIR') ?? SHIPPED_SEEDS_DIR),
    seedVersion,
    json: Boolean(flags.json),
    quiet: Boolean(flags.quiet),
    verbose: Boolean(flags.verbose),
    color: wantsColor(flags, env),
    lockTimeoutMs: lockSeconds * 1000,
  };
}

const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function assertVersionName(v: string): string {
  if (!VERSION_RE.test(v) || v === '.' || v === '..') {
    throw new UsageError(`'${v}' is not a valid seed version name (letters, digits, '.', '_', '-'; at most 64; not starting with a symbol)`, 'bad_version');
  }
  return v;
}

/**
 * A name for a version about to be frozen. The seeds folder's CURRENT file has the name CURRENT
 * (in any case, on a case-insensitive file system): a version folder there would leave no place
 * for CURRENT. Only new versions are refused so: a `current` frozen before this rule (valid then,
 * on a case-sensitive file system) stays readable, seedable and settable as CURRENT.
 */
export function assertNewVersionName(v: string): string {
  assertVersionName(v);
  if (v.toUpperCase() === 'CURRENT') {
    throw new UsageError(`'${v}' is not a valid seed version name: the seeds folder's CURRENT file has that name`, 'bad_version');
  }
  return v;
}

export function parseMasterUrl(raw: string): MasterUrl {
  if (raw.startsWith('sqlite:')) {
    const file = raw.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
    if (!file) throw new UsageError(`master URL '${raw}' names no file (expected sqlite:<path>)`, 'bad_master_url');
    const abs = path.resolve(file);
    return { kind: 'sqlite', file: abs, display: `sqlite:${abs}` };
  }
  if (raw.startsWith('mysql://') || raw.startsWith('mariadb://')) {
    const malformed = () =>
      new UsageError(
        `master URL '${redactUrl(raw)}' is malformed (expected mysql://user:pass@host:port/db; percent-encode any '/', '@', ':', '#' or '%' in the user or password, e.g. '/' as %2F)`,
        'bad_master_url',
      );
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw malformed();
    }
    const decode = (part: string) => {
      try {
        return decodeURIComponent(part);
      } catch {
        throw malformed(); // a '%' that is not a percent-encoding
      }
    };
    const database = decode(u.pathname.replace(/^\//, ''));
    if (!u.hostname || !database || database.includes('/')) throw malformed();
    // Options such as ?ssl=true or ?socketPath= are not read by the connection acm2 makes: taken
    // silently, a URL asking for TLS would be used over a plain connection. Named, not shown (a
    // value may be a secret).
    if (u.search || u.hash) {
      const names = [...new Set([...u.searchParams.keys()])].filter(Boolean);
      const what = u.search ? `options (${names.length > 0 ? names.join(', ') : u.search.slice(0, 1)})` : 'a #fragment';
      throw new UsageError(
        `master URL '${redactUrl(raw)}' has ${what} after the database name, which acm2 does not take (it would connect without them): remove them; percent-encode a '?' or '#' in the user, password or database name`,
        'bad_master_url',
      );
    }
    const port = u.port ? Number(u.port) : 3306;
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const user = decode(u.username || 'root');
    return {
      kind: 'mysql',
      host,
      port,
      user,
      password: decode(u.password),
      database,
      display: `mysql://${user}@${hostPort(host, port)}/${database}`,
    };
  }
  throw new UsageError(`master URL '${redactUrl(raw)}' is malformed: it must start with sqlite: or mysql://`, 'bad_master_url');
}

/** A MySQL server's place as people write it: an IPv6 address in brackets ('[::1]:3306'). */
export function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** Remove any password from a URL-ish string, even a malformed one. */
export function redactUrl(raw: string): string {
  // Up to the last '@' of the whole string: a password typed without percent-encoding may hold
  // '@' and '/' itself (hiding too much of a malformed URL is the safe side). Option values and a
  // fragment go too: ?password=… is a common way to pass one.
  // With no '@' at all (the host left out: mysql://acm2:secret/db), what follows the ':' is a
  // password unless it is a port.
  const hidden = raw.includes('@') ? raw.replace(/(\/\/[^:/@]*:).*@/, '$1***@') : raw.replace(/(\/\/[^:/]*:)(?!\d*(?:[/?#]|$))[^/?#]*/, '$1***');
  return hidden
    .replace(/([?&][^=&#]*=)[^&#]*/g, '$1***')
    .replace(/#.*/, '#***');
}
