"""Scoring: compare a technique's Scores with a case's Truth. The only module that reads Truth.

Deterministic functions over numpy arrays and pandas Series (auto-circuit style); the ranking
statistics come from scikit-learn and scipy. Higher scores mean "more important"; ``labels`` are 1
for truth-set members and 0 otherwise. The metrics a run records, and their names, are listed once
in :mod:`mibench.metrics`.

Every function here is pure except those behind the faithfulness scores, which run the model:
:func:`faithfulness` runs it through the ablator it is given (``ablator.metric_keeping``, one
ablated run per distinct number of kept nodes), :meth:`Ranking.faithfulness` calls it, and
:func:`score_run` does so at node granularity when it is given an ``ablator`` or a
``counterfactual``. Without either, ``score_run`` is pure too.

Ties are handled without an arbitrary tie-break wherever a metric allows it:

* :func:`auroc` gives tied scores their averaged rank (an all-equal score vector gives 0.5);
* :func:`average_precision` treats tied scores as one threshold;
* top-k metrics (:func:`precision_recall_f1_at_k`, :func:`recall_by_role`) count ties at the k-th
  boundary **in expectation over random tie-breaking**: items strictly above the k-th score are in
  the top k, and the items tied at the k-th score share the remaining slots equally (each is in the
  top k with probability ``remaining slots / number tied``). An all-equal score vector therefore
  gives precision@k equal to the base rate.

:func:`faithfulness` is the one exception: it must choose concrete nodes to keep, so it breaks ties
by the order of the Scores series (stable sort on descending score).
"""
from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from mibench import names

if TYPE_CHECKING:  # pragma: no cover
    from mibench.model.ablation import Ablator
    from mibench.api import Truth

#: Fractions of the truth-set size kept by :func:`faithfulness` (MIB's CPR idea: 10–100 % of the
#: circuit size, then twice the size).
FAITHFULNESS_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)


# --- helpers ----------------------------------------------------------------------------------

def _as_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype="float64").ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; every component needs a finite score")
    y = y.astype("float64")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return s, y


def _topk_weights(x: np.ndarray, k: int) -> np.ndarray:
    """Probability that each item is in the top ``k`` under uniformly random tie-breaking.

    Items scored strictly above the k-th largest score get 1, items below it 0, and the items tied
    at it share the remaining slots: ``(k − n_above) / n_tied`` each.
    """
    n = x.size
    if k <= 0 or n == 0:
        return np.zeros(n)
    k = min(int(k), n)
    kth = np.sort(x)[::-1][k - 1]
    above = x > kth
    tied = x == kth
    slots = k - int(above.sum())
    return above.astype("float64") + tied * (slots / int(tied.sum()))


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _series(scores: pd.Series) -> pd.Series:
    if not isinstance(scores, pd.Series):
        raise TypeError(f"scores must be a pandas Series indexed by component name, got "
                        f"{type(scores).__name__}")
    values = scores.astype("float64")
    if values.isna().any():
        bad = list(values.index[values.isna()][:3])
        raise ValueError(f"scores contain NaN for {bad} ({int(values.isna().sum())} in all)")
    if values.index.has_duplicates:
        raise ValueError(f"scores index has duplicates: {list(values.index[values.index.duplicated()][:3])}")
    return values


def _check_members(scores: pd.Series, truth_labels: dict[str, str]) -> None:
    missing = [name for name in truth_labels if name not in scores.index]
    if missing:
        raise ValueError(f"{len(missing)} truth components have no score, first {missing[:3]}; "
                         f"scores must cover every component of the granularity")


# --- ranking metrics --------------------------------------------------------------------------

def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``): the probability that a random
    positive outscores a random negative, counting ties as one half (tied scores get their averaged
    rank, as in the Mann–Whitney U statistic). NaN if the labels are all 0 or all 1, where sklearn
    would raise."""
    from sklearn.metrics import roc_auc_score

    s, y = _as_arrays(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return float("nan")
    return float(roc_auc_score(y, s))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (``sklearn.metrics.average_precision_score``): Σₙ (Rₙ − Rₙ₋₁)·Pₙ over the
    distinct score thresholds in descending order (tied scores form one threshold). NaN if there
    are no positives, where sklearn would warn and return 0."""
    from sklearn.metrics import average_precision_score

    s, y = _as_arrays(scores, labels)
    if y.sum() == 0:
        return float("nan")
    return float(average_precision_score(y, s))


