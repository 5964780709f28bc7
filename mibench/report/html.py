"""report.html: one self-contained page (inline SVG and CSS, no scripts, no network) that shows what
each technique lit up and what it missed. A pure function of the result records."""
from __future__ import annotations

import html
import re

from mibench.report import figures, markdown
from mibench.report import summary as S
from mibench.results import Excluded, RunRecord

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}figure{margin:1em 0}figure svg{max-width:100%;height:auto}
.note{color:#666;font-size:13px}.fail{color:#b00;font-weight:bold}.pass{color:#070}
nav a{margin-right:1em}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _prose(text: str) -> str:
    """Escape Markdown-ish prose and turn its `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _table(headers: list[str], rows: list[list], raw_cols: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else _esc(c)}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(svg: str | None, caption: str) -> str:
    if not svg:
        return ""
    return f'<figure class="figure">{svg}<figcaption class="note">{_esc(caption)}</figcaption></figure>'


def _overall(records) -> str:
    return _table(*S.overall_rows(records))


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


def _failures(records, case: str) -> str:
    rows = []
    for (tech,), runs in S.by([r for r in S.ok(records) if r.case == case], "technique").items():
        missed: dict[str, int] = {}
        for r in runs:
            for m in r.metrics.get("failures", {}).get("missed", []):
                missed[m["role"]] = missed.get(m["role"], 0) + 1
        first = runs[0]
        fps = ", ".join(f"{fp['component']} (rank {fp['rank']})"
                        for fp in first.metrics.get("failures", {}).get("false_positives", []))
        missed_txt = ", ".join(f"{role} ×{n}/{len(runs)}" for role, n in sorted(missed.items()))
        first_missed = ", ".join(f"{m['component']} ({m['role']}, rank {m['rank']})"
                                 for m in first.metrics.get("failures", {}).get("missed", []))
        rows.append([tech, missed_txt or "none", first_missed or "none", fps or "none"])
    return _table(["technique", "roles missed (seeds)", f"missed on seed {min(r.seed for r in records if r.case == case)}",
                   "top false positives (same seed)"], rows)


def render_report(records: list[RunRecord], excluded: list[Excluded]) -> str:
    every_sample = records
    records = S.main_sample(sorted(records, key=lambda r: (r.case, r.technique, r.seed)))
    cases = sorted({r.case for r in records})
    parts = [f"<h1>mibench report</h1><p class='note'>{_prose(markdown.INTRO)} {_prose(S.commits_note(records))}</p>",
             f"<p class='note'>{_esc(markdown.METRICS_HEADING)}</p>", _metric_notes(records),
             "<nav>" + "".join(f'<a href="#case-{_esc(c)}">{_esc(c)}</a>' for c in cases) + "</nav>",
             "<h2>Overall</h2>", f"<p class='note'>{_prose(markdown.OVERALL_SAMPLES)}</p>",
             _overall(every_sample),
             _figure(figures.cost_quality(records), "Each point is a technique: mean runtime per run "
                     "against mean AUROC over the cases it ran on. Dotted line: chance.")]
    traps = markdown.traps_rows(records)
    if traps:
        parts += ["<h2>Traps</h2><p class='note'>A run is fooled when its top k is not the truth set "
                  "or it names the wrong answer layer.</p>", _table(*traps)]
    parts += ["<h2>Recall by role</h2><p class='note'>Mean recall@k of each role's components: which "
              "roles each technique tends to miss (backup heads, negative heads, indirect-effect "
              "heads).</p>", _role_recall(records)]
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
                  _figure(figures.faithfulness_curves(records, case),
                          "Metric recovered when keeping only each technique's top-ranked nodes."),
                  "<h3>Failure cases</h3>", _failures(records, case)]
    cert_rows = markdown.certificate_rows(records)
    if cert_rows:
        styled = [[*row[:4], f'<span class="{"pass" if row[4] == "pass" else "fail"}">{row[4]}</span>']
                  for row in cert_rows]
        parts += ["<h2>Ground-truth certificates</h2><p class='note'>Each figure next to its "
                  "threshold, measured on every seed's model.</p>",
                  _table(["case", "check", "needs", "worst value per seed", "all seeds"], styled, raw_cols={4})]
    failed = [r for r in records if r.status in ("error", "uncertified")]
    if failed or excluded:
        parts.append("<h2>Runs not scored</h2>")
        parts.append(_table(["what", "why"], [[f"{r.technique} on {r.case} seed {r.seed}", f"{r.status}: {r.error}"]
                                             for r in failed] + [[e.path, e.reason] for e in excluded]))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mibench report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
