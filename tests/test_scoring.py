"""Tests for mibench.scoring: every metric against hand-computed values, plus cross-checks."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mibench.api import Truth
from mibench.scoring import (aggregate, auroc, average_precision, failures, faithfulness,
                             noise_ceiling, precision_recall_f1_at_k, rank_for_scoring, recall_by_role,
                             score_run)

ROOT = Path(__file__).resolve().parents[1]


# --- auroc / ap / p@k: hand-computed ---------------------------------------------------------

def test_distinct_scores_hand_computed():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 0, 0])
    # ascending ranks 0.5→1 … 0.9→5; positives have ranks 5 + 3 = 8; U = 8 − 2·3/2 = 5; AUROC = 5/(2·3)
    assert auroc(s, y) == pytest.approx(5 / 6)
    # thresholds: 0.9 → P=1, R=1/2; 0.8 → P=1/2, R=1/2; 0.7 → P=2/3, R=1; AP = ½·1 + ½·⅔ = 5/6
    assert average_precision(s, y) == pytest.approx(5 / 6)
    # top-2 = {0.9 (pos), 0.8 (neg)}: tp = 1 → p = r = f1 = 1/2
    assert precision_recall_f1_at_k(s, y, 2) == pytest.approx((0.5, 0.5, 0.5))


def test_ties_hand_computed():
    s = np.array([5.0, 4.0, 4.0, 1.0])
    y = np.array([1, 1, 0, 0])
    # ascending avg ranks: 1→1, 4,4→2.5, 5→4; positives 4 + 2.5 = 6.5; U = 6.5 − 3 = 3.5; /(2·2)
    # (pairwise: pos 5 beats both negatives = 2; pos 4 ties neg 4 = ½ and beats neg 1 = 1 → 3.5/4)
    assert auroc(s, y) == pytest.approx(0.875)
    # thresholds: 5 → P=1, R=½; 4 (two items, one threshold) → P=2/3, R=1; AP = ½·1 + ½·⅔ = 5/6
    assert average_precision(s, y) == pytest.approx(5 / 6)
    # k=2: 5 is above the boundary (counts 1); 4,4 tied share 1 slot → ½ each; tp = 1 + ½ = 1.5
    # p = 1.5/2 = 0.75, r = 1.5/2 = 0.75, f1 = 0.75
    assert precision_recall_f1_at_k(s, y, 2) == pytest.approx((0.75, 0.75, 0.75))


def test_ties_three_way_boundary():
    s = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    y = np.array([0, 1, 0, 1, 0])
    # avg ranks: 1→1, 2,2,2→3, 3→5; positives 3 + 3 = 6; U = 6 − 3 = 3; AUROC = 3/6
    assert auroc(s, y) == pytest.approx(0.5)
    # thresholds: 3 → P=0, R=0; 2 → tp=2 of 4, P=½, R=1; AP = 1·½
    assert average_precision(s, y) == pytest.approx(0.5)
    # k=2: 3 above (neg); 1 slot shared by 3 tied (2 of them pos) → tp = 2·⅓; p = r = f1 = 1/3
    assert precision_recall_f1_at_k(s, y, 2) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_all_equal_scores():
    s = np.zeros(8)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    # every pair ties → AUROC ½; one threshold with P = base rate 2/8, R = 1 → AP = ¼;
    # top-2 slots shared by all 8 → each ¼ in; tp = 2·¼ = ½; p = ½/2 = ¼ = base rate, r = ½/2 = ¼
    assert auroc(s, y) == 0.5
    assert average_precision(s, y) == pytest.approx(0.25)
    assert precision_recall_f1_at_k(s, y, 2) == pytest.approx((0.25, 0.25, 0.25))


def test_perfect_and_inverted():
    y = np.array([1, 1, 0, 0, 0])
    perfect = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    inverted = perfect[::-1].copy()
    assert auroc(perfect, y) == 1.0
    assert average_precision(perfect, y) == 1.0
    assert precision_recall_f1_at_k(perfect, y, 2) == (1.0, 1.0, 1.0)
    assert auroc(inverted, y) == 0.0
    # positives at ranks 4 and 5: P=1/4 at R=½, P=2/5 at R=1 → AP = ½·¼ + ½·⅖ = 0.325
    assert average_precision(inverted, y) == pytest.approx(0.325)
    assert precision_recall_f1_at_k(inverted, y, 2) == (0.0, 0.0, 0.0)


def test_degenerate_labels_and_errors():
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1])))
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([0, 0])))
    assert math.isnan(average_precision(np.array([1.0, 2.0]), np.array([0, 0])))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([1.0, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall_f1_at_k(np.array([1.0, 2.0]), np.array([1, 0]), 0)
    # k larger than n is clipped: top-3 of 2 items = both; tp = 1 → p = ½, r = 1, f1 = ⅔
    assert precision_recall_f1_at_k(np.array([1.0, 2.0]), np.array([1, 0]), 3) == pytest.approx(
        (0.5, 1.0, 2 / 3))


# --- cross-checks against sklearn and chance ---------------------------------------------------

def test_matches_sklearn_on_random_vectors_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(123)
    checked = 0
    while checked < 50:
        n = int(rng.integers(4, 30))
        scores = rng.integers(0, 5, size=n).astype(float)  # few distinct values → many ties
        if rng.random() < 0.3:
            scores = -scores * 0.37
        labels = (rng.random(n) < 0.3).astype(int)
        if labels.sum() in (0, n):
            continue
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12)
        checked += 1


def test_auroc_is_the_mann_whitney_statistic_with_ties():
    """Independent of sklearn: AUROC = U / (P·N), scipy's U counting ties as one half."""
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(4, 30))
        scores = rng.integers(0, 4, size=n).astype(float)
        labels = np.r_[1, 0, (rng.random(n - 2) < 0.4).astype(int)]
        pos, neg = scores[labels == 1], scores[labels == 0]
        u = mannwhitneyu(pos, neg, method="asymptotic").statistic
        assert auroc(scores, labels) == pytest.approx(u / (pos.size * neg.size), abs=1e-12)