def precision_recall_f1_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of the top ``k`` (the suite uses k = number of positives).

    Ties at the k-th score are resolved in expectation over random tie-breaking: items strictly
    above it count fully, items tied at it share the remaining slots in proportion (so an
    all-equal score vector gives precision = base rate). ``k`` larger than the number of items is
    clipped to it. Recall is NaN without positives; F1 is 0 when precision and recall are both 0.
    """
    k = _check_k(k)
    s, y = _as_arrays(scores, labels)
    if s.size == 0:
        raise ValueError("no scores")
    k_eff = min(k, s.size)
    tp = float(np.sum(_topk_weights(s, k_eff) * y))
    p = tp / k_eff
    n_pos = y.sum()
    r = tp / n_pos if n_pos > 0 else float("nan")
    if math.isnan(r):
        f1 = float("nan")
    else:
        f1 = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return float(p), float(r), float(f1)


def rank_for_scoring(scores: pd.Series, signed: bool) -> pd.Series:
    """The values scoring ranks by: ``|scores|`` for signed techniques (scoring ranks by
    magnitude), the scores themselves otherwise. A float64 copy with the same index and order."""
    values = _series(scores)
    return values.abs() if signed else values.copy()


#: How far above the non-truth components a truth component's value must be to count as found by
#: :func:`recall_by_role`: Iglewicz and Hoaglin's (1993) outlier rule, a modified z-score
#: ``0.6745 (x - median) / MAD`` above 3.5, with the median and MAD of the non-truth values.
STANDOUT_Z = 3.5


def noise_ceiling(values: pd.Series, truth_labels: dict[str, str]) -> float:
    """The value a component must exceed to stand out from the non-truth components: their median
    plus :data:`STANDOUT_Z` robust standard deviations (MAD / 0.6745). Where the MAD is 0 the mean
    absolute deviation stands in (scaled by 1.2533, as for the MAD, to a standard deviation of
    normal data); where every non-truth value is equal, anything above them stands out; with no
    non-truth component, everything does (-inf)."""
    noise = _series(values).drop([n for n in truth_labels if n in values.index]).to_numpy()
    if noise.size == 0:
        return float("-inf")
    median = float(np.median(noise))
    deviations = np.abs(noise - median)
    mad = float(np.median(deviations))
    scale = mad / 0.6745 if mad > 0 else 1.2533 * float(deviations.mean())
    return median + STANDOUT_Z * scale


def recall_by_role(scores: pd.Series, truth_labels: dict[str, str], k: int) -> dict[str, float]:
    """Per role, the share of its members *found*: in the top ``k`` (ties at the boundary shared as
    in :func:`precision_recall_f1_at_k`) **and** standing out from the non-truth components (above
    :func:`noise_ceiling`). A backup head that reaches the top k with a noise-level score is not
    found: a researcher reading the scores could not tell it from the rest. Roles in sorted order."""
    k = _check_k(k)
    values = _series(scores)
    _check_members(values, truth_labels)
    weights = pd.Series(_topk_weights(values.to_numpy(), k), index=values.index)
    found = weights * (values > noise_ceiling(values, truth_labels))
    by_role: dict[str, list[str]] = {}
    for name, role in truth_labels.items():
        by_role.setdefault(role, []).append(name)
    return {role: float(found[members].sum() / len(members))
            for role, members in sorted(by_role.items())}


def role_label_scores(roles: dict[str, str], truth_labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per role, how well a technique's role labels (``{component: role}``, e.g. a role detector's
    ``scores.attrs["roles"]``) match the truth's roles: ``precision`` = labelled with the role and
    having it in the truth / labelled with it (None if nothing is), ``recall`` = the same count /
    truth members with the role (None if the truth has no such role), ``n_labelled``. Every role
    that is labelled or in the truth, in sorted order; a label in a vocabulary the truth does not
    use scores precision 0."""
    out: dict[str, dict[str, Any]] = {}
    for role in sorted(set(roles.values()) | set(truth_labels.values())):
        labelled = {c for c, r in roles.items() if r == role}
        true = {c for c, r in truth_labels.items() if r == role}
        hits = len(labelled & true)
        out[role] = {"precision": hits / len(labelled) if labelled else None,
                     "recall": hits / len(true) if true else None,
                     "n_labelled": len(labelled)}
    return out


