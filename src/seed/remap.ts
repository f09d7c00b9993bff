// The remapper: finds every identifier a package holds and rewrites it to this user's ids.
// It does not rely on a list of JSON paths: it scans every text value, JSON key and value,
// file name and text file for tokens (UUIDs and ACM2's derived doc ids) and maps each one.

import { randomBytes, randomUUID } from 'node:crypto';

export const UUID_RE_SRC = '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}';
/** Generated `{S8}.{tag}.{gen}.{iter}.{model}` and combined `combined.{S8}.{tag}.{model}` doc ids (and their safe forms). */
const DOC_HEAD_SRC = '(?:combined\\.)?[0-9a-f]{8}\\.[0-9a-f]{4}\\.';
const DOC_TAIL_SRC = "[^\\s\"'<>()\\[\\]{},;`|*]*";

/**
 * The source user's folder in a path to one of the package's runs (`data/user_7/runs/{run_id}/…`,
 * as ACM2's debug log lines write it): the folder is the seeded user's, never the source's. The
 * separator may be a Windows one, doubled as JSON writes it (`data\\user_7\\runs\\…` in an error
 * kept in results_summary), or URL-encoded (`data%2Fuser_7%2Fruns%2F…`).
 */
const PATH_SEP_SRC = '(?:[/\\\\]|\\\\\\\\|%2[Ff]|%5[Cc])';
const USER_DIR_SRC = `(user_[0-9]+)(?=${PATH_SEP_SRC}runs${PATH_SEP_SRC}(${UUID_RE_SRC})(?![0-9A-Za-z]))`;
/**
 * A UUID cut short: an error stored as `str(e)[:100]`, or a description cut at a fixed width, can
 * end inside one. From its first group and dash on, it is still that id (and 32+ bits of it).
 */
const UUID_PREFIX_SRC = '([0-9a-fA-F]{8}-[0-9a-fA-F-]{0,26})(?![0-9A-Za-z-])';
/**
 * A bare part of a UUID: its first group (`[run 746301ce]`, as a log or a file name shortens a run
 * id to `run_id[:8]`) or its tail (`source …673307e8`, a doc head cut before its tag's dot
 * `673307e8.4a48`, the last group `21f2673307e8`), or the whole id without its dashes (Python's
 * `uuid.hex`). 32 bits or more of one id: still that id. Never the last group of a longer
 * dashed run (a UUID glued to a word, left whole rather than half rewritten).
 */
const UUID_PART_SRC = '(?<![0-9A-Fa-f]-)([0-9a-fA-F]{32}|[0-9a-fA-F]{8,12})(?![0-9A-Za-z-])';

const TOKEN_SRC = `(?:(${UUID_RE_SRC})(?![0-9A-Za-z])|(${DOC_HEAD_SRC}${DOC_TAIL_SRC})|${USER_DIR_SRC}|${UUID_PREFIX_SRC}|${UUID_PART_SRC})`;
/** One regex for candidate tokens; the look-behind keeps them from starting inside a longer word or hex run. */
const TOKEN_RE = new RegExp(`(?<![0-9A-Za-z])${TOKEN_SRC}`, 'g');
/**
 * Candidates right after an escape ending in a letter or digit (see idMayStartAt), which TOKEN_RE's
 * look-behind does not let start. Found by a second, separate scan: folding the escapes into
 * TOKEN_RE's look-behind (an alternation) made tokenising a large package twice as slow.
 */
const AFTER_ESCAPE_RE = /(?:\\(?:[nrtbf]|u[0-9A-Fa-f]{4})|%[0-9A-Fa-f]{2})(?=[0-9A-Fa-fu])/g;
const TOKEN_AT_RE = new RegExp(TOKEN_SRC, 'y');
const USER_DIR_RE = /^user_[0-9]+$/;

