"""How a write into the final residual stream reaches the metric: the final LayerNorm (with the
clean run's scale frozen, as direct logit attribution does) followed by the unembedding.

Shared by direct logit attribution and the lenses so that "through the final LayerNorm" means the
same thing everywhere. DLA freezes the clean run's scale (``frozen_scale``, ``residual_gradient``);
the lenses decode a whole residual stream with the norm applied for real (``decode``,
``cache_residuals``, ``lens_gains``).
"""
from __future__ import annotations

import torch

from mibench import names
from mibench.api import MibenchError

RESID_FINAL = "ln_final.hook_in"


def final_norm(model):
    """(centres?, divides by scale?, elementwise weight or None) of the model's final norm."""
    kind = (getattr(model.cfg, "normalization_type", None) or "").upper()
    original = getattr(model.ln_final, "original_component", None)
    weight = getattr(original, "weight", None)
    return kind in ("LN", "LNPRE"), kind != "", None if weight is None else weight.detach()


def frozen_scale(model, resid: torch.Tensor) -> torch.Tensor:
    """The final norm's divisor at each position ``[..., 1]`` (1 for models without a norm)."""
    centre, normalise, _ = final_norm(model)
    if not normalise:
        return torch.ones_like(resid[..., :1])
    x = resid - resid.mean(-1, keepdim=True) if centre else resid
    return (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()


def residual_gradient(model, grad_logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Pull a gradient on the logits back to the final residual stream through the unembedding and
    the final norm with ``scale`` frozen: the direction along which a component's write moves the
    metric, linearly. ``[n, seq, d_model]``."""
    centre, _, weight = final_norm(model)
    g = grad_logits @ model.W_U.detach().T
    if weight is not None:
        g = g * weight
    g = g / scale
    return g - g.mean(-1, keepdim=True) if centre else g


def metric_gradient(metric, logits: torch.Tensor) -> torch.Tensor:
    """d metric / d logits at the given (clean) logits, for a scalar ``metric(logits)``."""
    logits = logits.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric(logits), logits)
    return grad


def decode(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits of any residual stream ``[..., d_model]`` read through the model's real final norm
    (applied for real: its scale is recomputed from ``resid``, not frozen) and the unembedding,
    as the logit lens does (nostalgebraist 2020). ``decode(model, final residual)`` reproduces the
    model's logits.

    The norm is the wrapped module itself (``ln_final.original_component``, so no hooks fire) and
    the unembedding is ``resid @ W_U + b_U`` rather than a call to ``model.unembed``: decoding is
    not a forward pass of the model and must not be counted as one.
    """
    original = getattr(model.ln_final, "original_component", None)
    normed = original(resid) if original is not None else model.ln_final(resid)
    logits = normed @ model.W_U
    b_U = getattr(model, "b_U", None)
    return logits + b_U if b_U is not None else logits


# --- lenses: the residual stream at every depth, decoded ------------------------------------

#: largest |decode(final residual) − logits| tolerated before refusing to run
DECODE_TOLERANCE = 1e-3


def residual_hooks(n_layers: int) -> list[str]:
    """The hook of the residual before block 0, then after each block (``n_layers + 1`` hooks)."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]


def cache_residuals(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward pass: the logits and the ``n_layers + 1`` residual streams ``[n, seq, d_model]``,
    after checking that decoding the final residual reproduces the logits."""
    hooks = residual_hooks(model.cfg.n_layers)
    wanted = set(hooks) | {RESID_FINAL}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        gap = float((decode(model, cache[RESID_FINAL]) - logits).abs().max())
    if gap > DECODE_TOLERANCE * max(1.0, float(logits.abs().max())):
        raise MibenchError(f"decoding the final residual through ln_final and W_U differs from the "
                           f"model's logits by {gap:.3g}; this model's readout is not a final norm "
                           f"followed by the unembedding, so a lens cannot be applied")
    return logits, [cache[h] for h in hooks]


def lens_gains(view, logits_per_depth: list[torch.Tensor]) -> dict[str, float]:
    """``L{l}`` → metric(depth l + 1) − metric(depth l) for the decoded logits at each depth."""
    with torch.no_grad():
        metric = [float(view.metric(lg)) for lg in logits_per_depth]
    return {names.layer_name(l): metric[l + 1] - metric[l] for l in range(len(metric) - 1)}


def direct_effects(model, tokens, logit_gradient, nodes=None) -> dict[str, float]:
    """Each node's direct effect: its write, read through the final norm with the clean run's
    scale frozen and the unembedding, projected on ``logit_gradient(logits)`` (the direction in
    logit space that matters, ``[n, seq, d_vocab]``, evaluated at the clean logits of ``tokens``).
    The one implementation behind DLA, answer-logit attribution and the certificates that check
    a direct effect. ``nodes`` defaults to every head and MLP."""
    from mibench import names

    shape = names.Shape.of(model)
    nodes = names.nodes(shape) if nodes is None else list(nodes)
    parsed = {n: names.parse_node(n) for n in nodes}
    hooks = {RESID_FINAL} | {f"blocks.{p.layer}.attn.hook_z" if p.kind == "head" else
                             f"blocks.{p.layer}.hook_mlp_out" for p in parsed.values()}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    direction = residual_gradient(model, logit_gradient(logits), frozen_scale(model, cache[RESID_FINAL]))
    out = {}
    with torch.no_grad():
        for node, p in parsed.items():
            if p.kind == "head":
                z = cache[f"blocks.{p.layer}.attn.hook_z"][:, :, p.index]
                out[node] = float(torch.einsum("bpk,kd,bpd->", z, model.W_O[p.layer, p.index].detach(), direction))
            else:
                out[node] = float((cache[f"blocks.{p.layer}.hook_mlp_out"] * direction).sum())
    return out
