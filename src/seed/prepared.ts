// A package prepared for seeding: every row and file tokenised once per process, so seeding
// each user is a join of strings plus inserts and file writes, with no scanning per user.

import Database from 'better-sqlite3';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { SeedPackage } from './package.js';
import { DocIndex, findDocIds, idMayStartAt, isDocId, isUserDir, isUuid, isUuidPart, isUuidPrefix, tokenize, tokensOf, type Template } from './remap.js';

/** Tables a package may carry rows for, in an order that satisfies their references. */
export const SEED_TABLES = ['contents', 'documents', 'presets', 'runs', 'tasks', 'artifacts'] as const;

export type Cell = null | number | bigint | Buffer | Template | BlobTemplate;

/**
 * A BLOB cell that names an identifier (SQLite keeps bytes written to a TEXT column as a BLOB):
 * its bytes as text (UTF-8, or latin1 byte for byte when not UTF-8), tokenised, and written back
 * as a BLOB in the same encoding.
 */
export interface BlobTemplate extends Template {
  blob: 'utf8' | 'latin1';
}

/** A cell as this user's copy holds it: templates rendered (`render`), a BLOB's back to bytes. */
export function renderCell<M>(v: Cell, render: (t: Template, map: M) => string, map: M): null | number | bigint | Buffer | string {
  if (!isTemplate(v)) return v;
  const s = render(v, map);
  return 'blob' in v ? Buffer.from(s, v.blob) : s;
}

export interface PreparedTable {
  name: string;
  columns: string[];
  /** Index of user_id in columns, or -1 (tasks and artifacts have none). */
  userIdIndex: number;
  idIndex: number;
  rows: Cell[][];
}

export interface PreparedFile {
  /** Path under the package's files/ (also the path under the user root), tokenised. */
  path: Template;
  sourcePath: string;
  abs: string;
  bytes: number;
  /** Content tokenised; undefined for a file that names no identifier (copied as is). */
  text?: Template;
  /**
   * The content is not UTF-8 (a log with a torn multi-byte character, a binary): tokenised and
   * rendered byte for byte as latin1, so the identifiers in it (ASCII) are remapped too and every
   * other byte is kept.
   */
  latin1?: boolean;
}

export interface PreparedPackage {
  pkg: SeedPackage;
  tables: PreparedTable[];
  files: PreparedFile[];
  /** Every identifier the package holds, with its kind (table name, 'uuid', 'uuid_prefix', 'uuid_part', 'doc' or 'user_dir'). */
  kinds: Map<string, string>;
}

const cache = new Map<string, PreparedPackage>();