def test_random_scores_have_chance_auroc():
    rng = np.random.default_rng(0)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    values = [auroc(rng.random(8), y) for _ in range(500)]
    assert abs(np.mean(values) - 0.5) < 0.03


# --- series-level functions -------------------------------------------------------------------

def test_rank_for_scoring_signed_uses_magnitude():
    s = pd.Series({"a0.h0": -3.0, "a0.h1": 1.0, "a1.h0": 2.0})
    assert rank_for_scoring(s, signed=True).tolist() == [3.0, 1.0, 2.0]
    assert rank_for_scoring(s, signed=False).tolist() == [-3.0, 1.0, 2.0]
    assert list(rank_for_scoring(s, signed=True).index) == list(s.index)
    # truth {a0.h0}: by magnitude it is first (AUROC 1); by raw value last (AUROC 0)
    truth = Truth(nodes={"a0.h0": "r"})
    assert score_run(s, truth, "node", signed=True)["auroc"] == 1.0
    assert score_run(s, truth, "node", signed=False)["auroc"] == 0.0


SCORES = pd.Series({"a0.h0": 4.0, "a0.h1": 3.0, "a1.h0": 3.0, "a1.h1": 1.0})
ROLES = {"a0.h0": "prev", "a1.h0": "ind", "a1.h1": "ind"}


def test_recall_by_role():
    # non-truth values 0.1, 0.2, 0.3, 0.2, 0.1, 0.3: median 0.2, MAD 0.1 → noise ceiling
    # 0.2 + 3.5 · 0.1 / 0.6745 = 0.7189
    noise = {f"n{i}": v for i, v in enumerate([0.1, 0.2, 0.3, 0.2, 0.1, 0.3])}
    roles = {"a": "name_mover", "b": "backup", "c": "backup"}
    assert noise_ceiling(pd.Series({"a": 9.0, "b": 0.0, "c": 0.0, **noise}), roles) == pytest.approx(
        0.2 + 3.5 * 0.1 / 0.6745)
    # k=3: b is in the top k (rank 2) but at a noise-level score: not found; c is below the top k
    quiet = pd.Series({"a": 9.0, "b": 0.35, "c": 0.05, **noise})
    assert recall_by_role(quiet, roles, 3) == {"backup": 0.0, "name_mover": 1.0}
    loud = quiet.replace({0.35: 0.8})
    assert recall_by_role(loud, roles, 3) == {"backup": 0.5, "name_mover": 1.0}
    # ties at the k-th score share the remaining slots (k=2: b and c tied for 1 slot → ½ each)
    tied = pd.Series({"a": 9.0, "b": 5.0, "c": 5.0, **noise})
    assert recall_by_role(tied, roles, 2) == pytest.approx({"backup": 0.5, "name_mover": 1.0})
    # the MAD is 0 (most non-truth values equal): the mean absolute deviation stands in
    flat_noise = pd.Series({"a": 9.0, "b": 0.5, "c": 0.0, "n0": 0.0, "n1": 0.0, "n2": 0.0, "n3": 0.3})
    assert noise_ceiling(flat_noise, roles) == pytest.approx(3.5 * 1.2533 * 0.075)
    # (0.329): b at 0.5 stands out, c at 0 does not
    assert recall_by_role(flat_noise, roles, 3) == {"backup": 0.5, "name_mover": 1.0}
    # every component equal: nothing stands out, nothing is found
    flat = pd.Series(0.0, index=quiet.index)
    assert recall_by_role(flat, roles, 3) == {"backup": 0.0, "name_mover": 0.0}


