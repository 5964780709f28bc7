"""report.html: one self-contained page (inline SVG and CSS, no scripts, no network) that shows what
each technique lit up and what it missed. A pure function of the result records."""
from __future__ import annotations

import html
import re

from mibench.report import figures, markdown
from mibench.report import literature as LIT
from mibench.report import ranking as R
from mibench.report import summary as S
from mibench.results import Excluded, RunRecord

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}figure{margin:1em 0}figure svg{max-width:100%;height:auto}
.note{color:#666;font-size:13px}.fail{color:#b00;font-weight:bold}.pass{color:#070}
nav{display:flex;flex-wrap:wrap;gap:.3em 1em}nav a{white-space:nowrap}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _prose(text: str) -> str:
    """Escape Markdown-ish prose and turn its `code` spans into <code>, its **bold** into <b>."""
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text)))


def _table(headers: list[str], rows: list[list], raw_cols: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else _esc(c)}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(svg: str | None, caption: str) -> str:
    if not svg:
        return ""
    return f'<figure class="figure">{svg}<figcaption class="note">{_esc(caption)}</figcaption></figure>'


def _decision(rankings) -> str:
    parts = ["<h2 id='use'>Which technique to use</h2>"]
    for ranking in rankings:
        lines = R.use_when(ranking)
        if lines:
            items = "".join(f"<li>{_prose(line)}</li>" for line in lines)
            parts.append(f"<h3>{_esc(ranking.granularity.capitalize())} level</h3><ul>{items}</ul>")
    return "".join(parts)


def _rankings(rankings, every_sample) -> str:
    parts = ["<h2 id='rankings'>Rankings</h2>", f"<p class='note'>{_prose(markdown.RANKING_NOTE)}</p>",
             f"<p class='note'>{_prose(markdown.OVERALL_SAMPLES)}</p>"]
    for ranking in rankings:
        if ranking.ranked:
            headers, rows = markdown.paired_rows(ranking)
            parts += [f"<h3>{_esc(ranking.granularity.capitalize())} level</h3>",
                      _table(*markdown.ranking_rows(ranking, every_sample)),
                      "<p class='note'>Paired tests behind the order:</p>",
                      _table(headers, [[_prose(c) for c in row] for row in rows], raw_cols={0})]
    few = [r for r in rankings if r.few_cases]
    if few:
        parts.append(f"<h3>On fewer than {R.MIN_CASES} cases (not ranked)</h3>")
        for ranking in few:
            parts += [f"<p class='note'>{_esc(ranking.granularity)}:</p>",
                      _table(*markdown.ranking_rows(ranking, every_sample, "few_cases"))]
    return "".join(parts)


def _metric_notes(records) -> str:
    items = "".join(f"<li><b>{_esc(m.label)}</b> (<code>{_esc(m.name)}</code>, {_esc(m.direction)}): "
                    f"{_prose(m.description)}</li>" for m in S.metric_columns(S.ok(records)))
    return f"<ul class='note'>{items}</ul>"


def _role_recall(records) -> str:
    frame = S.role_recall(records)
    if frame.empty:
        return ""
    rows = []
    for tech, row in frame.iterrows():
        cells = []
        for value in row:
            if value != value:  # NaN: the technique never met this role
                cells.append('<span class="note">-</span>')
            else:
                shade = int(255 - 155 * value)
                cells.append(f'<span style="background:rgb({shade},{255},{shade});padding:0 4px">{value:.2f}</span>')
        rows.append([tech, *cells])
    return _table(["technique", *frame.columns], rows, raw_cols=set(range(1, len(frame.columns) + 1)))


def _missed_by_role(runs) -> str:
    """Per role, how much of it the top k missed: for a one-member role on how many seeds, for a
    larger one (edges, say) the mean number of its members missed per seed."""
    sizes: dict[str, int] = {}
    for role in runs[0].truth_labels.values():
        sizes[role] = sizes.get(role, 0) + 1
    missed: dict[str, int] = {}
    for r in runs:
        for m in r.metrics.get("failures", {}).get("missed", []):
            missed[m["role"]] = missed.get(m["role"], 0) + 1
    parts = []
    for role, n in sorted(missed.items()):
        if sizes.get(role, 1) == 1:
            parts.append(f"{role}: missed on {n} of {len(runs)} seeds")
        else:
            parts.append(f"{role}: {n / len(runs):.1f} of its {sizes[role]} missed per seed")
    return "; ".join(parts)


