// Text the tool did not write (names, emails, paths found on disk, errors stored by ACM2 or an
// earlier run) as a person's terminal is shown it: control characters and bidi overrides
// escaped where they stand, never sent raw. A raw ESC can clear the screen, retitle the
// window or recolour what follows; a CR or a newline can draw a line the tool never printed
// ("all users ok"); U+202E shows a name reversed. A backslash is escaped too (`\\`): every
// backslash shown then starts an escape, so a name holding the four characters `\x1b` never
// reads as one holding an ESC. --json needs only jsonText below: JSON.stringify escapes the C0
// controls and the backslash, and a JSON reader does not interpret the rest.

/** Backslash, C0 controls, DEL, C1 controls, line/paragraph separators and the bidi embedding, override and isolate marks. */
const UNSAFE = /[\\\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

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
