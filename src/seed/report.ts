// Renders a run's reports/report.html from its results_summary for runs that have none:
// one self-contained page (inline CSS and SVG, no external URL), deterministic for the same row.

export interface ReportRun {
  id: string;
  title?: string | null;
  status?: string | null;
  created_at?: string | null;
  completed_at?: string | null;
  preset_id?: string | null;
  /** The column as stored (JSON text) or already parsed. */
  results_summary: unknown;
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}
function num(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}
function list(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}
function mean(xs: number[]): number | undefined {
  return xs.length > 0 ? xs.reduce((a, b) => a + b, 0) / xs.length : undefined;
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

export interface DocScores {
  docId: string;
  sourceDocId?: string;
  model?: string;
  /** judge -> mean of that judge's trial averages */
  byJudge: Map<string, number>;
  average?: number;
  byCriterion: Map<string, number>;
}

export interface Ranking {
  docId: string;
  rating?: number;
  wins?: number;
  losses?: number;
}

export interface SourceReport {
  sourceDocId: string;
  winner?: string;
  winnerBasis: 'pairwise' | 'score' | 'none';
  ranking: Ranking[];
  postCombineRanking: Ranking[];
  combined: Array<{ docId: string; model?: string }>;
}

export interface ReportModel {
  docs: DocScores[];
  judges: string[];
  sources: SourceReport[];
}

/** Scores and rankings pulled from every results_summary shape ACM2 writes. */
export function reportModel(summaryIn: unknown): ReportModel {
  let summary = summaryIn;
  if (typeof summary === 'string') {
    try {
      summary = JSON.parse(summary);
    } catch {
      summary = undefined;
    }
  }
  const s: Obj = isObj(summary) ? summary : {};
  const sdrs: Array<[string, Obj]> = isObj(s.source_doc_results)
    ? Object.entries(s.source_doc_results).filter((e): e is [string, Obj] => isObj(e[1]))
    : [];

  // Generated docs in first-seen order: top level, then each source's list.
  const docs = new Map<string, DocScores>();
  const addDoc = (d: unknown, fallbackSource?: string) => {
    if (!isObj(d)) return;
    const id = str(d.id) ?? str(d.doc_id);
    if (!id || docs.has(id)) return;
    docs.set(id, { docId: id, sourceDocId: str(d.source_doc_id) ?? fallbackSource, model: str(d.model), byJudge: new Map(), byCriterion: new Map() });
  };
  list(s.generated_docs).forEach((d) => addDoc(d));
  for (const [sid, sdr] of sdrs) list(sdr.generated_docs).forEach((d) => addDoc(d, sid));

  const detailed = isObj(s.pre_combine_evals_detailed) ? s.pre_combine_evals_detailed : {};
  const singles = new Map<string, Obj>();
  for (const [, sdr] of sdrs) {
    if (!isObj(sdr.single_eval_results)) continue;
    for (const [d, r] of Object.entries(sdr.single_eval_results)) if (isObj(r)) singles.set(d, r);
  }

  for (const doc of docs.values()) {
    const trials = new Map<string, number[]>();
    const push = (judge: string | undefined, v: number | undefined) => {
      if (!judge || v === undefined) return;
      trials.set(judge, [...(trials.get(judge) ?? []), v]);
    };
    const trialAverage = (e: Obj) =>
      num(e.average_score) ?? mean(list(e.scores).flatMap((x) => (isObj(x) && num(x.score) !== undefined ? [num(x.score) as number] : [])));
    const det = detailed[doc.docId];
    const single = singles.get(doc.docId);
    if (isObj(det) && list(det.evaluations).length > 0) {
      for (const e of list(det.evaluations)) if (isObj(e)) push(str(e.judge_model) ?? str(e.model), trialAverage(e));
      doc.average = num(det.overall_average);
    } else if (single) {
      for (const e of list(single.results)) if (isObj(e)) push(str(e.model) ?? str(e.judge_model), trialAverage(e));
      if (trials.size === 0 && isObj(single.scores_by_model)) {
        for (const [j, v] of Object.entries(single.scores_by_model)) push(j, num(v));
      }
    }
    if (single) {
      doc.average ??= num(single.avg_score);
      if (isObj(single.scores_by_criterion)) {
        for (const [c, v] of Object.entries(single.scores_by_criterion)) if (num(v) !== undefined) doc.byCriterion.set(c, num(v) as number);
      }
    }
    for (const [j, vs] of trials) doc.byJudge.set(j, mean(vs) as number);
    doc.average ??= mean([...doc.byJudge.values()]);
  }

  const judges = [...new Set([...docs.values()].flatMap((d) => [...d.byJudge.keys()]))].sort();

  const ranking = (pr: unknown): Ranking[] => {
    if (!isObj(pr)) return [];
    const rows = list(pr.elo_ratings).length > 0 ? list(pr.elo_ratings) : list(pr.rankings);
    return rows
      .filter(isObj)
      .flatMap((r) => {
        const docId = str(r.doc_id);
        return docId ? [{ docId, rating: num(r.rating) ?? num(r.elo), wins: num(r.wins), losses: num(r.losses) }] : [];
      })
      .map((r, i) => ({ r, i }))
      .sort((a, b) => (b.r.rating ?? -Infinity) - (a.r.rating ?? -Infinity) || a.i - b.i)
      .map(({ r }) => r);
  };
  const winnerOf = (pr: unknown) => (isObj(pr) ? str(pr.winner_doc_id) : undefined);
  const bestByScore = (sid: string | undefined) => {
    const cands = [...docs.values()].filter((d) => d.average !== undefined && (sid === undefined || d.sourceDocId === sid));
    return cands.sort((a, b) => (b.average as number) - (a.average as number))[0]?.docId;
  };

  const sources: SourceReport[] = [];
  for (const [sid, sdr] of sdrs) {
    const pairwise = sdr.pairwise_results ?? s.pairwise_results;
    const pw = str(sdr.winner_doc_id) ?? winnerOf(pairwise);
    const byScore = pw ? undefined : bestByScore(sid);
    sources.push({
      sourceDocId: sid,
      winner: pw ?? byScore,
      winnerBasis: pw ? 'pairwise' : byScore ? 'score' : 'none',
      ranking: ranking(pairwise),
      postCombineRanking: ranking(sdr.post_combine_eval_results),
      combined: [...list(sdr.combined_docs), ...(list(sdr.combined_docs).length === 0 ? [sdr.combined_doc] : [])]
        .filter(isObj)
        .flatMap((c) => (str(c.doc_id) ? [{ docId: str(c.doc_id) as string, model: str(c.model) }] : [])),
    });
  }
  if (sources.length === 0) {
    // Legacy single-doc summaries keep everything at the top level.
    const pairwise = s.pairwise ?? s.pairwise_results;
    const pw = str(s.winner) ?? winnerOf(pairwise);
    const byScore = pw ? undefined : bestByScore(undefined);
    sources.push({
      sourceDocId: [...docs.values()][0]?.sourceDocId ?? '',
      winner: pw ?? byScore,
      winnerBasis: pw ? 'pairwise' : byScore ? 'score' : 'none',
      ranking: ranking(pairwise),
      postCombineRanking: ranking(s.post_combine_eval),
      combined: [...(str(s.combined_doc_id) ? [str(s.combined_doc_id) as string] : []), ...list(s.combined_doc_ids).filter((x): x is string => typeof x === 'string')]
        .filter((v, i, a) => a.indexOf(v) === i)
        .map((docId) => ({ docId })),
    });
  }
  return { docs: [...docs.values()], judges, sources };
}

const fmt = (v: number | undefined, digits = 2) => (v === undefined ? '–' : v.toFixed(digits));

const CSS = `
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:2rem auto;max-width:1000px;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem;border-bottom:1px solid #d0d7de;padding-bottom:.25rem}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;padding:.1em .3em;border-radius:4px}
.meta{color:#59636e;margin:0}
table{border-collapse:collapse;margin:.5rem 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
#winner{font-size:1.05rem;background:#dafbe1;border:1px solid #4ac26b;border-radius:6px;padding:.75rem 1rem}
svg text{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;fill:#1f2328}
svg .bar{fill:#0969da}svg .bar.winner{fill:#1a7f37}svg .axis{stroke:#8c959f}
details{margin:.5rem 0}footer{margin-top:3rem;color:#59636e;font-size:12px}
`;

function scoreChart(m: ReportModel, winners: Set<string>): string {
  const docs = m.docs;
  const maxScore = Math.max(5, ...docs.map((d) => d.average ?? 0));
  const labelW = Math.min(480, Math.max(120, ...docs.map((d) => d.docId.length * 7.3 + 12)));
  const barMax = 300;
  const rowH = 28;
  const width = Math.ceil(labelW + barMax + 60);
  const height = docs.length * rowH + 24;
  const parts: string[] = [];
  docs.forEach((d, i) => {
    const y = i * rowH + 4;
    const w = d.average === undefined ? 0 : (d.average / maxScore) * barMax;
    const cls = winners.has(d.docId) ? 'bar winner' : 'bar';
    parts.push(
      `<text x="0" y="${y + 15}">${escapeHtml(d.docId)}</text>`,
      `<rect class="${cls}" data-doc="${escapeHtml(d.docId)}" x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="20" rx="3"><title>${escapeHtml(d.docId)}: ${fmt(d.average)}</title></rect>`,
      `<text x="${(labelW + w + 6).toFixed(1)}" y="${y + 15}">${fmt(d.average)}</text>`,
    );
  });
  const axisY = docs.length * rowH + 6;
  parts.push(`<line class="axis" x1="${labelW}" y1="${axisY}" x2="${labelW + barMax}" y2="${axisY}"/>`);
  for (let t = 0; t <= maxScore; t++) {
    const x = labelW + (t / maxScore) * barMax;
    parts.push(`<text x="${x.toFixed(1)}" y="${axisY + 16}" text-anchor="middle">${t}</text>`);
  }
  return `<svg id="score-chart" role="img" aria-label="Average score per generated doc" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${parts.join('')}</svg>`;
}

function rankingTable(rows: Ranking[]): string {
  if (rows.length === 0) return '<p class="meta">No pairwise comparisons recorded.</p>';
  const body = rows
    .map((r, i) => `<tr><td class="num">${i + 1}</td><td><code>${escapeHtml(r.docId)}</code></td><td class="num">${fmt(r.rating, 1)}</td><td class="num">${r.wins ?? '–'}</td><td class="num">${r.losses ?? '–'}</td></tr>`)
    .join('');
  return `<table class="ranking"><thead><tr><th>#</th><th>Doc</th><th>Elo rating</th><th>Wins</th><th>Losses</th></tr></thead><tbody>${body}</tbody></table>`;
}

/** The complete HTML page; every piece of text from the row is escaped. */
export function renderRunReport(run: ReportRun): string {
  const m = reportModel(run.results_summary);
  const title = run.title ?? `Run ${run.id}`;
  const winners = new Set(m.sources.flatMap((s) => (s.winner ? [s.winner] : [])));
  const meta = [
    `Run <code>${escapeHtml(run.id)}</code>`,
    run.status ? `status ${escapeHtml(run.status)}` : '',
    run.preset_id ? `preset <code>${escapeHtml(run.preset_id)}</code>` : '',
    run.completed_at ? `completed ${escapeHtml(run.completed_at)}` : run.created_at ? `created ${escapeHtml(run.created_at)}` : '',
  ]
    .filter(Boolean)
    .join(' · ');

  const winnerItems = m.sources.map((s) => {
    const basis = s.winnerBasis === 'pairwise' ? 'pairwise winner' : s.winnerBasis === 'score' ? 'highest average score' : '';
    const forSource = m.sources.length > 1 || s.sourceDocId ? ` for source doc <code>${escapeHtml(s.sourceDocId)}</code>` : '';
    return s.winner
      ? `<span class="winner-entry"><strong>Winner</strong>${forSource}: <code class="winner-doc">${escapeHtml(s.winner)}</code> (${basis})</span>`
      : `<span class="winner-entry">No winner recorded${forSource}.</span>`;
  });

  const judgeHead = m.judges.map((j) => `<th>${escapeHtml(j)}</th>`).join('');
  const scoreRows = m.docs
    .map(
      (d) =>
        `<tr><td><code>${escapeHtml(d.docId)}</code></td><td>${escapeHtml(d.model ?? '')}</td>${m.judges
          .map((j) => `<td class="num">${fmt(d.byJudge.get(j))}</td>`)
          .join('')}<td class="num"><strong>${fmt(d.average)}</strong></td></tr>`,
    )
    .join('');
  const criteria = [...new Set(m.docs.flatMap((d) => [...d.byCriterion.keys()]))].sort();
  const criteriaTable =
    criteria.length === 0
      ? ''
      : `<details><summary>Scores by criterion</summary><table class="criteria"><thead><tr><th>Criterion</th>${m.docs
          .map((d) => `<th><code>${escapeHtml(d.docId)}</code></th>`)
          .join('')}</tr></thead><tbody>${criteria
          .map((c) => `<tr><td>${escapeHtml(c)}</td>${m.docs.map((d) => `<td class="num">${fmt(d.byCriterion.get(c))}</td>`).join('')}</tr>`)
          .join('')}</tbody></table></details>`;

  const perSource = m.sources
    .map((s) => {
      const heading = m.sources.length > 1 ? `<h3>Source doc <code>${escapeHtml(s.sourceDocId)}</code></h3>` : '';
      const post = s.postCombineRanking.length > 0 ? `<h3>After combining</h3>${rankingTable(s.postCombineRanking)}` : '';
      const combined =
        s.combined.length > 0
          ? `<h3>Combined docs</h3><ul>${s.combined.map((c) => `<li><code>${escapeHtml(c.docId)}</code>${c.model ? ` (${escapeHtml(c.model)})` : ''}</li>`).join('')}</ul>`
          : '';
      return `${heading}${rankingTable(s.ranking)}${post}${combined}`;
    })
    .join('');

  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} — run report</title>
<style>${CSS}</style>
</head>
<body>
<header>
<h1>${escapeHtml(title)}</h1>
<p class="meta">${meta}</p>
</header>
<section>
<h2>Winner</h2>
<p id="winner">${winnerItems.join('<br>')}</p>
</section>
<section>
<h2>Average score per generated doc</h2>
${scoreChart(m, winners)}
</section>
<section>
<h2>Scores by judge</h2>
${
  m.docs.length > 0
    ? `<table class="scores"><thead><tr><th>Generated doc</th><th>Model</th>${judgeHead}<th>Average</th></tr></thead><tbody>${scoreRows}</tbody></table>${criteriaTable}`
    : '<p class="meta">No scores recorded.</p>'
}
</section>
<section>
<h2>Pairwise ranking</h2>
${perSource}
</section>
<footer>Rendered by acm2 from this run's results_summary.</footer>
</body>
</html>
`;
}
