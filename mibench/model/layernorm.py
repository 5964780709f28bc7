"""Normalisation layers, the one implementation: which kind a model uses, its weight, the frozen
scale that direct logit attribution divides by, the exact vector–Jacobian product used to pull a
gradient back through a norm, and applying the final norm for real (as the lenses do).

Kinds are TransformerLens's ``normalization_type``: ``LN`` (centre, divide by the scale, weight),
``LNPre`` (centre, divide), ``RMS`` (divide, weight), ``RMSPre`` (divide), or none.
"""
from __future__ import annotations

import torch

SUPPORTED = ("", "LN", "LNPRE", "RMS", "RMSPRE")


def kind(model) -> str:
    """The model's normalisation kind, upper-case (``""`` for none)."""
    return (getattr(model.cfg, "normalization_type", None) or "").upper()


def weight(module) -> torch.Tensor | None:
    """A norm's elementwise weight (detached), or None for a norm without one."""
    original = getattr(module, "original_component", module)
    w = getattr(original, "weight", None)
    return None if w is None else w.detach()


def block_norm(model, layer: int, which: str) -> torch.Tensor | None:
    """The weight of block ``layer``'s ``ln1`` (before attention) or ``ln2`` (before the MLP)."""
    return weight(getattr(model.blocks[layer], which))


def final_weight(model) -> torch.Tensor | None:
    return weight(model.ln_final)


def centres(norm_kind: str) -> bool:
    return norm_kind in ("LN", "LNPRE")


def frozen_scale(model, resid: torch.Tensor) -> torch.Tensor:
    """The final norm's divisor at each position ``[..., 1]`` (1 for models without a norm)."""
    k = kind(model)
    if not k:
        return torch.ones_like(resid[..., :1])
    x = resid - resid.mean(-1, keepdim=True) if centres(k) else resid
    return (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()


def through_frozen_final(model, grad_resid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A gradient arriving at the final norm's output, pulled back to its input with the scale
    held fixed at ``scale`` (direct logit attribution's linearisation)."""
    k, w = kind(model), final_weight(model)
    g = grad_resid * w if w is not None else grad_resid
    g = g / scale
    return g - g.mean(-1, keepdim=True) if centres(k) else g


def vjp(norm_kind: str, norm_weight: torch.Tensor | None, x: torch.Tensor, grad_out: torch.Tensor,
        eps: float) -> torch.Tensor:
    """Pull ``grad_out`` (a gradient at a normalisation layer's output) back to its input ``x`` with
    the exact Jacobian at ``x``. Broadcasts over leading dimensions of grad_out."""
    norm_kind = (norm_kind or "").upper()
    if norm_kind == "":
        return grad_out
    if norm_kind not in SUPPORTED:
        raise NotImplementedError(f"normalization_type {norm_kind!r} is not supported")
    g = grad_out * norm_weight if (norm_weight is not None and norm_kind in ("LN", "RMS")) else grad_out
    xc = x - x.mean(-1, keepdim=True) if centres(norm_kind) else x
    scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    xhat = xc / scale
    if centres(norm_kind):
        g = g - g.mean(-1, keepdim=True)
    return (g - xhat * (g * xhat).mean(-1, keepdim=True)) / scale


def apply_final(model, resid: torch.Tensor) -> torch.Tensor:
    """The final norm applied for real (scale recomputed from ``resid``), through the wrapped module
    itself so that no hook fires: reading a residual is not a forward pass of the model."""
    original = getattr(model.ln_final, "original_component", None)
    return original(resid) if original is not None else model.ln_final(resid)
