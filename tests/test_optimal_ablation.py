"""Optimal ablation: the fitted constants (``node_values(..., "optimal")``) against mean ablation,
computed independently through plain full forwards, and the ``optimal_ablation`` adapter on the
trap it is meant to survive."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from mibench import names
from mibench.api import CaseView
from mibench.model.ablation import OPTIMAL_FIT_PROMPTS, Ablator, node_values, run_with_values
from mibench.registry import load_case, load_technique

CASE = "trap_bias_component"


@lru_cache(maxsize=None)
def built():
    case = load_case(CASE)
    instance = case.build(0)
    test = case.prompts(32, instance.seed, "test")
    fit = case.prompts(OPTIMAL_FIT_PROMPTS, instance.seed, "train")  # all of it is fitted on
    return case, instance, test, fit


@lru_cache(maxsize=None)
def fitted():
    case, instance, test, fit = built()
    nodes = names.nodes(names.Shape.of(instance.model))
    return nodes, node_values(instance.model, test, nodes, "optimal", metric=case.task_metric(test),
                              fit_prompts=fit)


def full_forward_loss(value: torch.Tensor, node: str) -> float:
    """Mean over the fitting prompts of (metric − full model's metric)², by a plain forward with
    ``node`` replaced: not through BaseRun or the fit's own loss."""
    case, instance, test, fit = built()
    metric = case.task_metric(fit)
    clean = metric.per_prompt(run_with_values(instance.model, fit.clean, {}))
    patched = metric.per_prompt(run_with_values(instance.model, fit.clean, {node: value}))
    return float(((patched - clean) ** 2).mean())


def test_optimal_constant_loses_no_more_than_the_mean_and_less_somewhere():
    _, instance, _, fit = built()
    nodes, optimal = fitted()
    mean = node_values(instance.model, fit, nodes, "mean")
    gains = {}
    for node in nodes:
        assert optimal[node].shape == mean[node].shape, node  # one constant per position
        at_optimum, at_mean = full_forward_loss(optimal[node], node), full_forward_loss(mean[node], node)
        assert at_optimum <= at_mean + 1e-5 * (1 + at_mean), (node, at_optimum, at_mean)
        gains[node] = at_mean - at_optimum
    # the fit must do something: here the mover's and the detector MLP's losses fall by > 10 %
    best = max(gains, key=gains.get)
    assert gains[best] > 0.1 * full_forward_loss(mean[best], best), gains


def test_fit_is_deterministic():
    case, instance, test, fit = built()
    nodes, first = fitted()
    again = node_values(instance.model, test, nodes, "optimal", metric=case.task_metric(test),
                        fit_prompts=fit)
    for node in nodes:
        assert torch.equal(first[node], again[node]), node


def test_ablator_uses_the_optimal_constants():
    case, instance, test, fit = built()
    nodes, optimal = fitted()
    ablator = Ablator(instance.model, test, case.task_metric(test), how="optimal", fit_prompts=fit)
    for node in nodes:
        assert torch.equal(ablator.ablated[node], optimal[node]), node
    assert ablator.normalized(ablator.metric_keeping(nodes)) == pytest.approx(1.0, abs=1e-6)


def test_optimal_ablation_ranks_the_circuit_first_and_not_the_bias_components():
    """On the bias trap the circuit tops the ranking, and the constant components that zero
    ablation puts in its top k (the trap's point) fall below every circuit node."""
    case, instance, test, fit = built()
    view = CaseView.of(case, instance.model, test, fit, "node", 0)
    scores = load_technique("optimal_ablation").attribute(view)
    truth = set(instance.truth.nodes)
    assert (scores >= 0).all()
    assert set(scores.nlargest(len(truth)).index) == truth, scores.sort_values().to_dict()
    zero = load_technique("zero_ablation").attribute(view).abs()
    fooled = set(zero.nlargest(len(truth)).index) - truth  # the bias components zero ablation ranks high
    assert fooled, "zero ablation is not fooled here: this test would not test the trap"
    assert scores[list(fooled)].max() < scores[list(truth)].min()


def test_faithfulness_under_optimal_ablation_is_scored_only_when_asked(tmp_path):
    """`mibench run --faithfulness-optimal`: node runs get the optional score (and its table
    column); a stored record without it is not current for such a run, and is rerun."""
    from mibench import metrics
    from mibench.runner import Execution, RunSpec, run_grid

    specs = [RunSpec(load_technique("mean_ablation"), "node")]
    plain = run_grid(specs, [load_case(CASE)], [0], tmp_path, progress=False)
    assert plain[0].metrics["faithfulness_optimal"] is None
    shown = metrics.columns({"node"}, metrics.measured(r.metrics for r in plain))
    assert "faithfulness_optimal" not in [m.name for m in shown]
    asked = run_grid(specs, [load_case(CASE)], [0], tmp_path, progress=False,
                     execution=Execution(faithfulness_optimal=True))
    assert asked[0].metrics["faithfulness_optimal"] is not None  # so the stored record was rerun, not kept
    kept_circuit = next(c for c in asked[0].metrics["faithfulness_optimal_curve"] if c["fraction"] == 1.0)
    assert kept_circuit["recovered"] > 0.9, kept_circuit  # the top k is the circuit on this case
    shown = metrics.columns({"node"}, metrics.measured(r.metrics for r in asked))
    assert "faithfulness_optimal" in [m.name for m in shown]
