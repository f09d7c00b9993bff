// Picks the master implementation from the URL scheme and scopes its lifetime.

import { existsSync } from 'node:fs';
import type { MasterUrl } from '../config.js';
import { UsageError } from '../errors.js';
import type { MasterDb } from './types.js';

export interface OpenMasterOptions {
  /** Apply the tool's pending master migrations (default true). */
  migrate?: boolean;
  /**
   * Create the embedded master (and its folder) when it does not exist (default true). Commands
   * that only read users pass false: a mistyped --data-dir must be an error, not a new empty
   * master that verify then reports as zero users, all ok.
   */
  create?: boolean;
}

export async function openMaster(url: MasterUrl, opts: OpenMasterOptions = {}): Promise<MasterDb> {
  let master: MasterDb;
  switch (url.kind) {
    case 'sqlite': {
      if (opts.create === false && !existsSync(url.file)) throw masterMissing(url.display, 'does not exist');
      const { SqliteMaster } = await import('./sqlite-master.js');
      master = new SqliteMaster(url.file);
      break;
    }
    case 'mysql': {
      const { MysqlMaster } = await import('./mysql-master.js');
      master = await MysqlMaster.connect(url);
      break;
    }
    default: {
      const never: never = url;
      throw new Error(`unknown master kind ${(never as MasterUrl).kind}`);
    }
  }
  try {
    // A database without ACM2's tables is the wrong one (or was never set up): a command that only
    // reads users stops before the migrations would create anything in it.
    if (opts.create === false && !(await master.hasAcm2Tables())) throw masterMissing(master.display, 'has no ACM2 users and api_keys tables');
    if (opts.migrate !== false) await master.migrate();
  } catch (e) {
    await master.close().catch(() => undefined);
    throw e;
  }
  return master;
}

/** The one sentence for a master that is not there, or not ACM2's. */
export function masterMissing(display: string, what: string): UsageError {
  return new UsageError(
    `the master ${display} ${what}: check --data-dir (ACM2_DATA_DIR) or --master (ACM2_MASTER_URL); \`acm2 user create\` sets a master up with the first user`,
    'master_missing',
  );
}

/** Open the master, run fn, and always close it, so a throw never leaks a pool. */
export async function usingMaster<T>(url: MasterUrl, fn: (m: MasterDb) => Promise<T>, opts: OpenMasterOptions = {}): Promise<T> {
  const master = await openMaster(url, opts);
  try {
    return await fn(master);
  } finally {
    await master.close().catch(() => undefined);
  }
}