const isAlnum = (c: number) => (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
const isHex = (c: number) => (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);

/**
 * May an identifier start at text[at]? At the start, after a character that is not a letter or
 * digit, or after an escape whose last character is one: JSON text (ACM2 stores json.dumps with
 * ensure_ascii) writes a newline, a tab or a curly quote before an id as `\n`, `\t`, `\u201c`
 * (also doubled, `\\n`, in JSON kept as a string inside JSON: a judge's raw_response); a URL writes
 * a '/' or a quote before one as `%2F`, `%22`. The character the escape stands for is the real
 * neighbour, so the id is a whole token.
 */
export function idMayStartAt(text: string, at: number): boolean {
  if (at === 0 || !isAlnum(text.charCodeAt(at - 1))) return true;
  if (at >= 3 && text.charCodeAt(at - 3) === 37 && isHex(text.charCodeAt(at - 2)) && isHex(text.charCodeAt(at - 1))) return true;
  if (at >= 2 && text.charCodeAt(at - 2) === 92 && 'nrtbf'.includes(text[at - 1]!)) return true;
  if (at < 6 || text.charCodeAt(at - 6) !== 92 || text.charCodeAt(at - 5) !== 117) return false;
  for (let i = at - 4; i < at; i++) if (!isHex(text.charCodeAt(i))) return false;
  return true;
}

/** Token candidates that start right after an escape, in order (TOKEN_RE's groups). */
function afterEscapes(text: string): RegExpExecArray[] {
  const out: RegExpExecArray[] = [];
  AFTER_ESCAPE_RE.lastIndex = 0;
  for (let m = AFTER_ESCAPE_RE.exec(text); m; m = AFTER_ESCAPE_RE.exec(text)) {
    const at = m.index + m[0].length;
    if (!idMayStartAt(text, at)) continue;
    TOKEN_AT_RE.lastIndex = at;
    const t = TOKEN_AT_RE.exec(text);
    if (t) out.push(t);
  }
  return out;
}

/** A `user_{id}` folder token (see USER_DIR_SRC). */
export function isUserDir(s: string): boolean {
  return USER_DIR_RE.test(s);
}
const DOC_ID_RE = new RegExp(`^${DOC_HEAD_SRC}[^\\s]+$`);

const UUID_RE = new RegExp(`^${UUID_RE_SRC}$`);

export function isUuid(s: string): boolean {
  return s.length === 36 && UUID_RE.test(s);
}

export function isDocId(s: string): boolean {
  return DOC_ID_RE.test(s);
}

/** ACM2's safe_doc_id: ':' '/' '\' become '_' (file names in generated/). */
export function safeDocId(docId: string): string {
  return docId.replace(/[:/\\]/g, '_');
}

/**
 * The known doc ids of a package, indexed by their `S8.tag.` head so a candidate token can be
 * matched to the longest known id that starts it (file names add `.md`, logs add `.log`).
 */
export class DocIndex {
  private byHead = new Map<string, string[]>();
  constructor(docIds: Iterable<string>) {
    for (const id of docIds) {
      for (const form of new Set([id, safeDocId(id)])) {
        const head = docHead(form);
        if (!head) continue;
        const list = this.byHead.get(head) ?? [];
        if (!list.includes(form)) list.push(form);
        list.sort((a, b) => b.length - a.length);
        this.byHead.set(head, list);
      }
    }
  }
  /** The longest known doc id (or safe form) that prefixes candidate. */
  match(candidate: string): string | undefined {
    const head = docHead(candidate);
    if (!head) return undefined;
    const list = this.byHead.get(head);
    if (!list) return undefined;
    // A truncated mention ('Evaluated 673307e8.4a48.fp...') still carries the head: map that.
    return list.find((id) => candidate.startsWith(id) && isBoundary(candidate, id.length)) ?? head;
  }
  get size(): number {
    return this.byHead.size;
  }
}

function isBoundary(s: string, at: number): boolean {
  // A doc id is followed by the end, '.md'/'.log'-style suffixes, or punctuation; never by more id text.
  return at === s.length || !/[0-9A-Za-z_-]/.test(s[at]!);
}

function docHead(s: string): string | undefined {
  const m = /^((?:combined\.)?[0-9a-f]{8}\.[0-9a-f]{4}\.)/.exec(s);
  return m?.[1];
}

/**
 * Text split at the identifiers it holds: lits[0] tok[0] lits[1] tok[1] … lits[n].
 * Tokenising once per package lets each user's copy be a join, with no regex per user.
 */
export interface Template {
  lits: string[];
  toks: string[];
}

/**
 * `uuids`: the UUIDs that are identifiers of this package (its rows' primary keys), lower-cased:
 * a mention in capitals is the same id. Any other
 * UUID-shaped text (a citation URL, an id of something outside ACM2) is left as it is, not
 * rewritten per user. Without it every UUID is a token, and no bare part of one (UUID_PART_SRC) is.
 */
export function tokenize(text: string, docs: DocIndex, uuids?: ReadonlySet<string>): Template {
  const lits: string[] = [];
  const toks: string[] = [];
  let last = 0;
  const escaped = afterEscapes(text);
  let e = 0;
  for (let from = 0; ; ) {
    TOKEN_RE.lastIndex = from;
    let m = TOKEN_RE.exec(text);
    while (e < escaped.length && escaped[e]!.index < from) e++;
    if (e < escaped.length && (!m || escaped[e]!.index < m.index)) m = escaped[e]!;
    if (!m) break;
    let tok: string | undefined;
    if (m[1]) {
      if (uuids && !uuids.has(m[1].toLowerCase())) {
        from = m.index + m[1].length;
        continue;
      }
      tok = m[1];
    } else if (m[2]) tok = docs.match(m[2]);
    else if (m[3] && (!uuids || uuids.has(m[4]!.toLowerCase()))) tok = m[3];
    else if (m[5] && (!uuids || uuidPrefixOf(m[5], uuids) !== undefined)) tok = m[5];
    else if (m[6] && uuids && uuidPartOf(m[6], uuids) !== undefined) tok = m[6];
    if (!tok) {
      // An unknown doc-id-shaped run: skip past its head only, it may contain a UUID later.
      from = m.index + 1;
      continue;
    }
    lits.push(text.slice(last, m.index));
    toks.push(tok);
    last = m.index + tok.length;
    from = last;
  }
  lits.push(text.slice(last));
  return { lits, toks };
}

/**
 * The one UUID of `uuids` (lower-case) that `prefix` (a UUID cut short, see UUID_PREFIX_SRC) begins,
 * or undefined: none, or more than one, which cannot tell which id it was.
 */
export function uuidPrefixOf(prefix: string, uuids: Iterable<string>): string | undefined {
  const p = prefix.toLowerCase();
  let found: string | undefined;
  for (const u of uuids) {
    if (!u.startsWith(p) || u.length === p.length) continue;
    if (found !== undefined && found !== u) return undefined;
    found = u;
  }
  return found;
}

/**
 * The one UUID of `uuids` (lower-case) whose first group or tail `part` is, or that it is without dashes (see
 * UUID_PART_SRC), or undefined: none, or more than one.
 */
export function uuidPartOf(part: string, uuids: Iterable<string>): { uuid: string; head: boolean } | undefined {
  let index = partIndexes.get(uuids);
  if (!index) {
    index = new Map();
    const add = (p: string, at: { uuid: string; head: boolean }) => {
      const had = index!.get(p);
      index!.set(p, had === undefined || had?.uuid === at.uuid ? at : null);
    };
    for (const u of uuids) {
      add(u.slice(0, 8), { uuid: u, head: true });
      for (let n = 8; n <= 12; n++) add(u.slice(-n), { uuid: u, head: false });
      add(u.replace(/-/g, ''), { uuid: u, head: false });
    }
    partIndexes.set(uuids, index);
  }
  return index.get(part.toLowerCase()) ?? undefined;
}

/** Per set of UUIDs: each first group and tail (8 to 12 characters) -> its UUID, null when two share it. */
const partIndexes = new WeakMap<Iterable<string>, Map<string, { uuid: string; head: boolean } | null>>();

/** A bare first group or tail of a UUID (see UUID_PART_SRC). */
export function isUuidPart(s: string): boolean {
  return /^(?:[0-9a-fA-F]{8,12}|[0-9a-fA-F]{32})$/.test(s);
}

/** A UUID cut short after its first group (see UUID_PREFIX_SRC). */
export function isUuidPrefix(s: string): boolean {
  return /^[0-9a-fA-F]{8}-[0-9a-fA-F-]{0,26}$/.test(s);
}

export function render(t: Template, map: ReadonlyMap<string, string>): string {
  if (t.toks.length === 0) return t.lits[0]!;
  let out = t.lits[0]!;
  for (let i = 0; i < t.toks.length; i++) {
    const tok = t.toks[i]!;
    const to = map.get(tok);
    if (to === undefined) throw new Error(`no mapping for identifier ${tok}`);
    out += to + t.lits[i + 1]!;
  }
  return out;
}

/** Each template's literals as UTF-8, encoded once per package (see renderBytes). */
const litBytes = new WeakMap<Template, Buffer[]>();

/**
 * render() straight to UTF-8 bytes: the literals are encoded once per template and copied per
 * user, so a large text file is not built as a string and then encoded again for every user.
 * Equal, byte for byte, to Buffer.from(render(t, map), 'utf8').
 */
export function renderBytes(t: Template, map: ReadonlyMap<string, string>): Buffer {
  let lits = litBytes.get(t);
  if (!lits) {
    lits = t.lits.map((l) => Buffer.from(l, 'utf8'));
    litBytes.set(t, lits);
  }
  const tos: string[] = [];
  let size = 0;
  for (const l of lits) size += l.length;
  for (const tok of t.toks) {
    const to = map.get(tok);
    if (to === undefined) throw new Error(`no mapping for identifier ${tok}`);
    tos.push(to);
    size += Buffer.byteLength(to, 'utf8');
  }
  const out = Buffer.allocUnsafe(size);
  let at = lits[0]!.copy(out, 0);
  for (let i = 0; i < tos.length; i++) {
    at += out.write(tos[i]!, at, 'utf8');
    at += lits[i + 1]!.copy(out, at);
  }
  if (at !== size) throw new Error(`rendered ${at} bytes where ${size} were counted`);
  return out;
}

/** Every distinct token a set of templates holds. */
export function tokensOf(templates: Iterable<Template>, into = new Set<string>()): Set<string> {
  for (const t of templates) for (const tok of t.toks) into.add(tok);
  return into;
}

/** Doc-id candidates found in a text, for building the DocIndex before tokenising. */
export function findDocIds(text: string): string[] {
  const out: string[] = [];
  const re = /"((?:combined\.)?[0-9a-f]{8}\.[0-9a-f]{4}\.[^"\\\s]+)"/g;
  for (let m = re.exec(text); m; m = re.exec(text)) out.push(m[1]!);
  return out;
}

