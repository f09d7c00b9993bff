// The commander program: every command of SPEC §5 with its flags and an example.
// Command modules are imported lazily so `acm2 --help` stays close to `node -e 0`.

import { Command, Option } from 'commander';
import { TOOL_VERSION, wantsColor } from '../config.js';
import { loadColor } from '../ui/color.js';
import { visible } from '../ui/text.js';

type Loader = () => Promise<{ run: (ctx: CommandCall) => Promise<void> }>;

export interface CommandCall {
  args: string[];
  opts: Record<string, unknown>;
  command: Command;
}

function action(loader: Loader) {
  return async (...params: unknown[]) => {
    const command = params[params.length - 1] as Command;
    const args = params.slice(0, -2).flatMap((p) => (Array.isArray(p) ? p.map(String) : p === undefined ? [] : [String(p)]));
    const opts = command.optsWithGlobals();
    const [mod] = await Promise.all([loader(), wantsColor(opts) ? loadColor() : undefined]);
    await mod.run({ args, opts, command });
  };
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * Options a command cannot run without. commander checks its own required options before it
 * looks for unknown ones, so `seed freeze --bogus` said --source was missing instead of naming
 * the typo. These are plain options, checked by the preAction hook in buildProgram, which runs
 * once commander has refused unknown options and excess arguments; the sentence is commander's.
 */
const REQUIRED = new WeakSet<Option>();
function required(flags: string, description: string): Option {
  const o = new Option(flags, description);
  REQUIRED.add(o);
  return o;
}

export function buildProgram(): Command {
  const program = new Command('acm2');
  // With --json, stderr carries nothing unless it is a terminal (SPEC §1): commander's own usage
  // errors and the help it shows with them go into the one JSON error document instead.
  const quietErr = process.argv.includes('--json') && !process.stderr.isTTY;
  program.configureOutput({
    writeErr: (str) => (quietErr ? undefined : process.stderr.write(str)),
    // Commander's usage errors read like every other error of the tool: "acm2: <sentence>".
    // Lines as commander breaks them; what it quotes from the command line is shown escaped.
    outputError: (str, write) => write(str.replace(/^error: /, 'acm2: ').split('\n').map(visible).join('\n')),
  });
  program
    .description("Admin CLI for ACM2's per-user data: seed packages, user seeding, backfill, verify, diff.")
    // -V only: `--version` belongs to `seed freeze` (the version to cut); main.ts answers a lone `acm2 --version`.
    .version(TOOL_VERSION, '-V')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .option('--master <url>', 'master DB URL: sqlite:<file> or mysql://user:pass@host:port/db (env ACM2_MASTER_URL; default sqlite:<data-dir>/master.db)')
    .option('--data-dir <dir>', 'where user_{id}.db and user_{id}/ live (env ACM2_DATA_DIR; default ./data)')
    .option('--seeds <dir>', 'seed packages folder (env ACM2_SEED_DIR; default: the seed-packages/ shipped with the tool)')
    .option('--lock-timeout <seconds>', 'how long user create and user seed <user> wait for a user another seeder holds, then exit 3 (env ACM2_LOCK_TIMEOUT; default 60)')
    .option('--json', 'print exactly one JSON document on stdout')
    .option('--quiet', 'print nothing but errors (user create still prints the API key)')
    .option('--verbose', 'more detail, and stack traces on errors')
    .option('--no-color', 'no colour (also NO_COLOR)')
    .hook('preAction', (_program, command) => {
      const missing = command.options.find((o) => REQUIRED.has(o) && command.getOptionValue(o.attributeName()) === undefined);
      if (missing) command.error(`error: required option '${missing.flags}' not specified`, { code: 'commander.missingMandatoryOptionValue' });
    })
    .addHelpText(
      'after',
      `
Examples:
  $ acm2 user create --email ada@example.com --username ada
  $ acm2 seed freeze --source data/user_7.db --source-files data/user_7 --preset <id> --run <id> --version v2
  $ ACM2_MASTER_URL=mysql://acm2:***@db:3306/acm2_master acm2 verify --json`,
    );

  const seed = program
    .command('seed')
    .description('cut, list, show and check seed packages; set CURRENT')
    .addHelpText('after', '\nExamples:\n  $ acm2 seed list\n  $ acm2 seed check v1');
  seed
    .command('freeze')
    .description('cut a new immutable seed version from an ACM2 user DB and its run files')
    .addOption(required('--source <db>', 'the ACM2 user DB to freeze from (e.g. data/user_7.db)'))
    .addOption(required('--source-files <dir>', 'the folder holding runs/ for that user (e.g. data/user_7)'))
    .option('--preset <id>', 'preset to ship (env SEED_PRESET_ID)')
    .option('--run <id>', 'historical run to ship (env SEED_RUN_ID)')
    .option('--version <v>', 'name of the new version (env SEED_VERSION)')
    .option('--render-report', 'write reports/report.html into the package when the run has none')
    .option('--set-current', 'make this version CURRENT')
    .option('--dry-run', 'print what would be frozen and write nothing')
    .addHelpText('after', '\nExample:\n  $ acm2 seed freeze --source data/user_7.db --source-files data/user_7 --preset <preset id> --run <run id> --version v2 --set-current')
    .action(action(() => import('./seed-freeze.js')));
  seed
    .command('list')
    .description('list seed versions (CURRENT marked) with rows, files, bytes and hash')
    .addHelpText('after', '\nExample:\n  $ acm2 seed list --json')
    .action(action(() => import('./seed-list.js')));
  seed
    .command('show <version>')
    .description("show one version's manifest")
    .addHelpText('after', '\nExample:\n  $ acm2 seed show v1')
    .action(action(() => import('./seed-show.js')));
  seed
    .command('check [versions...]')
    .description('check package integrity (all versions when none named); exit 1 if any fails')
    .addHelpText('after', '\nExample:\n  $ acm2 seed check v1')
    .action(action(() => import('./seed-check.js')));
  seed
    .command('set-current <version>')
    .description('make an intact version CURRENT (what new users get), e.g. roll back to the previous one')
    .addHelpText('after', '\nExample:\n  $ acm2 seed set-current v1')
    .action(action(() => import('./seed-set-current.js')));

  const user = program
    .command('user')
    .description('create, seed, show and list users')
    .addHelpText('after', '\nExamples:\n  $ acm2 user create --email ada@example.com --username ada\n  $ acm2 user seed --pending');
  user
    .command('create')
    .description('create a user (master row, API key, seed job) and seed it')
    .addOption(required('--email <email>', "the user's email"))
    .addOption(required('--username <name>', "the user's username"))
    .option('--wordpress-user-id <n>', 'WordPress user id to link')
    .option('--seed-version <v>', 'seed version (env SEED_VERSION; default: CURRENT)')
    .option('--async', 'only queue the seed job; `acm2 user seed --pending` runs it')
    .addHelpText('after', '\nExample:\n  $ acm2 user create --email ada@example.com --username ada')
    .action(action(() => import('./user-create.js')));
  user
    .command('seed [user]')
    .description("seed one user (id or email) from a package, or drain the job queue with --pending")
    .option('--seed-version <v>', 'seed version for one user (env SEED_VERSION; default: CURRENT); not with --pending: each job carries its own')
    .option('--force', "restore the seeded rows and files to the package state (same ids), touching nothing else; what it overwrites is backed up under <data-dir>/.acm2/backups/")
    .option('--pending', 'drain the seed job queue')
    .option('--limit <n>', 'with --pending: at most n jobs')
    .option('--concurrency <n>', 'with --pending: parallel workers on this host (default: cores; at most 64)')
    .option('--watch', 'with --pending: keep waiting for new jobs')
    .addHelpText('after', '\nExamples:\n  $ acm2 user seed 42\n  $ acm2 user seed ada@example.com --force\n  $ acm2 user seed --pending --concurrency 2')
    .action(action(() => import('./user-seed.js')));
  user
    .command('show <user>')
    .description('status of one user (id or email) from master and user DB')
    .addHelpText('after', '\nExample:\n  $ acm2 user show 42')
    .action(action(() => import('./user-show.js')));
  user
    .command('list')
    .description('list users with their seed status (streams)')
    .addOption(new Option('--status <status>', 'only users with this status').choices(['ready', 'pending', 'failed', 'missing']))
    .addHelpText('after', '\nExample:\n  $ acm2 user list --status failed')
    .action(action(() => import('./user-list.js')));

  program
    .command('backfill')
    .description('bring every existing user up to date: seed missing DBs, migrate, write user_meta')
    .option('--dry-run', 'print the plan and write nothing')
    .option('--user <id>', 'only this user (repeatable)', collect)
    .option('--limit <n>', 'at most n users')
    .option('--batch-size <n>', 'users read from the master per page (default 500)')
    .option('--concurrency <n>', 'parallel users on this host (default 1; at most 64)')
    .option('--shard <i/n>', 'only users with id % n == i')
    .option('--resume', 'continue the last interrupted backfill')
    .option('--max-errors <n>', 'stop after n failed users')
    .option('--legacy-logs <dir>', "also move ACM2's old global logs/{run_id}/ folders into their owners' run folders")
    .option('--seed-version <v>', 'package a missing or unfinished user is seeded with (env SEED_VERSION; default: CURRENT)')
    .addHelpText('after', '\nExamples:\n  $ acm2 backfill --dry-run\n  $ acm2 backfill --concurrency 2 --resume')
    .action(action(() => import('./backfill.js')));

  program
    .command('verify')
    .description('check every user (or those named) and report every problem')
    .option('--user <id>', 'only this user (repeatable)', collect)
    .option('--deep', 'integrity_check, sha256 of every file, text scan for package ids')
    .option('--shard <i/n>', 'only users with id % n == i')
    .option('--concurrency <n>', 'parallel users on this host (default: cores; at most 64)')
    .option('--junit <file>', 'also write a JUnit XML report')
    .addHelpText('after', '\nExample:\n  $ acm2 verify --deep --junit verify.xml')
    .action(action(() => import('./verify.js')));

  program
    .command('diff [versions...]')
    .description('user vs package, package vs package, or user vs user')
    .option('--user <id>', 'a user (give twice to compare two users)', collect)
    .option('--seed-version <v>', "package version to compare a user with (env SEED_VERSION; default: the user's own version)")
    .addHelpText('after', '\nExamples:\n  $ acm2 diff --user 42\n  $ acm2 diff v1 v2\n  $ acm2 diff --user 42 --user 43')
    .action(action(() => import('./diff.js')));

  return program;
}
