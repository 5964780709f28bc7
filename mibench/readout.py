"""How a write into the final residual stream reaches the metric: the final LayerNorm (with the
clean run's scale frozen, as direct logit attribution does) followed by the unembedding.

Shared by direct logit attribution and the lenses so that "through the final LayerNorm" means the
same thing everywhere.
"""
from __future__ import annotations

import torch

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


def metric_gradient(view, logits: torch.Tensor) -> torch.Tensor:
    """d metric / d logits at the given (clean) logits."""
    logits = logits.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(view.metric(logits), logits)
    return grad
