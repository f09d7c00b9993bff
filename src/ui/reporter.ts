// How results reach a person or a script: one JSON document on stdout with --json,
// tables and colour for a person; progress and logs on stderr, only when stderr is a TTY.

import type { Config } from '../config.js';
import { cellWidth, fitEnd, fitStart, jsonText, visible } from './text.js';

export interface ProgressSink {
  /** Begin a phase; total is the number of items when known. */
  start(label: string, total?: number): void;
  tick(n?: number, detail?: string): void;
  done(): void;
}

export const silentProgress: ProgressSink = { start() {}, tick() {}, done() {} };

export interface Reporter {
  readonly json: boolean;
  readonly color: boolean;
  progress(): ProgressSink;
  /** A log line on stderr (suppressed by --quiet and in --json unless a TTY). */
  log(msg: string): void;
  verbose(msg: string): void;
  /**
   * Something the operator must see even from cron or a script (a safety check bypassed): on
   * stderr always, --json and --quiet too (stdout keeps its one document).
   */
  warn(msg: string): void;
  /** The command's one result: JSON document or human text on stdout. */
  result(data: unknown, human: () => string): void;
}

export function createReporter(cfg: Pick<Config, 'json' | 'quiet' | 'verbose' | 'color'>): Reporter {
  const tty = Boolean(process.stderr.isTTY);
  const showLogs = !cfg.quiet && (!cfg.json || tty);
  return {
    json: cfg.json,
    color: cfg.color,
    progress: () => (tty && !cfg.quiet ? ttyProgress() : silentProgress),
    log: (msg) => {
      if (showLogs) process.stderr.write(`${msg}\n`);
    },
    verbose: (msg) => {
      if (cfg.verbose && showLogs) process.stderr.write(`${msg}\n`);
    },
    warn: (msg) => {
      process.stderr.write(`acm2: ${visible(msg)}\n`);
    },
    result: (data, human) => {
      if (cfg.json) process.stdout.write(`${jsonText(data, 2)}\n`);
      else if (!cfg.quiet) {
        const text = human();
        if (text) process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
      }
    },
  };
}

/** A single-line progress display with rate and ETA, redrawn at most every 100 ms. */
function ttyProgress(): ProgressSink {
  let label = '';
  let total: number | undefined;
  let count = 0;
  let started = 0;
  let last = 0;
  let detail = '';
  const draw = (force = false) => {
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const secs = Math.max((now - started) / 1000, 0.001);
    const rate = count / secs;
    // A total counted up front can be passed (jobs queued meanwhile): never "12/10".
    const of = total === undefined ? undefined : Math.max(total, count);
    const eta = of !== undefined && rate > 0 ? Math.max(0, (of - count) / rate) : undefined;
    const parts = [label, of !== undefined ? `${count}/${of}` : `${count}`, `${rate.toFixed(1)}/s`];
    if (eta !== undefined) parts.push(`ETA ${formatSeconds(eta)}`);
    process.stderr.write(`\r\x1b[2K${fitLine(parts.join('  '), detail, process.stderr.columns)}`);
  };
  return {
    start(l, t) {
      label = l;
      total = t;
      count = 0;
      started = Date.now();
      draw(true);
    },
    tick(n = 1, d) {
      count += n;
      // A file name from a source tree: shown escaped, as everywhere.
      if (d !== undefined) detail = visible(d);
      draw();
    },
    done() {
      draw(true);
      process.stderr.write('\n');
    },
  };
}

/**
 * The progress line cut to the terminal's width: a longer one wraps, and the next redraw (\r and
 * clear line) clears only its last row, so the rows above pile up on the screen. The detail (a
 * path) loses its start, which says least. Measured in cells: a CJK or emoji file name takes
 * twice its length.
 */
export function fitLine(head: string, detail: string, columns: number | undefined): string {
  const line = detail ? `${head}  ${detail}` : head;
  // The last column is left free: a line that fills it wraps the cursor on some terminals.
  const room = columns && columns > 1 ? columns - 1 : undefined;
  if (room === undefined || cellWidth(line) <= room) return line;
  const headCells = cellWidth(head);
  if (headCells + 3 >= room) return fitStart(head, room);
  return `${head}  …${fitEnd(detail, room - headCells - 3)}`;
}

export function formatSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(0)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${Math.round(s % 60)}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * Write a chunk of a streamed result to stdout, waiting while the reader is behind: without
 * the wait, a slow pipe (`acm2 user list --json | slow-consumer`) has every chunk queued in
 * memory. A reader that went away (EPIPE) drops the rest, as main.ts does for every write.
 */
export async function writeStreamed(chunk: string): Promise<void> {
  const out = process.stdout;
  if (out.destroyed) return;
  if (out.write(chunk)) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      out.off('drain', done);
      out.off('close', done);
      out.off('error', done);
      resolve();
    };
    out.on('drain', done);
    out.on('close', done);
    out.on('error', done);
  });
}

/**
 * A streamed JSON document that is open on stdout: how to end it when an error stops the stream
 * half way, so that stdout still holds one JSON document (SPEC: errors too), with the error in it.
 */
let openDocument: ((errorJson: string) => string) | undefined;

/** Mark a streamed document open (close: its ending around an error's JSON) or, with undefined, complete. */
export function streamedDocument(close: ((errorJson: string) => string) | undefined): void {
  openDocument = close;
}

/** The error document for --json: `{"error":…}`, or the end of a streamed document left open, holding the error. */
export function jsonErrorDocument(error: { code: string; message: string }): string {
  const close = openDocument;
  openDocument = undefined;
  return close ? close(jsonText(error)) : `${jsonText({ error })}\n`;
}