export function preparePackage(pkg: SeedPackage): PreparedPackage {
  const key = `${pkg.dir}\0${pkg.manifest.packageSha256}`;
  const hit = cache.get(key);
  if (hit) return hit;

  const db = new Database(pkg.seedDbPath, { readonly: true, fileMustExist: true });
  const raw: Array<{ name: string; columns: string[]; rows: unknown[][] }> = [];
  try {
    for (const name of SEED_TABLES) {
      const stmt = db.prepare(`SELECT * FROM ${name} ORDER BY id`).raw(true);
      const columns = stmt.columns().map((c) => c.name);
      raw.push({ name, columns, rows: stmt.all() as unknown[][] });
    }
  } finally {
    db.close();
  }

  const fileTexts = pkg.manifest.files.map((f) => {
    const abs = path.join(pkg.filesDir, ...f.path.split('/'));
    const buf = readFileSync(abs);
    const text = asText(buf);
    // Not UTF-8: still read (as latin1, byte for byte), for the identifiers in it.
    return { f, abs, buf, text, scanned: text ?? buf.toString('latin1') };
  });

  // Doc ids: every quoted doc-id-shaped string in the rows (wrapping a value in quotes also
  // finds a column that is a doc id itself; JSON text keeps its own quotes), and every doc-named file.
  const docIds = new Set<string>();
  for (const t of raw) for (const r of t.rows) for (const v of r) if (typeof v === 'string') for (const d of findDocIds(`"${v}"`)) docIds.add(d);
  for (const { f } of fileTexts) {
    const base = f.path.split('/').pop()!.replace(/\.(md|log|html|json|txt)$/, '');
    if (isDocId(base)) docIds.add(base);
  }

  // The package's identifiers are its rows' primary keys (and the doc ids above): only those are
  // rewritten. Other UUID-shaped text (a URL citing a report by its UUID) stays as it is; freeze
  // warns about such values.
  const kinds = new Map<string, string>();
  for (const t of raw) {
    const idIndex = t.columns.indexOf('id');
    for (const r of t.rows) if (typeof r[idIndex] === 'string') kinds.set(r[idIndex] as string, t.name);
  }
  const uuids = new Set([...kinds.keys()].filter(isUuid).map((u) => u.toLowerCase()));

  // A doc named only in free text: a failed iteration's doc in run.log and in its FPF log, never
  // written to generated/ nor to results_summary. Its `S8.tag.` head still carries the source id's
  // last 8 characters, so any such head whose S8 ends one of the package's ids is a doc id too.
  const suffixes = new Set([...uuids].map((u) => u.slice(-8)));
  const freeText = [...raw.flatMap((t) => t.rows.flatMap((r) => r.flatMap((v) => (typeof v === 'string' ? [v] : Buffer.isBuffer(v) ? [bytesAsText(v).text] : [])))), ...fileTexts.map((x) => x.f.path)];
  for (const x of fileTexts) freeText.push(x.scanned);
  for (const text of freeText) for (const head of docHeadsIn(text, suffixes)) docIds.add(head);
  const index = new DocIndex(docIds);
  const tables: PreparedTable[] = raw.map((t) => {
    const idIndex = t.columns.indexOf('id');
    return {
      name: t.name,
      columns: t.columns,
      idIndex,
      userIdIndex: t.columns.indexOf('user_id'),
      rows: t.rows.map((r) => r.map((v) => (typeof v === 'string' ? tokenize(v, index, uuids) : Buffer.isBuffer(v) ? blobCell(v, index, uuids) : (v as Cell)))),
    };
  });
  const files: PreparedFile[] = fileTexts.map(({ f, abs, buf, text, scanned }) => {
    const base = { path: tokenize(f.path, index, uuids), sourcePath: f.path, abs, bytes: buf.length };
    if (text !== undefined) return { ...base, text: tokenize(text, index, uuids) };
    // Not UTF-8: an identifier in it must not be copied through unmapped.
    const bytes = tokenize(scanned, index, uuids);
    return bytes.toks.length > 0 ? { ...base, text: bytes, latin1: true } : base;
  });

  const all = new Set<string>();
  for (const t of tables) for (const r of t.rows) tokensOf(r.filter(isTemplate), all);
  tokensOf(files.map((f) => f.path), all);
  tokensOf(files.flatMap((f) => (f.text ? [f.text] : [])), all);
  for (const tok of all) if (!kinds.has(tok)) kinds.set(tok, isUuid(tok) ? 'uuid' : isUserDir(tok) ? 'user_dir' : isUuidPrefix(tok) ? 'uuid_prefix' : isUuidPart(tok) ? 'uuid_part' : 'doc');

  const prepared = { pkg, tables, files, kinds };
  cache.set(key, prepared);
  return prepared;
}

/** `S8.tag.` heads (with `combined.`) in text whose S8 is one of `suffixes`, each starting a token. */
function docHeadsIn(text: string, suffixes: ReadonlySet<string>): string[] {
  const out: string[] = [];
  // Found by the `.tag.` after S8 (a literal dot the regex engine skips to fast), not by a
  // character class tried at every offset: this reads every text of the package once, 15 MB for a
  // large run, and the class-first form took a third longer than the rest of the preparation.
  const re = /\.[0-9a-f]{4}\./g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const at = m.index - 8;
    if (at < 0 || !suffixes.has(text.slice(at, m.index)) || !HEX8.test(text.slice(at, m.index))) {
      re.lastIndex = m.index + 1;
      continue;
    }
    let start = at >= 9 && text.startsWith('combined.', at - 9) ? at - 9 : at;
    if (start !== at && !idMayStartAt(text, start)) start = at; // `xcombined.`: the head alone
    if (idMayStartAt(text, start)) out.push(text.slice(start, m.index + 6));
    else re.lastIndex = m.index + 1;
  }
  return out;
}

const HEX8 = /^[0-9a-f]{8}$/;

/** A BLOB cell tokenised (BlobTemplate), or its bytes as they are when they name no identifier. */
function blobCell(buf: Buffer, index: DocIndex, uuids: ReadonlySet<string>): Cell {
  const { text, encoding } = bytesAsText(buf);
  const t = tokenize(text, index, uuids);
  return t.toks.length > 0 ? { ...t, blob: encoding } : buf;
}

export function isTemplate(v: unknown): v is Template {
  return typeof v === 'object' && v !== null && !Buffer.isBuffer(v) && 'lits' in v;
}

/** UTF-8 text without NUL bytes, or undefined for binary content. */
export function asText(buf: Buffer): string | undefined {
  if (buf.includes(0)) return undefined;
  const s = buf.toString('utf8');
  return Buffer.byteLength(s) === buf.length && !s.includes('\uFFFD') ? s : undefined;
}

/**
 * Bytes as seeding reads them for the identifiers in them (a file, a BLOB cell): UTF-8 text
 * (asText), else latin1, one character a byte; `encoding` writes the text back to such bytes.
 */
export function bytesAsText(buf: Buffer): { text: string; encoding: 'utf8' | 'latin1' } {
  const text = asText(buf);
  return text !== undefined ? { text, encoding: 'utf8' } : { text: buf.toString('latin1'), encoding: 'latin1' };
}
