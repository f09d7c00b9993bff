// `acm2 user list`: streams users page by page; --json streams one JSON array.

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { listUserStatuses, type SeedStatus } from '../core/users.js';
import { statusTable } from '../ui/users.js';
import { streamedDocument, writeStreamed } from '../ui/reporter.js';
import { jsonText, visibleDeep } from '../ui/text.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const status = opts.status as SeedStatus | undefined;
  await usingMaster(cfg.master, async (master) => {
    const users = listUserStatuses({ master, dataDir: cfg.dataDir }, { status });
    if (out.json) {
      // One document, written as it streams: memory stays flat however many users there are.
      await writeStreamed('{"users":[');
      // An error half way (the master gone, a temp folder full) ends this document with it,
      // beside the users listed so far, rather than writing a second one after a torn first.
      streamedDocument((error) => `\n],"error":${error}}\n`);
      let first = true;
      for await (const u of users) {
        await writeStreamed(`${first ? '' : ','}\n${jsonText(u)}`);
        first = false;
      }
      streamedDocument(undefined);
      await writeStreamed('\n]}\n');
      return;
    }
    let n = 0;
    let table = statusTable(out.color, cfg.dataDir);
    for await (const u of users) {
      table.push(visibleDeep(u));
      if (++n % 200 === 0) {
        if (!cfg.quiet) await writeStreamed(`${table.toString()}\n`);
        table = statusTable(out.color, cfg.dataDir);
      }
    }
    if (n % 200 !== 0 || n === 0) out.result(null, () => (n === 0 ? 'No users.' : table.toString()));
  }, { create: false, readOnly: true, pairWith: { dataDir: cfg.dataDir, write: false, read: true, notice: out.warn } });
}
