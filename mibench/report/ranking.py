"""What a researcher choosing a technique reads first: per granularity, the techniques sorted by
the primary score with paired tests between neighbours and against `random`; which failure modes
each survives; which fail together; and what chance looks like for each metric.

Pure functions of the records, shared by the Markdown leaderboard and the HTML report."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from mibench import metrics, names
from mibench.report import stats
from mibench.report import summary as S
from mibench.results import RunRecord

#: the score the rankings sort by: defined at every granularity, threshold-free, chance 0.5
PRIMARY = "auroc"
#: a technique label is ranked only with results on at least this many cases; fewer are shown apart
MIN_CASES = 3
#: the baseline every ranked technique is tested against
BASELINE = "random"


@cache
def _case_meta(case: str) -> dict:
    from mibench.registry import case_entries

    entry = case_entries().get(case)
    return entry.meta if entry else {}


def failure_mode(case: str) -> str:
    """A trap's failure mode in words (from the case), or its name when it does not say."""
    return _case_meta(case).get("failure_mode") or case


def _primary_values(runs: list[RunRecord], key: str = PRIMARY) -> dict[tuple[str, int], float]:
    return {(r.case, r.seed): r.metrics[key] for r in runs if r.metrics.get(key) is not None}


@dataclass
class Ranked:
    """One technique label's row in its granularity's ranking."""

    technique: str
    summary: S.TechniqueSummary
    primary: dict  # aggregate() of the primary score
    traps: dict[str, bool] = field(default_factory=dict)  # trap case → fooled on most seeds

    @property
    def survived(self) -> list[str]:
        return [c for c, fooled in sorted(self.traps.items()) if not fooled]

    @property
    def fooled(self) -> list[str]:
        return [c for c, fooled in sorted(self.traps.items()) if fooled]


@dataclass
class GranularityRanking:
    granularity: str
    ranked: list[Ranked]  # best first
    neighbours: list[stats.Paired]  # each ranked label against the next below it
    versus_baseline: dict[str, stats.Paired]  # each ranked label against `random`
    few_cases: list[Ranked]  # labels on fewer than MIN_CASES cases: shown, not ranked

    def beats_baseline(self, technique: str) -> bool:
        test = self.versus_baseline.get(technique)
        return test is not None and test.verdict == f"{technique} better"

    def leaders(self) -> list[str]:
        """The best label and those below it that no neighbour test separates from the one above."""
        out = [self.ranked[0].technique] if self.ranked else []
        for test in self.neighbours:
            if test.verdict != "not distinguishable":
                break
            out.append(test.b)
        return out


def trap_verdicts(records: list[RunRecord]) -> dict[tuple[str, str], tuple[int, int]]:
    """(technique, trap case) → (seeds fooled, seeds run)."""
    out = {}
    for (tech, case), runs in S.by([r for r in S.ok(records) if r.case_tier == "trap"],
                                   "technique", "case").items():
        out[(tech, case)] = (sum(bool(r.metrics.get("fooled")) for r in runs), len(runs))
    return out


def rankings(records: list[RunRecord]) -> list[GranularityRanking]:
    """One ranking per granularity that has results, in :data:`mibench.names.GRANULARITIES` order.
    Within one, labels are sorted by mean primary score (higher first; ties by name)."""
    records = S.main_sample(records)
    verdicts = trap_verdicts(records)
    out = []
    for granularity in names.GRANULARITIES:
        summaries = [t for t in S.technique_summaries([r for r in records if r.granularity == granularity])]
        if not summaries:
            continue
        rows = []
        for t in summaries:
            traps = {case: fooled * 2 > n for (tech, case), (fooled, n) in verdicts.items() if tech == t.technique}
            rows.append(Ranked(t.technique, t, t.metric(PRIMARY), traps))
        rows.sort(key=lambda r: (-(r.primary["mean"] if r.primary["mean"] is not None else -math.inf),
                                 r.technique))
        ranked = [r for r in rows if len(r.summary.cases) >= MIN_CASES]
        few = [r for r in rows if len(r.summary.cases) < MIN_CASES]
        out.append(GranularityRanking(granularity, ranked, *_comparisons(ranked), few))
    return out


def _is_baseline(label: str) -> bool:
    return label.split("@")[0] == BASELINE


def _comparisons(ranked: list[Ranked]) -> tuple[list[stats.Paired], dict[str, stats.Paired]]:
    """Neighbour tests and tests against the baseline, Holm-adjusted together (one family per
    granularity: every claim its table makes)."""
    values = {r.technique: _primary_values(r.summary.runs) for r in ranked}
    neighbours = [stats.paired(a.technique, values[a.technique], b.technique, values[b.technique])
                  for a, b in zip(ranked, ranked[1:])]
    baseline = next((r.technique for r in ranked if _is_baseline(r.technique)), None)
    versus = [stats.paired(r.technique, values[r.technique], baseline, values[baseline])
              for r in ranked if baseline and r.technique != baseline]
    adjusted = stats.adjust(neighbours + versus)
    return adjusted[:len(neighbours)], {t.a: t for t in adjusted[len(neighbours):]}


def _passes(r: Ranked) -> str:
    fwd, bwd = r.summary.passes
    return f"{fwd:.0f} forward" + (f" + {bwd:.0f} backward" if bwd else "") + " passes per run"


