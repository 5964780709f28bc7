"""The edge mechanism (mibench.model.edges): keep-all is the clean run, keep-none the corrupted run,
one removed edge is the single-edge path patch, and a continuous mask has a gradient."""
from __future__ import annotations

import pytest
import torch

from conftest import prepared
from mibench import names
from mibench.model import bridge, gradients, hooks, weights
from mibench.model.edges import EdgePatcher

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def induction():
    prep = prepared("induction", 0)
    prompts = prep.prompts
    return prep, EdgePatcher(prep.instance.model, prompts.clean[:16], prompts.corrupted[:16])


def _keep(patcher, values):
    return patcher.graph.keep_mask(torch.as_tensor(values, dtype=torch.float32))


def test_keeping_every_edge_is_the_clean_run_and_none_the_corrupted_run(induction):
    prep, patcher = induction
    n_edges = len(patcher.graph.edges)
    with torch.no_grad():
        out = patcher.run(_keep(patcher, [[1.0] * n_edges, [0.0] * n_edges]))
        corrupted = prep.instance.model(prep.prompts.corrupted[:16])
    torch.testing.assert_close(out[0], patcher.clean_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], corrupted, rtol=1e-4, atol=1e-4)


def _path_patch(model, clean_tokens, corrupted_tokens, edge):
    """Reference: the sender's corrupted − clean write added to what the receiver reads in the
    clean run (the projection of its normed input), written directly with hooks."""
    clean, corrupted = gradients.forward(model, clean_tokens), gradients.forward(model, corrupted_tokens)
    src, dst, kind = names.parse_edge(edge)
    delta = gradients.writes(model, corrupted)[src.name] - gradients.writes(model, clean)[src.name]
    if dst.kind == "logits":
        hook, patch = hooks.RESID_FINAL, lambda act: act + delta
    else:
        resid = clean.acts[hooks.resid_pre(dst.layer)]
        change = bridge.apply_block_norm(model, dst.layer, "ln1", resid + delta) - \
            bridge.apply_block_norm(model, dst.layer, "ln1", resid)
        added = change @ weights.reader_weights(model, dst.layer, kind)[dst.index]
        hook = hooks.attn(dst.layer, kind)

        def patch(act):
            act = act.clone()
            act[:, :, dst.index] += added
            return act
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, lambda act, hook: patch(act))]):  # noqa: ARG005
        return model(clean_tokens)


def test_one_removed_edge_is_path_patching_of_that_edge(induction):
    prep, patcher = induction
    roles = {role: node for node, role in prep.instance.truth.nodes.items()}
    prev, ind = roles["previous_token"], roles["induction"]
    edges = [f"{prev}->{ind}<k>", f"input->{ind}<v>", f"{ind}->logits", f"input->{prev}<v>"]
    keep = torch.ones(len(edges), len(patcher.graph.edges))
    for row, edge in enumerate(edges):
        keep[row, patcher.graph.edges.index(edge)] = 0
    with torch.no_grad():
        out = patcher.run(patcher.graph.keep_mask(keep))
    for row, edge in enumerate(edges):
        expected = _path_patch(prep.instance.model, prep.prompts.clean[:16], prep.prompts.corrupted[:16], edge)
        assert (expected - patcher.clean_logits).abs().max() > 0.1, edge  # the edge does something
        torch.testing.assert_close(out[row], expected, rtol=1e-4, atol=1e-4)


def test_a_continuous_mask_has_a_gradient_that_matches_finite_differences(induction):
    prep, patcher = induction
    metric = prep.ablator.metric
    edge = patcher.graph.edges.index(next(e for e in patcher.graph.edges if e.endswith("->logits")
                                          and e.startswith([n for n, r in prep.instance.truth.nodes.items()
                                                            if r == "induction"][0])))
    keep = torch.full((1, len(patcher.graph.edges)), 0.5, requires_grad=True)
    value = metric(patcher.run(patcher.graph.keep_mask(keep))[0], prep.prompts.take(torch.arange(16)))
    (grad,) = torch.autograd.grad(value, keep)
    assert torch.isfinite(grad).all() and grad[0, edge] != 0
    step = torch.zeros_like(keep)
    step[0, edge] = 1e-2
    with torch.no_grad():
        metric_at = lambda k: float(metric(patcher.run(patcher.graph.keep_mask(k))[0],  # noqa: E731
                                           prep.prompts.take(torch.arange(16))))
        slope = (metric_at(keep + step) - metric_at(keep - step)) / 2e-2
    assert float(grad[0, edge]) == pytest.approx(slope, rel=1e-2)
