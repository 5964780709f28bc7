"""Gradient mechanics shared by the gradient-family techniques (AtP, EAP, EAP-IG).

One forward pass captures, for every layer, the node outputs (``hook_z``, ``hook_mlp_out``) and
the tensors each node *reads* through (``hook_q`` / ``hook_k`` / ``hook_v`` for a head, the MLP's
``mlp.hook_pre``, the final residual ``ln_final.hook_in`` for the logits); with ``grad=True`` one
backward pass of the task metric then gives the gradient at all of them. From these:

* :func:`writes` — each graph node's write into the residual stream ``[n, seq, d_model]``: a head's
  ``z_h @ W_O[h]`` (the shared ``b_O`` belongs to no head, see :func:`mibench.model.weights.head_writes`), an MLP's
  ``hook_mlp_out``, and for ``input`` the embedding sum ``blocks.0.hook_resid_pre``;
* :func:`input_gradients` — ∂metric/∂(residual stream as read by one destination), per destination:
  ``a{l}.h{h}<q>`` is ``∂m/∂q_h @ W_Q[l, h]ᵀ`` pulled back through the block's ``ln1``, likewise
  ``<k>`` and ``<v>``; ``m{l}`` is ``∂m/∂pre @ W_inᵀ`` pulled back through ``ln2``; ``logits`` is
  the gradient at the final residual. Normalisation layers are pulled back with their exact Jacobian
  at the captured run (LN, LNPre, RMS, RMSPre, or none). Because every reader of the residual
  stream gets its own gradient, the sum of a source's edge scores over all its downstream
  destinations equals its node score (the chain rule on the residual stream; tested).
* :func:`node_scores` and :func:`edge_scores` — (clean − corrupted) · gradient, summed over
  prompts, positions and dimensions. The metric is a mean over prompts, so the gradient already
  carries the 1/n and the scores estimate changes in the mean metric.

The hooks here only read activations (and, for EAP-IG, replace the block-0 residual stream at
every position, which :mod:`mibench.model.ablation`'s residual sites, defined at one labelled
position, do not cover). Node-level replacement stays in :mod:`mibench.model.ablation`.

Not supported (raises): gated MLPs, grouped-query attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mibench import names
from mibench.model import hooks, layernorm, weights
from mibench.model.hooks import RESID_FINAL

#: the embedding sum, the residual stream entering block 0 (EAP-IG interpolates it)
RESID_INPUT = hooks.resid_pre(0)


@dataclass
class Capture:
    """One forward pass: the logits, the captured activations by hook name (attention hooks
    reshaped to ``[n, seq, head, d_head]``) and, after a backward pass, their gradients."""

    logits: torch.Tensor
    acts: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


def _head_hooks(layer: int) -> list[str]:
    return [hooks.attn(layer, x) for x in ("z", "q", "k", "v")]


def capture_hooks(shape: names.Shape) -> tuple[list[str], list[str]]:
    """(hooks whose values are captured, the subset that also gets the metric's gradient)."""
    values, grads = [RESID_INPUT, RESID_FINAL], [RESID_INPUT, RESID_FINAL]
    for layer in range(shape.n_layers):
        values += [hooks.resid_pre(layer), *_head_hooks(layer)]
        grads += _head_hooks(layer)
        if shape.has_mlp:
            mlp_hooks = [hooks.mlp_out(layer), hooks.mlp_pre(layer)]
            values += [hooks.resid_mid(layer), *mlp_hooks]
            grads += mlp_hooks
    return list(dict.fromkeys(values)), list(dict.fromkeys(grads))


def _check_supported(model) -> None:
    cfg = model.cfg
    if getattr(model, "W_gate", None) is not None:
        raise NotImplementedError("gated MLPs are not supported by mibench.model.gradients")
    n_kv = getattr(cfg, "n_key_value_heads", None)
    if n_kv not in (None, cfg.n_heads):
        raise NotImplementedError("grouped-query attention is not supported by mibench.model.gradients")


def forward(model, tokens: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
            resid_input: torch.Tensor | None = None) -> Capture:
    """Run ``tokens`` once, capturing the activations of :func:`capture_hooks`. With ``metric``
    (logits → scalar), also one backward pass for the gradients at the captured hooks. With
    ``resid_input``, the block-0 residual stream (embedding sum) is replaced at every position."""
    _check_supported(model)
    shape = names.Shape.of(model)
    value_hooks, grad_hooks = capture_hooks(shape)
    raw: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(act, hook):  # noqa: ARG001 - TransformerLens hook signature
            if name == RESID_INPUT and resid_input is not None:
                act = resid_input.to(act.dtype).expand_as(act).clone()
                if metric is not None:
                    act.requires_grad_(True)
            raw[name] = act
            return act  # returned so that the rest of the run reads this very tensor
        return hook

    with torch.set_grad_enabled(metric is not None), \
            model.hooks(fwd_hooks=[(name, make(name)) for name in value_hooks]):
        logits = model(tokens)
        grads = {}
        if metric is not None:
            wanted = [h for h in grad_hooks if raw[h].requires_grad]
            got = torch.autograd.grad(metric(logits), [raw[h] for h in wanted], allow_unused=True)
            grads = {h: (torch.zeros_like(raw[h]) if g is None else g) for h, g in zip(wanted, got)}
            grads.update({h: torch.zeros_like(raw[h]) for h in grad_hooks if h not in grads})
    return Capture(logits.detach(), {k: v.detach() for k, v in raw.items()},
                   {k: v.detach() for k, v in grads.items()})


# --- what the techniques read -------------------------------------------------------------------

def writes(model, cap: Capture) -> dict[str, torch.Tensor]:
    """Each graph source's write into the residual stream: ``input``, heads, MLPs → [n, seq, d]."""
    shape = names.Shape.of(model)
    out = {"input": cap.acts[RESID_INPUT]}
    with torch.no_grad():
        for layer in range(shape.n_layers):
            per_head = weights.head_writes(model, layer, cap.acts[hooks.attn(layer, "z")])
            for h in range(shape.n_heads):
                out[names.head(layer, h)] = per_head[h]
            if shape.has_mlp:
                out[names.mlp(layer)] = cap.acts[hooks.mlp_out(layer)]
    return out


def write_differences(model, clean: Capture, corrupted: Capture) -> dict[str, torch.Tensor]:
    """:func:`writes` on the clean run minus on the corrupted run, per source; each clean write is
    replaced by its difference as it is made, so no third full set is held (one is 0.5 GB on
    GPT-2 small)."""
    delta = writes(model, clean)
    for src, corrupted_write in writes(model, corrupted).items():
        delta[src] = delta[src] - corrupted_write  # not -=: a write may be a view of captured acts
    return delta


def input_gradients(model, cap: Capture, into: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
    """∂metric/∂(residual stream as read by each destination) [n, seq, d_model], keyed
    ``a{l}.h{h}<q|k|v>``, ``m{l}`` and ``logits`` (see the module docstring). With ``into`` (a
    previous result), each gradient is added to it in place and ``into`` is returned: EAP-IG sums
    its steps this way, since one full set is 1.4 GB on GPT-2 small and two would not fit."""
    shape = names.Shape.of(model)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    kind = layernorm.kind(model)
    out: dict[str, torch.Tensor] = {}

    def put(key: str, grad: torch.Tensor) -> None:
        if into is None:
            out[key] = grad
        else:
            into[key] += grad

    put("logits", cap.grads[RESID_FINAL])
    with torch.no_grad():
        for layer in range(shape.n_layers):
            ln1 = layernorm.block_norm(model, layer, "ln1")
            resid = cap.acts[hooks.resid_pre(layer)]
            for x in ("q", "k", "v"):
                g = cap.grads[hooks.attn(layer, x)]  # [n, seq, head, d_head]
                per_head = torch.einsum("bphk,hdk->hbpd", g, weights.reader_weights(model, layer, x))
                per_head = layernorm.vjp(kind, ln1, resid, per_head, eps)
                for h in range(shape.n_heads):
                    put(f"{names.head(layer, h)}<{x}>", per_head[h])
            if shape.has_mlp:
                g = cap.grads[hooks.mlp_pre(layer)] @ weights.reader_weights(model, layer, "mlp").T
                put(names.mlp(layer), layernorm.vjp(kind, layernorm.block_norm(model, layer, "ln2"),
                                                    cap.acts[hooks.resid_mid(layer)], g, eps))
    return out if into is None else into


def node_scores(model, clean: Capture, corrupted: Capture) -> dict[str, float]:
    """AtP: (a_clean − a_corrupted) · ∂metric/∂a at the clean run, for every head and MLP."""
    shape = names.Shape.of(model)
    scores: dict[str, float] = {}
    for node in names.nodes(shape):
        site = hooks.hook_site(node)
        rows = (Ellipsis,) if site.index is None else (slice(None), slice(None), site.index)
        delta = clean.acts[site.hook][rows] - corrupted.acts[site.hook][rows]
        scores[node] = float((delta * clean.grads[site.hook][rows]).sum())
    return scores


#: entries of the flattened (prompt, position, d_model) axis per slice of :func:`edge_scores`
EDGE_SLICE = 1 << 16


def edge_scores(shape: names.Shape, delta_writes: dict[str, torch.Tensor],
                grads_in: dict[str, torch.Tensor]) -> dict[str, float]:
    """EAP: (write_clean − write_corrupted)(src) · ∂metric/∂input(dst) for every edge of the graph."""
    sources = list(delta_writes)
    dests = list(grads_in)
    size = delta_writes[sources[0]].numel()
    table = torch.zeros(len(sources), len(dests), dtype=torch.float64)
    with torch.no_grad():  # in slices of the (prompt, position, d_model) axis: GPT-2 small's
        for start in range(0, size, EDGE_SLICE):  # full tables would take gigabytes in float64
            piece = slice(start, start + EDGE_SLICE)
            d = torch.stack([delta_writes[s].reshape(-1)[piece] for s in sources]).double()
            g = torch.stack([grads_in[t].reshape(-1)[piece] for t in dests]).double()
            table += d @ g.T
    src_i = {s: i for i, s in enumerate(sources)}
    dst_i = {t: i for i, t in enumerate(dests)}
    scores = {}
    for edge in names.edges(shape):
        src, dst, kind = names.parse_edge(edge)
        key = f"{dst.name}<{kind}>" if kind else dst.name
        scores[edge] = float(table[src_i[src.name], dst_i[key]])
    return scores
