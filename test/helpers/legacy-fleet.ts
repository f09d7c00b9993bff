// A legacy fleet for backfill tests: N users in a master, each with one kind of data dir state
// ACM2 leaves behind (missing DB, ACM2-created DBs with and without user_meta, drifted schemas,
// presets without runs, tool-seeded users, a corrupt DB, a DB another process holds locked).
// Cheap at 1,000+ users: one template DB per kind, built once per process, copied per user.

import Database from 'better-sqlite3';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { accessSync, constants, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ACM2_SCHEMA_FILE } from '../../src/fixtures/source.js';
import { parseMasterUrl } from '../../src/config.js';
import { openMaster } from '../../src/master/factory.js';
import type { MasterDb } from '../../src/master/types.js';
import type { SeedPackage } from '../../src/seed/package.js';
import { seedUser } from '../../src/core/seed-user.js';
import { userDbPath } from '../../src/userdb/paths.js';
import type { BackfillAction } from '../../src/core/backfill.js';
import { afterAll, beforeAll } from 'vitest';
import { frozenSource, tmpDir, type FrozenSource } from './env.js';

export type FleetKind =
  | 'missing'
  | 'legacy'
  | 'acm2_ready'
  | 'acm2_seeded'
  | 'drift_runs'
  | 'drift_presets'
  | 'drift_later'
  | 'presets_only'
  | 'ready'
  | 'corrupt'
  | 'locked';

/** What one backfill must do to a user of each kind. */
export const EXPECTED: Record<FleetKind, BackfillAction> = {
  missing: 'seed',
  legacy: 'meta_legacy',
  acm2_ready: 'adopt',
  acm2_seeded: 'seed_beside',
  drift_runs: 'meta_legacy',
  drift_presets: 'meta_legacy',
  drift_later: 'meta_legacy',
  presets_only: 'seed_beside',
  ready: 'ok',
  corrupt: 'fail',
  locked: 'fail',
};

export const HEALTHY = (k: FleetKind) => k !== 'corrupt' && k !== 'locked';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Fleets live on a RAM file system when the host has one: backfill is fsync-bound (a backup, a
 * commit and a lock per user), and these tests are about what it does, not how fast the disk is.
 */
export function fleetTmpDir(prefix: string): string {
  // ACM2_TEST_FLEET_DIR=<dir> puts them elsewhere (e.g. on disk, to time the fsync-bound path).
  const forced = process.env.ACM2_TEST_FLEET_DIR;
  if (forced) return mkdtempSync(path.join(forced, prefix));
  const shm = '/dev/shm';
  try {
    if (existsSync(shm) && statSync(shm).isDirectory()) {
      accessSync(shm, constants.W_OK);
      return mkdtempSync(path.join(shm, prefix));
    }
  } catch {
    /* fall back to the OS temp dir */
  }
  return tmpDir(prefix);
}

// ---------------------------------------------------------------------------------------------
// Templates: ACM2-created DBs at several schema revisions, with a little data.

const SCHEMA = readFileSync(ACM2_SCHEMA_FILE, 'utf8');

/** Early ACM2: runs without preset_id (and so without its foreign key), no ix_runs_user_id. */
function schemaRunsWithoutPresetId(): string {
  return SCHEMA.replace(/\n {4}preset_id {7}VARCHAR\(36\),/, '')
    .replace(/,\n {4}CONSTRAINT pk_runs PRIMARY KEY \(id\),\n {4}CONSTRAINT fk_runs_preset_id_presets\n {8}FOREIGN KEY \(preset_id\) REFERENCES presets \(id\)\n\);/, ',\n    CONSTRAINT pk_runs PRIMARY KEY (id)\n);')
    .replace(/CREATE INDEX ix_runs_user_id ON runs \(user_id\);\n/, '');
}

/** Older presets: none of the input-source, GitHub, instruction-id and post-combine columns. */
const OLD_PRESET_COLUMNS = [
  'post_combine_top_n',
  'config_overrides',
  'input_source_type',
  'input_content_ids',
  'github_connection_id',
  'github_input_paths',
  'github_output_path',
  'generation_instructions_id',
  'single_eval_instructions_id',
  'pairwise_eval_instructions_id',
  'eval_criteria_id',
  'combine_instructions_id',
];
function schemaOldPresets(): string {
  return SCHEMA.replace(/CREATE TABLE presets \(([\s\S]*?)\n\);/, (_all, body: string) => {
    const lines = body
      .split('\n')
      .filter((l) => !OLD_PRESET_COLUMNS.some((c) => new RegExp(`^ {4}${c} `).test(l)))
      .filter((l) => !/CONSTRAINT fk_presets|FOREIGN KEY/.test(l));
    const text = lines.join('\n').replace(/,\s*$/, '');
    return `CREATE TABLE presets (${text}\n);`;
  });
}