def useful(ranking: GranularityRanking) -> list[Ranked]:
    """The ranked labels a paired test puts above `random`, best first."""
    return [r for r in ranking.ranked if not _is_baseline(r.technique) and ranking.beats_baseline(r.technique)]


def use_when(ranking: GranularityRanking) -> list[str]:
    """"Use X when …" lines for one granularity, derived from the ranking: the leading group
    (labels no neighbour test separates from the best) and its cheapest member; for each failure
    mode a trap tests, which techniques above `random` survive it and which it fools; and the
    labels no test puts above `random`."""
    if not ranking.ranked:
        return []
    best, leaders = ranking.ranked[0], ranking.leaders()
    label = primary_metric().label
    lines = [f"**Best at {ranking.granularity} level:** {', '.join(f'`{t}`' for t in leaders)} (mean "
             f"{label} {best.primary['mean']:.2f} for `{best.technique}`; "
             + ("no paired test separates the others from it)." if len(leaders) > 1 else
                "a paired test puts it ahead of the next).")]
    if len(leaders) > 1:
        group = [r for r in ranking.ranked if r.technique in leaders]
        cheapest = min(group, key=lambda r: (sum(r.summary.passes), r.technique))
        lines.append(f"**Cheapest of them:** `{cheapest.technique}`, {_passes(cheapest)}.")
    good = useful(ranking)
    for trap in sorted({c for r in good for c in r.traps}):
        robust = [f"`{r.technique}` ({r.primary['mean']:.2f})" for r in good if r.traps.get(trap) is False]
        fooled = [f"`{r.technique}`" for r in good if r.traps.get(trap)]
        lines.append(f"**If the circuit may involve {failure_mode(trap)}** (`{trap}`): "
                     + (f"use {', '.join(robust)}" + (f"; fooled: {', '.join(fooled)}." if fooled else
                                                      "; none is fooled.")
                        if robust else f"no technique above `random` survives it ({', '.join(fooled)} fooled)."))
    weak = [r.technique for r in ranking.ranked if not _is_baseline(r.technique) and r not in good]
    if weak:
        lines.append(f"**Not above chance:** no paired test puts {', '.join(f'`{t}`' for t in weak)} "
                     f"above `random` at this level; do not use them to localise a circuit.")
    return lines


def fooled_together(records: list[RunRecord], techniques: list[str]) -> tuple[list[str], dict]:
    """For these techniques, over the (trap, seed) instances both ran: (instances where both were
    fooled, instances where either was). Returns the labels fooled at least once, in the order
    given, and ``{(a, b): (both, either)}``."""
    fooled: dict[str, dict[tuple[str, int], bool]] = defaultdict(dict)
    for r in S.ok(S.main_sample(records)):
        if r.case_tier == "trap" and r.technique in techniques and "fooled" in r.metrics:
            fooled[r.technique][(r.case, r.seed)] = bool(r.metrics["fooled"])
    labels = [t for t in techniques if any(fooled[t].values())]
    pairs = {}
    for a in labels:
        for b in labels:
            shared = set(fooled[a]) & set(fooled[b])
            both = sum(fooled[a][k] and fooled[b][k] for k in shared)
            either = sum(fooled[a][k] or fooled[b][k] for k in shared)
            pairs[(a, b)] = (both, either)
    return labels, pairs


def most_fooled_together(labels: list[str], pairs: dict, n: int = 3) -> list[tuple[str, str, int, int]]:
    """The ``n`` pairs of distinct techniques with the highest share of failures in common
    (both / either, the Jaccard index), among pairs with at least 3 shared failures."""
    order = {t: i for i, t in enumerate(labels)}
    out = [(a, b, both, either) for (a, b), (both, either) in pairs.items()
           if order[a] < order[b] and both >= 3]
    out.sort(key=lambda x: (-x[2] / x[3], -x[2], x[0], x[1]))
    return out[:n]


def chance_interval(records: list[RunRecord]) -> tuple[float, float] | None:
    """Where the mean AUROC of these runs would fall 95 % of the time if every ranking were
    random: 0.5 ± 1.96 sd, each run's AUROC having the Mann–Whitney null variance
    (n + 1) / (12 k (n − k)) for k truth among n components (ties, which lower it, ignored)."""
    variances = [(r.metrics["n_components"] + 1) / (12 * r.metrics["k"] * (r.metrics["n_components"] - r.metrics["k"]))
                 for r in S.ok(records) if r.metrics.get("k") and r.metrics.get("n_components", 0) > r.metrics["k"]]
    if not variances:
        return None
    sd = math.sqrt(sum(variances)) / len(variances)
    return 0.5 - 1.96 * sd, 0.5 + 1.96 * sd


def base_rate(records: list[RunRecord]) -> float | None:
    """Mean share of components in the truth set: the chance level of AP and F1@k."""
    shares = [r.metrics["k"] / r.metrics["n_components"] for r in S.ok(records)
              if r.metrics.get("k") and r.metrics.get("n_components")]
    return float(np.mean(shares)) if shares else None


def primary_metric() -> metrics.Metric:
    return next(m for m in metrics.METRICS if m.name == PRIMARY)
