// The rendered run report: self-contained, escaped, deterministic, and correct in a real browser
// (headless Chromium dumps the DOM; CI must have Chromium, so there the test fails without it).

import Database from 'better-sqlite3';
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { freezeSeed } from '../src/core/freeze.js';
import { generateSource, type SourceFixture } from '../src/fixtures/source.js';
import { renderRunReport, reportModel, type ReportRun } from '../src/seed/report.js';

const CHROMIUM = '/usr/bin/chromium';
const IN_CI = process.env.CI === 'true';

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});
function tmp(prefix = 'acm2-report-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  roots.push(d);
  return d;
}

type Summary = { source_doc_results: Record<string, { winner_doc_id: string; generated_docs: Array<{ doc_id: string }> }> };

function runRow(src: SourceFixture): ReportRun & { results_summary: string } {
  const db = new Database(src.dbPath, { readonly: true });
  try {
    return db.prepare('SELECT id, title, status, created_at, completed_at, preset_id, results_summary FROM runs WHERE id = ?').get(src.runId) as ReportRun & {
      results_summary: string;
    };
  } finally {
    db.close();
  }
}

describe('renderRunReport', () => {
  const src = generateSource(path.join(tmp(), 'source'), { withReport: false, models: ['openai:o4-mini', 'google:gemini-2.5-flash', 'anthropic:claude-sonnet-4'] });
  const run = runRow(src);
  const html = renderRunReport(run);

  it('is self-contained: no external URL, script, link or remote resource', () => {
    expect(html).not.toMatch(/https?:\/\//i);
    expect(html).not.toMatch(/<script|<link|<img|<iframe|\burl\(|\bsrc=|\bhref=/i);
    expect(html).toMatch(/^<!DOCTYPE html>/);
    expect(html).toContain('<style>');
  });

  it('is deterministic', () => {
    expect(renderRunReport(runRow(src))).toBe(html);
  });

  it('escapes every piece of text from the row', () => {
    const evil = renderRunReport({
      id: 'r"><x',
      title: '<script>alert(1)</script>',
      results_summary: {
        generated_docs: [{ id: '<b>doc</b>', model: 'm&m', source_doc_id: 's' }],
        pre_combine_evals_detailed: { '<b>doc</b>': { evaluations: [{ judge_model: '"judge"', average_score: 4 }], overall_average: 4 } },
        winner: '<b>doc</b>',
      },
    });
    expect(evil).not.toContain('<script>');
    expect(evil).not.toContain('<b>doc</b>');
    expect(evil).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(evil).toContain('&lt;b&gt;doc&lt;/b&gt;');
    expect(evil).toContain('m&amp;m');
    expect(evil).toContain('&quot;judge&quot;');
  });

  it('reads the legacy top-level shape (winner, pairwise.rankings)', () => {
    const m = reportModel({
      winner: 'aaaa0001.1111.fpf.1.openai_o4-mini',
      generated_docs: [
        { id: 'aaaa0001.1111.fpf.1.openai_o4-mini', model: 'openai:o4-mini', source_doc_id: 's' },
        { id: 'aaaa0001.2222.fpf.1.google_gemini', model: 'google:gemini', source_doc_id: 's' },
      ],
      pre_combine_evals_detailed: {
        'aaaa0001.1111.fpf.1.openai_o4-mini': { evaluations: [{ judge_model: 'j1', scores: [{ criterion: 'c', score: 4 }, { criterion: 'd', score: 5 }] }] },
      },
      pairwise: { rankings: [{ doc_id: 'aaaa0001.2222.fpf.1.google_gemini', elo: 990, wins: 0, losses: 1 }, { doc_id: 'aaaa0001.1111.fpf.1.openai_o4-mini', elo: 1010, wins: 1, losses: 0 }] },
    });
    expect(m.sources).toHaveLength(1);
    expect(m.sources[0]?.winner).toBe('aaaa0001.1111.fpf.1.openai_o4-mini');
    expect(m.sources[0]?.ranking.map((r) => r.docId)).toEqual(['aaaa0001.1111.fpf.1.openai_o4-mini', 'aaaa0001.2222.fpf.1.google_gemini']);
    expect(m.docs[0]?.byJudge.get('j1')).toBe(4.5);
    expect(m.docs[0]?.average).toBe(4.5);
    expect(m.docs[1]?.average).toBeUndefined();
  });

  it('falls back to the best average score when no pairwise winner is recorded, and survives an empty summary', () => {
    const m = reportModel(
      JSON.stringify({
        source_doc_results: {
          s1: {
            generated_docs: [{ doc_id: 'a' }, { doc_id: 'b' }],
            single_eval_results: { a: { avg_score: 3.1 }, b: { avg_score: 4.2 } },
            pairwise_results: null,
            winner_doc_id: null,
          },
        },
      }),
    );
    expect(m.sources[0]).toMatchObject({ winner: 'b', winnerBasis: 'score' });
    expect(renderRunReport({ id: 'r', results_summary: null })).toContain('<svg id="score-chart"');
  });
});

describe('the report in headless Chromium', () => {
  const available = existsSync(CHROMIUM);

  it.skipIf(!available && !IN_CI)('shows the winner in #winner and one bar per generated doc in svg#score-chart', async () => {
    expect(available, `${CHROMIUM} is missing: install it (apt-get install -y chromium); CI must not skip this test`).toBe(true);
    const root = tmp();
    const src = generateSource(path.join(root, 'source'), { withReport: false, models: ['openai:o4-mini', 'google:gemini-2.5-flash', 'anthropic:claude-sonnet-4'] });
    const seedsDir = path.join(root, 'seeds');
    freezeSeed({ sourceDb: src.dbPath, sourceFiles: src.filesDir, presetId: src.presetId, runId: src.runId, version: 'v1', seedsDir, renderReport: true });
    const file = path.join(seedsDir, 'v1', 'files', 'runs', src.runId, 'reports', 'report.html');
    expect(existsSync(path.join(src.filesDir, 'runs', src.runId, 'reports'))).toBe(false);

    const summary = JSON.parse(runRow(src).results_summary) as Summary;
    const sdr = Object.values(summary.source_doc_results)[0];
    const winner = sdr?.winner_doc_id as string;
    const generated = sdr?.generated_docs.map((d) => d.doc_id) ?? [];
    expect(generated).toHaveLength(3);

    const profile = path.join(root, 'chromium-profile');
    const r = await execa(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-dev-shm-usage',
        `--user-data-dir=${profile}`,
        '--dump-dom',
        pathToFileURL(file).href,
      ],
      { timeout: 90_000, reject: false },
    );
    expect(r.exitCode, r.stderr).toBe(0);
    const dom = r.stdout;

    const winnerEl = /<p id="winner">([\s\S]*?)<\/p>/.exec(dom)?.[1] ?? '';
    expect(winnerEl).toContain(winner);
    const svg = /<svg id="score-chart"[\s\S]*?<\/svg>/.exec(dom)?.[0] ?? '';
    const bars = [...svg.matchAll(/<rect class="bar[^"]*" data-doc="([^"]+)"/g)].map((m) => m[1]);
    expect(bars.sort()).toEqual([...generated].sort());
    expect(svg).toContain(`class="bar winner" data-doc="${winner}"`);
    expect(readFileSync(file, 'utf8')).not.toMatch(/https?:\/\//);
  }, 120_000);
});
