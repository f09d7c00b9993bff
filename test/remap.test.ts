import { describe, expect, it } from 'vitest';
import { DocIndex, extendMap, render, renderBytes, safeDocId, tokenize, findDocIds } from '../src/seed/remap.js';

const S = '9490e0ef-b200-46fb-8c2c-21f2673307e8';
const RUN = '746301ce-a929-4e90-b271-7b15022ab1d0';
const D1 = '673307e8.4a48.fpf.1.openai_o4-mini';
const D2 = 'combined.673307e8.2b47.openai_gpt-5';
const D3 = '673307e8.9f00.fpf.1.openrouter_meta-llama/llama-3';

function mapFor(text: string, docs: string[]) {
  const index = new DocIndex(docs);
  const t = tokenize(text, index);
  const kinds = new Map<string, string>();
  for (const tok of t.toks) kinds.set(tok, tok === S ? 'contents' : tok === RUN ? 'runs' : tok.includes('-') && tok.length === 36 ? 'uuid' : 'doc');
  const added = extendMap(new Map(), kinds.keys(), (k) => kinds.get(k)!);
  return { t, map: new Map(added.map((a) => [a.source, a.target])), added };
}

describe('remapper', () => {
  it('finds UUIDs and doc ids in JSON keys, values, paths and free text', () => {
    const text = JSON.stringify({ [D1]: { doc_id: D1, source_doc_id: S }, combined: D2 }) + ` logs/${RUN}/fpf_${S}.fpf.1.openai_o4-mini.log generated/${D1}.md`;
    const { t } = mapFor(text, [D1, D2]);
    expect(new Set(t.toks)).toEqual(new Set([D1, S, D2, RUN]));
    expect(t.toks.filter((x) => x === D1)).toHaveLength(3);
  });

  it('rebuilds doc ids from the new source id suffix with a fresh tag, keeping the rest', () => {
    const { map } = mapFor(`${S} ${D1} ${D2}`, [D1, D2]);
    const newS = map.get(S)!;
    expect(newS).not.toBe(S);
    const n1 = map.get(D1)!;
    const n2 = map.get(D2)!;
    expect(n1.split('.')[0]).toBe(newS.slice(-8));
    expect(n1.endsWith('.fpf.1.openai_o4-mini')).toBe(true);
    expect(n2.startsWith(`combined.${newS.slice(-8)}.`)).toBe(true);
    expect(n2.endsWith('.openai_gpt-5')).toBe(true);
  });

  it('maps a doc id and its safe file name consistently when the model has a slash', () => {
    const text = `"${D3}" generated/${safeDocId(D3)}.md ${S}`;
    const { map } = mapFor(text, [D3]);
    expect(safeDocId(map.get(D3)!)).toBe(map.get(safeDocId(D3)));
  });

  it('renders every token and leaves no source id behind', () => {
    const text = `{"${D1}": "${S}", "x": "${RUN}"}`;
    const { t, map } = mapFor(text, [D1]);
    const out = render(t, map);
    expect(out).not.toContain(S);
    expect(out).not.toContain(RUN);
    expect(out).not.toContain(D1);
    expect(JSON.parse(out)).toBeTypeOf('object');
  });

  it('renders to bytes exactly as render() then UTF-8, for each map it is given', () => {
    // Multi-byte text on both sides of tokens, a token at each end, and one literal left empty.
    const text = `${S}é ${D1}\u{1F600}${RUN}${D2} «ü» ${safeDocId(D3)}`;
    const { t, map } = mapFor(text, [D1, D2, D3]);
    expect(t.lits[0]).toBe('');
    const other = mapFor(text, [D1, D2, D3]).map;
    for (const m of [map, other, map]) expect(renderBytes(t, m).equals(Buffer.from(render(t, m), 'utf8'))).toBe(true);
    expect(renderBytes(t, map).equals(renderBytes(t, other))).toBe(false);
    expect(() => renderBytes(t, new Map())).toThrow(/no mapping for identifier/);
  });

  it('does not match ids inside longer hex runs, and two maps share nothing', () => {
    const sha = 'ab'.repeat(32);
    const { t } = mapFor(`${sha} x${S}y`, []);
    expect(t.toks).toEqual([]);
    const a = mapFor(`${S} ${D1}`, [D1]).map;
    const b = mapFor(`${S} ${D1}`, [D1]).map;
    for (const v of a.values()) expect([...b.values()]).not.toContain(v);
  });

  it('reuses an existing map on rerun', () => {
    const first = extendMap(new Map(), [S], () => 'contents');
    const again = extendMap(new Map(first.map((a) => [a.source, a.target])), [S], () => 'contents');
    expect(again).toEqual([]);
  });

  it('finds quoted doc ids in JSON text', () => {
    expect(findDocIds(JSON.stringify({ a: D1, [D2]: 1 }))).toEqual([D1, D2]);
  });

  it('finds an id right after an escape that ends in a letter or digit: JSON \\n \\t \\u201c, URL %2F %22', () => {
    // json.dumps (ensure_ascii) of a traceback line or a curly-quoted mention, and a URL-encoded path.
    const json = JSON.stringify({ errors: [`Traceback (most recent call last):\n${S}\n\t${RUN}`], note: `\u201c${D1}\u201d` }).replace(/\u201c|\u201d/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`);
    const url = `GET /api/files?path=runs%2F${RUN}%2Fgenerated%2F${D1}.md&q=%22${S}%22`;
    const { t, map } = mapFor(`${json} ${url}`, [D1]);
    expect(t.toks.filter((x) => x === S)).toHaveLength(2);
    expect(t.toks.filter((x) => x === RUN)).toHaveLength(2);
    expect(t.toks.filter((x) => x === D1)).toHaveLength(2);
    const out = render(t, map);
    for (const id of [S, RUN, D1]) expect(out).not.toContain(id);
    expect(JSON.parse(out.slice(0, json.length))).toBeTypeOf('object');
    // JSON kept as a string inside JSON doubles the backslash: still an escape. A plain letter is no boundary.
    const inner = JSON.stringify({ raw_response: JSON.stringify({ note: `see\n${S}` }) });
    expect(mapFor(inner, []).t.toks).toEqual([S]);
    expect(mapFor(`n${S} x${RUN} %2${S} \\u20${S}`, [D1]).t.toks).toEqual([]);
  });
});

describe('remapper: ids cut short or in escaped paths', () => {
  const uuids = new Set([S, RUN]);
  const prepare = (text: string, userId?: number) => {
    const t = tokenize(text, new DocIndex([]), uuids);
    const kinds = new Map<string, string>([[S, 'contents'], [RUN, 'runs']]);
    for (const tok of t.toks) if (!kinds.has(tok)) kinds.set(tok, 'uuid_prefix');
    const added = extendMap(new Map(), kinds.keys(), (k) => kinds.get(k)!, userId);
    return { t, map: new Map(added.map((a) => [a.source, a.target])) };
  };

  it('maps a UUID cut short (a failed task\'s str(e)[:100]) to as much of its new id, and leaves other hex alone', () => {
    const error = `FPF generation failed for source ${S} in run ${RUN}: timeout after 800s`.slice(0, 100);
    expect(error.endsWith(RUN.slice(0, 23))).toBe(true);
    const text = `${error} | ${JSON.stringify({ e: `Error loading content ${S.slice(0, 20)}` })} | ${RUN.slice(0, 13).toUpperCase()}... | 746301ce-aaaa | ${RUN.slice(0, 8)}x`;
    const { t, map } = prepare(text);
    const out = render(t, map);
    for (const id of [S, RUN]) expect(out.toLowerCase()).not.toContain(id.slice(0, 13));
    expect(out).toContain(`in run ${map.get(RUN)!.slice(0, 23)}`);
    expect(out).toContain(`content ${map.get(S)!.slice(0, 20)}"`);
    expect(out).toContain(`| ${map.get(RUN)!.slice(0, 13).toUpperCase()}...`);
    // Not a prefix of a package id, or not cut at a boundary: kept.
    expect(out).toContain('| 746301ce-aaaa |');
    expect(out).toContain(`| ${RUN.slice(0, 8)}x`);
  });

  it('maps a bare first group, tail or dashless form of an id (run_id[:8], …S8, S8.tag, uuid.hex) to the same part of its new id', () => {
    const hex = RUN.replace(/-/g, '');
    const text = `[run ${RUN.slice(0, 8)}] source \u2026${S.slice(-8)} doc ${S.slice(-8)}.4a48 group ${S.slice(-12)} hex=${hex} HEX=${hex.toUpperCase()} logs/${RUN.slice(0, 8)}.log`;
    const { t, map } = prepare(text);
    const out = render(t, map);
    const newRun = map.get(RUN)!;
    const newS = map.get(S)!;
    for (const part of [RUN.slice(0, 8), S.slice(-8), hex]) expect(out.toLowerCase()).not.toContain(part);
    expect(out).toBe(
      `[run ${newRun.slice(0, 8)}] source \u2026${newS.slice(-8)} doc ${newS.slice(-8)}.4a48 group ${newS.slice(-12)} hex=${newRun.replace(/-/g, '')} HEX=${newRun.replace(/-/g, '').toUpperCase()} logs/${newRun.slice(0, 8)}.log`,
    );
    // Not a part of a package id, inside a longer word or hex run, or the last group of another dashed run: kept.
    const other = `12345678 ${RUN.slice(0, 8)}x x${S.slice(-8)} ${'a'.repeat(24)}${S.slice(-8)} ffffffff-aaaa-bbbb-cccc-${S.slice(-12)} ${RUN.slice(0, 8)}-aaaa`;
    expect(prepare(other).t.toks).toEqual([]);
  });

  it('maps the source user\'s folder in a Windows path kept in JSON and in a URL-encoded path', () => {
    const text = JSON.stringify({ errors: [`open C:\\acm2\\data\\user_7\\runs\\${RUN}\\generated\\${D1}.md`] }) + ` GET /f?p=data%2Fuser_7%2Fruns%2F${RUN}%2Flogs`;
    expect(text).toContain('\\\\user_7\\\\runs');
    const { t, map } = prepare(text, 12);
    const out = render(t, map);
    expect(out).not.toContain('user_7');
    expect(out).toContain(`data\\\\user_12\\\\runs\\\\${map.get(RUN)}`);
    expect(out).toContain(`data%2Fuser_12%2Fruns%2F${map.get(RUN)}`);
  });
});
