// Human rendering of a diff result: per table the rows added/removed/changed (with the fields),
// then the files. The --json document is the result itself.

import { Chalk } from 'chalk';
import type { DiffResult, DiffSide } from '../core/diff.js';

export function describeSide(s: DiffSide): string {
  return s.kind === 'package' ? `package ${s.version}` : `user ${s.userId} (${s.seedVersion})`;
}

export function renderDiff(r: DiffResult, opts: { color: boolean }): string {
  const c = new Chalk({ level: opts.color ? 1 : 0 });
  const head = `${describeSide(r.left)} vs ${describeSide(r.right)}`;
  if (r.equal) return `${head}: ${c.green('no differences')}`;
  const lines = [`${head}:`];
  // Users are compared through their ID maps: what is shown is named by the package's ids, which
  // are in neither user's data (each user's own ids differ).
  if (r.left.kind === 'user' || r.right.kind === 'user') lines.push(c.gray("(row ids and paths are the package's; each user has its own ids for them, see acm2_id_map)"));
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
