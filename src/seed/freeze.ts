// What a seed package takes from an ACM2 user DB and run folder (selection and the list of gaps),
// and how its parts are written: seed.db in primary-key order, the run tree with hashes, fsyncs.

import Database from 'better-sqlite3';
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { constants as bufferConstants } from 'node:buffer';
import { fsyncPath, writeFileDurable } from '../durable.js';
import { loadMigrations } from '../migrations.js';
import type { ProgressSink } from '../ui/reporter.js';
import { USER_MIGRATIONS } from '../userdb/user-db.js';
import { compareStrings, primaryKeyOrder, quoteIdent, tableColumns, tableExists, walkTree, type ColumnInfo } from './canonical.js';
import { PACKAGE_TABLES, unsafePathReason, type ManifestFile, type PackageTable } from './manifest.js';
import { safeDocId } from './remap.js';

/**
 * Every package file is read whole as one JavaScript string to remap the identifiers in it (as
 * latin1 when it is not UTF-8: one character a byte), and V8 makes no string longer than
 * buffer.constants.MAX_STRING_LENGTH characters (2^29 - 24 on 64-bit Node 20): a bigger file would be frozen into a package no user can be seeded from.
 */
export const MAX_PACKAGE_FILE_BYTES = bufferConstants.MAX_STRING_LENGTH;

type Row = Record<string, unknown>;

export { safeDocId } from './remap.js';

export const CONTENT_ID_KEYS = [
  'generation_instructions_id',
  'single_eval_instructions_id',
  'pairwise_eval_instructions_id',
  'eval_criteria_id',
  'combine_instructions_id',
] as const;

