// Human rendering of a diff result: per table the rows added/removed/changed (with the fields),
// then the files. The --json document is the result itself.

import { color, plain } from './color.js';
import type { DiffResult, DiffSide } from '../core/diff.js';

export function describeSide(s: DiffSide): string {
  return s.kind === 'package' ? `package ${s.version}` : `user ${s.userId} (${s.seedVersion})`;
}

/**
 * Whose ids name the rows and paths shown, for the forms with a user: against a package, the
 * package is rendered through the user's ID map, so they are the user's own (a package row the
 * map does not cover keeps the package's); between users, each is mapped back to the package's
 * ids, except what a user created itself, which no map names.
 */
function idsNote(r: DiffResult): string | undefined {
  if (r.left.kind === 'user' && r.right.kind === 'user') {
    return "seeded rows and files are named by the package's ids (each user's own mapped back through its acm2_id_map; those of a user's seed of another version than its current one as '<version>:<id>'); rows and files a user created keep that user's ids";
  }
  const user = r.left.kind === 'user' ? r.left : r.right.kind === 'user' ? r.right : undefined;
  if (!user) return undefined;
  return `row ids and paths are user ${user.userId}'s own (its acm2_id_map pairs each with the package's); ids its map does not cover are the package's`;
}

/** What the user's seeds of other versions made, which was left out of a user-vs-package diff. */
function otherVersionsNote(r: DiffResult): string | undefined {
  if (!r.otherVersions || r.right.kind !== 'user') return undefined;
  const user = r.right.userId;
  const parts = Object.entries(r.otherVersions).map(([v, n]) => `${n.rows} row${n.rows === 1 ? '' : 's'} and ${n.files} file${n.files === 1 ? '' : 's'} its seed of ${v} made (acm2 diff --user ${user} --seed-version ${v} compares them)`);
  return `left out, as not user ${user}'s own: ${parts.join('; ')}`;
}

export function renderDiff(r: DiffResult, opts: { color: boolean }): string {
  const c = opts.color ? color : plain;
  const head = `${describeSide(r.left)} vs ${describeSide(r.right)}`;
  const others = otherVersionsNote(r);
  if (r.equal) return `${head}: ${c.green('no differences')}${others ? `\n${c.gray(`(${others})`)}` : ''}`;
  const lines = [`${head}:`];
  const note = idsNote(r);
  if (note) lines.push(c.gray(`(${note})`));
  if (others) lines.push(c.gray(`(${others})`));
  for (const [table, d] of Object.entries(r.tables)) {
    if (d.added.length + d.removed.length + d.changed.length === 0) continue;
    lines.push('', c.bold(`${table}: ${d.added.length} added, ${d.removed.length} removed, ${d.changed.length} changed`));
    for (const id of d.removed) lines.push(c.red(`  - ${id}`));
    for (const id of d.added) lines.push(c.green(`  + ${id}`));
    for (const ch of d.changed) lines.push(c.yellow(`  ~ ${ch.id}`) + `  ${ch.fields.join(', ')}`);
  }
  const f = r.files;
  if (f.added.length + f.removed.length + f.changed.length > 0) {
    lines.push('', c.bold(`files: ${f.added.length} added, ${f.removed.length} removed, ${f.changed.length} changed`));
    for (const p of f.removed) lines.push(c.red(`  - ${p}`));
    for (const p of f.added) lines.push(c.green(`  + ${p}`));
    for (const p of f.changed) lines.push(c.yellow(`  ~ ${p}`));
  }
  return lines.join('\n');
}