def test_failures_content():
    # k=3: top-3 = a0.h0, a0.h1, a1.h0 (no ties cut); min ranks 1, 2, 2, 4
    out = failures(SCORES, ROLES, 3)
    assert out == {
        "missed": [{"component": "a1.h1", "role": "ind", "rank": 4, "score": 1.0}],
        "false_positives": [{"component": "a0.h1", "rank": 2, "score": 3.0}],
    }
    # k=2: a1.h0 is tied at the boundary (in with probability ½) → reported missed, rank 2;
    # a0.h1 can be in → reported false positive
    out = failures(SCORES, ROLES, 2)
    assert [m["component"] for m in out["missed"]] == ["a1.h0", "a1.h1"]
    assert [m["rank"] for m in out["missed"]] == [2, 4]
    assert out["false_positives"] == [{"component": "a0.h1", "rank": 2, "score": 3.0}]
    json.dumps(out)


def test_failures_false_positive_limit_and_order():
    s = pd.Series({f"a0.h{i}": float(10 - i) for i in range(8)})
    out = failures(s, {"a0.h7": "x"}, 1, n_false_positives=2)
    # k=1: only a0.h0 (score 10, rank 1) is in the top-1; a0.h7 (score 3, rank 8) missed
    assert out["missed"] == [{"component": "a0.h7", "role": "x", "rank": 8, "score": 3.0}]
    assert out["false_positives"] == [{"component": "a0.h0", "rank": 1, "score": 10.0}]
    # all equal, k=1: truth member missed (rank 1), false positives = first 2 in series order
    flat = pd.Series(0.0, index=s.index)
    out = failures(flat, {"a0.h7": "x"}, 1, n_false_positives=2)
    assert out["missed"] == [{"component": "a0.h7", "role": "x", "rank": 1, "score": 0.0}]
    assert [f["component"] for f in out["false_positives"]] == ["a0.h0", "a0.h1"]


