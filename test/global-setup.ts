// Builds dist/ once before the suites: end-to-end, crash and worker tests run the built CLI.
// Every temp folder of the run (the tests' own, and those of the CLI they start) goes under one
// folder made here and removed at the end, so a test whose cleanup misses its parent folder, or
// a run cut short, leaves nothing in the machine's temp dir.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export default function setup(): () => void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url)), '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
  const runTmp = mkdtempSync(path.join(os.tmpdir(), 'acm2-test-run-'));
  // As /tmp itself: tests run the CLI as another account (nobody) too, which writes its temp files here.
  chmodSync(runTmp, 0o1777);
  process.env.TMPDIR = runTmp;
  return () => {
    try {
      rmSync(runTmp, { recursive: true, force: true });
    } catch (e) {
      // A file system a test mounted and could not unmount: left for the operator, said once.
      process.stderr.write(`acm2 tests: could not remove ${runTmp}: ${(e as Error).message}\n`);
    }
  };
}
