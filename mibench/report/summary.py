"""Grouping and aggregation of result records, shared by the Markdown leaderboard, the HTML report
and the terminal drill-down, so every view shows the same numbers."""
from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ConstantInputWarning

from mibench import metrics
from mibench.results import RunRecord
from mibench.scoring import aggregate

#: technique pairs whose agreement the literature discusses; shown in the agreement table
FEATURED_PAIRS = (("activation_patching", "attribution_patching"),
                  ("activation_patching", "causal_tracing"),
                  ("activation_patching@site", "causal_tracing@site"),
                  ("activation_patching", "integrated_gradients"),
                  ("resample_ablation", "zero_ablation"),
                  ("logit_lens", "tuned_lens"),
                  ("activation_patching", "optimal_ablation"),
                  ("activation_patching", "role_detector"),
                  # path patching is activation patching of one edge: the edge methods' reference
                  ("path_patching", "acdc"),
                  ("path_patching", "edge_pruning"),
                  ("path_patching", "eap_ig"))


def ok(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.status == "ok"]


def metric_columns(records: list[RunRecord]) -> tuple[metrics.Metric, ...]:
    """The metric columns of a table of these runs (see :func:`mibench.metrics.columns`)."""
    return metrics.columns({r.granularity for r in records}, metrics.measured(r.metrics for r in records))


def stat(records: list[RunRecord], key: str) -> dict[str, Any]:
    return aggregate([r.metrics.get(key) for r in records])


def fmt(stats: dict[str, Any], digits: int = 2) -> str:
    if not stats["n"]:
        return "-"
    if stats["n"] == 1 or stats["low"] == stats["high"]:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"


def by(records: list[RunRecord], *keys: str) -> dict[tuple, list[RunRecord]]:
    out: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.technique, r.case, r.granularity, r.seed)):
        out[tuple(getattr(r, k) for k in keys)].append(r)
    return dict(sorted(out.items()))


@dataclass
class TechniqueSummary:
    technique: str
    granularity: str
    cases: list[str]
    runs: list[RunRecord]

    def metric(self, key: str) -> dict[str, Any]:
        return stat(self.runs, key)

    @property
    def runtime(self) -> float:
        return float(np.mean([r.runtime_s for r in self.runs]))

    @property
    def passes(self) -> tuple[float, float]:
        return (float(np.mean([r.forward_passes for r in self.runs])),
                float(np.mean([r.backward_passes for r in self.runs])))


def main_sample(records: list[RunRecord]) -> list[RunRecord]:
    """The runs on each instance's prompt sample 0, which every table but the variation column uses
    (so a technique's figures cover the same prompts whatever extra samples were run)."""
    return [r for r in records if r.prompt_sample == 0]


