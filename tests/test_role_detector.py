"""role_detector: its labels on ioi, and how scoring turns role labels into per-role precision and
recall (``mibench.scoring.role_label_scores``, ``score_run(..., roles=)``)."""
from __future__ import annotations

import pandas as pd
import pytest

from mibench.api import CaseView, Truth
from mibench.registry import load_case
from techniques.role_detector import RoleDetector
from mibench.scoring import role_label_scores, score_run


@pytest.fixture(scope="module")
def ioi_seed0_scores():
    case = load_case("ioi")
    instance = case.build(0, size="small")
    view = CaseView.of(case, instance.model, case.prompts(case.n_prompts, 0, "test"),
                       case.prompts(8, 0, "train"), "node", 0)
    return RoleDetector().attribute(view), instance.truth


def test_labels_on_ioi_seed0_include_the_name_movers(ioi_seed0_scores):
    scores, truth = ioi_seed0_scores
    roles = scores.attrs["roles"]
    for role in ("name_mover", "negative_name_mover"):
        (head,) = [h for h, r in truth.nodes.items() if r == role]
        assert roles.get(head) == role, f"{head} is the {role}; labelled {roles.get(head)}"
    metrics = score_run(scores, truth, "node", signed=False, roles=roles)
    assert metrics["role_labels"]["name_mover"] == {"precision": 1.0, "recall": 1.0, "n_labelled": 1}


def test_role_label_scores_on_a_toy_truth():
    truth = {"a0.h0": "previous_token", "a1.h0": "name_mover", "a1.h1": "name_mover",
             "a2.h0": "backup_name_mover"}
    labels = {"a0.h0": "previous_token", "a0.h1": "previous_token",  # one right, one look-alike
              "a1.h0": "name_mover",                                  # one of two name movers
              "a2.h0": "name_mover",                                  # a backup called a mover
              "a2.h1": "s_inhibition"}                                # a role the truth lacks
    assert role_label_scores(labels, truth) == {
        "backup_name_mover": {"precision": None, "recall": 0.0, "n_labelled": 0},
        "name_mover": {"precision": 0.5, "recall": 0.5, "n_labelled": 2},
        "previous_token": {"precision": 0.5, "recall": 1.0, "n_labelled": 2},
        "s_inhibition": {"precision": 0.0, "recall": None, "n_labelled": 1},
    }


def test_score_run_reports_role_labels_only_when_given():
    truth = Truth(nodes={"a0.h0": "previous_token", "a1.h0": "name_mover"})
    scores = pd.Series({"a0.h0": 2.0, "a0.h1": 1.0, "a1.h0": 3.0, "a1.h1": 0.0, "m0": 0.0, "m1": 0.0})
    assert "role_labels" not in score_run(scores, truth, "node", signed=False)
    out = score_run(scores, truth, "node", signed=False, roles={"a1.h0": "name_mover"})
    assert out["role_labels"]["name_mover"] == {"precision": 1.0, "recall": 1.0, "n_labelled": 1}
    assert out["role_labels"]["previous_token"] == {"precision": None, "recall": 0.0, "n_labelled": 0}
    with pytest.raises(ValueError, match="not scored components"):
        score_run(scores, truth, "node", signed=False, roles={"a9.h0": "name_mover"})
