// Colour for a person at a terminal, and chalk only then: loading it costs ~13 ms, a twentieth of
// a command's start, paid for nothing by every cron job, pipe and CI run. A command's action loads
// it before running when its flags ask for colour (`wantsColor`); until then every style is plain.

import type { ChalkInstance } from 'chalk';

type StyleName = 'red' | 'green' | 'yellow' | 'gray' | 'bold';
export type Paint = Record<StyleName, (s: string) => string>;

let live: ChalkInstance | undefined;

/** Load chalk (at its own colour level for this terminal); every `color` style uses it from then on. */
export async function loadColor(): Promise<void> {
  live ??= (await import('chalk')).default;
}

const style = (name: StyleName) => (s: string): string => (live ? live[name](s) : s);

/** The styles the tool uses: chalk's once `loadColor` ran, the text unchanged before. */
export const color: Paint = { red: style('red'), green: style('green'), yellow: style('yellow'), gray: style('gray'), bold: style('bold') };

const same = (s: string) => s;
/** No colour whatever was loaded (--json, --no-color, a pipe). */
export const plain: Paint = { red: same, green: same, yellow: same, gray: same, bold: same };