const UUID_RE = /[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/g;

export interface RunFile {
  /** Relative to the run folder, '/' separators. */
  rel: string;
  bytes: number;
  /** What the listing saw: the copy must read the file in this state. */
  mtimeMs: number;
  ino: number;
}

/**
 * A file of the run folder changed between the listing and the end of its copy (rewritten,
 * appended to, removed, renamed over): the package would not hold the tree of one moment.
 */
export class RunTreeChanged extends Error {
  constructor(
    readonly rel: string,
    readonly why: string,
  ) {
    super(`${rel} ${why} while it was being frozen`);
  }
}

export interface FreezeSelection {
  presetId: string;
  runId: string;
  /** Rows per package table, in primary-key order, exactly as the package will hold them. */
  rows: Record<PackageTable, Row[]>;
  /** The run folder's regular files and folders (relative to runs/<runId>/), sorted. */
  files: RunFile[];
  dirs: string[];
  /** True when reports/report.html must be rendered into the package. */
  renderReport: boolean;
  /** Why the freeze cannot go ahead; empty means it can. */
  gaps: string[];
  /** Worth telling, not blocking: dropped columns, UUIDs that match no package row. */
  warnings: string[];
}

export interface SelectOptions {
  sourceFiles: string;
  presetId: string;
  runId: string;
  renderReport: boolean;
}

/** Target column lists come from ACM2's schema, so a package always has the exact 0001 layout. */
function targetColumns(): Map<string, ColumnInfo[]> {
  const db = new Database(':memory:');
  try {
    db.exec(schemaSql());
    return new Map(PACKAGE_TABLES.map((t) => [t, tableColumns(db, t)]));
  } finally {
    db.close();
  }
}

export function schemaSql(): string {
  const m = loadMigrations(USER_MIGRATIONS)[0];
  if (!m) throw new Error('migrations/user/0001 is missing');
  return m.sql;
}

function parseJson(v: unknown): unknown {
  if (typeof v !== 'string') return undefined;
  try {
    return JSON.parse(v);
  } catch {
    return undefined;
  }
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** Every string value found under a key named `key`, at any depth. */
function valuesOfKey(v: unknown, key: string, out: string[] = []): string[] {
  if (Array.isArray(v)) v.forEach((x) => valuesOfKey(x, key, out));
  else if (isObj(v)) {
    for (const [k, x] of Object.entries(v)) {
      if (k === key && typeof x === 'string') out.push(x);
      valuesOfKey(x, key, out);
    }
  }
  return out;
}

/** Every string (values and object keys) inside a JSON value. */
function allStrings(v: unknown, out: string[] = []): string[] {
  if (typeof v === 'string') out.push(v);
  else if (Array.isArray(v)) v.forEach((x) => allStrings(x, out));
  else if (isObj(v)) {
    for (const [k, x] of Object.entries(v)) {
      out.push(k);
      allStrings(x, out);
    }
  }
  return out;
}

/** Generated and combined doc ids named in a results_summary: each needs generated/<safe>.md. */
export function namedDocIds(summary: unknown): string[] {
  if (!isObj(summary)) return [];
  const ids: string[] = [];
  const docId = (d: unknown) => {
    if (!isObj(d)) return;
    const id = typeof d.doc_id === 'string' ? d.doc_id : typeof d.id === 'string' ? d.id : undefined;
    if (id) ids.push(id);
  };
  if (Array.isArray(summary.generated_docs)) summary.generated_docs.forEach(docId);
  if (typeof summary.combined_doc_id === 'string') ids.push(summary.combined_doc_id);
  ids.push(...strings(summary.combined_doc_ids));
  if (isObj(summary.source_doc_results)) {
    for (const sdr of Object.values(summary.source_doc_results)) {
      if (!isObj(sdr)) continue;
      if (Array.isArray(sdr.generated_docs)) sdr.generated_docs.forEach(docId);
      docId(sdr.combined_doc);
      if (Array.isArray(sdr.combined_docs)) sdr.combined_docs.forEach(docId);
    }
  }
  return [...new Set(ids)].sort(compareStrings);
}

/** Source doc ids (content ids) a results_summary names. */
export function namedSourceDocIds(summary: unknown): string[] {
  if (!isObj(summary)) return [];
  const ids = valuesOfKey(summary, 'source_doc_id');
  if (isObj(summary.source_doc_results)) ids.push(...Object.keys(summary.source_doc_results));
  if (isObj(summary.eval_scores)) ids.push(...Object.keys(summary.eval_scores));
  return [...new Set(ids)].sort(compareStrings);
}

function readAll(db: Database.Database, table: string, where = '', params: unknown[] = []): Row[] {
  if (!tableExists(db, table)) return [];
  return db
    .prepare(`SELECT * FROM ${quoteIdent(table)} ${where} ORDER BY ${primaryKeyOrder(db, table)}`)
    .safeIntegers(true)
    .all(...params) as Row[];
}

/**
 * Decide what the package holds and list every gap. Reads the source DB (opened by the caller)
 * and the run folder; writes nothing.
 */
export function selectForFreeze(db: Database.Database, opts: SelectOptions): FreezeSelection {
  const { presetId, runId } = opts;
  const gaps: string[] = [];
  const warnings: string[] = [];
  const gap = (g: string) => {
    if (!gaps.includes(g)) gaps.push(g);
  };

  const contents = readAll(db, 'contents');
  const allDocuments = readAll(db, 'documents');
  const contentIds = new Set(contents.map((r) => String(r.id)));
  const documentIds = new Map(allDocuments.map((r) => [String(r.id), r]));
  const pickedDocuments = new Set<string>();

  const preset = readAll(db, 'presets', 'WHERE id = ?', [presetId])[0];
  if (!preset) gap(`preset ${presetId} is not in the source`);
  const run = readAll(db, 'runs', 'WHERE id = ?', [runId])[0];
  if (!run) gap(`run ${runId} is not in the source`);
  const tasks = run ? readAll(db, 'tasks', 'WHERE run_id = ?', [runId]) : [];
  const taskIds = new Set(tasks.map((t) => String(t.id)));
  const artifacts = readAll(db, 'artifacts').filter((a) => taskIds.has(String(a.task_id)));

  /** A reference to a content (or document) row: fine, picked, or a gap. */
  const ref = (who: string, id: unknown, what = 'contents') => {
    if (id === null || id === undefined || id === '') return;
    const s = String(id);
    if (contentIds.has(s)) return;
    if (documentIds.has(s)) {
      pickedDocuments.add(s);
      return;
    }
    gap(`${who} references ${what} ${s} which is not in the source`);
  };

  if (preset) {
    const who = `preset ${presetId}`;
    for (const k of CONTENT_ID_KEYS) ref(who, preset[k]);
    for (const col of ['documents', 'input_content_ids']) {
      const list = parseJson(preset[col]);
      if (preset[col] !== null && preset[col] !== undefined && !Array.isArray(list)) warnings.push(`${who} column ${col} is not a JSON list`);
      strings(list).forEach((id) => ref(who, id));
    }
    const overrides = parseJson(preset.config_overrides);
    if (isObj(overrides)) for (const k of CONTENT_ID_KEYS) if (typeof overrides[k] === 'string') ref(who, overrides[k]);
  }

  if (run) {
    const who = `run ${runId}`;
    if (run.preset_id !== null && run.preset_id !== undefined && String(run.preset_id) !== presetId) {
      gap(`${who} belongs to preset ${String(run.preset_id)}, not to the preset being frozen (${presetId})`);
    }
    const config = parseJson(run.config);
    if (isObj(config)) {
      for (const k of CONTENT_ID_KEYS) if (typeof config[k] === 'string') ref(who, config[k]);
      for (const k of ['document_ids', 'input_content_ids', 'documents']) strings(config[k]).forEach((id) => ref(who, id));
      const ov = config.config_overrides;
      if (isObj(ov)) for (const k of CONTENT_ID_KEYS) if (typeof ov[k] === 'string') ref(who, ov[k]);
    }
    const summary = parseJson(run.results_summary);
    for (const s of namedSourceDocIds(summary)) ref(who, s, 'source doc');
  }

  for (const c of contents) {
    const vars = parseJson(c.variables);
    if (isObj(vars)) for (const v of Object.values(vars)) if (typeof v === 'string') ref(`contents ${String(c.id)} (variables)`, v);
  }
  for (const t of tasks) ref(`task ${String(t.id)}`, t.document_id, 'document');

  // Any documents row named anywhere in the rows we ship comes along; other UUIDs are reported.
  // Compared in lower case: the seed remaps a package id written in capitals as that same id.
  const knownIds = new Set<string>([...contentIds, presetId, runId, ...taskIds, ...artifacts.map((a) => String(a.id))].map((id) => id.toLowerCase()));
  const documentIdsLower = new Map([...documentIds.keys()].map((id) => [id.toLowerCase(), id]));
  const scanRows: Row[] = [...(preset ? [preset] : []), ...(run ? [run] : []), ...tasks, ...artifacts];
  const unmatched = new Set<string>();
  for (const row of scanRows) {
    for (const [col, v] of Object.entries(row)) {
      if (typeof v !== 'string' || col === 'id' || col === 'github_connection_id') continue;
      const parsed = parseJson(v);
      const texts = parsed !== undefined ? allStrings(parsed) : [v];
      for (const text of texts) {
        for (const m of text.matchAll(UUID_RE)) {
          const id = m[0];
          const doc = documentIdsLower.get(id.toLowerCase());
          if (doc !== undefined) pickedDocuments.add(doc);
          else if (!knownIds.has(id.toLowerCase())) unmatched.add(id);
        }
      }
    }
  }
  for (const id of [...unmatched].sort(compareStrings)) warnings.push(`UUID ${id} appears in the run or preset but matches no row of the package`);

  // The run folder: every file of every subfolder; no symlinks, no special files.
  const files: RunFile[] = [];
  const dirs: string[] = [];
  let reportExists = false;
  const runRel = `runs/${runId}/`;
  const runDir = path.join(opts.sourceFiles, 'runs', runId);
  const runDirKind = kindOf(runDir);
  const runsKind = kindOf(path.join(opts.sourceFiles, 'runs'));
  if (kindOf(opts.sourceFiles) === undefined) gap(`source files folder ${opts.sourceFiles} does not exist`);
  else if (runsKind === 'symlink') gap(`runs/ in ${opts.sourceFiles} is a symlink`);
  else if (runDirKind === 'symlink') gap(`${runRel} is a symlink`);
  else if (runDirKind !== 'dir') gap(`${runRel} is missing from ${opts.sourceFiles}`);
  else {
    // Live: ACM2 may remove a file (a rotated log, a temp report renamed) while it is listed.
    for (const e of walkTree(runDir, { live: true })) {
      if (e.kind === 'symlink') gap(`${runRel}${e.rel} is a symlink`);
      // walkTree cannot look at a name that is not UTF-8 (it is read back with U+FFFD in it).
      else if (e.kind === 'other') gap(`${runRel}${e.rel} ${e.rel.includes('\uFFFD') ? 'has a name that is not valid UTF-8: rename it' : 'is not a regular file or folder'}`);
      else if (unsafePathReason(`${runRel}${e.rel}`) !== undefined) gap(`${runRel}${e.rel} cannot be a package path: it ${unsafePathReason(`${runRel}${e.rel}`)}`);
      else if (e.kind === 'dir') dirs.push(e.rel);
      else if (e.bytes > MAX_PACKAGE_FILE_BYTES) gap(`${runRel}${e.rel} is ${e.bytes} bytes: a package file can be at most ${MAX_PACKAGE_FILE_BYTES} (just under 512 MiB), the most a seed can read as text to remap the identifiers in it`);
      else files.push({ rel: e.rel, bytes: e.bytes, mtimeMs: e.mtimeMs, ino: e.ino });
    }
    reportExists = files.some((f) => f.rel === 'reports/report.html');
  }
  if (run) {
    const have = new Set(files.map((f) => f.rel));
    for (const d of namedDocIds(parseJson(run.results_summary))) {
      const rel = `generated/${safeDocId(d)}.md`;
      if (!have.has(rel)) gap(`generated doc ${d} has no file ${runRel}${rel}`);
    }
  }
  if (runDirKind === 'dir') {
    // A package carries files, not folders: a logs/ or reports/ with no file in it would reach no
    // seeded user, and a package frozen from one would then be refused for lacking it; so an
    // empty one counts as none, here where the operator can still put the run's logs back.
    if (!files.some((f) => f.rel.startsWith('logs/'))) gap(`${runRel}logs/ ${dirs.includes('logs') ? 'holds no file' : 'is missing'}`);
    const reportsHold = files.some((f) => f.rel.startsWith('reports/'));
    if (!reportsHold && !opts.renderReport) gap(`${runRel}reports/ ${dirs.includes('reports') ? 'holds no file' : 'is missing'} (give --render-report to build one from results_summary)`);
  }

  // Shape rows exactly as ACM2's schema wants them: no owner, no credential references.
  const targets = targetColumns();
  const shape = (table: PackageTable, rows: Row[]): Row[] => {
    const cols = targets.get(table) ?? [];
    const srcCols = tableExists(db, table) ? tableColumns(db, table).map((c) => c.name) : [];
    for (const c of srcCols) if (!cols.some((t) => t.name === c)) warnings.push(`source column ${table}.${c} is not in ACM2's schema and is left out`);
    if (rows.length > 0) {
      for (const c of cols) {
        if (!srcCols.includes(c.name) && c.notnull && !c.hasDefault) gap(`source table ${table} has no column ${c.name}, which ACM2's schema requires`);
      }
    }
    return rows.map((r) => {
      const out: Row = {};
      for (const c of cols) out[c.name] = c.name in r ? r[c.name] : null;
      if ('user_id' in out) out.user_id = null;
      if (table === 'presets') out.github_connection_id = null;
      return out;
    });
  };
  const documents = allDocuments.filter((d) => pickedDocuments.has(String(d.id)));

  return {
    presetId,
    runId,
    rows: {
      contents: shape('contents', contents),
      documents: shape('documents', documents),
      presets: shape('presets', preset ? [preset] : []),
      runs: shape('runs', run ? [run] : []),
      tasks: shape('tasks', tasks),
      artifacts: shape('artifacts', artifacts),
    },
    files,
    dirs,
    renderReport: opts.renderReport && !reportExists,
    gaps,
    warnings,
  };
}

function kindOf(p: string): 'dir' | 'file' | 'symlink' | 'other' | undefined {
  try {
    const st = lstatSync(p);
    return st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
  } catch {
    return undefined;
  }
}

/**
 * A fresh seed.db with ACM2's schema and only the selected rows, inserted in primary-key order,
 * then VACUUMed so the same rows always give the same bytes.
 */
export function writeSeedDb(file: string, rows: Record<PackageTable, Row[]>): void {
  const db = new Database(file);
  try {
    db.pragma('journal_mode = DELETE');
    db.exec(schemaSql());
    db.transaction(() => {
      for (const t of PACKAGE_TABLES) {
        const list = rows[t];
        if (list.length === 0) continue;
        const cols = Object.keys(list[0] as Row);
        const ins = db.prepare(
          `INSERT INTO ${quoteIdent(t)} (${cols.map(quoteIdent).join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`,
        );
        for (const r of list) ins.run(...cols.map((c) => r[c]));
      }
    })();
    db.exec('VACUUM');
  } finally {
    db.close();
  }
  fsyncPath(file);
}

/**
 * Copy the run folder into `<filesDir>/runs/<runId>/`, hashing each file as it is written.
 * Returns manifest entries (paths relative to filesDir), in selection order.
 */
export function copyRunTree(sel: FreezeSelection, sourceFiles: string, filesDir: string, progress: ProgressSink): ManifestFile[] {
  const srcRun = path.join(sourceFiles, 'runs', sel.runId);
  const dstRun = path.join(filesDir, 'runs', sel.runId);
  mkdirSync(dstRun, { recursive: true, mode: 0o755 });
  for (const d of sel.dirs) mkdirSync(path.join(dstRun, ...d.split('/')), { recursive: true, mode: 0o755 });
  const out: ManifestFile[] = [];
  progress.start('copying run files', sel.files.length);
  for (const f of sel.files) {
    const parts = f.rel.split('/');
    const h = writeFileDurable(path.join(dstRun, ...parts), readUnchanged(path.join(srcRun, ...parts), f));
    out.push({ path: `runs/${sel.runId}/${f.rel}`, bytes: h.bytes, sha256: h.sha256 });
    progress.tick(1, f.rel);
  }
  progress.done();
  return out;
}

/**
 * The bytes of a run file, provided it is still the file the listing saw and nothing wrote to it
 * while it was read; RunTreeChanged otherwise. Never follows a symlink or blocks on a FIFO put in
 * its place since the listing.
 */
function readUnchanged(file: string, f: RunFile): Buffer {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new RunTreeChanged(f.rel, 'was removed');
    if (code === 'ELOOP') throw new RunTreeChanged(f.rel, 'was replaced by a symlink');
    throw e;
  }
  try {
    const before = fstatSync(fd);
    if (!before.isFile() || before.ino !== f.ino) throw new RunTreeChanged(f.rel, 'was replaced');
    if (before.size !== f.bytes || before.mtimeMs !== f.mtimeMs) throw new RunTreeChanged(f.rel, 'was written to');
    const buf = readFileSync(fd);
    const after = fstatSync(fd);
    if (buf.length !== before.size || after.size !== before.size || after.mtimeMs !== before.mtimeMs || after.ctimeMs !== before.ctimeMs) {
      throw new RunTreeChanged(f.rel, 'was written to');
    }
    return buf;
  } finally {
    closeSync(fd);
  }
}

/** fsync every folder under root (deepest first) and root itself. */
export function fsyncTree(root: string): void {
  const dirs = walkTree(root)
    .filter((e) => e.kind === 'dir')
    .map((e) => e.rel)
    .sort((a, b) => b.split('/').length - a.split('/').length);
  for (const d of dirs) fsyncPath(path.join(root, ...d.split('/')));
  fsyncPath(root);
}