export interface MapEntry {
  kind: string;
  source: string;
  target: string;
}

/**
 * Extend an ID map so it covers every token. UUIDs get fresh uuid4s; a doc id is rebuilt from
 * its new source id's last 8 characters (ACM2 attributes docs to sources by that suffix) and a
 * fresh 4-hex tag, keeping the rest (generator, iteration, model) as it was.
 */
export function extendMap(
  existing: ReadonlyMap<string, string>,
  tokens: Iterable<string>,
  kindOf: (token: string) => string,
  userId?: number,
): MapEntry[] {
  const added: MapEntry[] = [];
  const map = new Map(existing);
  const used = new Set(map.values());
  const uuids: string[] = [];
  const prefixes: string[] = [];
  const parts: string[] = [];
  const docs: string[] = [];
  for (const t of tokens) {
    if (map.has(t)) continue;
    if (isUserDir(t)) {
      // The source user's folder is this user's folder: not random, the path must lead home.
      if (userId === undefined) throw new Error(`no user id to map ${t} to`);
      map.set(t, `user_${userId}`);
      added.push({ kind: kindOf(t), source: t, target: `user_${userId}` });
      continue;
    }
    if (isUuid(t)) uuids.push(t);
    else if (isUuidPrefix(t)) prefixes.push(t);
    else if (isUuidPart(t)) parts.push(t);
    else docs.push(t);
  }
  // A UUID written in capitals (or mixed case) is the same id as its lower-case form: it gets the
  // same new id, in capitals, so the two mentions still name one thing.
  const all = new Set([...map.keys(), ...uuids]);
  const variant = (t: string) => t !== t.toLowerCase() && all.has(t.toLowerCase());
  for (const source of uuids.filter((t) => !variant(t)).sort()) {
    let target = randomUUID();
    while (used.has(target)) target = randomUUID();
    used.add(target);
    map.set(source, target);
    added.push({ kind: kindOf(source), source, target });
  }
  for (const source of uuids.filter(variant).sort()) {
    const lower = map.get(source.toLowerCase())!;
    const target = source === source.toUpperCase() ? lower.toUpperCase() : lower;
    map.set(source, target);
    added.push({ kind: kindOf(source), source, target });
  }
  // A UUID cut short becomes as much of the new id as was left of the old, in the case it was
  // written in: a failed task's `str(e)[:100]` ending in `8c98f774-784d-4201-9` names no one else.
  const whole = new Map<string, string>();
  for (const [s, t] of map) if (isUuid(s)) whole.set(s.toLowerCase(), t.toLowerCase());
  for (const source of prefixes.sort()) {
    const of = uuidPrefixOf(source, whole.keys());
    if (of === undefined) throw new Error(`no identifier of the package begins with ${source}`);
    const cut = whole.get(of)!.slice(0, source.length);
    const target = /[A-F]/.test(source) && !/[a-f]/.test(source) ? cut.toUpperCase() : cut;
    map.set(source, target);
    added.push({ kind: kindOf(source), source, target });
  }
  // A bare first group or tail becomes the same part of the new id, in the case it was written in.
  const wholeIds = new Set(whole.keys());
  for (const source of parts.sort()) {
    const of = uuidPartOf(source, wholeIds);
    if (of === undefined) throw new Error(`no identifier of the package begins or ends with ${source}`);
    const to = whole.get(of.uuid)!;
    const cut = of.head ? to.slice(0, 8) : source.length === 32 ? to.replace(/-/g, '') : to.slice(-source.length);
    const target = /[A-F]/.test(source) && !/[a-f]/.test(source) ? cut.toUpperCase() : cut;
    map.set(source, target);
    added.push({ kind: kindOf(source), source, target });
  }
  // Suffix index of every mapped UUID: old last-8 -> new last-8.
  const suffix = new Map<string, string>();
  for (const [s, t] of map) if (isUuid(s)) suffix.set(s.slice(-8).toLowerCase(), t.slice(-8).toLowerCase());
  // Every form of one doc (its id, its safe file name, a truncated mention) shares its head
  // `S8.tag.`, so all forms get one new head and stay consistent with each other.
  const parse = (id: string) => /^((?:combined\.)?)([0-9a-f]{8})\.([0-9a-f]{4})\.(.*)$/s.exec(id)!;
  const headKey = (m: RegExpExecArray) => `${m[1]}${m[2]}.${m[3]}`;
  const newHead = new Map<string, { s8: string; tag: string }>();
  for (const [s, t] of map) {
    if (isUuid(s) || isUserDir(s) || isUuidPrefix(s) || isUuidPart(s)) continue;
    const ms = parse(s);
    const mt = parse(t);
    newHead.set(headKey(ms), { s8: mt[2]!, tag: mt[3]! });
  }
  const usedHeads = new Set([...newHead.values()].map((h) => `${h.s8}.${h.tag}`));
  for (const source of docs.sort()) {
    const m = parse(source);
    const key = headKey(m);
    let head = newHead.get(key);
    if (!head) {
      const s8 = suffix.get(m[2]!) ?? randomBytes(4).toString('hex');
      let tag: string;
      do tag = randomBytes(2).toString('hex');
      while (usedHeads.has(`${s8}.${tag}`));
      head = { s8, tag };
      usedHeads.add(`${s8}.${tag}`);
      newHead.set(key, head);
    }
    const target = `${m[1]}${head.s8}.${head.tag}.${m[4]}`;
    used.add(target);
    map.set(source, target);
    added.push({ kind: kindOf(source), source, target });
  }
  return added;
}
