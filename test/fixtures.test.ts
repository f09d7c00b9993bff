import Database from 'better-sqlite3';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ACM2_SCHEMA_FILE,
  PyFloat,
  fpfLogFileName,
  generateSource,
  pyFloat,
  pyJsonDumps,
  pyJsonLoads,
  safeDocId,
  type SourceFixture,
  type SourceOptions,
} from '../src/fixtures/source.js';
import { REAL_RUN_ID, buildRealSampleSource, defaultSampleDir } from '../src/fixtures/real-sample.js';

const TABLES = [
  'documents',
  'contents',
  'github_connections',
  'provider_keys',
  'usage_stats',
  'user_meta',
  'user_settings',
  'presets',
  'runs',
  'tasks',
  'artifacts',
] as const;

const JSON_COLUMNS: Record<string, string[]> = {
  contents: ['variables', 'tags'],
  presets: ['documents', 'models', 'generators', 'gptr_config', 'fpf_config', 'config_overrides', 'input_content_ids', 'github_input_paths'],
  runs: ['config', 'results_summary'],
  user_settings: ['settings'],
  artifacts: ['scores'],
};

const SHARED = path.resolve(defaultSampleDir(), '..');
const SAMPLE = defaultSampleDir();

const temps: string[] = [];
function tmp(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'acm2-fixtures-test-'));
  temps.push(d);
  return d;
}
afterAll(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

type Row = Record<string, unknown>;

function open(file: string): Database.Database {
  return new Database(file, { readonly: true, fileMustExist: true });
}

function dumpRows(file: string): Record<string, Row[]> {
  const db = open(file);
  try {
    const out: Record<string, Row[]> = {};
    for (const t of TABLES) out[t] = db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all() as Row[];
    return out;
  } finally {
    db.close();
  }
}

function schemaOf(file: string): { master: Row[]; info: Record<string, Row[]> } {
  const db = open(file);
  try {
    const master = db.prepare(`SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name`).all() as Row[];
    const info: Record<string, Row[]> = {};
    for (const t of TABLES) info[t] = db.prepare(`PRAGMA table_info(${t})`).all() as Row[];
    return { master, info };
  } finally {
    db.close();
  }
}

function referenceSchema(): { master: Row[]; info: Record<string, Row[]> } {
  const file = path.join(tmp(), 'reference.db');
  const db = new Database(file);
  db.exec(readFileSync(ACM2_SCHEMA_FILE, 'utf8'));
  db.close();
  return schemaOf(file);
}

function walkFiles(root: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const rec = (d: string): void => {
    for (const e of readdirSync(d).sort()) {
      const p = path.join(d, e);
      if (statSync(p).isDirectory()) rec(p);
      else out.set(path.relative(root, p), readFileSync(p));
    }
  };
  rec(root);
  return out;
}

function runRow(f: SourceFixture): Row {
  const db = open(f.dbPath);
  try {
    return db.prepare('SELECT * FROM runs WHERE id = ?').get(f.runId) as Row;
  } finally {
    db.close();
  }
}

/** Structural signature: set of key paths with JSON value kinds; dynamic keys (ids, judges, criteria) -> '*'. */
const DYNAMIC_PARENTS = new Set([
  'pre_combine_evals_detailed',
  'source_doc_results',
  'single_eval_results',
  'doc_generation_costs',
  'deviations_by_judge_criterion',
  'scores_by_criterion',
  'deviations_by_judge',
]);
function signature(v: unknown, p = '', parentKey = '', out = new Set<string>(), dynDepth = 0): Set<string> {
  const kind = v === null ? 'null' : Array.isArray(v) ? 'array' : v instanceof PyFloat ? 'number' : typeof v;
  out.add(`${p}:${kind}`);
  if (Array.isArray(v)) for (const x of v) signature(x, `${p}[]`, parentKey, out);
  else if (v && typeof v === 'object' && !(v instanceof PyFloat)) {
    for (const [k, x] of Object.entries(v)) {
      // deviations_by_judge_criterion is {judge: {criterion: x}}: both levels are dynamic.
      const dyn = DYNAMIC_PARENTS.has(parentKey) || dynDepth > 0;
      const key = dyn ? (k === '__TOTAL__' ? k : '*') : k;
      const nextDyn = parentKey === 'deviations_by_judge_criterion' ? 1 : 0;
      signature(x, `${p}.${key}`, dyn ? `${parentKey}/*` : k, out, nextDyn);
    }
  }
  return out;
}

function sig(v: unknown): string[] {
  return [...signature(v)].sort();
}

/** Every doc id value mentioned in results_summary (as value or as key). */
function docIdsIn(rs: Row): Set<string> {
  const ids = new Set<string>();
  const valueKeys = new Set(['doc_id', 'doc_id_1', 'doc_id_2', 'winner_doc_id', 'combined_doc_id']);
  const rec = (v: unknown, key: string): void => {
    if (Array.isArray(v)) v.forEach((x) => rec(x, key));
    else if (v && typeof v === 'object' && !(v instanceof PyFloat)) {
      for (const [k, x] of Object.entries(v)) {
        if (['pre_combine_evals_detailed', 'single_eval_results', 'doc_generation_costs'].includes(key)) ids.add(k);
        rec(x, k);
      }
    } else if (typeof v === 'string' && valueKeys.has(key)) ids.add(v);
  };
  rec(rs, '');
  for (const g of rs.generated_docs as { id: string }[]) ids.add(g.id);
  return ids;
}

function checkDocsHaveFiles(f: SourceFixture): void {
  const rs = pyJsonLoads(runRow(f).results_summary as string) as Row;
  const ids = docIdsIn(rs);
  expect([...ids].sort()).toEqual([...f.docIds].sort());
  const genDir = path.join(f.filesDir, 'runs', f.runId, 'generated');
  const contentById = new Map<string, string>();
  for (const sdr of Object.values(rs.source_doc_results as Record<string, Row>)) {
    for (const d of sdr.generated_docs as { doc_id: string; content: string }[]) contentById.set(d.doc_id, d.content);
    for (const d of (sdr.combined_docs ?? []) as { doc_id: string; content: string }[]) contentById.set(d.doc_id, d.content);
  }
  for (const id of ids) {
    const file = path.join(genDir, `${safeDocId(id)}.md`);
    expect(existsSync(file), file).toBe(true);
    expect(readFileSync(file).equals(Buffer.from(contentById.get(id) as string, 'utf8')), id).toBe(true);
  }
  expect(readdirSync(genDir).sort()).toEqual([...ids].map((d) => `${safeDocId(d)}.md`).sort());
}

function checkReferences(f: SourceFixture): void {
  const db = open(f.dbPath);
  try {
    const ids = (t: string): Set<string> => new Set((db.prepare(`SELECT id FROM ${t}`).all() as { id: string }[]).map((r) => r.id));
    const contents = ids('contents');
    const presets = ids('presets');
    const runs = ids('runs');
    const tasks = ids('tasks');
    const gh = ids('github_connections');
    expect([...contents].sort()).toEqual([...f.contentIds].sort());
    expect(presets.has(f.presetId)).toBe(true);
    expect(runs.has(f.runId)).toBe(true);
    const missing: string[] = [];
    const need = (set: Set<string>, id: unknown, what: string): void => {
      if (id === null || id === undefined) return;
      if (!set.has(id as string)) missing.push(`${what} -> ${String(id)}`);
    };
    for (const p of db.prepare('SELECT * FROM presets').all() as Row[]) {
      for (const c of ['generation_instructions_id', 'single_eval_instructions_id', 'pairwise_eval_instructions_id', 'eval_criteria_id', 'combine_instructions_id']) {
        need(contents, p[c], `preset.${c}`);
      }
      need(gh, p.github_connection_id, 'preset.github_connection_id');
      for (const d of JSON.parse(p.documents as string) as string[]) need(contents, d, 'preset.documents');
      for (const d of JSON.parse(p.input_content_ids as string) as string[]) need(contents, d, 'preset.input_content_ids');
    }
    for (const c of db.prepare('SELECT id, variables FROM contents').all() as Row[]) {
      for (const v of Object.values(JSON.parse(c.variables as string) as Record<string, string>)) need(contents, v, `contents(${String(c.id)}).variables`);
    }
    for (const r of db.prepare('SELECT * FROM runs').all() as Row[]) {
      need(presets, r.preset_id, 'run.preset_id');
      const cfg = JSON.parse(r.config as string) as Row;
      for (const d of cfg.document_ids as string[]) need(contents, d, 'run.config.document_ids');
      for (const c of ['generation_instructions_id', 'single_eval_instructions_id', 'pairwise_eval_instructions_id', 'eval_criteria_id', 'combine_instructions_id']) {
        need(contents, cfg[c], `run.config.${c}`);
      }
      const rs = JSON.parse(r.results_summary as string) as Row;
      for (const s of Object.keys(rs.source_doc_results as Row)) need(contents, s, 'results_summary.source_doc_results');
    }
    for (const t of db.prepare('SELECT * FROM tasks').all() as Row[]) {
      need(runs, t.run_id, 'tasks.run_id');
      need(contents, t.document_id, 'tasks.document_id');
    }
    for (const a of db.prepare('SELECT * FROM artifacts').all() as Row[]) need(tasks, a.task_id, 'artifacts.task_id');
    expect(missing).toEqual([]);
    expect([...tasks].sort()).toEqual([...f.taskIds].sort());
    expect([...ids('artifacts')].sort()).toEqual([...f.artifactIds].sort());
  } finally {
    db.close();
  }
}

function checkStoredForms(f: SourceFixture): void {
  const rows = dumpRows(f.dbPath);
  const dt = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?$/;
  for (const t of TABLES) {
    for (const r of rows[t] as Row[]) {
      if ('user_id' in r) expect(r.user_id, `${t}.user_id`).toBe(f.userId);
      for (const c of JSON_COLUMNS[t] ?? []) {
        const v = r[c];
        if (v === null) continue;
        expect(typeof v).toBe('string');
        const s = v as string;
        expect(/^[\x20-\x7e]*$/.test(s), `${t}.${c} is ASCII`).toBe(true);
        expect(pyJsonDumps(pyJsonLoads(s)), `${t}.${c} round-trips`).toBe(s);
      }
      for (const c of ['created_at', 'updated_at', 'started_at', 'completed_at', 'seeded_at', 'last_tested_at', 'last_validated_at']) {
        if (c in r && r[c] !== null) expect(r[c] as string, `${t}.${c}`).toMatch(dt);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

describe('pyJsonDumps / pyJsonLoads', () => {
  it('matches Python json.dumps output', () => {
    const v = {
      a: [1, 2.5, pyFloat(4), 1e-5, pyFloat(1e16), -0, 0.0001, 123456789.125, 1.5e300, 'é—📈\n"\\\u007f\u0001\t/'],
      b: null,
      c: true,
      ü: {},
      d: [],
    };
    // Produced by python3 -c 'import json; print(json.dumps(...))' for the same value.
    const py = String.raw`{"a": [1, 2.5, 4.0, 1e-05, 1e+16, -0.0, 0.0001, 123456789.125, 1.5e+300, "\u00e9\u2014\ud83d\udcc8\n\"\\\u007f\u0001\t/"], "b": null, "c": true, "\u00fc": {}, "d": []}`;
    expect(pyJsonDumps(v)).toBe(py);
    expect(pyJsonDumps(pyJsonLoads(py))).toBe(py);
    expect(pyJsonDumps(JSON.parse(py))).not.toBe(py); // plain JSON.parse loses 4.0 -> 4
  });
});

describe('generateSource', () => {
  const ref = referenceSchema();

  it('creates exactly ACM2 schema (all 11 tables, columns, indexes)', () => {
    const f = generateSource(tmp());
    const s = schemaOf(f.dbPath);
    expect(s.master).toEqual(ref.master);
    expect(s.info).toEqual(ref.info);
    expect(s.master.filter((r) => r.type === 'table').map((r) => r.name).sort()).toEqual([...TABLES].sort());
  });

  it('is deterministic: same options + seed => identical rows and file bytes', () => {
    const opts: SourceOptions = {
      seed: 42,
      sourceDocs: 2,
      iterations: 2,
      models: ['openai:o4-mini', 'openrouter:meta-llama/llama-3'],
      judges: ['openai:gpt-5-mini', 'google:gemini-2.5-flash', 'anthropic:claude-sonnet-4'],
      legacyCombinedFolder: true,
      contents: 4,
    };
    const a = generateSource(tmp(), opts);
    const b = generateSource(tmp(), opts);
    expect(dumpRows(a.dbPath)).toEqual(dumpRows(b.dbPath));
    const fa = walkFiles(a.filesDir);
    const fb = walkFiles(b.filesDir);
    expect([...fa.keys()]).toEqual([...fb.keys()]);
    for (const [k, v] of fa) expect(v.equals(fb.get(k) as Buffer), k).toBe(true);
    const strip = (f: SourceFixture): Row => ({ ...f, dbPath: '', filesDir: '' });
    expect(strip(a)).toEqual(strip(b));
    const c = generateSource(tmp(), { ...opts, seed: 43 });
    expect(c.runId).not.toBe(a.runId);
    // Optional parts draw from their own streams: the core ids do not move.
    const d = generateSource(tmp(), { ...opts, withCredentials: false, contents: 0, legacyCombinedFolder: false });
    expect([d.runId, d.presetId, d.docIds]).toEqual([a.runId, a.presetId, a.docIds]);
  });

  it('writes every doc of results_summary as generated/{safe_doc_id}.md, byte-identical', () => {
    const f = generateSource(tmp(), { models: ['openai:o4-mini', 'openrouter:meta-llama/llama-3'], sourceDocs: 2, iterations: 2 });
    expect(f.docIds.some((d) => d.includes('/'))).toBe(true);
    expect(f.docIds.length).toBe(2 * 2 * 2 + 2 * 2);
    checkDocsHaveFiles(f);
  });

  it('uses ACM2 id formats, log names and folder layout', () => {
    const f = generateSource(tmp(), { models: ['openai:o4-mini', 'openrouter:meta-llama/llama-3'], legacyCombinedFolder: true, withReport: true });
    const S = f.sourceDocIds[0] as string;
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    for (const id of [f.runId, f.presetId, ...f.contentIds, ...f.taskIds, ...f.artifactIds]) expect(id).toMatch(uuid);
    for (const d of f.docIds) {
      expect(d.startsWith(`${S.slice(-8)}.`) || d.startsWith(`combined.${S.slice(-8)}.`), d).toBe(true);
      expect(d).toMatch(/^(?:[0-9a-f]{8}\.[0-9a-f]{4}\.fpf\.\d+\.[^:]+|combined\.[0-9a-f]{8}\.[0-9a-f]{4}\.[^:]+)$/);
    }
    expect(f.docIds).toContain(f.docIds.find((d) => d.endsWith('.fpf.1.openrouter_meta-llama/llama-3')));
    const runDir = path.join(f.filesDir, 'runs', f.runId);
    const runLog = readFileSync(path.join(runDir, 'logs', 'run.log'), 'utf8');
    expect(runLog).toContain(f.runId);
    for (const d of f.docIds) expect(runLog).toContain(d);
    for (const m of ['openai:o4-mini', 'openrouter:meta-llama/llama-3']) {
      const name = fpfLogFileName(S, 'fpf', 1, m);
      expect(name).toBe(`fpf_${S}.fpf.1.${m.replace(/[:/]/g, '_')}.log`);
      const text = readFileSync(path.join(runDir, 'logs', name), 'utf8');
      expect(text).toContain(f.runId);
      expect(text).toContain(f.docIds.find((d) => d.endsWith(`.fpf.1.${m.replace(':', '_')}`)) as string);
    }
    const report = readFileSync(path.join(runDir, 'reports', 'report.html'), 'utf8');
    for (const d of f.docIds) expect(report).toContain(d);
    const combined = readdirSync(path.join(runDir, 'combined'));
    expect(combined.length).toBeGreaterThan(0);
    for (const c of combined) expect(c.startsWith(`combined.${f.runId.slice(-8)}.`)).toBe(true);
    for (const d of f.docIds) {
      const text = readFileSync(path.join(runDir, 'generated', `${safeDocId(d)}.md`), 'utf8');
      expect(text).toContain(`Source: ${S}`);
      expect(text).toContain(`Run: ${f.runId}`);
    }
    const g = generateSource(tmp(), { withReport: false, combine: false });
    const gDir = path.join(g.filesDir, 'runs', g.runId);
    expect(existsSync(path.join(gDir, 'reports'))).toBe(false);
    expect(existsSync(path.join(gDir, 'combined'))).toBe(false);
    expect(g.docIds.every((d) => !d.startsWith('combined.'))).toBe(true);
    checkDocsHaveFiles(g);
  });

  it('has the exact shapes of the ACM2 examples', () => {
    const f = generateSource(tmp(), { judges: ['openai:gpt-5-mini', 'google:gemini-3-flash-preview', 'google:gemini-2.5-flash'] });
    const row = runRow(f);
    const rs = pyJsonLoads(row.results_summary as string) as Row;
    const ex = pyJsonLoads(readFileSync(path.join(SHARED, 'results_summary.example.json'), 'utf8')) as Row;
    // Top-level timeline_events is [] in the example (progressive events are shown in other-shapes).
    const noTimeline = (x: Row): Row => ({ ...x, timeline_events: [] });
    expect(Object.keys(rs)).toEqual(Object.keys(ex));
    expect(sig(noTimeline(rs))).toEqual(sig(noTimeline(ex)));
    const events = rs.timeline_events as { details: Row | null }[];
    expect(events.some((e) => e.details && 'doc_id' in e.details && 'source_doc_id' in e.details)).toBe(true);

    const cfg = pyJsonLoads(row.config as string) as Row;
    const exCfg = pyJsonLoads(readFileSync(path.join(SHARED, 'runs.config.example.json'), 'utf8')) as Row;
    expect(Object.keys(cfg)).toEqual(Object.keys(exCfg));
    expect(sig(cfg)).toEqual(sig(exCfg));

    const db = open(f.dbPath);
    const preset = db.prepare('SELECT * FROM presets WHERE id = ?').get(f.presetId) as Row;
    db.close();
    const exOv = pyJsonLoads(readFileSync(path.join(SHARED, 'preset.config_overrides.example.json'), 'utf8'));
    expect(sig(pyJsonLoads(preset.config_overrides as string))).toEqual(sig(exOv));
    expect(preset.config_overrides).toBe(pyJsonDumps(cfg.config_overrides));
    expect(preset.fpf_log_file_path).toBe('logs/{run_id}/fpf_output.log');
    expect(preset.github_connection_id).toBeTruthy();
  });

  it('stores Python json.dumps text, DATETIME text and user_id everywhere', () => {
    const f = generateSource(tmp(), { userId: 31, models: ['openrouter:meta-llama/llama-3'] });
    checkStoredForms(f);
    const rows = dumpRows(f.dbPath);
    for (const t of ['github_connections', 'provider_keys', 'user_settings', 'usage_stats', 'user_meta', 'documents']) {
      expect((rows[t] as Row[]).length, t).toBeGreaterThan(0);
    }
    expect(f.credentials?.secrets.length).toBeGreaterThan(0);
    const bare = generateSource(tmp(), { withCredentials: false });
    const br = dumpRows(bare.dbPath);
    for (const t of ['github_connections', 'provider_keys', 'user_settings', 'usage_stats', 'user_meta']) expect((br[t] as Row[]).length, t).toBe(0);
    expect(bare.credentials).toBeUndefined();
    expect((br.presets as Row[])[0]?.github_connection_id).toBeNull();
  });

  it('every id the preset and run reference exists as a row', () => {
    for (const opts of [{}, { withCredentials: false }, { sourceDocs: 3, contents: 0 }, { contents: 7, iterations: 2 }] as SourceOptions[]) {
      checkReferences(generateSource(tmp(), opts));
    }
  });
});

describe.skipIf(!existsSync(path.join(SAMPLE, 'runs-row-746301ce.json')))('buildRealSampleSource', () => {
  const dir = tmp();
  const before = readdirSync(SAMPLE).sort();
  const f = buildRealSampleSource(dir);

  it('has exactly ACM2 schema and leaves the sample folder untouched', () => {
    const s = schemaOf(f.dbPath);
    expect(s).toEqual(referenceSchema());
    expect(readdirSync(SAMPLE).sort()).toEqual(before);
  });

  it('stores the real run row; results_summary round-trips as the README says', () => {
    expect(f.runId).toBe(REAL_RUN_ID);
    expect(f.userId).toBe(7);
    const row = runRow(f);
    const rs = row.results_summary as string;
    const cfg = row.config as string;
    expect(pyJsonDumps(pyJsonLoads(rs))).toBe(rs);
    expect(pyJsonDumps(pyJsonLoads(cfg))).toBe(cfg);
    expect(rs.length).toBe(190127);
    expect(cfg.length).toBe(5266);
    const real = pyJsonLoads(readFileSync(path.join(SAMPLE, 'runs-row-746301ce.json'), 'utf8')) as Row;
    expect(pyJsonLoads(rs)).toEqual(real.results_summary);
    for (const k of ['id', 'user_id', 'created_at', 'updated_at', 'title', 'description', 'preset_id', 'status', 'started_at', 'completed_at', 'total_tasks']) {
      expect(row[k], k).toEqual(real[k]);
    }
    checkStoredForms(f);
  });

  it('copies the real generated files byte-identically', () => {
    const src = path.join(SAMPLE, 'runs', REAL_RUN_ID, 'generated');
    const dst = path.join(f.filesDir, 'runs', REAL_RUN_ID, 'generated');
    const names = readdirSync(src).sort();
    expect(readdirSync(dst).sort()).toEqual(names);
    for (const n of names) expect(readFileSync(path.join(dst, n)).equals(readFileSync(path.join(src, n))), n).toBe(true);
    checkDocsHaveFiles(f);
    expect(f.docIds.length).toBe(4);
  });

  it('reconstructs logs, leaves reports absent', () => {
    const runDir = path.join(f.filesDir, 'runs', REAL_RUN_ID);
    expect(existsSync(path.join(runDir, 'reports'))).toBe(false);
    const runLog = readFileSync(path.join(runDir, 'logs', 'run.log'), 'utf8');
    for (const d of f.docIds) expect(runLog).toContain(d);
    const S = f.sourceDocIds[0] as string;
    expect(S).toBe('9490e0ef-b200-46fb-8c2c-21f2673307e8');
    for (const m of ['google:gemini-2.5-flash', 'openai:o4-mini']) {
      expect(readFileSync(path.join(runDir, 'logs', fpfLogFileName(S, 'fpf', 1, m)), 'utf8')).toContain(REAL_RUN_ID);
    }
  });

  it('every id the preset and run reference exists as a row', () => {
    checkReferences(f);
    expect(f.contentIds.length).toBe(12);
    const db = open(f.dbPath);
    const presets = (db.prepare('SELECT id FROM presets').all() as { id: string }[]).map((r) => r.id).sort();
    db.close();
    expect(presets).toEqual(['c71f3865-7ea4-4657-b06e-9c7eede77153', 'fe6feb32-828a-4bc5-826e-281d2ac0f951']);
    expect(f.presetId).toBe('c71f3865-7ea4-4657-b06e-9c7eede77153');
  });
});