def test_failure_ranks_count_the_components_scored_higher():
    """The "1224" rank of every reported component is 1 + the number scored strictly higher."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        n = int(rng.integers(3, 20))
        s = pd.Series(rng.integers(0, 4, size=n).astype(float), index=[f"a0.h{i}" for i in range(n)])
        truth = {name: "r" for name in rng.choice(s.index, size=int(rng.integers(1, n)), replace=False)}
        out = failures(s, truth, len(truth), n_false_positives=n)
        for item in out["missed"] + out["false_positives"]:
            assert item["rank"] == 1 + int((s > s[item["component"]]).sum())


# --- score_run --------------------------------------------------------------------------------

def test_score_run_node():
    truth = Truth(nodes=ROLES)
    out = score_run(SCORES, truth, "node", signed=False)
    # k = 3; labels [1, 0, 1, 1]; ascending avg ranks: 1→1, 3,3→2.5, 4→4 → positives 4+2.5+1 = 7.5
    # U = 7.5 − 6 = 1.5; AUROC = 1.5/3 = ½
    assert out["auroc"] == pytest.approx(0.5)
    # thresholds: 4 → P=1, R=⅓; 3 → tp 2 of 3, P=⅔, R=⅔; 1 → tp 3 of 4, P=¾, R=1
    # AP = ⅓·1 + ⅓·⅔ + ⅓·¾ = (12 + 8 + 9)/36 = 29/36
    assert out["ap"] == pytest.approx(29 / 36)
    # top-3 = {a0.h0, a0.h1, a1.h0} → tp 2 → p = r = f1 = ⅔
    assert out["precision_at_k"] == pytest.approx(2 / 3)
    assert out["recall_at_k"] == pytest.approx(2 / 3)
    assert out["f1_at_k"] == pytest.approx(2 / 3)
    assert out["k"] == 3 and out["n_components"] == 4
    # the one non-truth value (3) is the noise ceiling: a1.h0, tied with it, is not found
    assert out["recall_by_role"] == {"ind": 0.0, "prev": 1.0}
    assert out["failures"]["missed"][0]["component"] == "a1.h1"
    assert out["faithfulness"] is None and out["faithfulness_curve"] is None
    assert "answer_layer_error" not in out
    json.dumps(out)


def test_score_run_layer():
    truth = Truth(nodes={"a1.h2": "ind"}, direct={"a1.h2": 1}, answer_layer=1)
    assert truth.labels("layer") == {"L1": "direct_effect"}
    out = score_run(pd.Series({"L0": 0.2, "L1": 0.9}), truth, "layer", signed=False)
    assert out["auroc"] == 1.0 and out["answer_layer_error"] == 0
    out = score_run(pd.Series({"L0": -0.9, "L1": 0.2, "L2": 0.1}), truth, "layer", signed=True)
    # by magnitude L0 is top → |0 − 1| = 1
    assert out["answer_layer_error"] == 1 and out["auroc"] == 0.5
    # tie for the top: lowest layer wins → L0 → error 1
    out = score_run(pd.Series({"L0": 1.0, "L1": 1.0, "L2": 0.0}), truth, "layer", signed=False)
    assert out["answer_layer_error"] == 1
    no_answer = Truth(nodes={"a1.h2": "ind"}, direct={"a1.h2": 1})
    assert score_run(pd.Series({"L0": 0.2, "L1": 0.9}), no_answer, "layer", False)["answer_layer_error"] is None


def test_score_run_errors():
    truth = Truth(nodes=ROLES)
    with pytest.raises(ValueError, match="no 'edge' components"):
        score_run(pd.Series({"input->logits": 1.0}), truth, "edge", signed=False)
    with pytest.raises(ValueError, match="NaN"):
        score_run(SCORES.replace(1.0, np.nan), truth, "node", signed=False)
    with pytest.raises(ValueError, match="no score"):
        score_run(SCORES.drop("a1.h1"), truth, "node", signed=False)


# --- aggregate --------------------------------------------------------------------------------

def test_aggregate():
    assert aggregate([0.7, 0.7, 0.7]) == {"mean": 0.7, "low": 0.7, "high": 0.7, "n": 3, "n_missing": 0}
    assert aggregate([0.3]) == {"mean": 0.3, "low": 0.3, "high": 0.3, "n": 1, "n_missing": 0}
    out = aggregate([0.3, None, float("nan")])
    assert out["n"] == 1 and out["n_missing"] == 2 and out["mean"] == 0.3
    assert aggregate([None]) == {"mean": None, "low": None, "high": None, "n": 0, "n_missing": 1}
    vals = [0.1, 0.5, 0.2, 0.9, 0.4]
    a, b = aggregate(vals, seed=3), aggregate(vals, seed=3)
    assert a == b
    assert min(vals) <= a["low"] <= a["mean"] <= a["high"] <= max(vals)
    assert a["mean"] == pytest.approx(0.42)
    # [0, 1]: bootstrap means are 0, ½, 1 with probability ¼, ½, ¼ → 2.5 % quantile 0, 97.5 % 1
    two = aggregate([0.0, 1.0])
    assert (two["mean"], two["low"], two["high"]) == (0.5, 0.0, 1.0)


def test_aggregate_is_the_percentile_bootstrap_of_the_mean():
    """The interval is the 2.5 and 97.5 percentiles of 2000 resampled means, drawn with
    numpy.random.default_rng(seed), to the last few ulps."""
    rng = np.random.default_rng(5)
    for seed in range(20):
        vals = rng.choice([0.1, 0.25, 0.5, 0.9, 1.0], size=int(rng.integers(2, 12)))
        if np.all(vals == vals[0]):
            continue
        draws = np.random.default_rng(seed).integers(0, vals.size, size=(2000, vals.size))
        low, high = np.percentile(vals[draws].mean(axis=1), [2.5, 97.5])
        out = aggregate(vals, seed=seed)
        assert out["mean"] == pytest.approx(vals.mean(), abs=1e-12)
        assert (out["low"], out["high"]) == pytest.approx((low, high), abs=1e-12)


# --- faithfulness -----------------------------------------------------------------------------

class _CountingAblator:
    """Stub: the 'metric' is the number of kept nodes; normalized = value / 8."""

    all_nodes = [f"a0.h{i}" for i in range(4)] + [f"a1.h{i}" for i in range(4)]

    def __init__(self):
        self.kept: list[list[str]] = []

    def metric_keeping(self, kept):
        self.kept.append(list(kept))
        return float(len(self.kept[-1]))

    def normalized(self, value):
        return value / 8


def test_faithfulness_rounding_and_ties_with_stub():
    ab = _CountingAblator()
    s = pd.Series({n: 0.0 for n in ab.all_nodes})
    s["a1.h3"] = 1.0
    out = faithfulness(s, ab, 2)
    # k=2: f·k = 0.2, 0.4, 0.6, 1.0, 2.0, 4.0 → half-up rounding 0→1, 0→1, 1, 1, 2, 4
    assert [c["n_kept"] for c in out["curve"]] == [1, 1, 1, 1, 2, 4]
    assert [c["fraction"] for c in out["curve"]] == [0.1, 0.2, 0.3, 0.5, 1.0, 2.0]
    # recovered = n/8 → mean of (1,1,1,1,2,4)/8 = 10/48
    assert out["faithfulness"] == pytest.approx(10 / 48)
    # each distinct n evaluated once; ties broken by series order after the top score
    assert ab.kept == [["a1.h3"], ["a1.h3", "a0.h0"], ["a1.h3", "a0.h0", "a0.h1", "a0.h2"]]
    # k=10 on 8 nodes: 0.5·10 = 5; 1.0·10 = 10 → capped at 8
    out = faithfulness(s, _CountingAblator(), 10)
    assert [c["n_kept"] for c in out["curve"]] == [1, 2, 3, 5, 8, 8]
    with pytest.raises(ValueError, match="not nodes"):
        faithfulness(pd.Series({"L0": 1.0}), _CountingAblator(), 1)


@pytest.fixture(scope="module")
def induction():
    from mibench.model.ablation import Ablator

    spec = importlib.util.spec_from_file_location(
        "mibench_test_induction_case", ROOT / "ground_truth" / "induction" / "case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    case = module.Induction()
    instance = case.build(0)
    prompts = case.prompts(32, 0)
    ablator = Ablator(instance.model, prompts, case.task_metric(prompts), seed=0)
    return instance, ablator


def test_faithfulness_on_induction(induction):
    instance, ablator = induction
    truth = list(instance.truth.nodes)
    others = [n for n in ablator.all_nodes if n not in truth]
    first = pd.Series({**{n: 10.0 - i for i, n in enumerate(truth)},
                       **{n: -float(i) for i, n in enumerate(others)}})
    last = -first

    good = faithfulness(first, ablator, len(truth))
    by_fraction = {c["fraction"]: c for c in good["curve"]}
    assert by_fraction[1.0]["n_kept"] == 2 and by_fraction[1.0]["recovered"] >= 0.9
    assert by_fraction[2.0]["n_kept"] == 4 and by_fraction[2.0]["recovered"] >= 0.9

    bad = faithfulness(last, ablator, len(truth))
    assert all(c["recovered"] < 0.5 for c in bad["curve"])
    assert bad["faithfulness"] < good["faithfulness"] - 0.3

    out = score_run(first, instance.truth, "node", signed=False, ablator=ablator)
    assert out["auroc"] == 1.0 and out["precision_at_k"] == 1.0
    assert out["faithfulness"] == pytest.approx(good["faithfulness"])
    assert out["faithfulness_curve"] == good["curve"]
    json.dumps(out)


def test_module_does_not_import_sklearn():
    import subprocess
    import sys

    code = "import sys, mibench.scoring; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = "import sys, mibench.scoring; print('scipy' in sys.modules)"  # loaded where used, too
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_counterfactual_faithfulness_sees_a_constant_component():
    """trap_ln_scale's scale head writes the same vector on every clean prompt: resample
    ablation cannot remove it, counterfactual patching can. A ranking that leaves it out looks
    perfectly faithful under resample ablation and is exposed by the counterfactual score."""
    from conftest import prepared

    prep = prepared("trap_ln_scale", 0)
    truth = prep.instance.truth
    (mover,) = [n for n, r in truth.nodes.items() if r == "answer_mover"]
    nodes = prep.ablator.all_nodes
    scores = pd.Series({n: (1.0 if n == mover else 0.0) for n in nodes})  # misses the scale head
    out = score_run(scores, truth, "node", signed=False, ablator=prep.ablator,
                    counterfactual=prep.counterfactual)
    assert out["faithfulness"] > 0.9
    assert out["faithfulness_counterfactual"] < out["faithfulness"] - 0.3
    perfect = pd.Series({n: (1.0 if n in truth.nodes else 0.0) for n in nodes})
    best = score_run(perfect, truth, "node", signed=False, ablator=prep.ablator,
                     counterfactual=prep.counterfactual)
    at_k = {r["fraction"]: r["recovered"] for r in best["faithfulness_counterfactual_curve"]}
    missing = {r["fraction"]: r["recovered"] for r in out["faithfulness_counterfactual_curve"]}
    assert at_k[1.0] > 0.9 and missing[1.0] < 0.3  # keeping k = 2 nodes: the truth vs mover + a distractor