def failures(scores: pd.Series, truth_labels: dict[str, str], k: int,
             n_false_positives: int = 5) -> dict[str, list[dict[str, Any]]]:
    """What went wrong in the top ``k``, for humans to read.

    ``rank`` is the 1-based rank by descending score with ties given the best rank of their tie
    ("1224" ranking: 1 + the number of components scored strictly higher). ``score`` is the value
    passed in (for signed techniques :func:`score_run` passes the magnitudes it ranks by).

    With ties at the k-th score the top k is not one set, so both lists are conservative:

    * ``missed`` — every truth member *not certainly* in the top k (scored below the k-th score,
      or tied at it with more tied items than remaining slots), each ``{component, role, rank,
      score}``, ordered by rank then series order;
    * ``false_positives`` — non-members that *can* be in the top k (scored above or tied at the
      k-th score), the best-ranked ``n_false_positives`` of them, each ``{component, rank, score}``.

    An all-equal score vector therefore reports every truth member missed.
    """
    from scipy.stats import rankdata

    k = _check_k(k)
    values = _series(scores)
    _check_members(values, truth_labels)
    x = values.to_numpy()
    weights = _topk_weights(x, k)
    ranks = rankdata(-x, method="min").astype(int)  # "1224" ranking by descending score
    order = np.lexsort((np.arange(x.size), ranks))  # by rank, then series order
    missed: list[dict[str, Any]] = []
    false_pos: list[dict[str, Any]] = []
    for i in order:
        name = values.index[i]
        if name in truth_labels:
            if weights[i] < 1.0 - 1e-12:
                missed.append({"component": str(name), "role": str(truth_labels[name]),
                               "rank": int(ranks[i]), "score": float(x[i])})
        elif weights[i] > 1e-12 and len(false_pos) < n_false_positives:
            false_pos.append({"component": str(name), "rank": int(ranks[i]), "score": float(x[i])})
    return {"missed": missed, "false_positives": false_pos}


# --- faithfulness -----------------------------------------------------------------------------

def _n_kept(fraction: float, k: int, n_total: int) -> int:
    # round half up (not Python's round-half-even), with a guard against 0.3*10 = 3.0000000000000004
    n = int(math.floor(fraction * k + 0.5 + 1e-9))
    return max(1, min(n_total, n))


def faithfulness(scores: pd.Series, ablator: "Ablator", k: int) -> dict[str, Any]:
    """Share of the clean metric recovered when only the top-ranked nodes are kept (node
    granularity only; MIB's CPR idea on the suite's node graph).

    For each fraction f in :data:`FAITHFULNESS_FRACTIONS` keep the top ``round(f·k)`` nodes (half
    rounds up; at least 1, at most all nodes; ties broken by series order after a stable sort on
    descending score), ablate every other node with the ablator's ablation (resample for the
    main score; patching from the corrupted run for the counterfactual one), and read
    ``ablator.normalized`` of the metric: (m(C) − m(∅)) / (m(full) − m(∅)). Returns ``{"faithfulness": mean over fractions,
    "curve": [{"fraction", "n_kept", "recovered"}, ...]}``; NaN recovered values (a case whose
    full and empty metrics coincide) make the mean NaN.
    """
    k = _check_k(k)
    values = _series(scores)
    known = set(ablator.all_nodes)
    unknown = [c for c in values.index if c not in known]
    if unknown:
        raise ValueError(f"faithfulness needs node scores; {unknown[:3]} are not nodes of the model")
    ranked = list(values.sort_values(ascending=False, kind="mergesort").index)
    cache: dict[int, float] = {}
    curve = []
    for f in FAITHFULNESS_FRACTIONS:
        n = _n_kept(f, k, len(ranked))
        if n not in cache:
            cache[n] = float(ablator.normalized(ablator.metric_keeping(ranked[:n])))
        curve.append({"fraction": float(f), "n_kept": int(n), "recovered": cache[n]})
    mean = float(np.mean([c["recovered"] for c in curve]))
    return {"faithfulness": mean, "curve": curve}


