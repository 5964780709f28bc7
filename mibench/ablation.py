"""The one implementation of activation caching, patching and ablation.

Certificates, the faithfulness score and every technique replace node outputs through these
functions, so "ablate a head" means the same thing everywhere:

* a head's output is its ``hook_z`` slice (the head's contribution is ``z @ W_O[h]``; the shared
  output bias ``b_O`` is not part of any head);
* an MLP's output is ``hook_mlp_out``; a neuron's is its ``mlp.hook_post`` entry;
* a residual site ``r{layer}@{label}`` is ``blocks.{layer}.hook_resid_pre`` (``ln_final.hook_in``
  for the final residual) at each prompt's position of ``label``.

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
    label: str | None = None  # position label, for residual sites


def hook_site(node: str) -> HookSite:
    """Where a node's (or a residual site's) value lives among the model's hooks."""
    if node.startswith("r") and "@" in node:
        layer, label = names.parse_site(node)
        return HookSite(f"blocks.{layer}.hook_resid_pre", None, label)
    parsed = names.parse_node(node)
    if parsed.kind == "head":
        return HookSite(f"blocks.{parsed.layer}.attn.hook_z", parsed.index)
    if parsed.kind == "mlp":
        return HookSite(f"blocks.{parsed.layer}.hook_mlp_out", None)
    if parsed.kind == "neuron":
        return HookSite(f"blocks.{parsed.layer}.mlp.hook_post", parsed.index)
    raise ValueError(f"{node} has no output to ablate")


def _resolve(site: HookSite, n_layers: int) -> HookSite:
    if site.hook == f"blocks.{n_layers}.hook_resid_pre":  # the final residual stream
        return HookSite("ln_final.hook_in", None, site.label)
    return site


def _rows(act: torch.Tensor, site: HookSite, positions: dict[str, torch.Tensor] | None):
    """Index selecting the site's entries of a hook activation."""
    if site.label is not None:
        if positions is None or site.label not in positions:
            raise ValueError(f"position label {site.label!r} is not declared by these prompts")
        pos = positions[site.label]
        return (torch.arange(act.shape[0]), pos) if pos.shape[0] == act.shape[0] else \
            (torch.arange(act.shape[0]), pos.repeat(act.shape[0] // pos.shape[0]))
    # hook_z is [batch, pos, head, d_head]; hook_post is [batch, pos, d_mlp]
    return (slice(None),) if site.index is None else (slice(None), slice(None), site.index)


def cache_nodes(model, tokens: torch.Tensor, nodes: Iterable[str],
                positions: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass; returns the logits and each node's output ``[n, seq, ...]`` (or each
    residual site's value ``[n, d_model]``; sites need the prompts' ``positions``)."""
    nodes = list(nodes)
    n_layers = model.cfg.n_layers
    sites = {node: _resolve(hook_site(node), n_layers) for node in nodes}
    wanted = {s.hook for s in sites.values()}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    return logits, {node: cache[s.hook][_rows(cache[s.hook], s, positions)].clone()
                    for node, s in sites.items()}


def run_with_values(model, tokens: torch.Tensor, values: dict[str, torch.Tensor],
                    grad: bool = False, positions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Forward ``tokens`` with each node's output (or residual site's value) replaced by
    ``values[name]`` (broadcast over the batch when its first dimension is 1). Returns the logits."""
    n_layers = model.cfg.n_layers
    by_hook: dict[str, list[tuple[HookSite, torch.Tensor]]] = {}
    for node, value in values.items():
        site = _resolve(hook_site(node), n_layers)
        by_hook.setdefault(site.hook, []).append((site, value))

    def make_hook(entries):
        def hook(act, hook):  # noqa: ARG001 - TransformerLens hook signature
            act = act.clone()
            for site, value in entries:
                act[_rows(act, site, positions)] = value
            return act
        return hook

    fwd_hooks = [(h, make_hook(entries)) for h, entries in by_hook.items()]
    with torch.set_grad_enabled(grad):
        return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)


def single_node_metrics(model, tokens: torch.Tensor, values: dict[str, torch.Tensor],
                        metric: Callable[[torch.Tensor], torch.Tensor], nodes: Iterable[str],
                        positions: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """The scalar metric after replacing one node (or site) at a time by ``values[node]``: the
    inner loop of activation patching, single-node ablations and certificates."""
    return {n: float(metric(run_with_values(model, tokens, {n: values[n]}, positions=positions)).mean())
            for n in nodes}


def ablation_effects(model, prompts, nodes: Iterable[str], how: str,
                     metric: Callable[[torch.Tensor], torch.Tensor], seed: int = 0) -> dict[str, float]:
    """For each node, clean metric minus the metric with that node's output replaced (``how`` as
    in :func:`node_values`): activation patching with ``corrupted``, single-node ablations with
    ``zero`` / ``mean`` / ``resample``."""
    nodes = list(nodes)
    clean_logits, clean_cache = cache_nodes(model, prompts.clean, nodes, prompts.positions)
    clean = float(metric(clean_logits).mean())
    values = node_values(model, prompts, nodes, how, seed, clean_cache)
    patched = single_node_metrics(model, prompts.clean, values, metric, nodes, prompts.positions)
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
        return cache_nodes(model, prompts.corrupted, nodes, prompts.positions)[1]
    clean = clean_cache if clean_cache is not None else \
        cache_nodes(model, prompts.clean, nodes, prompts.positions)[1]
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