def _failures(records, case: str) -> str:
    rows = []
    first_seed = min(r.seed for r in records if r.case == case)
    for (tech,), runs in S.by([r for r in S.ok(records) if r.case == case], "technique").items():
        first = runs[0]
        fps = ", ".join(f"{fp['component']} (rank {fp['rank']})"
                        for fp in first.metrics.get("failures", {}).get("false_positives", []))
        first_missed = ", ".join(f"{m['component']} ({m['role']}, rank {m['rank']})"
                                 for m in first.metrics.get("failures", {}).get("missed", []))
        rows.append([tech, _missed_by_role(runs) or "none", first_missed or "none", fps or "none"])
    return _table(["technique", "missed from the top k, by role", f"missed on seed {first_seed}",
                   "top false positives (same seed)"], rows)


def _literature(literature: list[RunRecord], imported: list) -> list[str]:
    """The literature tier's section (see mibench.report.literature)."""
    if not literature and not imported:
        return []
    parts = ["<h2 id='literature'>Literature tier (GPT-2 small)</h2>", f"<p class='note'>{_prose(LIT.NOTE)}</p>"]
    if imported:
        parts += ["<h3>Imported results</h3>", _table(LIT.IMPORTED_HEADERS, LIT.imported_rows(imported))]
    for case in sorted({r.case for r in literature}):
        parts.append(f"<h3>Case {_esc(case)} (literature)</h3>")
        for granularity, headers, rows in markdown.case_table_rows(literature, case):
            parts.append(f"<p class='note'>{_esc(granularity)}: "
                         + (f"no technique ran ({_esc(rows[0][-1])})</p>" if not headers else "</p>"
                            + _table(headers, rows)))
    certs = markdown.certificate_rows(literature)
    if certs:
        parts += ["<h3>Measured certificates</h3><p class='note'>Each measurement next to the planted "
                  "tier's threshold as a reference; <i>flag</i>: it contradicts or falls short of the "
                  "paper's account (nothing here gates).</p>",
                  _table(["case", "check", "reference", "worst value per seed", "all seeds"], certs)]
    return parts


