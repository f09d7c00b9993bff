// Text the tool did not write (names, emails, paths found on disk, errors stored by ACM2 or an
// earlier run) as a person's terminal is shown it: control characters and bidi overrides
// escaped where they stand, never sent raw. A raw ESC can clear the screen, retitle the
// window or recolour what follows; a CR or a newline can draw a line the tool never printed
// ("all users ok"); U+202E shows a name reversed. A backslash is escaped too (`\\`): every
// backslash shown then starts an escape, so a name holding the four characters `\x1b` never
// reads as one holding an ESC. --json needs only jsonText below: JSON.stringify escapes the C0
// controls and the backslash, and a JSON reader does not interpret the rest.

/**
 * Backslash, C0 controls, DEL, C1 controls, line/paragraph separators, the bidi embedding,
 * override and isolate marks, and a lone UTF-16 surrogate (half of a pair, which a terminal is
 * sent as U+FFFD: two different names would then look the same).
 */
const UNSAFE = /[\\\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

const NAMED: Record<string, string> = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * The text with every unsafe character written as an escape: `\\`, `\n`, `\r`, `\t`, `\x1b`,
 * `\u202e`. Applied once, to text as it was found: our own sentences hold no backslash, and a
 * message quoting a name quotes it raw (not JSON.stringify'd), or its backslashes would be doubled.
 */
export function visible(s: string): string {
  return s.replace(UNSAFE, (c) => {
    const named = NAMED[c];
    if (named) return named;
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * A copy of a result with visible() applied to every string in it (object keys too), for the
 * renderers of a person's output: each value they show is then safe, whichever field it is.
 * Plain objects and arrays are copied; anything else (numbers, Dates…) is kept as it is.
 */
export function visibleDeep<T>(value: T): T {
  if (typeof value === 'string') return visible(value) as T;
  if (Array.isArray(value)) return value.map((v) => visibleDeep(v)) as T;
  if (value !== null && typeof value === 'object') {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) return value;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[visible(k)] = visibleDeep(v);
    return out as T;
  }
  return value;
}

/**
 * JSON.stringify, with DEL and the C1 controls (U+007F–U+009F) escaped too: JSON.stringify leaves
 * them raw, and a terminal showing `--json` output acts on them (U+009B is CSI). The document
 * parses to the same values.
 */
export function jsonText(value: unknown, space?: number): string {
  return JSON.stringify(value, null, space).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

// Widths on a terminal count cells, not UTF-16 code units: a CJK character or an emoji takes
// two, a combining mark none, and an emoji outside the BMP is two code units. Counted here, not
// with string-width: its current major takes ~70 ms to load (acm2 keeps startup close to
// `node -e 0`), and the old one cli-table3 brings sees only one block of combining marks. A
// doubtful character counts wide: a cut a cell early is harmless, a line a cell too long wraps.

/**
 * Code points drawn two cells wide: East Asian Wide and Fullwidth (EastAsianWidth.txt), as whole
 * blocks. Emoji are matched by their property below.
 */
const WIDE: ReadonlyArray<readonly [number, number]> = [
  [0x1100, 0x115f], [0x231a, 0x231b], [0x2329, 0x232a], [0x2e80, 0x303e], [0x3041, 0x33ff], [0x3400, 0x4dbf],
  [0x4e00, 0x9fff], [0xa000, 0xa4cf], [0xa960, 0xa97f], [0xac00, 0xd7a3], [0xf900, 0xfaff], [0xfe10, 0xfe19],
  [0xfe30, 0xfe6f], [0xff00, 0xff60], [0xffe0, 0xffe6], [0x16fe0, 0x16fe4], [0x17000, 0x18cff], [0x1aff0, 0x1b2ff],
  [0x1f200, 0x1f2ff], [0x20000, 0x3fffd],
];
const EMOJI = /\p{Emoji_Presentation}/u;
/** Drawn with the character before: combining marks, format characters (ZWJ, variation selectors), Hangul medial vowels and finals. */
const ZERO = /[\p{Mn}\p{Me}\p{Cf}\u1160-\u11ff]/u;
/** A skin tone: drawn with the emoji before it. */
const MODIFIER = /\p{Emoji_Modifier}/u;
/** An escape visible() writes: kept whole by a cut, never left as `\x1` or a lone `\`. */
const ESCAPE = /\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt\\])/y;

function charCells(cp: number): number {
  if (cp >= 0x20 && cp < 0x7f) return 1;
  if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) return 0;
  const c = String.fromCodePoint(cp);
  // The soft hyphen is a format character that terminals draw.
  if (cp !== 0xad && ZERO.test(c)) return 0;
  return EMOJI.test(c) || WIDE.some(([lo, hi]) => cp >= lo && cp <= hi) ? 2 : 1;
}

/**
 * s as the pieces a cut keeps whole, each with its cells: an escape visible() wrote, or a
 * character with what is drawn with it (combining marks, a variation selector, a skin tone, a
 * zero-width joiner and the character it joins). Never half of a surrogate pair.
 */
function clusters(s: string): Array<{ text: string; cells: number }> {
  const out: Array<{ text: string; cells: number }> = [];
  let joined = false;
  for (let i = 0; i < s.length; ) {
    ESCAPE.lastIndex = i;
    const escape = ESCAPE.exec(s)?.[0];
    if (escape !== undefined) {
      out.push({ text: escape, cells: escape.length });
      i += escape.length;
      joined = false;
      continue;
    }
    const cp = s.codePointAt(i)!;
    const ch = String.fromCodePoint(cp);
    i += ch.length;
    const cells = charCells(cp);
    const last = out.at(-1);
    if (last && (joined || cells === 0 || MODIFIER.test(ch))) {
      last.text += ch;
      // U+FE0F asks for the emoji form (❤️), two cells. Joined emoji count each: a terminal
      // that cannot draw the sequence as one draws them side by side.
      last.cells = cp === 0xfe0f ? Math.max(last.cells, 2) : last.cells + cells;
    } else out.push({ text: ch, cells });
    joined = cp === 0x200d;
  }
  return out;
}

/** How many terminal cells s takes. */
export function cellWidth(s: string): number {
  if (/^[\u0020-\u007e]*$/.test(s)) return s.length;
  return clusters(s).reduce((n, c) => n + c.cells, 0);
}

/** The longest start of s that fits in `cells` terminal cells (s as visible() wrote it: its escapes are kept whole). */
export function fitStart(s: string, cells: number): string {
  let out = '';
  let used = 0;
  for (const c of clusters(s)) {
    if (used + c.cells > cells) break;
    out += c.text;
    used += c.cells;
  }
  return out;
}

/** The longest end of s that fits in `cells` terminal cells (s as visible() wrote it: its escapes are kept whole). */
export function fitEnd(s: string, cells: number): string {
  const all = clusters(s);
  let from = all.length;
  let used = 0;
  while (from > 0 && used + all[from - 1]!.cells <= cells) used += all[--from]!.cells;
  return all.slice(from).map((c) => c.text).join('');
}
