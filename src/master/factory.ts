// Picks the master implementation from the URL scheme and scopes its lifetime.

import type { MasterUrl } from '../config.js';
import type { MasterDb } from './types.js';

export async function openMaster(url: MasterUrl, opts: { migrate?: boolean } = {}): Promise<MasterDb> {
  let master: MasterDb;
  switch (url.kind) {
    case 'sqlite': {
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
  if (opts.migrate !== false) {
    try {
      await master.migrate();
    } catch (e) {
      await master.close().catch(() => undefined);
      throw e;
    }
  }
  return master;
}

/** Open the master, run fn, and always close it, so a throw never leaks a pool. */
export async function usingMaster<T>(url: MasterUrl, fn: (m: MasterDb) => Promise<T>): Promise<T> {
  const master = await openMaster(url);
  try {
    return await fn(master);
  } finally {
    await master.close().catch(() => undefined);
  }
}
