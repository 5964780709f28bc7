"""Path patching: one sender's change delivered to one receiver's input, everything else clean.

For an edge ``src->dst<kind>`` (the MIB names of :mod:`mibench.names`) the sender's write into the
residual stream on the corrupted prompts replaces its write on the clean prompts *only* in what
the receiver reads: a head's query, key or value input, an MLP's input, or the final residual
for ``logits``. The receiver's output then flows on through the rest of the clean run (Wang et
al. 2022's path patching, one edge at a time). The effect is metric(clean) − metric(patched).

This is the edge mechanism of :mod:`mibench.model.edges` with one edge removed per forward (the
norm before the receiver applied for real); edges into the same block share batched passes that
start at that block.
"""
from __future__ import annotations

from typing import Iterable

import torch

from mibench.model.ablation import MAX_BATCH_ROWS, metric_positions
from mibench.model.edges import EdgePatcher


def path_effects(model, prompts, edges: Iterable[str], metric) -> dict[str, float]:
    """metric(clean) − metric(clean with the edge's path patched from the corrupted run), per edge.
    ``metric(logits)`` is the task metric (a scalar, or per-prompt values that are averaged)."""
    edges = list(edges)
    patcher = EdgePatcher(model, prompts.clean, prompts.corrupted, metric_positions(metric))
    graph = patcher.graph
    position = {e: i for i, e in enumerate(graph.edges)}
    base = float(metric(patcher.clean_logits).mean())
    per_pass = max(1, MAX_BATCH_ROWS // max(len(prompts), 1))
    by_layer: dict[int, list[str]] = {}
    for edge in edges:
        receiver = int(graph.edge_index[position[edge], 1])
        by_layer.setdefault(graph.receiver_layer[receiver], []).append(edge)
    out = {}
    with torch.no_grad():
        for group in by_layer.values():
            for i in range(0, len(group), per_pass):
                chunk = group[i:i + per_pass]
                keep = torch.ones(len(chunk), len(graph.edges))
                keep[torch.arange(len(chunk)), [position[e] for e in chunk]] = 0
                for edge, logits in zip(chunk, patcher.run(graph.keep_mask(keep))):
                    out[edge] = base - float(metric(logits).mean())
    return {edge: out[edge] for edge in edges}