/** Later ACM2 (654162d): is_deleted dropped, three presets columns and user_meta.username/email added. */
function schemaLater(): string {
  return SCHEMA.replace(/\n {4}is_deleted +BOOLEAN +NOT NULL,/g, '')
    .replace(/(\n {4}github_output_path +VARCHAR\(500\),)/, '$1\n    output_destination VARCHAR(20) NOT NULL,\n    output_filename_template VARCHAR(255),\n    github_commit_message VARCHAR(500),')
    .replace(/(CREATE TABLE user_meta \(\n {4}id +VARCHAR\(36\) NOT NULL,\n {4}user_id +INTEGER +NOT NULL,)/, '$1\n    username VARCHAR(100),\n    email VARCHAR(255),');
}

const T0 = '2026-01-12 09:30:00.000000';
const CONTENT_INSTR = '5b0c1d8e-0f6a-4a51-9d55-2c7f3d2b9a11';
const CONTENT_DOC = 'a4f0e3d2-6c1b-4e8f-8a3d-0b9e7c6d5f42';
const PRESET = '0e7d6c5b-4a39-4281-9f0e-d1c2b3a49586';
const RUN = 'c3b2a190-8f7e-46d5-9c4b-3a2918070605';
const TASK = '9f8e7d6c-5b4a-4392-8180-7f6e5d4c3b2a';

function insert(db: Database.Database, table: string, row: Record<string, unknown>): void {
  const have = new Set((db.prepare(`SELECT name FROM pragma_table_info(?)`).raw(true).all(table) as [string][]).map((r) => r[0]));
  const cols = Object.keys(row).filter((c) => have.has(c));
  db.prepare(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`).run(cols.map((c) => row[c]));
}

function fillTemplate(db: Database.Database, opts: { runs: boolean; meta?: string }): void {
  const uid = 1;
  db.transaction(() => {
    insert(db, 'contents', { id: CONTENT_INSTR, user_id: uid, created_at: T0, name: 'Generation instructions', content_type: 'generation_instructions', body: 'Write a policy brief.', variables: '{}', tags: '[]', is_deleted: 0 });
    insert(db, 'contents', { id: CONTENT_DOC, user_id: uid, created_at: T0, name: 'Source policy', content_type: 'input_document', body: 'The county water program…', variables: '{}', tags: '["water"]', is_deleted: 0 });
    insert(db, 'presets', {
      id: PRESET,
      user_id: uid,
      created_at: T0,
      name: 'My preset',
      description: 'made in the ACM2 UI',
      documents: `["${CONTENT_DOC}"]`,
      models: '["openai:o4-mini"]',
      generators: '["fpf"]',
      iterations: 1,
      evaluation_enabled: 1,
      pairwise_enabled: 0,
      log_level: 'INFO',
      max_retries: 3,
      retry_delay: 2.0,
      request_timeout: 600,
      eval_timeout: 600,
      fpf_max_retries: 3,
      fpf_retry_delay: 1.0,
      eval_retries: 3,
      generation_concurrency: 5,
      eval_concurrency: 5,
      eval_iterations: 1,
      fpf_log_output: 'file',
      input_source_type: 'database',
      input_content_ids: '[]',
      github_input_paths: '[]',
      generation_instructions_id: CONTENT_INSTR,
      output_destination: 'library',
      is_deleted: 0,
    });
    insert(db, 'user_settings', { id: 1, user_id: uid, settings: '{"theme": "dark"}', updated_at: T0, created_at: T0 });
    insert(db, 'provider_keys', { id: 'd1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6', user_id: uid, created_at: T0, provider: 'openai', encrypted_key: 'gAAAA-not-a-real-key', is_valid: 1 });
    if (opts.runs) {
      insert(db, 'runs', {
        id: RUN,
        user_id: uid,
        created_at: T0,
        title: 'My preset',
        preset_id: PRESET,
        status: 'completed',
        config: '{}',
        total_tasks: 1,
        completed_tasks: 1,
        failed_tasks: 0,
        total_cost_usd: 0.0,
        total_tokens: 0,
      });
      insert(db, 'tasks', { id: TASK, created_at: T0, run_id: RUN, document_id: CONTENT_DOC, model_name: 'openai:o4-mini', iteration: 1, status: 'completed', progress: 100, input_tokens: 0, output_tokens: 0 });
    }
    if (opts.meta) insert(db, 'user_meta', { id: 'f0e1d2c3-b4a5-4697-8899-aabbccddeeff', user_id: uid, seed_status: 'ready', seed_version: opts.meta, seeded_at: T0, created_at: T0 });
  })();
}

/** Remove the template DBs (call once in the test file's afterAll). */
/**
 * The generated v1 package a fleet test file seeds from (`env.pkg`), made before its tests; the
 * package and the fleet templates are removed after them.
 */
export function fleetPackage(): { pkg: FrozenSource } {
  const env = { pkg: undefined as unknown as FrozenSource };
  beforeAll(() => {
    env.pkg = frozenSource();
  });
  afterAll(() => {
    env.pkg?.cleanup();
    cleanupTemplates();
  });
  return env;
}

/**
 * `runBackfill` over the data dir in a child process that kills itself (SIGKILL) the moment a
 * seed of it has committed, before the master hears of it. Needs the built dist/.
 */
export function backfillKilledAtCommit(masterUrl: string, dataDir: string, seedsDir: string): SpawnSyncReturns<string> {
  const dist = (m: string) => JSON.stringify(fileURLToPath(new URL(`../../dist/${m}`, import.meta.url)));
  const script = `
    const { openMaster } = await import(${dist('master/factory.js')});
    const { parseMasterUrl } = await import(${dist('config.js')});
    const { loadPackage } = await import(${dist('seed/package.js')});
    const { runBackfill } = await import(${dist('core/backfill.js')});
    const [url, dataDir, seedsDir] = process.argv.slice(1);
    const master = await openMaster(parseMasterUrl(url));
    await runBackfill({ master, dataDir, pkg: loadPackage(seedsDir, 'v1'), onSeedStep: (s) => s === 'committed' && process.kill(process.pid, 'SIGKILL') }, {});`;
  return spawnSync(process.execPath, ['--input-type=module', '-e', script, masterUrl, dataDir, seedsDir], { encoding: 'utf8' });
}

export function cleanupTemplates(): void {
  if (templateDir) rmSync(templateDir, { recursive: true, force: true });
  templateDir = undefined;
}

type TemplateKind = 'legacy' | 'acm2_ready' | 'acm2_seeded' | 'drift_runs' | 'drift_presets' | 'drift_later' | 'presets_only';
let templateDir: string | undefined;

/** One DB file per kind (built once per process). */
export function templates(): Record<TemplateKind, string> {
  templateDir ??= fleetTmpDir('acm2-fleet-templates-');
  const make = (kind: TemplateKind, schema: string, opts: { runs: boolean; meta?: string }) => {
    const file = path.join(templateDir!, `${kind}.db`);
    if (!existsSync(file)) {
      const db = new Database(file);
      db.exec(schema);
      fillTemplate(db, opts);
      db.close();
    }
    return file;
  };
  return {
    legacy: make('legacy', SCHEMA, { runs: true }),
    // Marked ready by ACM2's own backfill_user_meta (version 'legacy' as the tool writes it).
    acm2_ready: make('acm2_ready', SCHEMA, { runs: true, meta: 'legacy' }),
    // Seeded by ACM2 itself (f390420 on: the readiness gate seeds inline): a preset and its
    // contents, no run, ready with ACM2's SEED_VERSION, '1', which no package of the tool names.
    acm2_seeded: make('acm2_seeded', SCHEMA, { runs: false, meta: '1' }),
    drift_runs: make('drift_runs', schemaRunsWithoutPresetId(), { runs: true }),
    drift_presets: make('drift_presets', schemaOldPresets(), { runs: true }),
    drift_later: make('drift_later', schemaLater(), { runs: true }),
    presets_only: make('presets_only', SCHEMA, { runs: false }),
  };
}

/** Give a copied template to its user: every user_id, and a run id of its own. */
function adoptCopy(file: string, userId: number): void {
  const db = new Database(file);
  try {
    db.pragma('synchronous = OFF');
    db.pragma('foreign_keys = OFF');
    db.transaction(() => {
      for (const t of ['contents', 'presets', 'runs', 'user_settings', 'provider_keys', 'user_meta']) {
        db.prepare(`UPDATE ${t} SET user_id = ?`).run(userId);
      }
      const runId = fleetRunId(userId);
      db.prepare(`UPDATE runs SET id = ?`).run(runId);
      db.prepare(`UPDATE tasks SET run_id = ?`).run(runId);
    })();
  } finally {
    db.close();
  }
}

/** The run id a fleet user's legacy DB holds. */
export function fleetRunId(userId: number): string {
  return `c3b2a190-8f7e-46d5-9c4b-${userId.toString(16).padStart(12, '0')}`;
}

// ---------------------------------------------------------------------------------------------
// The fleet

export interface FleetUser {
  id: number;
  kind: FleetKind;
}

export interface Fleet {
  dataDir: string;
  masterUrl: string;
  master: MasterDb;
  users: FleetUser[];
  kindOf(id: number): FleetKind;
  /** Hold every 'locked' user's DB in a child process (BEGIN EXCLUSIVE); resolves once held. */
  holdLocks(): Promise<() => Promise<void>>;
  cleanup(): Promise<void>;
}

/** Kinds interleaved round-robin, so any prefix of the fleet mixes them (ids 1..N in order). */
export function interleave(counts: Partial<Record<FleetKind, number>>): FleetKind[] {
  const left = new Map(Object.entries(counts).filter(([, n]) => (n ?? 0) > 0) as [FleetKind, number][]);
  const out: FleetKind[] = [];
  while (left.size > 0) {
    for (const [k, n] of [...left]) {
      out.push(k);
      if (n <= 1) left.delete(k);
      else left.set(k, n - 1);
    }
  }
  return out;
}

export async function buildLegacyFleet(counts: Partial<Record<FleetKind, number>>, pkg: SeedPackage, dataDir = fleetTmpDir('acm2-fleet-')): Promise<Fleet> {
  const masterUrl = `sqlite:${path.join(dataDir, 'master.db')}`;
  const master = await openMaster(parseMasterUrl(masterUrl));
  const kinds = interleave(counts);
  const users = kinds.map((kind, i) => ({ id: i + 1, kind }));

  // ACM2's users rows (no seed jobs: these users predate the tool).
  const raw = new Database(path.join(dataDir, 'master.db'));
  raw.pragma('busy_timeout = 15000');
  raw.transaction(() => {
    const ins = raw.prepare(`INSERT INTO users (id, username, email) VALUES (?, ?, ?)`);
    for (const u of users) ins.run(u.id, `user${u.id}`, `user${u.id}@example.com`);
  })();
  raw.close();

  const tpl = templates();
  mkdirSync(dataDir, { recursive: true });
  for (const u of users) {
    const file = userDbPath(dataDir, u.id);
    switch (u.kind) {
      case 'missing':
        break;
      case 'corrupt': {
        const junk = Buffer.alloc(16384);
        for (let i = 0; i < junk.length; i++) junk[i] = (i * 131 + u.id * 7) & 0xff;
        writeFileSync(file, junk);
        break;
      }
      case 'ready':
        seedUser({ dataDir, userId: u.id, pkg });
        break;
      case 'locked':
        copyFileSync(tpl.legacy, file);
        adoptCopy(file, u.id);
        break;
      default:
        copyFileSync(tpl[u.kind], file);
        adoptCopy(file, u.id);
    }
  }
  const byId = new Map(users.map((u) => [u.id, u.kind]));
  return {
    dataDir,
    masterUrl,
    master,
    users,
    kindOf: (id) => byId.get(id)!,
    holdLocks: () => holdLocks(users.filter((u) => u.kind === 'locked').map((u) => userDbPath(dataDir, u.id))),
    async cleanup() {
      await master.close().catch(() => undefined);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A child `node -e` per file holding BEGIN EXCLUSIVE, as a stuck ACM2 worker would. */
export async function holdLocks(files: string[]): Promise<() => Promise<void>> {
  const children: ChildProcess[] = [];
  const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1]); d.exec('BEGIN EXCLUSIVE'); d.prepare('SELECT COUNT(*) FROM sqlite_master').get(); process.stdout.write('held\\n'); setInterval(() => {}, 1000);`;
  for (const f of files) {
    const child = spawn(process.execPath, ['-e', script, f], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`lock holder for ${f} exited early (${code})`)));
    });
  }
  return async () => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
          }),
      ),
    );
  };
}
