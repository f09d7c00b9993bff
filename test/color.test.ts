// Colour reaches a person at a terminal and nothing else. chalk is loaded only when a command's
// flags and stdout ask for colour (it is a twentieth of a command's start), so this runs the built
// CLI on a real pseudo-terminal (util-linux `script`) to show the colour still arrives there, and
// that a pipe, NO_COLOR and --no-color still get plain text.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { frozenSource, sqliteWorld, type FrozenSource, type World } from './helpers/env.js';
import { createUser } from '../src/core/users.js';

process.env.ACM2_BCRYPT_ROUNDS = '4';

const BIN = path.join(fileURLToPath(new URL('..', import.meta.url)), 'bin', 'acm2.js');
const GREEN_READY = '\u001b[32mready\u001b[39m';

let pkg: FrozenSource;
let world: World;
let userId: number;

beforeAll(async () => {
  pkg = frozenSource({ sourceDocs: 1 });
  world = await sqliteWorld();
  userId = (await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: pkg.seedsDir, lockTimeoutMs: 5000 }, { email: 'c@example.com', username: 'c' })).user.id;
  await world.master.close();
});
afterAll(() => {
  rmSync(world.dataDir, { recursive: true, force: true });
  pkg.cleanup();
});

/** A terminal's environment: CI and NO_COLOR make chalk (rightly) plain, so neither is passed on. */
function terminalEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== 'CI' && k !== 'NO_COLOR' && k !== 'FORCE_COLOR') env[k] = v;
  return { ...env, TERM: 'xterm-256color', ...extra };
}

const showArgs = () => ['user', 'show', String(userId), '--data-dir', world.dataDir, '--master', world.masterUrl, '--seeds', pkg.seedsDir];

/** `acm2 <args>` with stdout on a pseudo-terminal: what a person at a terminal sees. */
async function onTerminal(args: string[], env: Record<string, string> = {}) {
  const cmd = ['node', BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const r = await execa('script', ['-qec', cmd, '/dev/null'], { reject: false, env: terminalEnv(env), extendEnv: false });
  expect(r.exitCode, r.stdout).toBe(0);
  return r.stdout;
}

describe('colour', () => {
  it('is shown on a terminal', async () => {
    expect(await onTerminal(showArgs())).toContain(GREEN_READY);
  });

  it('is not shown with NO_COLOR or --no-color, even on a terminal', async () => {
    for (const out of [await onTerminal(showArgs(), { NO_COLOR: '1' }), await onTerminal([...showArgs(), '--no-color'])]) {
      expect(out).toMatch(/status\s+│?\s*ready/);
      expect(out).not.toContain('\u001b[32m');
    }
  });

  it('is not written into a pipe', async () => {
    const r = await execa('node', [BIN, ...showArgs()], { reject: false, env: terminalEnv(), extendEnv: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/ready/);
    expect(r.stdout).not.toContain('\u001b[');
  });
});
