"""The one implementation of activation caching, patching and ablation.

Certificates, the faithfulness score and every technique replace node outputs through these
functions, so "ablate a head" means the same thing everywhere. A component's value is where
:func:`mibench.model.hooks.hook_site` says: a head's ``z`` slice, an MLP's output, a neuron's
activation, a residual site at a labelled position.

Replacement values come from :func:`node_values`: ``clean`` / ``corrupted`` (the node's output on
that run, for counterfactual patching), ``zero``, ``mean`` (over the prompt set, per position) or
``resample`` (the node's output on a different clean prompt, a fixed derangement per seed) or
``optimal`` (a constant per position fitted to keep the task metric where the full model has it,
see :func:`optimal_values`).

Exact patching is fast because it does only the work that can change (see :class:`BaseRun`):
the unpatched run's residual stream is cached once, a patch of a component in block ``l`` reruns
only blocks ``l`` onward, the patches of one block are batched into one pass (one copy of the
prompts per patch), and a metric that declares the positions it reads (a
:class:`mibench.api.TaskMetric`, as every technique and certificate gets) has the unembedding done
at those positions only.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from mibench import names
from mibench.model import bridge, hooks
from mibench.model.hooks import HookSite, hook_site

ABLATIONS = ("zero", "mean", "resample", "optimal", "clean", "corrupted")
#: rows (prompts × patches) in one batched pass; bounds memory on large models
MAX_BATCH_ROWS = 256
#: Adam steps of the optimal-ablation fit, and its step size in units of each node's spread over
#: the fitting prompts (the RMS distance of its outputs from their mean), so that the fit moves as
#: far on every node whatever the scale of its activations: up to 3 spreads from the mean
OPTIMAL_STEPS = 10
OPTIMAL_STEP_SIZE = 0.3
#: prompts of the fitting set the fit uses (the first ones): each step is a forward and a backward
#: pass per node, so the fit costs 3 × steps × this / (prompt-set size) single-node sweeps; 16 keeps
#: a medium model's fit within tens of seconds on one core
OPTIMAL_FIT_PROMPTS = 16


def _index(act: torch.Tensor, site: HookSite, positions: dict[str, torch.Tensor] | None,
           rows: slice = slice(None)):
    """Index selecting the site's entries of a hook activation, within the batch rows ``rows``."""
    if site.label is not None:
        if positions is None or site.label not in positions:
            raise ValueError(f"position label {site.label!r} is not declared by these prompts")
        batch = torch.arange(act.shape[0])[rows]
        pos = positions[site.label]
        return batch, pos.repeat(len(batch) // pos.shape[0])
    # hook_z is [batch, pos, head, d_head]; hook_post is [batch, pos, d_mlp]
    return (rows,) if site.index is None else (rows, slice(None), site.index)


def _hooks(patches: list[tuple[str, torch.Tensor, slice]], n_layers: int, positions):
    """TransformerLens forward hooks writing each ``(name, value, batch rows)`` into its site."""
    by_hook: dict[str, list[tuple[HookSite, torch.Tensor, slice]]] = {}
    for name, value, rows in patches:
        site = hook_site(name, n_layers)
        by_hook.setdefault(site.hook, []).append((site, value, rows))

    def make_hook(entries):
        def hook(act, hook):  # noqa: ARG001 - TransformerLens hook signature
            act = act.clone()
            for site, value, rows in entries:
                act[_index(act, site, positions, rows)] = value
            return act
        return hook

    return [(h, make_hook(entries)) for h, entries in by_hook.items()]


def cache_nodes(model, tokens: torch.Tensor, nodes: Iterable[str],
                positions: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass; returns the logits and each node's output ``[n, seq, ...]`` (or each
    residual site's value ``[n, d_model]``; sites need the prompts' ``positions``)."""
    nodes = list(nodes)
    n_layers = model.cfg.n_layers
    sites = {node: hook_site(node, n_layers) for node in nodes}
    wanted = {s.hook for s in sites.values()}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    return logits, {node: cache[s.hook][_index(cache[s.hook], s, positions)].clone()
                    for node, s in sites.items()}


def attention_patterns(model, tokens: torch.Tensor, layers: Iterable[int],
                       values: dict[str, torch.Tensor] | None = None,
                       positions: dict[str, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """One forward pass; each layer's attention pattern ``[n, head, query, key]``, optionally with
    components' outputs replaced by ``values`` as in :func:`run_with_values`."""
    wanted = {hooks.attn(layer, "pattern"): layer for layer in layers}
    patch_hooks = _hooks([(name, value, slice(None)) for name, value in (values or {}).items()],
                         model.cfg.n_layers, positions)
    with torch.no_grad(), model.hooks(fwd_hooks=patch_hooks):
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    return {layer: cache[hook] for hook, layer in wanted.items()}


def run_with_values(model, tokens: torch.Tensor, values: dict[str, torch.Tensor],
                    grad: bool = False, positions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """A full forward of ``tokens`` with each node's output (or residual site's value) replaced by
    ``values[name]`` (broadcast over the batch when its first dimension is 1). Returns the logits.
    For many patches of the same prompts, :class:`BaseRun` does the same exact computation faster."""
    hooks = _hooks([(name, value, slice(None)) for name, value in values.items()], model.cfg.n_layers, positions)
    with torch.set_grad_enabled(grad):
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


class BaseRun:
    """The unpatched forward of ``tokens``, cached at every block's input so that patched runs can
    start at the first block they change. ``read_positions`` (optional) restricts the unembedding
    to the positions a metric reads; the logits then have only those positions, in that order.

    On the suite's native pre-LN blocks two more savings apply, both computing exactly what the
    block itself computes: a batch that patches only heads of block ``l`` starts from the cached
    head outputs ``z`` of that block (the patched ``z`` goes through the block's own output
    projection, skipping its attention), and when only some positions are read the last block's
    MLP runs at those positions only."""

    def __init__(self, model, tokens: torch.Tensor, positions: dict[str, torch.Tensor] | None = None,
                 read_positions: Sequence[int] | None = None) -> None:
        self.model, self.tokens, self.positions = model, tokens, positions
        self.read_positions = list(read_positions) if read_positions is not None else None
        self.n_layers = model.cfg.n_layers
        self.native = bridge.is_native_pre_ln(model)
        # resid[l] enters block l; resid[n_layers] is the final residual stream
        resid_hooks = [hooks.resid_pre(layer) for layer in range(self.n_layers)] + [hooks.RESID_FINAL]
        z_hooks = [hooks.attn(layer, "z") for layer in range(self.n_layers)] if self.native else []
        wanted = set(resid_hooks + z_hooks)
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
        self.resid = [cache[h] for h in resid_hooks]
        self.z = [cache[h].flatten(-2) for h in z_hooks]  # [n, seq, n_heads * d_head], as o reads it
        self.logits = logits if self.read_positions is None else logits[:, self.read_positions]

    def _start(self, names_: Iterable[str]) -> int:
        return min((hook_site(n, self.n_layers).layer for n in names_), default=self.n_layers)

    def run(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits with ``values`` patched in (all at once), rerunning only the blocks they change."""
        return self.run_batched([values])[0]

    def run_batched(self, patches: list[dict[str, torch.Tensor]], grad: bool = False) -> list[torch.Tensor]:
        """Logits for several independent patch sets, stacked into one pass from the earliest
        block any of them changes (one copy of the prompts per patch set). With ``grad`` the
        logits carry gradients back to the patched values (optimal ablation fits them so)."""
        if not patches:
            return []
        if not any(patches):
            return [self.logits for _ in patches]
        n, k = self.tokens.shape[0], len(patches)
        sites = [hook_site(name, self.n_layers) for patch in patches for name in patch]
        start = min(site.layer for site in sites)
        last = self.n_layers - 1
        heads_only = self.native and all(s.layer == start and s.is_head for s in sites)
        trim_last = self.native and self.read_positions is not None and \
            all(s.layer < last for s in sites) and (start < last or not heads_only)
        patch_hooks = _hooks([(name, value, slice(i * n, (i + 1) * n))
                              for i, patch in enumerate(patches) for name, value in patch.items()],
                             self.n_layers, self.positions)
        with torch.set_grad_enabled(grad), self.model.hooks(fwd_hooks=patch_hooks):
            x = self.resid[start].repeat(k, 1, 1)
            first = start
            if heads_only:  # block `start` from its cached z: output projection (patched), MLP
                x = bridge.add_mlp(self.model, start,
                                   x + bridge.output_projection(self.model, start, self.z[start].repeat(k, 1, 1)))
                first = start + 1
            for layer in range(first, self.n_layers):
                if layer == last and trim_last:
                    mid = x + bridge.attention_out(self.model, layer, x)
                    x = bridge.add_mlp(self.model, layer, mid[:, self.read_positions])
                    return list(bridge.unembed_final(self.model, x).split(n))
                x = bridge.run_block(self.model, layer, x)
            return list(bridge.unembed_final(self.model, x, self.read_positions).split(n))

    def single_metrics(self, nodes: Iterable[str], values: dict[str, torch.Tensor],
                       metric: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """The scalar metric after replacing one node at a time by ``values[node]``; the patches
        of each block share one batched pass."""
        nodes = list(nodes)
        out: dict[str, float] = {}
        for chunk in self.single_patch_chunks(nodes):
            for node, logits in zip(chunk, self.run_batched([{node: values[node]} for node in chunk])):
                out[node] = float(metric(logits).mean())
        return {node: out[node] for node in nodes}

    def single_patch_chunks(self, nodes: Iterable[str]) -> list[list[str]]:
        """``nodes`` grouped so that one-node patches of a group share a batched pass: by block
        (a pass starts at its earliest block), at most :data:`MAX_BATCH_ROWS` rows per pass."""
        per_pass = max(1, MAX_BATCH_ROWS // max(self.tokens.shape[0], 1))
        by_layer: dict[int, list[str]] = {}
        for node in nodes:
            by_layer.setdefault(hook_site(node, self.n_layers).layer, []).append(node)
        return [by_layer[layer][i:i + per_pass] for layer in sorted(by_layer)
                for i in range(0, len(by_layer[layer]), per_pass)]


def metric_positions(metric) -> list[int] | None:
    """The logit positions a metric reads, when it says (a :class:`mibench.api.TaskMetric` does):
    patched runs then unembed only those. A plain function gets every position."""
    return getattr(metric, "positions", None)


def ablation_effects(model, prompts, nodes: Iterable[str], how: str,
                     metric: Callable[[torch.Tensor], torch.Tensor], seed: int = 0,
                     fit_prompts=None) -> dict[str, float]:
    """For each node, clean metric minus the metric with that node's output replaced (``how`` as
    in :func:`node_values`): activation patching with ``corrupted``, single-node ablations with
    ``zero`` / ``mean`` / ``resample`` / ``optimal`` (fitted on ``fit_prompts``)."""
    nodes = list(nodes)
    base = BaseRun(model, prompts.clean, prompts.positions, read_positions=metric_positions(metric))
    clean = float(metric(base.logits).mean())
    clean_cache = cache_nodes(model, prompts.clean, nodes, prompts.positions)[1] if how != "corrupted" else None
    values = node_values(model, prompts, nodes, how, seed, clean_cache, metric=metric, fit_prompts=fit_prompts)
    patched = base.single_metrics(nodes, values, metric)
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
                clean_cache: dict[str, torch.Tensor] | None = None, *, metric=None,
                fit_prompts=None) -> dict[str, torch.Tensor]:
    """Replacement outputs for ``nodes`` under one ablation (see the module docstring).
    ``optimal`` needs the task ``metric`` (a :class:`mibench.api.TaskMetric`) and fits on
    ``fit_prompts`` (a split disjoint from ``prompts``, e.g. the train split; default ``prompts``)."""
    nodes = list(nodes)
    if how not in ABLATIONS:
        raise ValueError(f"unknown ablation {how!r}; expected one of {', '.join(ABLATIONS)}")
    if how == "corrupted":
        return cache_nodes(model, prompts.corrupted, nodes, prompts.positions)[1]
    if how == "optimal":
        if metric is None:
            raise ValueError("optimal ablation fits its constants to the task metric: pass metric=")
        return optimal_values(model, fit_prompts if fit_prompts is not None else prompts, nodes, metric)
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


def squared_deviation(metric, prompts, clean_logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss optimal ablation minimises, as a per-prompt function of patched logits:
    (metric − the full model's metric)² on each prompt of ``prompts``. ``metric`` is a
    :class:`mibench.api.TaskMetric` (read on ``prompts``); ``clean_logits`` the unpatched run's.

    Why this loss and not the paper's KL to the full model's output: the suite's truth is defined
    by the task metric, and its planted distractors move other tokens' logits on purpose, which a
    KL over the vocabulary would count. Why not the metric itself: a logit difference has no
    minimum (a constant can push it past the full model's), so "optimal" would be undefined; the
    squared deviation is ≥ 0, is 0 only when the replacement leaves every prompt's metric as it
    was, and counts a push in either direction."""
    clean = metric.per_prompt(clean_logits, prompts).detach()
    return lambda logits: (metric.per_prompt(logits, prompts) - clean) ** 2


def optimal_values(model, prompts, nodes: Iterable[str], metric, steps: int = OPTIMAL_STEPS,
                   step_size: float = OPTIMAL_STEP_SIZE) -> dict[str, torch.Tensor]:
    """Optimal ablation (Li & Janson 2024): for each node alone, the constant replacement of its
    output that minimises the expected loss of the ablated model on ``prompts`` (the first
    :data:`OPTIMAL_FIT_PROMPTS` of them; the loss of :func:`squared_deviation`).

    A node's value on a prompt is its whole output ``[seq, …]``, so a constant is one value per
    position (``[1, seq, …]``, as ``mean`` is; the suite's prompt sets are position-aligned); for a
    residual site, one value at its labelled position. Fit: start from the mean over ``prompts``
    (mean ablation, the paper's starting point), then ``steps`` Adam steps of size ``step_size`` ×
    the node's spread, on all of a block's nodes at once (one batched pass per chunk of
    :meth:`BaseRun.single_patch_chunks`, from that block onward). Each node keeps the lowest-loss
    value it visited, the mean included, so its loss never exceeds mean ablation's. Deterministic.
    Cost: per block, ``steps`` forward and backward passes and one forward, of ``len(prompts)``
    rows per node, from that block to the logits."""
    nodes = list(nodes)
    prompts = prompts.take(torch.arange(min(len(prompts), OPTIMAL_FIT_PROMPTS)))
    same_length = prompts.clean.shape[1] == metric.prompts.clean.shape[1]
    base = BaseRun(model, prompts.clean, prompts.positions,
                   read_positions=metric_positions(metric) if same_length else None)
    loss = squared_deviation(metric, prompts, base.logits)
    acts = cache_nodes(model, prompts.clean, nodes, prompts.positions)[1]
    out: dict[str, torch.Tensor] = {}
    for chunk in base.single_patch_chunks(nodes):
        means = [acts[n].mean(dim=0, keepdim=True) for n in chunk]
        spreads = [(acts[n] - m).pow(2).mean().sqrt() for n, m in zip(chunk, means)]
        # Adam on a unitless offset: its steps are `step_size` node spreads, whatever the node's scale
        offsets = [torch.zeros_like(m, requires_grad=True) for m in means]
        optimiser = torch.optim.Adam(offsets, lr=step_size)
        best = [(float("inf"), m) for m in means]
        for step in range(steps + 1):
            values = [m + s * o for m, s, o in zip(means, spreads, offsets)]
            fitting = step < steps
            logits = base.run_batched([{n: v} for n, v in zip(chunk, values)], grad=fitting)
            losses = torch.stack([loss(x).mean() for x in logits])
            # the loss is of the values before this step's update, so (loss, value) pairs match
            best = [(float(l), v.detach().clone()) if float(l) < b[0] else b
                    for l, v, b in zip(losses.detach(), values, best)]
            if fitting:
                grads = torch.autograd.grad(losses.sum(), offsets)
                for offset, g in zip(offsets, grads):
                    offset.grad = g
                optimiser.step()
        out.update({n: value for n, (_, value) in zip(chunk, best)})
    return {n: out[n] for n in nodes}


class Ablator:
    """Binds a model, a prompt set and a per-prompt metric; evaluates the metric under ablations.

    ``normalized(m)`` maps a metric value to the fraction of the clean behaviour that remains:
    (m − m(∅)) / (m(full) − m(∅)), where ∅ resample-ablates every node. Certificates and the
    faithfulness score read this one scale.
    """

    def __init__(self, model, prompts, metric: Callable[[torch.Tensor], torch.Tensor],
                 seed: int = 0, how: str = "resample", fit_prompts=None) -> None:
        self.model, self.prompts, self.metric, self.seed, self.how = model, prompts, metric, seed, how
        self.all_nodes = names.nodes(names.Shape.of(model))
        logits, self.clean_cache = cache_nodes(model, prompts.clean, self.all_nodes)
        self.clean_logits = logits
        self.base = BaseRun(model, prompts.clean, prompts.positions, read_positions=metric_positions(metric))
        self.full = float(metric(logits).mean())
        self.ablated = node_values(model, prompts, self.all_nodes, how, seed, self.clean_cache,
                                   metric=metric, fit_prompts=fit_prompts)
        self.empty = self.metric_without(self.all_nodes)

    def metric_with(self, values: dict[str, torch.Tensor]) -> float:
        return float(self.metric(self.base.run(values)).mean())

    def metric_without(self, removed: Iterable[str]) -> float:
        """Metric with every node in ``removed`` ablated (the rest left as they are)."""
        return self.metric_with({n: self.ablated[n] for n in removed})

    def metric_keeping(self, kept: Iterable[str]) -> float:
        kept = set(kept)
        return self.metric_without([n for n in self.all_nodes if n not in kept])

    def single_removals(self, nodes: Iterable[str]) -> dict[str, float]:
        """Metric with one node at a time ablated (batched per block)."""
        return self.base.single_metrics(nodes, self.ablated, self.metric)

    def normalized(self, value: float) -> float:
        span = self.full - self.empty
        if abs(span) < 1e-9:
            return float("nan")
        return (value - self.empty) / span