def render_report(records: list[RunRecord], excluded: list[Excluded], verification: list | None = None,
                  imported: list | None = None) -> str:
    records, literature = LIT.split(records)
    every_sample = records
    records = S.main_sample(sorted(records, key=lambda r: (r.case, r.technique, r.seed)))
    cases = markdown.case_order(records)
    rankings = R.rankings(records)
    parts = [f"<h1>mibench report</h1><p class='note'>{_prose(markdown.INTRO)} {_prose(S.commits_note(records))}</p>",
             "<nav><a href='#use'>which technique</a><a href='#rankings'>rankings</a><a href='#chance'>chance</a>"
             + ("<a href='#traps'>traps</a>" if any(r.case_tier == "trap" for r in records) else "")
             + ("<a href='#verification'>verification</a>" if verification else "")
             + ("<a href='#literature'>literature</a>" if literature or imported else "")
             + "".join(f'<a href="#case-{_esc(c)}">{_esc(c)}</a>' for c in cases) + "</nav>",
             _decision(rankings), _rankings(rankings, every_sample),
             _figure(figures.cost_quality(records), "Each point is a node-level technique on at least "
                     f"{figures.COST_QUALITY_MIN_CASES} cases: passes over the prompts per run against mean AUROC. "
                     "Dotted line: chance."),
             "<h2 id='chance'>Chance levels</h2><ul class='note'>"
             + "".join(f"<li>{_prose(line.lstrip(' -'))}</li>" for line in markdown.chance_lines(records))
             + "</ul>", f"<p class='note'>{_esc(markdown.METRICS_HEADING)}</p>", _metric_notes(records)]
    traps = markdown.traps_rows(records)
    if traps:
        parts += ["<h2 id='traps'>Traps</h2><p class='note'>A run is fooled when its top k is not the truth "
                  "set (F1@k below 1) or it names the wrong answer layer; each cell gives the majority "
                  "verdict, the seeds fooled and the figure the verdict rests on.</p>", _table(*traps),
                  _figure(figures.trap_verdicts(records), "Share of seeds on which each technique was "
                          "fooled, per trap (red: fooled on most seeds).")]
        for ranking in rankings:
            together = markdown.fooled_together_table(records, ranking)
            if together is not None:
                labels, pairs = R.fooled_together(records, [r.technique for r in R.useful(ranking)])
                rows = [[a, *[f"{pairs[(a, b)][0]}/{pairs[(a, b)][1]}" if a != b else str(pairs[(a, b)][0])
                              for b in labels]] for a in labels]
                parts += [f"<h3>Failing together ({_esc(ranking.granularity)} level)</h3><p class='note'>"
                          "(trap, seed) instances on which both techniques were fooled, out of those on "
                          "which either was; the diagonal: how often each was fooled.</p>",
                          _table(["both / either", *labels], rows)]
    parts += ["<h2>Found by role</h2><p class='note'>Share of each role's components a technique "
              "found: in the top k and standing out from the non-truth scores (above their median "
              "plus 3.5 robust standard deviations). Which roles each technique tends to miss "
              "(backup heads, negative heads, indirect-effect heads).</p>", _role_recall(records)]
    if verification:
        from mibench.report.verification import render_html

        parts.append(render_html(verification))
    agree = []
    for a, b in S.FEATURED_PAIRS:
        for case, info in S.agreement(records, a, b).items():
            where = "; ".join(f"{n} ({role or 'not truth'}): rank {ra} vs {rb}"
                              for n, ra, rb, role in info["disagree"])
            agree.append([f"{a} vs {b}", case, S.fmt(info["spearman"]), where or "-"])
    if agree:
        parts += ["<h2>Agreement between techniques</h2>",
                  _table(["pair", "case", "Spearman ρ", "largest disagreements (first seed)"], agree)]
    for case in cases:
        tier = next(r.case_tier for r in records if r.case == case)
        parts += [f'<h2 id="case-{_esc(case)}">Case {_esc(case)} <span class="note">({_esc(tier)})</span></h2>',
                  _figure(figures.head_heatmaps(records, case),
                          "What each node-level technique lit up: |score| per head, scaled to the "
                          "technique's maximum; ground-truth heads outlined by role."),
                  _figure(figures.rank_plots(records, case),
                          "Every component's score by rank, one panel per technique: truth coloured "
                          "by role, the grey band the non-truth noise up to the threshold a truth "
                          "component must pass to count as found, the dashed line the top-k cut."),
                  _figure(figures.faithfulness_curves(records, case),
                          "Metric recovered when keeping only each technique's top-ranked nodes."),
                  "<h3>Failure cases</h3>", _failures(records, case)]
        labels = S.role_label_rows(records, case)
        if labels:
            parts += ["<h3>Role labels</h3>", f"<p class='note'>{_prose(markdown.ROLE_LABELS_NOTE)}</p>",
                      _table(*labels)]
    cert_rows = markdown.certificate_rows(records)
    if cert_rows:
        styled = [[*row[:4], f'<span class="{"pass" if row[4] == "pass" else "fail"}">{row[4]}</span>']
                  for row in cert_rows]
        parts += ["<h2>Ground-truth certificates</h2><p class='note'>Each figure next to its "
                  "threshold, measured on every seed's model.</p>",
                  _table(["case", "check", "needs", "worst value per seed", "all seeds"], styled, raw_cols={4})]
    parts += _literature(S.main_sample(literature), imported or [])
    failed = [r for r in S.main_sample(records + literature) if r.status in ("error", "uncertified")]
    if failed or excluded:
        parts.append("<h2>Runs not scored</h2>")
        parts.append(_table(["what", "why"], [[f"{r.technique} on {r.case} seed {r.seed}", f"{r.status}: {r.error}"]
                                             for r in failed] + [[e.path, e.reason] for e in excluded]))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mibench report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