def prompt_variation(records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    """Technique label → mean over (case, seed) of the standard deviation of AUROC across the
    instance's prompt samples (instances with at least two ok samples only), with its interval."""
    spreads: dict[str, list[float]] = defaultdict(list)
    for (tech, _case, _seed), runs in by(ok(records), "technique", "case", "seed").items():
        values = [r.metrics.get("auroc") for r in runs]
        values = [v for v in values if v is not None]
        if len(values) >= 2:
            spreads[tech].append(float(np.std(values, ddof=1)))
    return {tech: aggregate(values) for tech, values in sorted(spreads.items())}


def technique_cells(t: TechniqueSummary, columns: tuple[metrics.Metric, ...],
                    variation: dict[str, dict[str, Any]]) -> list[str]:
    """A technique's cells in a ranking table: cases, runs, each metric column, the AUROC spread
    across prompt samples (only where extra samples were run) and its passes. No runtime: runtimes
    depend on the machine and its load, and the committed tables must not (RUNTIMES.md has them)."""
    fwd, bwd = t.passes
    spread = [fmt(variation[t.technique]) if t.technique in variation else "-"] if variation else []
    return [str(len(t.cases)), str(len(t.runs)), *[fmt(t.metric(m.name)) for m in columns], *spread,
            f"{fwd:.1f} + {bwd:.1f}"]


def technique_headers(columns: tuple[metrics.Metric, ...], variation: dict) -> list[str]:
    return ["cases", "runs", *[m.label for m in columns],
            *(["AUROC sd across prompt samples"] if variation else []), "passes fwd + bwd"]


def technique_summaries(records: list[RunRecord], tier: str | None = None) -> list[TechniqueSummary]:
    """One summary per technique label over the ok runs (optionally of one case tier)."""
    chosen = [r for r in ok(records) if tier is None or r.case_tier == tier]
    return [TechniqueSummary(tech, runs[0].granularity, sorted({r.case for r in runs}), runs)
            for (tech,), runs in by(chosen, "technique").items()]


def not_run_reason(runs: list[RunRecord]) -> str:
    """Why a technique has no ok run on a case: the first distinct reason."""
    reasons = sorted({f"{r.status}: {r.error}" for r in runs if r.status != "ok"})
    return reasons[0] if reasons else ""


def role_recall(records: list[RunRecord]) -> pd.DataFrame:
    """Mean recall@k per (technique, role) over every ok run: which roles each technique misses."""
    rows = []
    for r in ok(records):
        for role, value in (r.metrics.get("recall_by_role") or {}).items():
            rows.append({"technique": r.technique, "role": role, "recall": value})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby(["technique", "role"])["recall"].mean().unstack("role").sort_index()


def role_label_rows(records: list[RunRecord], case: str) -> tuple[list[str], list[list[str]]] | None:
    """Headers and rows of a case's role-labelling table (techniques that label components with
    roles, such as ``role_detector``): per technique and truth role, the precision and recall of
    its labels, mean over seeds with the interval; None when no run on the case labelled roles."""
    runs = [r for r in ok(records) if r.case == case and r.metrics.get("role_labels")]
    if not runs:
        return None
    truth_roles = sorted({role for r in runs for role in r.truth_labels.values()})
    rows = []
    for (tech,), tech_runs in by(runs, "technique").items():
        for role in truth_roles:
            cells = [[(r.metrics["role_labels"].get(role) or {}).get(key) for r in tech_runs]
                     for key in ("precision", "recall", "n_labelled")]
            rows.append([tech, role, fmt(aggregate(cells[0])), fmt(aggregate(cells[1])),
                         fmt(aggregate(cells[2]), 1), str(len(tech_runs))])
    return ["technique", "truth role", "precision of its labels", "recall", "labelled per seed", "seeds"], rows


def agreement(records: list[RunRecord], a: str, b: str) -> dict[str, dict[str, Any]]:
    """Spearman rank correlation of two techniques' scores per case (mean over shared seeds), and
    the components on which they disagree most (largest rank difference, first shared seed)."""
    runs = {(r.technique, r.case, r.seed): r for r in ok(records)}
    out: dict[str, dict[str, Any]] = {}
    for case in sorted({c for (t, c, _) in runs if t == a}):
        seeds = sorted(s for (t, c, s) in runs if t == a and c == case and (b, case, s) in runs)
        if not seeds:
            continue
        rhos, disagree = [], []
        for seed in seeds:
            sa = pd.Series(runs[(a, case, seed)].scores).abs()
            sb = pd.Series(runs[(b, case, seed)].scores).reindex(sa.index).abs()
            with warnings.catch_warnings():  # constant scores: rho is undefined, recorded as None
                warnings.simplefilter("ignore", ConstantInputWarning)
                rho = sa.corr(sb, method="spearman")
            rhos.append(None if pd.isna(rho) else float(rho))
            ra, rb = sa.rank(ascending=False), sb.rank(ascending=False)
            if seed == seeds[0]:
                gap = (ra - rb).abs().sort_values(ascending=False, kind="stable")
                truth = runs[(a, case, seed)].truth_labels
                disagree = [(n, int(ra[n]), int(rb[n]), truth.get(n, "")) for n in gap.index[:3] if gap[n] > 0]
        out[case] = {"spearman": aggregate(rhos), "disagree": disagree, "seed": seeds[0]}
    return out


def commits_note(records: list[RunRecord]) -> str:
    """Which mibench commits produced the results, with run counts. Only what is the same on every
    regeneration from the same files: the run dates and machines stay in the result files."""
    counts = Counter(r.mibench_commit for r in records)
    sources = sorted((f"mibench commit `{c[:12]}`" if c else "a mibench copy outside git", n)
                     for c, n in counts.items())
    sizes = ", ".join(sorted({r.size for r in records}))
    size_note = f" Model size: {sizes}." if sizes else ""
    if len(sources) <= 1:
        return (f"All results come from {sources[0][0]}." if sources else "No results.") + size_note
    return ("Results come from " + ", ".join(f"{s} ({n} run{'s' * (n > 1)})" for s, n in sources)
            + "." + size_note)


def certificates(records: list[RunRecord]) -> dict[str, dict[int, dict[str, Any]]]:
    """case -> seed -> certificate, as stored with the runs."""
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in sorted(records, key=lambda r: (r.case, r.seed)):
        if r.certificate:
            out[r.case].setdefault(r.seed, r.certificate)
    return dict(out)
