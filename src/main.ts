// The one place that catches errors and sets the exit code (SPEC §2).

import { buildProgram } from './cli/program.js';
import { classifyFsError, EXIT, isAcm2Error, UnavailableError } from './errors.js';
import { TOOL_VERSION } from './config.js';
import { jsonErrorDocument } from './ui/reporter.js';
import { visible } from './ui/text.js';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

async function main(argv: string[]): Promise<number> {
  if (argv.length === 3 && argv[2] === '--version') {
    process.stdout.write(`${TOOL_VERSION}\n`);
    return EXIT.ok;
  }
  // commander's `help` command looks one level deep: `acm2 help user create` would show `user`.
  // `help a b …` is `a b … --help`, which commander answers at any depth.
  if (argv[2] === 'help' && argv.slice(3).filter((a) => !a.startsWith('-')).length > 1) argv = [...argv.slice(0, 2), ...argv.slice(3), '--help'];
  const program = buildProgram();
  const wantsJson = argv.includes('--json');
  const verbose = argv.includes('--verbose');
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (e) {
    return reportError(e, wantsJson, verbose, argv);
  }
}

/** 'acm2 seed needs one of: freeze, list, show, check' for the deepest command group named in argv. */
function helpFor(argv: string[]): string {
  const program = buildProgram();
  let cmd = program;
  const path = ['acm2'];
  const subs = () => cmd.commands.map((c) => c.name()).filter((n) => n !== 'help').join(', ');
  const args = argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a.startsWith('-')) {
      // Skip the value of an option that takes one (--data-dir <dir>), unless given as --x=y.
      const opt = [program, cmd].flatMap((c) => c.options).find((o) => o.long === a || o.short === a);
      if (opt && (opt.required || opt.optional)) i++;
      continue;
    }
    if (a === 'help' && path.length === 1) continue;
    const sub = cmd.commands.find((c) => c.name() === a);
    if (!sub) return `unknown command '${a}': ${path.join(' ')} has ${subs()}`;
    cmd = sub;
    path.push(a);
  }
  return `${path.join(' ')} needs one of: ${subs()}`;
}

/** Error codes that are the machine's state wherever they come from: never a bug of acm2's. */
const SYSTEM_LIMITS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'EIO', 'ENOSPC', 'EROFS', 'EACCES', 'EPERM']);

function reportError(e: unknown, json: boolean, verbose: boolean, argv: string[]): number {
  // commander signals help/version and its own usage errors through exceptions with exitCode.
  const ce = e as { code?: string; exitCode?: number; message?: string };
  if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) {
    if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.version' || ce.exitCode === 0) return EXIT.ok;
    // A command group run without its subcommand shows its help and says only "(outputHelp)".
    const message = ce.code === 'commander.help' ? helpFor(argv) : (ce.message ?? 'usage error').replace(/^error: /, '');
    if (json) process.stdout.write(jsonErrorDocument({ code: 'usage', message }));
    return EXIT.usage;
  }
  if (isAcm2Error(e)) {
    if (json) process.stdout.write(jsonErrorDocument({ code: e.code, message: e.message }));
    else process.stderr.write(`acm2: ${visible(e.message)}\n`);
    if (verbose && e.stack) process.stderr.write(`${e.stack}\n`);
    return e.exitCode;
  }
  // The system refused what any code needs (loading a module, opening any file): the
  // environment, exit 3, not a bug of ours.
  const sys = SYSTEM_LIMITS.has(String((e as { code?: unknown } | undefined)?.code)) ? classifyFsError(e, 'acm2') : undefined;
  if (sys) return reportError(sys, json, verbose, argv);
  // A thread the system would not start (a process, thread or memory limit) is the host's state too.
  if ((e as { code?: unknown } | undefined)?.code === 'ERR_WORKER_INIT_FAILED') {
    const why = e instanceof Error ? e.message : String(e);
    return reportError(new UnavailableError(`the system would not start a worker thread (${why}): raise the process or thread limit (ulimit -u, the container's pids limit), or run with --concurrency 1`, 'threads_unavailable', { cause: e }), json, verbose, argv);
  }
  const err = e instanceof Error ? e : new Error(String(e));
  // acm2 loads modules as it goes (a drain's seeding modules, each worker thread its own): files
  // of its own rewritten meanwhile (an upgrade, a rebuild) fail that load ("does not provide an
  // export named…", "not in cache"). Not a bug of the code: said as what it is, exit 3.
  const changed = ownFilesChangedSinceStart();
  if (changed) {
    return reportError(
      new UnavailableError(`acm2's own files changed while it ran (${changed}: an upgrade or a rebuild of acm2 under a running command), and it stopped on that (${err.message}): run it again once that is done`, 'tool_changed', { cause: e }),
      json,
      verbose,
      argv,
    );
  }
  const message = `internal error: ${err.message} (this is a bug, please report it)`;
  if (json) process.stdout.write(jsonErrorDocument({ code: 'internal', message }));
  else process.stderr.write(`acm2: ${visible(message)}\n`);
  if (verbose && err.stack) process.stderr.write(`${err.stack}\n`);
  return EXIT.internal;
}

/**
 * A file or folder of acm2's own code (the folder of this module) changed (its ctime, which no
 * copy or install sets back) after this process started; undefined if none did, or it cannot say.
 */
function ownFilesChangedSinceStart(): string | undefined {
  const started = performance.timeOrigin;
  const walk = (dir: string): string | undefined => {
    if (statSync(dir).ctimeMs > started) return dir;
    for (const ent of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, ent.name);
      if (ent.isDirectory()) {
        const found = walk(p);
        if (found) return found;
      } else if (ent.isFile() && statSync(p).ctimeMs > started) return p;
    }
    return undefined;
  };
  try {
    return walk(path.dirname(fileURLToPath(import.meta.url)));
  } catch {
    return undefined;
  }
}

// A reader that goes away (`acm2 verify --json | head`) must not crash the tool with a stack
// trace, nor stop a batch half way: the rest of the output is dropped, the work finishes, and
// the exit code is the one the work earned. A stdout the system cannot write (a full disk under
// `> report.json`, an I/O error) loses the output the operator asked for: the work still finishes,
// then one sentence on stderr and exit 3, never a crash whose exit 1 reads as "verify found
// problems". stderr has nowhere to report its own failure: what it loses is dropped.
let stdoutFailed: NodeJS.ErrnoException | undefined;
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE' && e.code !== 'ERR_STREAM_DESTROYED') stdoutFailed ??= e;
});
process.stderr.on('error', () => undefined);
// On exit, as a write's error event may come after main has returned.
process.on('exit', (code) => {
  if (!stdoutFailed || (code !== EXIT.ok && code !== EXIT.findings)) return;
  const why = classifyFsError(stdoutFailed, 'stdout')?.message ?? `cannot write to stdout (${stdoutFailed.code ?? stdoutFailed.message})`;
  process.stderr.write(`acm2: ${visible(why)}: the output was lost; the work itself finished (exit ${code} before this), run it again with stdout where it can be written\n`);
  process.exitCode = EXIT.unavailable;
});

const code = await main(process.argv);
process.exitCode = code;
