"""The metrics table: the one owner of each per-run metric's name, label, meaning and direction.

Every view reads it, in this order: :func:`mibench.scoring.score_run` computes each metric defined
at the run's granularity and stores it under ``name``; ``RunRecord.summary()`` (``mibench run
--json``), the leaderboard tables (Markdown and HTML) and both terminal views (``mibench run``'s
table, ``mibench report``'s metric line) show them under ``label``, and the leaderboard's intro
explains each column with ``description``. Adding a metric is one entry here (lm-evaluation-harness
and scikit-learn's scorers keep their metric registries the same way: name, function, direction).

Everything else a run records — k, recall by role, the failures, the faithfulness curves, a trap's
verdict — is detail that :func:`~mibench.scoring.score_run` documents, not a metric of this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mibench import scoring
from mibench.names import GRANULARITIES

if TYPE_CHECKING:  # pragma: no cover
    from mibench.scoring import Ranking


@dataclass(frozen=True)
class Metric:
    name: str  # the key in a result's ``metrics`` and in ``mibench run --json``
    label: str  # the column header
    description: str  # what it measures and its chance level, for the leaderboard's intro
    higher_is_better: bool
    granularities: tuple[str, ...]  # where it is defined; a run at another granularity lacks the key
    compute: Callable[[Ranking], Any]  # one run's value; None or NaN where undefined
    # A column of the leaderboard and `mibench run` tables; False for metrics that only repeat a
    # column (P@k and R@k equal F1@k, because k is the truth-set size), which `mibench report` lists.
    column: bool = True
    # An optional measurement (made only when asked, e.g. `mibench run --faithfulness-optimal`):
    # a column only in tables where some run has a value.
    measured_only: bool = False

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


_FRACTIONS = ", ".join(f"{f:.0%}" for f in scoring.FAITHFULNESS_FRACTIONS)
_CHANCE_BY_CASE = "chance depends on the case: compare with the `random` rows."

METRICS: tuple[Metric, ...] = (
    Metric("auroc", "AUROC",
           "the probability that a truth component outranks a non-truth one (ties count one half). "
           "1 is perfect, 0.5 is chance.",
           True, GRANULARITIES, lambda run: scoring.auroc(run.x, run.labels)),
    Metric("ap", "AP",
           "average precision of the ranking against the truth set. 1 is perfect; chance is the "
           "share of components in the truth set.",
           True, GRANULARITIES, lambda run: scoring.average_precision(run.x, run.labels)),
    Metric("precision_at_k", "P@k",
           "share of the top k in the truth set (items tied at the k-th score share the remaining "
           "places). Chance is the share of components in the truth set.",
           True, GRANULARITIES, lambda run: run.at_k[0], column=False),
    Metric("recall_at_k", "R@k",
           "share of the truth set in the top k; equal to P@k. Chance is the share of components "
           "in the truth set.",
           True, GRANULARITIES, lambda run: run.at_k[1], column=False),
    Metric("f1_at_k", "F1@k",
           "F1 of the top k against the truth set; equal to precision and recall at k. 1 is "
           "perfect; chance is the share of components in the truth set.",
           True, GRANULARITIES, lambda run: run.at_k[2]),
    Metric("faithfulness", "faithfulness",
           f"share of the clean metric recovered when only the top-ranked nodes are kept and the "
           f"rest resample-ablated, averaged over keeping {_FRACTIONS} of k nodes (node "
           f"granularity only); {_CHANCE_BY_CASE}",
           True, ("node",), lambda run: run.faithfulness("faithfulness")),
    Metric("faithfulness_counterfactual", "faithful. (cf)",
           f"faithfulness with the rest patched from the corrupted run instead (MIB's "
           f"counterfactual ablation), which also removes components whose output never varies "
           f"across prompts; {_CHANCE_BY_CASE}",
           True, ("node",), lambda run: run.faithfulness("faithfulness_counterfactual")),
    Metric("faithfulness_optimal", "faithful. (opt)",
           f"faithfulness with the rest replaced by each node's optimal constant (Li & Janson "
           f"2024: the value that best preserves the task metric, fitted per node on the train "
           f"prompts; only with `mibench run --faithfulness-optimal`); {_CHANCE_BY_CASE}",
           True, ("node",), lambda run: run.faithfulness("faithfulness_optimal"), measured_only=True),
    Metric("answer_layer_error", "answer-layer error",
           "layers between the top-scored layer and the layer where the answer is formed (layer "
           "granularity only). 0 is perfect; chance depends on the number of layers: compare "
           "with the `random` rows.",
           False, ("layer",), lambda run: scoring.answer_layer_error(run.values, run.answer_layer)),
)


def applicable(granularity: str) -> tuple[Metric, ...]:
    """The metrics defined at ``granularity``: the keys a run at that granularity records."""
    return tuple(m for m in METRICS if granularity in m.granularities)


def columns(granularities: Iterable[str], measured: Iterable[str] = ()) -> tuple[Metric, ...]:
    """The table columns for runs at these granularities: the column metrics defined at any of
    them (no answer-layer column in a table without layer runs), optional measurements only if
    named in ``measured`` (the metrics some run of the table has a value for)."""
    present, measured = set(granularities), set(measured)
    return tuple(m for m in METRICS if m.column and present.intersection(m.granularities)
                 and (not m.measured_only or m.name in measured))


def measured(metric_dicts: Iterable[dict[str, Any]]) -> set[str]:
    """The metric names with a value in any of these runs' metrics."""
    return {name for values in metric_dicts for name, value in values.items() if value is not None}


def format_value(value: Any) -> str:
    """One run's value for the terminal: ``-`` when undefined, counts as integers."""
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"
