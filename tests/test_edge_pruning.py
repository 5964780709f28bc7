"""Edge Pruning (techniques/edge_pruning.py) on induction, small: the truth edges the corruption
moves end above the median edge, and two runs give identical scores."""
from __future__ import annotations

import torch

from conftest import prepared
from mibench.api import CaseView
from techniques.edge_pruning import EdgePruning

torch.set_num_threads(1)


class ShortEdgePruning(EdgePruning):
    """Fewer, larger steps to keep the test fast (Adam covers the same range of logits)."""

    name = None
    steps = 16
    lr = 0.45


def test_truth_edges_rank_above_the_median_and_runs_are_identical():
    prep = prepared("induction", 0)
    view = CaseView.of(prep.case, prep.instance.model, prep.prompts, prep.train_prompts, "edge", 0)
    first, second = ShortEdgePruning().attribute(view), ShortEdgePruning().attribute(view)
    assert first.equals(second)
    truth = set(prep.instance.truth.labels("edge"))
    assert truth and not truth & prep.instance.truth.nil_edges
    median = first.median()
    assert all(first[edge] > median for edge in truth), first[sorted(truth)]
