// Shared glue for command files: resolve configuration and make the reporter.

import { resolveConfig, type Config, type GlobalFlags } from '../config.js';
import { createReporter, type Reporter } from '../ui/reporter.js';
import { UsageError } from '../errors.js';
import { statSync } from 'node:fs';

export interface Ctx {
  cfg: Config;
  out: Reporter;
}

export function context(opts: Record<string, unknown>): Ctx {
  const cfg = resolveConfig(opts as GlobalFlags);
  // A path that exists but is not a folder is a mistyped flag, not an empty fleet or a master
  // that cannot be opened: say so, whatever the command.
  for (const [flag, p] of [['--data-dir', cfg.dataDir], ['--seeds', cfg.seedsDir]] as const) {
    let st;
    try {
      st = statSync(p);
    } catch {
      continue; // missing: each command says what that means for it
    }
    if (!st.isDirectory()) throw new UsageError(`${flag} '${p}' is not a folder`);
  }
  return { cfg, out: createReporter(cfg) };
}

export function intOption(opts: Record<string, unknown>, name: string, min = 1, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const raw = opts[name];
  if (raw === undefined) return undefined;
  const s = String(raw);
  const flag = `--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  if (!/^\d+$/.test(s) || Number(s) < min) throw new UsageError(`${flag} '${s}' must be a whole number ≥ ${min}`);
  if (Number(s) > max) throw new UsageError(`${flag} '${s}' is more than ${max}`);
  return Number(s);
}

/**
 * Threads on this host: each holds a DB, a package and a V8 heap of its own, so thousands of
 * them exhaust memory long before they help; 64 is far beyond what any host's cores use.
 */
export const MAX_CONCURRENCY = 64;

export function concurrencyOption(opts: Record<string, unknown>): number | undefined {
  return intOption(opts, 'concurrency', 1, MAX_CONCURRENCY);
}

export function shardOption(raw: unknown): { index: number; count: number } | undefined {
  if (raw === undefined) return undefined;
  const m = /^(\d+)\/(\d+)$/.exec(String(raw));
  if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw new UsageError(`--shard '${String(raw)}' must be i/n with 0 ≤ i < n`);
  return { index: Number(m[1]), count: Number(m[2]) };
}
