"""Path patching: one sender's change delivered to one receiver's input, everything else clean.

For an edge ``src->dst<kind>`` (the MIB names of :mod:`mibench.names`) the sender's write into the
residual stream on the corrupted prompts replaces its write on the clean prompts *only* in what
the receiver reads: a head's query, key or value input, an MLP's input, or the final residual
for ``logits``. The receiver's output then flows on through the rest of the clean run (Wang et
al. 2022's path patching, one edge at a time). The effect is metric(clean) − metric(patched).

Projections are linear, so the receiver's patched input is its clean one plus the projected
change of its normed input: for a head's query ``q + (ln1(r + Δ) − ln1(r)) @ W_Q[h]`` with
``Δ = write_corrupted(src) − write_clean(src)``; the norm is applied for real (not linearised).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from mibench import names
from mibench.model import bridge, gradients, hooks, weights
from mibench.model.hooks import RESID_FINAL


def _receiver_delta(model, clean: gradients.Capture, dst: names.Node, kind: str | None,
                    delta: torch.Tensor) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The hook at the receiver's input and a function adding the path's change to its value."""
    if dst.kind == "logits":
        return RESID_FINAL, lambda act: act + delta
    if dst.kind == "mlp":
        mid = clean.acts[hooks.resid_mid(dst.layer)]
        change = bridge.apply_block_norm(model, dst.layer, "ln2", mid + delta) - \
            bridge.apply_block_norm(model, dst.layer, "ln2", mid)
        added = change @ weights.reader_weights(model, dst.layer, "mlp")
        return hooks.mlp_pre(dst.layer), lambda act: act + added
    resid = clean.acts[hooks.resid_pre(dst.layer)]
    change = bridge.apply_block_norm(model, dst.layer, "ln1", resid + delta) - \
        bridge.apply_block_norm(model, dst.layer, "ln1", resid)
    added = change @ weights.reader_weights(model, dst.layer, kind)[dst.index]  # [n, seq, d_head]

    def patch(act: torch.Tensor) -> torch.Tensor:  # [n, seq, head, d_head]
        act = act.clone()
        act[:, :, dst.index] = act[:, :, dst.index] + added
        return act
    return hooks.attn(dst.layer, kind), patch


def path_effects(model, prompts, edges: Iterable[str], metric) -> dict[str, float]:
    """metric(clean) − metric(clean with the edge's path patched from the corrupted run), per edge.
    ``metric(logits)`` is the task metric (a scalar, or per-prompt values that are averaged)."""
    clean = gradients.forward(model, prompts.clean)
    corrupted = gradients.forward(model, prompts.corrupted)
    clean_writes, corrupted_writes = gradients.writes(model, clean), gradients.writes(model, corrupted)
    base = float(metric(clean.logits).mean())
    out = {}
    with torch.no_grad():
        for edge in edges:
            src, dst, kind = names.parse_edge(edge)
            delta = corrupted_writes[src.name] - clean_writes[src.name]
            hook, patch = _receiver_delta(model, clean, dst, kind, delta)
            with model.hooks(fwd_hooks=[(hook, lambda act, hook: patch(act))]):  # noqa: ARG005
                out[edge] = base - float(metric(model(prompts.clean)).mean())
    return out
