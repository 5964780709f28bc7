"""Gradient mechanics shared by the gradient-family techniques (AtP, EAP, EAP-IG).

One forward pass captures, for every layer, the node outputs (``hook_z``, ``hook_mlp_out``) and
the tensors each node *reads* through (``hook_q`` / ``hook_k`` / ``hook_v`` for a head, the MLP's
``mlp.hook_pre``, the final residual ``ln_final.hook_in`` for the logits); with ``grad=True`` one
backward pass of the task metric then gives the gradient at all of them. From these:

* :func:`writes` — each graph node's write into the residual stream ``[n, seq, d_model]``: a head's
  ``z_h @ W_O[h]`` (the shared ``b_O`` belongs to no head, as in :mod:`mibench.ablation`), an MLP's
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
every position, which :mod:`mibench.ablation`'s residual sites, defined at one labelled position,
do not cover). Node-level replacement stays in :mod:`mibench.ablation`.

Not supported (raises): gated MLPs, grouped-query attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mibench import names
from mibench.ablation import hook_site

RESID_FINAL = "ln_final.hook_in"
RESID_INPUT = "blocks.0.hook_resid_pre"


@dataclass
class Capture:
    """One forward pass: the logits, the captured activations by hook name (attention hooks
    reshaped to ``[n, seq, head, d_head]``) and, after a backward pass, their gradients."""

    logits: torch.Tensor
    acts: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


def _head_hooks(layer: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_{x}" for x in ("z", "q", "k", "v")]


def capture_hooks(shape: names.Shape) -> tuple[list[str], list[str]]:
    """(hooks whose values are captured, the subset that also gets the metric's gradient)."""
    values, grads = [RESID_INPUT, RESID_FINAL], [RESID_INPUT, RESID_FINAL]
    for layer in range(shape.n_layers):
        values += [f"blocks.{layer}.hook_resid_pre", *_head_hooks(layer)]
        grads += _head_hooks(layer)
        if shape.has_mlp:
            mlp_hooks = [hook_site(names.mlp(layer)).hook, f"blocks.{layer}.mlp.hook_pre"]
            values += [f"blocks.{layer}.hook_resid_mid", *mlp_hooks]
            grads += mlp_hooks
    return list(dict.fromkeys(values)), list(dict.fromkeys(grads))


def _check_supported(model) -> None:
    cfg = model.cfg
    if getattr(model, "W_gate", None) is not None:
        raise NotImplementedError("gated MLPs are not supported by mibench.gradients")
    n_kv = getattr(cfg, "n_key_value_heads", None)
    if n_kv not in (None, cfg.n_heads):
        raise NotImplementedError("grouped-query attention is not supported by mibench.gradients")


def forward(model, tokens: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
            resid_input: torch.Tensor | None = None) -> Capture:
    """Run ``tokens`` once, capturing the activations of :func:`capture_hooks`. With ``metric``
    (logits → scalar), also one backward pass for the gradients at the captured hooks. With
    ``resid_input``, the block-0 residual stream (embedding sum) is replaced at every position."""
    _check_supported(model)
    shape = names.Shape.of(model)
    value_hooks, grad_hooks = capture_hooks(shape)
    raw: dict[str, torch.Tensor] = {}
    handles = []

    def make(name):
        def hook(module, inputs, output):  # noqa: ARG001 - torch forward-hook signature
            if name == RESID_INPUT and resid_input is not None:
                output = resid_input.to(output.dtype).expand_as(output).clone()
                if metric is not None:
                    output.requires_grad_(True)
                raw[name] = output
                return output
            raw[name] = output
            return None
        return hook

    try:
        for name in value_hooks:
            handles.append(model.hook_dict[name].register_forward_hook(make(name)))
        with torch.set_grad_enabled(metric is not None):
            logits = model(tokens)
            grads = {}
            if metric is not None:
                wanted = [h for h in grad_hooks if raw[h].requires_grad]
                got = torch.autograd.grad(metric(logits), [raw[h] for h in wanted], allow_unused=True)
                grads = {h: (torch.zeros_like(raw[h]) if g is None else g) for h, g in zip(wanted, got)}
                grads.update({h: torch.zeros_like(raw[h]) for h in grad_hooks if h not in grads})
    finally:
        for handle in handles:
            handle.remove()

    def shaped(name, t):
        t = t.detach()
        if ".attn.hook_" in name and t.dim() == 3:  # the bridge's raw hooks are [n, seq, head·d_head]
            t = t.reshape(*t.shape[:2], shape.n_heads, -1)
        return t

    return Capture(logits.detach(), {k: shaped(k, v) for k, v in raw.items()},
                   {k: shaped(k, v) for k, v in grads.items()})


# --- normalisation ------------------------------------------------------------------------------

def _norm_of(model, module) -> tuple[str, torch.Tensor | None]:
    kind = (getattr(model.cfg, "normalization_type", None) or "").upper()
    original = getattr(module, "original_component", module)
    weight = getattr(original, "weight", None)
    return kind, None if weight is None else weight.detach()


def norm_vjp(kind: str, weight: torch.Tensor | None, x: torch.Tensor, grad_out: torch.Tensor,
             eps: float) -> torch.Tensor:
    """Pull ``grad_out`` (a gradient at a normalisation layer's output) back to its input ``x`` with
    the exact Jacobian at ``x``. ``kind`` is the model's ``normalization_type`` (LN, LNPre, RMS,
    RMSPre; empty or None for no normalisation). Broadcasts over leading dimensions of grad_out."""
    kind = (kind or "").upper()
    if kind == "":
        return grad_out
    if kind not in ("LN", "LNPRE", "RMS", "RMSPRE"):
        raise NotImplementedError(f"normalization_type {kind!r} is not supported by mibench.gradients")
    g = grad_out * weight if (weight is not None and kind in ("LN", "RMS")) else grad_out
    centred = kind in ("LN", "LNPRE")
    xc = x - x.mean(-1, keepdim=True) if centred else x
    scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    xhat = xc / scale
    if centred:
        g = g - g.mean(-1, keepdim=True)
    return (g - xhat * (g * xhat).mean(-1, keepdim=True)) / scale


# --- what the techniques read -------------------------------------------------------------------

def writes(model, cap: Capture) -> dict[str, torch.Tensor]:
    """Each graph source's write into the residual stream: ``input``, heads, MLPs → [n, seq, d]."""
    shape = names.Shape.of(model)
    out = {"input": cap.acts[RESID_INPUT]}
    with torch.no_grad():
        for layer in range(shape.n_layers):
            z = cap.acts[f"blocks.{layer}.attn.hook_z"]
            per_head = torch.einsum("bphk,hkd->hbpd", z, model.W_O[layer].detach())
            for h in range(shape.n_heads):
                out[names.head(layer, h)] = per_head[h]
            if shape.has_mlp:
                out[names.mlp(layer)] = cap.acts[hook_site(names.mlp(layer)).hook]
    return out


def input_gradients(model, cap: Capture) -> dict[str, torch.Tensor]:
    """∂metric/∂(residual stream as read by each destination) [n, seq, d_model], keyed
    ``a{l}.h{h}<q|k|v>``, ``m{l}`` and ``logits`` (see the module docstring)."""
    shape = names.Shape.of(model)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    out = {"logits": cap.grads[RESID_FINAL]}
    with torch.no_grad():
        for layer in range(shape.n_layers):
            block = model.blocks[layer]
            kind, weight = _norm_of(model, block.ln1)
            resid = cap.acts[f"blocks.{layer}.hook_resid_pre"]
            for x, w in (("q", model.W_Q), ("k", model.W_K), ("v", model.W_V)):
                g = cap.grads[f"blocks.{layer}.attn.hook_{x}"]  # [n, seq, head, d_head]
                per_head = torch.einsum("bphk,hdk->hbpd", g, w[layer].detach())
                per_head = norm_vjp(kind, weight, resid, per_head, eps)
                for h in range(shape.n_heads):
                    out[f"{names.head(layer, h)}<{x}>"] = per_head[h]
            if shape.has_mlp:
                kind2, weight2 = _norm_of(model, block.ln2)
                g = cap.grads[f"blocks.{layer}.mlp.hook_pre"] @ model.W_in[layer].detach().T
                out[names.mlp(layer)] = norm_vjp(kind2, weight2, cap.acts[f"blocks.{layer}.hook_resid_mid"],
                                                 g, eps)
    return out


def node_scores(model, clean: Capture, corrupted: Capture) -> dict[str, float]:
    """AtP: (a_clean − a_corrupted) · ∂metric/∂a at the clean run, for every head and MLP."""
    shape = names.Shape.of(model)
    scores: dict[str, float] = {}
    for node in names.nodes(shape):
        site = hook_site(node)
        rows = (Ellipsis,) if site.index is None else (slice(None), slice(None), site.index)
        delta = clean.acts[site.hook][rows] - corrupted.acts[site.hook][rows]
        scores[node] = float((delta * clean.grads[site.hook][rows]).sum())
    return scores


def edge_scores(shape: names.Shape, delta_writes: dict[str, torch.Tensor],
                grads_in: dict[str, torch.Tensor]) -> dict[str, float]:
    """EAP: (write_clean − write_corrupted)(src) · ∂metric/∂input(dst) for every edge of the graph."""
    sources = list(delta_writes)
    dests = list(grads_in)
    with torch.no_grad():
        d = torch.stack([delta_writes[s].reshape(-1) for s in sources])
        g = torch.stack([grads_in[t].reshape(-1) for t in dests])
        table = (d.double() @ g.double().T)
    src_i = {s: i for i, s in enumerate(sources)}
    dst_i = {t: i for i, t in enumerate(dests)}
    scores = {}
    for edge in names.edges(shape):
        src, dst, kind = names.parse_edge(edge)
        key = f"{dst.name}<{kind}>" if kind else dst.name
        scores[edge] = float(table[src_i[src.name], dst_i[key]])
    return scores


def release_graph(model, tokens: torch.Tensor) -> None:
    """Run one prompt without gradients so that no tensor of a gradient-enabled run stays
    referenced by the model.

    Why: a TransformerBridge block's capture hook (``_capture_pre_ln1``) holds a weakref proxy to
    its attention module, and ``copy.deepcopy`` keeps that proxy pointing at the *original*
    model. A forward of a copy therefore leaves its pre-ln1 residual on the original's
    ``attn._captured_pre_ln_residual``; after a gradient-enabled forward that tensor is a non-leaf
    and the next ``copy.deepcopy`` of the original fails. A final no-grad forward overwrites it with
    a leaf. Costs 1/n of a forward pass.
    """
    with torch.no_grad():
        model(tokens[:1])
