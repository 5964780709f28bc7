"""How a write into the final residual stream reaches the metric: the final LayerNorm (with the
clean run's scale frozen, as direct logit attribution does) followed by the unembedding.

Shared by direct logit attribution and the lenses so that "through the final LayerNorm" means the
same thing everywhere. DLA freezes the clean run's scale (``residual_gradient``, with the norm
itself in :mod:`mibench.model.layernorm`); the lenses decode a whole residual stream with the norm
applied for real (``decode``, ``cache_residuals``, ``lens_gains``).
"""
from __future__ import annotations

import torch

from mibench import names
from mibench.api import MibenchError
from mibench.model import hooks, layernorm, weights


def residual_gradient(model, grad_logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Pull a gradient on the logits back to the final residual stream through the unembedding and
    the final norm with ``scale`` frozen: the direction along which a component's write moves the
    metric, linearly. ``[n, seq, d_model]``."""
    return layernorm.through_frozen_final(model, grad_logits @ weights.unembedding(model).T, scale)


def metric_gradient(metric, logits: torch.Tensor) -> torch.Tensor:
    """d metric / d logits at the given (clean) logits, for a scalar ``metric(logits)``."""
    logits = logits.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric(logits), logits)
    return grad


def decode(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits of any residual stream ``[..., d_model]`` read through the model's real final norm
    (applied for real: its scale is recomputed from ``resid``, not frozen) and the unembedding,
    as the logit lens does (nostalgebraist 2020). ``decode(model, final residual)`` reproduces the
    model's logits. No hook fires and it is not counted as a forward pass: decoding reads a
    residual, it does not run the model."""
    logits = layernorm.apply_final(model, resid) @ model.W_U
    b_U = getattr(model, "b_U", None)
    return logits + b_U if b_U is not None else logits


# --- lenses: the residual stream at every depth, decoded ------------------------------------

#: largest |decode(final residual) − logits| tolerated before refusing to run
DECODE_TOLERANCE = 1e-3


def cache_residuals(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward pass: the logits and the ``n_layers + 1`` residual streams ``[n, seq, d_model]``
    (before block 0, then after each block), after checking that decoding the final residual
    reproduces the logits."""
    depths = hooks.residual_depths(model.cfg.n_layers)
    wanted = set(depths) | {hooks.RESID_FINAL}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        gap = float((decode(model, cache[hooks.RESID_FINAL]) - logits).abs().max())
    if gap > DECODE_TOLERANCE * max(1.0, float(logits.abs().max())):
        raise MibenchError(f"decoding the final residual through ln_final and W_U differs from the "
                           f"model's logits by {gap:.3g}; this model's readout is not a final norm "
                           f"followed by the unembedding, so a lens cannot be applied")
    return logits, [cache[h] for h in depths]


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
    shape = names.Shape.of(model)
    nodes = names.nodes(shape) if nodes is None else list(nodes)
    sites = {n: hooks.hook_site(n) for n in nodes}
    wanted = {hooks.RESID_FINAL} | {s.hook for s in sites.values()}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    direction = residual_gradient(model, logit_gradient(logits),
                                  layernorm.frozen_scale(model, cache[hooks.RESID_FINAL]))
    out = {}
    with torch.no_grad():
        for node, site in sites.items():
            value = cache[site.hook]
            write = weights.head_write(model, node, value[:, :, site.index]) if site.is_head else value
            out[node] = float((write * direction).sum())
    return out