# --- one run ----------------------------------------------------------------------------------

def answer_layer_error(scores: pd.Series, answer_layer: int | None) -> int | None:
    """|index of the top-scored layer − ``answer_layer``| for layer scores (``L0``, ``L1``, …), the
    lowest layer winning a tie for the top; None when the truth names no answer layer."""
    if answer_layer is None:
        return None
    values = _series(scores)
    x = values.to_numpy()
    layer_idx = np.array([names.parse_layer(n) for n in values.index])
    best = int(layer_idx[x == x.max()].min())
    return int(abs(best - int(answer_layer)))


class Ranking:
    """One run's scores lined up against its truth set: what each metric of
    :data:`mibench.metrics.METRICS` is computed from (``metric.compute(ranking)``).

    ``values`` are what scoring ranks by (magnitudes for signed techniques), ``labels`` are 1 for
    truth-set members, ``k`` is the truth-set size. ``ablators`` maps each faithfulness metric's
    name to the ablator it keeps nodes with (None when the run has none); the curve behind each
    faithfulness value is kept in ``curves`` under the same name.
    """

    def __init__(self, values: pd.Series, truth_labels: dict[str, str], answer_layer: int | None,
                 ablators: dict[str, "Ablator | None"]):
        self.values = values
        self.x = values.to_numpy()
        self.labels = np.array([1 if name in truth_labels else 0 for name in values.index])
        self.k = len(truth_labels)
        self.answer_layer = answer_layer
        self.ablators = ablators
        self.curves: dict[str, list[dict[str, Any]]] = {}

    @cached_property
    def at_k(self) -> tuple[float, float, float]:
        """Precision, recall and F1 of the top k, computed once for the three metrics."""
        return precision_recall_f1_at_k(self.x, self.labels, self.k)

    def faithfulness(self, metric: str) -> float | None:
        """The faithfulness value with the ablator given for ``metric``; None without one."""
        ablator = self.ablators.get(metric)
        if ablator is None:
            return None
        out = faithfulness(self.values, ablator, self.k)
        self.curves[metric] = out["curve"]
        return out["faithfulness"]


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def score_run(scores: pd.Series, truth: "Truth", granularity: str, signed: bool,
              ablator: "Ablator | None" = None, trap: bool = False,
              counterfactual: "Ablator | None" = None, optimal: "Ablator | None" = None,
              roles: dict[str, str] | None = None) -> dict[str, Any]:
    """All metrics of one (technique, case, seed) at one granularity, as a flat JSON-ready dict.

    The truth set is ``truth.labels(granularity)``; k is its size. Signed scores are ranked by
    magnitude. Keys:

    * every metric of :data:`mibench.metrics.METRICS` defined at ``granularity``, under its name
      (None where undefined, for example AUROC when every component is in the truth set, or
      faithfulness without an ablator). ``ablator`` drives ``faithfulness`` (resample ablation);
      ``counterfactual`` drives ``faithfulness_counterfactual`` (nodes replaced by their output
      on the corrupted prompts, MIB's counterfactual ablation, which also removes components
      whose output is the same on every clean prompt); ``optimal`` drives
      ``faithfulness_optimal`` (nodes replaced by their optimal constants, Li & Janson 2024);
    * ``k``, ``n_components``, ``recall_by_role``, ``failures``, and for each faithfulness
      metric its ``{name}_curve`` (None without an ablator), which the report plots;
    * ``role_labels`` when the technique labelled components with roles (``roles``, its
      ``scores.attrs["roles"]``): :func:`role_label_scores` against the truth's roles;
    * on a trap case (``trap=True``) ``fooled`` and ``fooled_reason``: the technique is fooled
      when its top k is not exactly the truth set (a truth component missed, a distractor ranked
      in) or, at layer granularity, when it names the wrong answer layer.
    """
    from mibench import metrics  # here, not at the top: mibench.metrics calls this module's functions

    truth_labels = truth.labels(granularity)
    if granularity == "edge":  # edges the case's corruption never moves are neither truth nor distractor
        scores = scores.drop([e for e in truth.nil_edges if e in scores.index])
    if not truth_labels:
        raise ValueError(f"the truth has no {granularity!r} components; cannot score this "
                         f"granularity (truth granularities: {', '.join(truth.granularities())})")
    ranked = rank_for_scoring(scores, signed)
    _check_members(ranked, truth_labels)
    run = Ranking(ranked, truth_labels, truth.answer_layer,
                  ablators={"faithfulness": ablator, "faithfulness_counterfactual": counterfactual,
                            "faithfulness_optimal": optimal})
    out: dict[str, Any] = {m.name: _nan_to_none(m.compute(run)) for m in metrics.applicable(granularity)}
    out.update(k=run.k, n_components=int(run.x.size),
               recall_by_role=recall_by_role(ranked, truth_labels, run.k),
               failures=failures(ranked, truth_labels, run.k))
    for name in run.ablators:
        if name in out:
            curve = run.curves.get(name)
            out[f"{name}_curve"] = (None if curve is None else
                                    [{**c, "recovered": _nan_to_none(c["recovered"])} for c in curve])
    if roles is not None:
        unknown = [c for c in roles if c not in ranked.index]
        if unknown:
            raise ValueError(f"role labels name {unknown[:3]}, which are not scored components")
        out["role_labels"] = role_label_scores(roles, truth_labels)
    if trap:
        reasons = []
        if run.at_k[0] < 1.0:
            missed = ", ".join(f"{m['component']} ({m['role']}, rank {m['rank']})"
                               for m in out["failures"]["missed"][:3])
            reasons.append(f"top-{run.k} is not the truth set" + (f"; missed {missed}" if missed else ""))
        layer_error = answer_layer_error(ranked, truth.answer_layer) if granularity == "layer" else None
        if layer_error:
            reasons.append(f"answer layer off by {layer_error}")
        out["fooled"] = bool(reasons)
        out["fooled_reason"] = "; ".join(reasons)
    return out


