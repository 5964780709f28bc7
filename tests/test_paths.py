"""Path patching of single edges (mibench.model.paths): exact where it must equal node patching,
nil where the corruption never reaches the receiver, and the planted K-composition edge found."""
from __future__ import annotations

import pytest
import torch

from conftest import prepared
from mibench.model.ablation import ablation_effects
from mibench.model.paths import path_effects

torch.set_num_threads(1)


def _roles(prep):
    return {role: node for node, role in prep.instance.truth.nodes.items()}


def test_a_last_layer_head_s_path_to_the_logits_is_its_whole_effect():
    """The induction head writes straight to the logits and nothing reads it in between, so its
    one path carries exactly what patching the head carries."""
    prep = prepared("induction", 0)
    head = _roles(prep)["induction"]
    model, prompts, metric = prep.instance.model, prep.prompts, prep.ablator.metric
    path = path_effects(model, prompts, [f"{head}->logits"], metric)[f"{head}->logits"]
    node = ablation_effects(model, prompts, [head], "corrupted", metric)[head]
    assert path == pytest.approx(node, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_the_k_composition_edge_carries_the_previous_token_head_s_effect(seed):
    prep = prepared("induction", seed)
    roles = _roles(prep)
    prev, ind = roles["previous_token"], roles["induction"]
    edges = [f"{prev}->{ind}<k>", f"{prev}->{ind}<q>", f"input->{ind}<q>"]
    effects = path_effects(prep.instance.model, prep.prompts, edges, prep.ablator.metric)
    full = prep.ablator.full
    assert effects[f"{prev}->{ind}<k>"] / full > 0.9
    # the corruption rewrites the first half only: the queries, in the repeated half, never change
    assert abs(effects[f"{prev}->{ind}<q>"]) / full < 1e-3
    assert abs(effects[f"input->{ind}<q>"]) / full < 1e-3
