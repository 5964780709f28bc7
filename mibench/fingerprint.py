"""The fingerprint audit: does anything that is not interpretability give a case's circuit away?

Each task-agnostic statistic of :mod:`mibench.model.statistics` (weight norms and effective ranks,
attention entropy and sharpness, output norm and variance: computed with no metric, no answer and
no corrupted prompt) is scored against the node truth by AUROC, pooled over many seeds of the case
(one seed has too few truth nodes for a stable AUROC: two truth heads among thirty give a
chance-level standard deviation near 0.2). A case passes only if every statistic's pooled AUROC
lies in :data:`BAND`: both directions give the truth away (a circuit that is the only *quiet* part
of the model is as easy to find as one that is the only loud part).

Reads the truth, so like :mod:`mibench.certificate` it is never available to techniques.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mibench.api import DEFAULT_SIZE

#: a statistic passes when its pooled AUROC lies in this closed interval
BAND = (0.3, 0.7)
#: seeds pooled by default
SEEDS = tuple(range(20))
#: clean prompts per seed for the activation statistics
N_PROMPTS = 32


@dataclass(frozen=True)
class AuditRow:
    statistic: str
    auroc: float | None  # None when the pooled nodes are all truth or all non-truth
    n_truth: int
    n_other: int

    @property
    def passed(self) -> bool:
        """In the band; or undefined because no node of the kind the statistic measures is in the
        truth (an MLP statistic when the circuit has no MLP), so it cannot point at any."""
        if self.auroc is None:
            return self.n_truth == 0
        return BAND[0] <= self.auroc <= BAND[1]


@dataclass(frozen=True)
class Audit:
    case: str
    seeds: tuple[int, ...]
    rows: tuple[AuditRow, ...]
    size: str = DEFAULT_SIZE

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def failed(self) -> list[AuditRow]:
        return [row for row in self.rows if not row.passed]

    def table(self) -> list[list[str]]:
        return [[row.statistic, "n/a (no truth node)" if row.auroc is None and row.passed else
                 "n/a" if row.auroc is None else f"{row.auroc:.2f}",
                 f"{BAND[0]:g}–{BAND[1]:g}", "pass" if row.passed else "FAIL",
                 f"{row.n_truth} truth / {row.n_other} other nodes"] for row in self.rows]


def pooled(case, seeds: Iterable[int], size: str = DEFAULT_SIZE) -> dict[str, tuple[list[float], list[int]]]:
    """Per statistic, every (value, is-truth) pair over the nodes it is defined for, all seeds."""
    from mibench.model.statistics import all_statistics

    out: dict[str, tuple[list[float], list[int]]] = {}
    for seed in seeds:
        instance = case.build(seed, size)
        stats = all_statistics(instance.model, case.prompts(N_PROMPTS, seed, "test").clean)
        for statistic, per_node in stats.items():
            values, labels = out.setdefault(statistic, ([], []))
            for node, value in per_node.items():
                values.append(value)
                labels.append(int(node in instance.truth.nodes))
    return out


def audit(case, seeds: Iterable[int] = SEEDS, size: str = DEFAULT_SIZE) -> Audit:
    """The fingerprint audit of ``case`` at ``size`` over ``seeds`` (builds each seed once)."""
    from sklearn.metrics import roc_auc_score

    seeds = tuple(seeds)
    rows = []
    for statistic, (values, labels) in pooled(case, seeds, size).items():
        n_truth = sum(labels)
        n_other = len(labels) - n_truth
        value = float(roc_auc_score(labels, values)) if n_truth and n_other else None
        rows.append(AuditRow(statistic, value, n_truth, n_other))
    return Audit(case.name, seeds, tuple(rows), size)
