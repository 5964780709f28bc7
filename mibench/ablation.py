"""The one implementation of activation caching, patching and ablation.

Certificates, the faithfulness score and every technique replace node outputs through these
functions, so "ablate a head" means the same thing everywhere:

* a head's output is its ``hook_z`` slice (the head's contribution is ``z @ W_O[h]``; the shared
  output bias ``b_O`` is not part of any head);
* an MLP's output is ``hook_mlp_out``; a neuron's is its ``mlp.hook_post`` entry.

Replacement values come from :func:`node_values`: ``clean`` / ``corrupted`` (the node's output on
that run, for counterfactual patching), ``zero``, ``mean`` (over the prompt set, per position) or
``resample`` (the node's output on a different clean prompt, a fixed derangement per seed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from mibench import names

ABLATIONS = ("zero", "mean", "resample", "clean", "corrupted")


@dataclass(frozen=True)
class HookSite:
    hook: str
    index: int | None  # head or neuron index inside the hook's activation; None for whole layer


def hook_site(node: str) -> HookSite:
    parsed = names.parse_node(node)
    if parsed.kind == "head":
        return HookSite(f"blocks.{parsed.layer}.attn.hook_z", parsed.index)
    if parsed.kind == "mlp":
        return HookSite(f"blocks.{parsed.layer}.hook_mlp_out", None)
    if parsed.kind == "neuron":
        return HookSite(f"blocks.{parsed.layer}.mlp.hook_post", parsed.index)
    raise ValueError(f"{node} has no output to ablate")


def _select(act: torch.Tensor, site: HookSite) -> torch.Tensor:
    # hook_z is [batch, pos, head, d_head]; hook_post is [batch, pos, d_mlp]
    return act if site.index is None else act[:, :, site.index]


def cache_nodes(model, tokens: torch.Tensor, nodes: Iterable[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass; returns the logits and each node's output ``[n, seq, ...]``."""
    nodes = list(nodes)
    sites = {node: hook_site(node) for node in nodes}
    wanted = {s.hook for s in sites.values()}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    return logits, {node: _select(cache[s.hook], s).clone() for node, s in sites.items()}


def run_with_values(model, tokens: torch.Tensor, values: dict[str, torch.Tensor],
                    grad: bool = False) -> torch.Tensor:
    """Forward ``tokens`` with each node's output replaced by ``values[node]`` (broadcast over the
    batch when its first dimension is 1). Returns the logits."""
    by_hook: dict[str, list[tuple[HookSite, torch.Tensor]]] = {}
    for node, value in values.items():
        site = hook_site(node)
        by_hook.setdefault(site.hook, []).append((site, value))

    def make_hook(entries):
        def hook(act, hook):  # noqa: ARG001 - TransformerLens hook signature
            act = act.clone()
            for site, value in entries:
                if site.index is None:
                    act[:] = value
                else:
                    act[:, :, site.index] = value
            return act
        return hook

    fwd_hooks = [(h, make_hook(entries)) for h, entries in by_hook.items()]
    with torch.set_grad_enabled(grad):
        return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)


def single_node_metrics(model, tokens: torch.Tensor, values: dict[str, torch.Tensor],
                        metric: Callable[[torch.Tensor], torch.Tensor], nodes: Iterable[str]) -> dict[str, float]:
    """The scalar metric after replacing one node at a time by ``values[node]``: the inner loop of
    activation patching, single-node ablations and certificates."""
    return {n: float(metric(run_with_values(model, tokens, {n: values[n]})).mean()) for n in nodes}


def ablation_effects(model, prompts, nodes: Iterable[str], how: str,
                     metric: Callable[[torch.Tensor], torch.Tensor], seed: int = 0) -> dict[str, float]:
    """For each node, clean metric minus the metric with that node's output replaced (``how`` as
    in :func:`node_values`): activation patching with ``corrupted``, single-node ablations with
    ``zero`` / ``mean`` / ``resample``."""
    nodes = list(nodes)
    clean_logits, clean_cache = cache_nodes(model, prompts.clean, nodes)
    clean = float(metric(clean_logits).mean())
    values = node_values(model, prompts, nodes, how, seed, clean_cache)
    patched = single_node_metrics(model, prompts.clean, values, metric, nodes)
    return {n: clean - patched[n] for n in nodes}


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation with no fixed point: prompt i borrows from prompt perm[i] != i."""
    if n < 2:
        raise ValueError("resample ablation needs at least 2 prompts")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return torch.as_tensor(perm)


def node_values(model, prompts, nodes: Iterable[str], how: str, seed: int = 0,
                clean_cache: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Replacement outputs for ``nodes`` under one ablation (see the module docstring)."""
    nodes = list(nodes)
    if how not in ABLATIONS:
        raise ValueError(f"unknown ablation {how!r}; expected one of {', '.join(ABLATIONS)}")
    if how == "corrupted":
        return cache_nodes(model, prompts.corrupted, nodes)[1]
    clean = clean_cache if clean_cache is not None else cache_nodes(model, prompts.clean, nodes)[1]
    if how == "clean":
        return {n: clean[n] for n in nodes}
    if how == "zero":
        return {n: torch.zeros_like(clean[n]) for n in nodes}
    if how == "mean":
        return {n: clean[n].mean(dim=0, keepdim=True) for n in nodes}
    perm = derangement(len(prompts), seed)
    return {n: clean[n][perm] for n in nodes}


class Ablator:
    """Binds a model, a prompt set and a per-prompt metric; evaluates the metric under ablations.

    ``normalized(m)`` maps a metric value to the fraction of the clean behaviour that remains:
    (m − m(∅)) / (m(full) − m(∅)), where ∅ resample-ablates every node. Certificates and the
    faithfulness score read this one scale.
    """

    def __init__(self, model, prompts, metric: Callable[[torch.Tensor], torch.Tensor],
                 seed: int = 0, how: str = "resample") -> None:
        self.model, self.prompts, self.metric, self.seed, self.how = model, prompts, metric, seed, how
        self.all_nodes = names.nodes(names.Shape.of(model))
        logits, self.clean_cache = cache_nodes(model, prompts.clean, self.all_nodes)
        self.clean_logits = logits
        self.full = float(metric(logits).mean())
        self.ablated = node_values(model, prompts, self.all_nodes, how, seed, self.clean_cache)
        self.empty = self.metric_without(self.all_nodes)

    def metric_with(self, values: dict[str, torch.Tensor]) -> float:
        return float(self.metric(run_with_values(self.model, self.prompts.clean, values)).mean())

    def metric_without(self, removed: Iterable[str]) -> float:
        """Metric with every node in ``removed`` ablated (the rest left as they are)."""
        return self.metric_with({n: self.ablated[n] for n in removed})

    def metric_keeping(self, kept: Iterable[str]) -> float:
        kept = set(kept)
        return self.metric_without([n for n in self.all_nodes if n not in kept])

    def normalized(self, value: float) -> float:
        span = self.full - self.empty
        if abs(span) < 1e-9:
            return float("nan")
        return (value - self.empty) / span

    def single_node_metrics(self, nodes: Iterable[str], values: dict[str, torch.Tensor],
                            tokens: torch.Tensor | None = None) -> dict[str, float]:
        """Metric after replacing one node at a time by ``values[node]``."""
        tokens = self.prompts.clean if tokens is None else tokens
        return single_node_metrics(self.model, tokens, values, self.metric, nodes)
