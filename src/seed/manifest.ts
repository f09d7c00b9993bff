// The manifest.json of a seed package (SPEC §4, format 1): its type, its hash, and a shape check
// that turns any JSON into either a Manifest or a list of precise problems.

import { canonicalJson, compareStrings, sha256 } from './canonical.js';

export const MANIFEST_FORMAT = 1;
/** Version of ACM2's schema in seed.db: 1 = migrations/user/0001_acm2_schema.sql. */
export const SCHEMA_VERSION = 1;

/** Tables a package carries rows for, in the order rows are inserted (references first). */
export const PACKAGE_TABLES = ['contents', 'documents', 'presets', 'runs', 'tasks', 'artifacts'] as const;
export type PackageTable = (typeof PACKAGE_TABLES)[number];

/** Credentials and personal state: never in a package (seed.db holds them empty). */
export const EXCLUDED_TABLES = ['github_connections', 'provider_keys', 'api_keys', 'user_settings', 'usage_stats', 'user_meta'] as const;

export interface ManifestTable {
  rows: number;
  sha256: string;
}

export interface ManifestFile {
  /** Relative to `<version>/files/`, '/' separators. */
  path: string;
  bytes: number;
  sha256: string;
}

export interface Manifest {
  format: 1;
  version: string;
  createdAt: string;
  tool: { name: string; version: string };
  schemaVersion: number;
  source: { presetId: string; runId: string };
  tables: Record<string, ManifestTable>;
  seedDb: { bytes: number; sha256: string };
  files: ManifestFile[];
  packageSha256: string;
}

/** sha256 of the canonical JSON of the manifest without createdAt and packageSha256. */
export function computePackageSha256(m: Omit<Manifest, 'packageSha256' | 'createdAt'> & Partial<Manifest>): string {
  const { createdAt: _c, packageSha256: _p, ...rest } = m;
  return sha256(canonicalJson(rest));
}

/** Why a relative package path is unsafe, or undefined when it is fine. */
export function unsafePathReason(p: string): string | undefined {
  if (p.length === 0) return 'is empty';
  if (p.includes('\0')) return 'contains a NUL byte';
  if (p.includes('\\')) return 'contains a backslash';
  if (p.startsWith('/') || /^[A-Za-z]:/.test(p)) return 'is absolute';
  const segs = p.split('/');
  if (segs.includes('..')) return "contains '..'";
  if (segs.some((s) => s === '' || s === '.')) return "has an empty or '.' segment";
  return undefined;
}

const HEX64 = /^[0-9a-f]{64}$/;

type Json = unknown;

function isObj(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function isCount(v: Json): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}
function isHash(v: Json): v is string {
  return typeof v === 'string' && HEX64.test(v);
}
function isOneOf(list: readonly string[], v: string): boolean {
  return list.includes(v);
}

/**
 * Check the parsed manifest's shape. Returns the problems found (empty when it is a valid
 * Manifest); every file path is checked for safety here, before anything touches the disk.
 */
export function manifestShapeProblems(m: Json, expectedVersion: string): string[] {
  const p: string[] = [];
  if (!isObj(m)) return ['manifest.json is not a JSON object'];
  if (m.format !== MANIFEST_FORMAT) p.push(`manifest format is ${typeof m.format === 'string' ? `"${m.format}"` : JSON.stringify(m.format)}, expected ${MANIFEST_FORMAT}`);
  if (typeof m.version !== 'string') p.push('manifest version is missing or not a string');
  else if (m.version !== expectedVersion) p.push(`manifest names version '${m.version}' but the folder is '${expectedVersion}'`);
  if (typeof m.createdAt !== 'string' || Number.isNaN(Date.parse(m.createdAt))) p.push('manifest createdAt is missing or not a date');
  if (!isObj(m.tool) || typeof m.tool.name !== 'string' || typeof m.tool.version !== 'string') p.push('manifest tool must be {name, version} strings');
  if (!isCount(m.schemaVersion)) p.push('manifest schemaVersion is missing or not an integer');
  else if (m.schemaVersion !== SCHEMA_VERSION) p.push(`manifest schemaVersion ${m.schemaVersion} is not supported by this tool (expected ${SCHEMA_VERSION})`);
  if (!isObj(m.source) || typeof m.source.presetId !== 'string' || typeof m.source.runId !== 'string') {
    p.push('manifest source must be {presetId, runId} strings');
  } else if (unsafePathReason(m.source.runId) !== undefined || m.source.runId.includes('/')) {
    p.push(`manifest source.runId '${m.source.runId}' cannot name a folder`);
  }
  if (!isObj(m.tables)) p.push('manifest tables is missing or not an object');
  else {
    const tables = m.tables;
    for (const [name, t] of Object.entries(tables)) {
      // Exactly the package tables: credentials must never ride along, and a table that is not
      // seeded has no business in a package (nor can seeding skip one it expects).
      if (isOneOf(EXCLUDED_TABLES, name)) p.push(`manifest lists table ${name}, which holds credentials or personal state that a package must never hold`);
      else if (!isOneOf(PACKAGE_TABLES, name)) p.push(`manifest lists table "${name}", which is not a package table (${PACKAGE_TABLES.join(', ')})`);
      else if (!isObj(t) || !isCount(t.rows) || !isHash(t.sha256)) p.push(`manifest tables.${name} must be {rows, sha256}`);
    }
    const missing = PACKAGE_TABLES.filter((t) => !Object.hasOwn(tables, t));
    if (missing.length > 0) p.push(`manifest tables lacks ${missing.join(', ')} (a package holds every one of ${PACKAGE_TABLES.join(', ')})`);
  }
  if (!isObj(m.seedDb) || !isCount(m.seedDb.bytes) || !isHash(m.seedDb.sha256)) p.push('manifest seedDb must be {bytes, sha256}');
  if (!Array.isArray(m.files)) p.push('manifest files is missing or not a list');
  else {
    const runPrefix = isObj(m.source) && typeof m.source.runId === 'string' ? `runs/${m.source.runId}/` : undefined;
    let prev: string | undefined;
    m.files.forEach((f, i) => {
      if (!isObj(f) || typeof f.path !== 'string' || !isCount(f.bytes) || !isHash(f.sha256)) {
        p.push(`manifest files[${i}] must be {path, bytes, sha256}`);
        return;
      }
      const why = unsafePathReason(f.path);
      if (why) p.push(`manifest path '${f.path}' ${why}`);
      else if (runPrefix && !f.path.startsWith(runPrefix)) p.push(`manifest path '${f.path}' is outside ${runPrefix}`);
      if (prev !== undefined && compareStrings(prev, f.path) >= 0) p.push(`manifest files are not sorted and unique at '${f.path}'`);
      prev = f.path;
    });
  }
  if (!isHash(m.packageSha256)) p.push('manifest packageSha256 is missing or not a sha256');
  return p;
}
