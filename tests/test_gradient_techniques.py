"""The gradient family: attribution_patching (AtP / EAP), eap_ig, integrated_gradients, and the
shared mechanics in mibench.model.gradients."""
import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import prepared
from mibench import names
from mibench.model import gradients, layernorm
from mibench.model.ablation import ablation_effects, node_values, run_with_values
from mibench.api import CaseView
from mibench.model.passes import PassCounter
from mibench.registry import load_technique
from mibench.scoring import auroc


def _view(case_name: str, granularity: str, seed: int = 0, n: int | None = None) -> CaseView:
    """A technique's view of a prepared case; ``n`` keeps the first n test prompts (for speed)."""
    prep = prepared(case_name, seed)
    prompts = prep.prompts if n is None else prep.prompts.take(torch.arange(n))
    return CaseView(prep.case, copy.deepcopy(prep.instance.model), prompts, prep.train_prompts,
                    granularity, seed)


def _attribute(technique: str, case_name: str, granularity: str | None = None, n: int | None = None):
    tech = load_technique(technique)
    return tech.attribute(_view(case_name, granularity or tech.granularity, n=n))


def _rank(scores, name: str) -> int:
    """1-based rank of ``name`` by magnitude (the scorer's order for signed techniques)."""
    order = scores.abs().sort_values(ascending=False, kind="mergesort").index
    return list(order).index(name) + 1


def test_atp_agrees_with_activation_patching_on_induction():
    view = _view("induction", "node")
    atp = load_technique("attribution_patching").attribute(view)
    patched = ablation_effects(view.model, view.prompts, view.components(), "corrupted", view.metric)
    nodes = view.components()
    rho = spearmanr([atp[n] for n in nodes], [patched[n] for n in nodes]).statistic
    assert rho >= 0.9, f"Spearman {rho:.3f}"
    truth = prepared("induction", 0).instance.truth.nodes
    top2 = set(atp.abs().sort_values(ascending=False).index[:2])
    assert top2 == set(truth), (top2, truth)


def test_atp_costs_two_forward_one_backward():
    view = _view("planted_trigger", "node", n=16)
    for granularity in ("node", "edge"):
        view.granularity = granularity
        with PassCounter(view.model, len(view.prompts)) as passes:
            load_technique("attribution_patching").attribute(view)
        assert (passes.forward_passes, passes.backward_passes) == (2.0, 1.0), granularity


@pytest.mark.parametrize("technique", ["attribution_patching", "eap_ig"])
def test_edge_methods_rank_the_k_composition_edge_top3(technique):
    truth = prepared("induction", 0).instance.truth
    (k_edge,) = [e for e, kind in truth.edges.items() if kind == "k" and not e.startswith("input")]
    scores = _attribute(technique, "induction", "edge", n=16)
    assert set(scores.index) == set(names.edges(names.Shape.of(prepared("induction", 0).instance.model)))
    assert _rank(scores, k_edge) <= 3, scores.abs().sort_values(ascending=False).head(5)


def test_edge_scores_sum_to_node_scores():
    """Chain rule on the residual stream: a source's EAP scores over every downstream reader add up
    to its AtP node score (this checks the per-destination q/k/v/MLP/logits gradients)."""
    view = _view("planted_trigger", "node", n=16)
    nodes = load_technique("attribution_patching").attribute(view)
    view.granularity = "edge"
    edges = load_technique("attribution_patching").attribute(view)
    for node in nodes.index:
        outgoing = edges[[e for e in edges.index if e.startswith(node + "->")]].sum()
        assert outgoing == pytest.approx(nodes[node], rel=1e-4, abs=1e-5), node


def test_integrated_gradients_neurons_find_the_trigger_neurons():
    truth = prepared("planted_trigger", 0).instance.truth.neurons
    scores = _attribute("integrated_gradients", "planted_trigger", "neuron")
    labels = np.array([n in truth for n in scores.index], dtype=float)
    value = auroc(scores.abs().to_numpy(), labels)
    assert value >= 0.9, value


def test_integrated_gradients_completeness_per_layer():
    """Captum's completeness: a layer's head attributions sum to metric(clean) − metric(clean with
    that layer's z ← corrupted z). Tolerance 1% of the effect + 1e-3: 16-point Gauss–Legendre
    quadrature of a smooth path integral is far more accurate than that (measured error ≤ 4e-6 on
    effects of ~9.4 and ~10.0 on all 64 prompts of seed 0); the rest is float32 rounding."""
    view = _view("induction", "node", n=16)
    scores = load_technique("integrated_gradients").attribute(view)
    model, prompts = view.model, view.prompts
    clean = float(view.metric(run_with_values(model, prompts.clean, {})))
    for layer in range(view.shape.n_layers):
        heads = [names.head(layer, h) for h in range(view.shape.n_heads)]
        corrupted = node_values(model, prompts, heads, "corrupted")
        effect = clean - float(view.metric(run_with_values(model, prompts.clean, corrupted)))
        total = float(scores[heads].sum())
        assert total == pytest.approx(effect, rel=1e-2, abs=1e-3), (layer, total, effect)


@pytest.mark.parametrize("kind", ["LN", "LNPre", "RMS", "RMSPre", None])
def test_norm_vjp_matches_autograd(kind):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64)
    g = torch.randn(3, 5, 8, dtype=torch.float64)
    eps = 1e-5
    if kind in ("LN", "LNPre"):
        y = torch.nn.functional.layer_norm(x, (8,), eps=eps)
    elif kind in ("RMS", "RMSPre"):
        y = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    else:
        y = x
    if kind in ("LN", "RMS"):
        y = y * w
    (expected,) = torch.autograd.grad(y, x, g)
    got = layernorm.vjp(kind, w, x.detach(), g, eps)
    torch.testing.assert_close(got, expected)
