"""Paired comparisons between two techniques, so that "X beats Y" on the leaderboard is a tested
claim: the Wilcoxon signed-rank test over the (case, seed) instances both ran, the Vargha–Delaney
A12 effect size (as InterpBench reports it), and Holm's correction over the claims of one table."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: the family-wise error rate of one table's claims
ALPHA = 0.05


def a12(a: list[float], b: list[float]) -> float:
    """Vargha and Delaney's A12: the probability that a value drawn from ``a`` exceeds one drawn
    from ``b``, ties counting one half (0.5: no effect; 0.71 and above: a large effect, by their
    thresholds 0.56 / 0.64 / 0.71)."""
    x, y = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[None, :]
    return float(((x > y).sum() + 0.5 * (x == y).sum()) / (x.size * y.size))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: each p-value's family-wise adjusted value, in input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Paired:
    """One comparison of technique ``a`` with technique ``b`` on the instances both ran."""

    a: str
    b: str
    n: int  # instances (case, seed) both ran
    mean_difference: float  # mean of a − b
    statistic: float  # Wilcoxon's W (the smaller signed-rank sum); nan where every difference is 0
    p: float  # two-sided; 1 where every difference is 0
    a12: float
    #: +1 where the positive differences carry the larger signed-rank sum (the direction the
    #: Wilcoxon test detects), −1 otherwise; it can disagree with the mean difference's sign when
    #: many small wins face a few large losses
    direction: int = 0
    p_holm: float = math.nan  # set by :func:`adjust` once the table's family is known

    @property
    def verdict(self) -> str:
        if not self.p_holm < ALPHA:
            return "not distinguishable"
        return f"{self.a} better" if self.direction > 0 else f"{self.b} better"


def paired(a: str, a_values: dict, b: str, b_values: dict, higher_is_better: bool = True) -> Paired:
    """Compare ``a`` with ``b`` on the keys (instances) both have a value for. With
    ``higher_is_better`` False the values are negated first, so "better" keeps its meaning."""
    from scipy.stats import rankdata, wilcoxon

    keys = sorted(set(a_values) & set(b_values))
    sign = 1.0 if higher_is_better else -1.0
    x = np.array([sign * a_values[k] for k in keys], dtype=float)
    y = np.array([sign * b_values[k] for k in keys], dtype=float)
    if not keys:
        return Paired(a, b, 0, math.nan, math.nan, math.nan, math.nan)
    diff = x - y
    nonzero = diff[diff != 0]
    ranks = rankdata(np.abs(nonzero))
    direction = int(np.sign(ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()))
    if np.all(diff == 0):  # the test is undefined; nothing tells the two apart
        statistic, p = math.nan, 1.0
    else:
        # zero differences dropped (Wilcoxon's own treatment); exact p for small samples without ties
        result = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        statistic, p = float(result.statistic), float(result.pvalue)
    return Paired(a, b, len(keys), float(diff.mean()), statistic, p, a12(list(x), list(y)), direction)


def adjust(tests: list[Paired]) -> list[Paired]:
    """The same tests with Holm-adjusted p-values over the family ``tests``."""
    from dataclasses import replace

    adjusted = holm([t.p for t in tests])
    return [replace(t, p_holm=p) for t, p in zip(tests, adjusted)]