# --- over seeds -------------------------------------------------------------------------------

def aggregate(values: Iterable[float | None], seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Mean and 95 % percentile-bootstrap interval of per-seed values (``scipy.stats.bootstrap``).

    None and NaN entries are ignored and counted as ``n_missing``. Deterministic: resampling uses
    ``numpy.random.default_rng(seed)``. With one value (or all values equal) ``low = high = mean``;
    with none, ``mean``, ``low`` and ``high`` are None. Returns ``{mean, low, high, n, n_missing}``.
    """
    from scipy.stats import bootstrap

    raw = list(values)
    kept = [float(v) for v in raw if v is not None and not math.isnan(float(v))]
    n_missing = len(raw) - len(kept)
    n = len(kept)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "n_missing": n_missing}
    arr = np.asarray(kept, dtype="float64")
    # One value or all equal: the interval is that value, exactly (a float mean can be off by an
    # ulp). scipy's bootstrap could not say so: it needs two values and warns on degenerate data.
    if np.all(arr == arr[0]):
        mean = float(arr[0])
        return {"mean": mean, "low": mean, "high": mean, "n": n, "n_missing": n_missing}
    boot = bootstrap((arr,), np.mean, n_resamples=n_boot, confidence_level=0.95,
                     method="percentile", rng=np.random.default_rng(seed))
    low, high = boot.confidence_interval
    return {"mean": float(arr.mean()), "low": float(low), "high": float(high), "n": n,
            "n_missing": n_missing}
