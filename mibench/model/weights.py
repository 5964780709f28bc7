"""Reading the model's weights in circuit terms: a head's write into the residual stream, a write's
direct contribution to the logits, and the per-head QK and OV matrices.

The one place that indexes TransformerLens's weight tensors (``W_Q``, ``W_O``, ``W_U``, …), so
cases, techniques and the engine speak of heads and writes, never of raw weight layout.
"""
from __future__ import annotations

import torch

from mibench import names


def head_writes(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Every head's write into the residual stream from its values ``z`` ``[..., head, d_head]``
    (``attn.hook_z``): ``z_h @ W_O[layer, h]``, stacked head-first ``[head, ..., d_model]``. The
    shared output bias ``b_O`` belongs to no head."""
    return torch.einsum("...hk,hkd->h...d", z, model.W_O[layer].detach())


def head_write(model, node: str, z: torch.Tensor) -> torch.Tensor:
    """One head's write ``z @ W_O[h]`` from its own values ``z`` ``[..., d_head]``."""
    parsed = names.parse_node(node)
    if parsed.kind != "head":
        raise ValueError(f"{node} is not an attention head")
    return z @ model.W_O[parsed.layer, parsed.index].detach()


def unembedding(model) -> torch.Tensor:
    """``W_U`` ``[d_model, vocab]``, detached."""
    return model.W_U.detach()


def logit_writes(model, write: torch.Tensor) -> torch.Tensor:
    """A residual write's direct contribution to every logit through the unembedding alone
    (``write @ W_U``; exact for models without a final norm)."""
    return write @ unembedding(model)


def reader_weights(model, layer: int, which: str) -> torch.Tensor:
    """The matrix through which block ``layer`` reads its (normed) residual stream: ``q``, ``k``,
    ``v`` → ``W_Q``/``W_K``/``W_V[layer]`` ``[head, d_model, d_head]``; ``mlp`` → ``W_in[layer]``
    ``[d_model, d_mlp]``. Detached."""
    table = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}
    if which == "mlp":
        return model.W_in[layer].detach()
    return table[which][layer].detach()


def head_ov_factors(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_V, W_O)`` ``[head, d_model, d_head]``, ``[head, d_head, d_model]``: the OV circuit as
    a product, for what is cheaper on the factors (singular values) than on the full matrix."""
    return model.W_V[layer].detach(), model.W_O[layer].detach()


def head_qk_factors(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_Q, W_Kᵀ)`` ``[head, d_model, d_head]``, ``[head, d_head, d_model]``: the QK circuit as
    a product."""
    return model.W_Q[layer].detach(), model.W_K[layer].detach().transpose(-1, -2)


def head_ov(model, layer: int) -> torch.Tensor:
    """Every head's OV circuit ``W_V[h] @ W_O[h]`` ``[head, d_model, d_model]``: what it writes per
    unit of what it reads."""
    return torch.matmul(*head_ov_factors(model, layer))


def head_qk(model, layer: int) -> torch.Tensor:
    """Every head's QK circuit ``W_Q[h] @ W_K[h]ᵀ`` ``[head, d_model, d_model]``: the bilinear form of
    its attention scores."""
    return torch.matmul(*head_qk_factors(model, layer))


def head_output_matrix(model, layer: int) -> torch.Tensor:
    """``W_O[layer]`` ``[head, d_head, d_model]``."""
    return model.W_O[layer].detach()


def mlp_matrices(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP's ``W_in`` ``[d_model, d_mlp]`` and ``W_out`` ``[d_mlp, d_model]``."""
    return model.W_in[layer].detach(), model.W_out[layer].detach()
