// acm2's own files rewritten under a running command (an upgrade, a rebuild of dist/): a module it
// loads from then on fails to link. That is the environment (exit 3, said as such), not a bug (70).

import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { frozenSource, sqliteWorld, type FrozenSource } from './helpers/env.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));

let pkg: FrozenSource;
beforeAll(() => {
  pkg = frozenSource();
});
afterAll(() => pkg.cleanup());

it("a drain whose worker threads meet acm2's files rewritten since it started says so and exits 3, not 'internal error'", async () => {
  const world = await sqliteWorld();
  // A copy of dist/ inside the repo, so that its imports find node_modules as dist/'s do.
  const copy = mkdtempSync(path.join(REPO, '.tmp-tool-changed-'));
  try {
    await world.master.close();
    for (const d of ['dist', 'migrations', 'schemas']) cpSync(path.join(REPO, d), path.join(copy, d), { recursive: true });
    cpSync(path.join(REPO, 'package.json'), path.join(copy, 'package.json'));
    // A --watch drain starts new worker threads every round; each loads its modules from the files.
    const child = spawn(process.execPath, [path.join(copy, 'dist', 'main.js'), 'user', 'seed', '--pending', '--watch', '--concurrency', '2', '--data-dir', world.dataDir, '--seeds', pkg.seedsDir], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await new Promise((r) => setTimeout(r, 2500));
    // A rebuild half done: the module a drainer thread imports drainQueue from, without it.
    writeFileSync(path.join(copy, 'dist', 'core', 'users.js'), 'export {};\n');
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const code = await exited;
    clearTimeout(killer);
    expect(stderr).toMatch(/acm2's own files changed while it ran \(.*users\.js/);
    expect(stderr).not.toMatch(/internal error/);
    expect(code).toBe(3);
  } finally {
    rmSync(copy, { recursive: true, force: true });
    await world.cleanup().catch(() => undefined);
  }
}, 60_000);
