"""Task-agnostic statistics of every node: what can be read off a model without a metric, an answer
or a corrupted prompt. The fingerprint audit scores them against the truth (a case passes only if
none gives the circuit away) and the baseline techniques ``weight_norm``, ``attention_entropy`` and
``activation_norm`` rank nodes by them, so the leaderboard shows what "loudness" alone achieves. The
node's layer is one too: a circuit always built in the same layers is found by reading the case.

Every statistic maps node names to floats, over the nodes it is defined for: head statistics over
heads, MLP statistics over MLPs, output statistics over both.
"""
from __future__ import annotations

import torch

from mibench import names
from mibench.model import hooks, weights
from mibench.model.ablation import attention_patterns, cache_nodes

#: which nodes each statistic is defined for
HEAD_WEIGHTS = ("ov_norm", "qk_norm", "o_norm", "ov_rank", "qk_rank")
MLP_WEIGHTS = ("mlp_in_norm", "mlp_out_norm")
ATTENTION = ("attention_entropy", "attention_max")
OUTPUT = ("output_norm", "output_variance")


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli 2007): 1 for a rank-1
    matrix, n for n equal singular values; 0 for the zero matrix."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def product_singular_values(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Singular values of each ``left[h] @ right[h]`` (``[head, d, k] @ [head, k, e]``) from the
    factors: with ``left = Q1 R1`` and ``rightᵀ = Q2 R2`` (QR), the product is ``Q1 (R1 R2ᵀ) Q2ᵀ``
    and the orthonormal ``Q``s keep the singular values of the small ``R1 R2ᵀ`` (k × k). At large
    (d_model ≈ 1,400, d_head 16) that is a 16 × 16 SVD per head instead of a 1,400 × 1,400 one."""
    r_left = torch.linalg.qr(left.double()).R
    r_right = torch.linalg.qr(right.double().transpose(-1, -2)).R
    return torch.linalg.svdvals(r_left @ r_right.transpose(-1, -2))


def weight_statistics(model) -> dict[str, dict[str, float]]:
    """Norms and effective ranks of each head's OV and QK circuits and of W_O; norms of each MLP's
    input and output weights."""
    shape = names.Shape.of(model)
    out: dict[str, dict[str, float]] = {key: {} for key in HEAD_WEIGHTS + (MLP_WEIGHTS if shape.has_mlp else ())}
    for layer in range(shape.n_layers):
        ov, qk = weights.head_ov(model, layer), weights.head_qk(model, layer)
        ov_singular = product_singular_values(*weights.head_ov_factors(model, layer))
        qk_singular = product_singular_values(*weights.head_qk_factors(model, layer))
        w_o = weights.head_output_matrix(model, layer)
        for h in range(shape.n_heads):
            node = names.head(layer, h)
            out["ov_norm"][node] = float(ov[h].norm())
            out["qk_norm"][node] = float(qk[h].norm())
            out["o_norm"][node] = float(w_o[h].norm())
            out["ov_rank"][node] = effective_rank(ov_singular[h])
            out["qk_rank"][node] = effective_rank(qk_singular[h])
        if shape.has_mlp:
            w_in, w_out = weights.mlp_matrices(model, layer)
            out["mlp_in_norm"][names.mlp(layer)] = float(w_in.norm())
            out["mlp_out_norm"][names.mlp(layer)] = float(w_out.norm())
    return out


def activation_statistics(model, tokens: torch.Tensor) -> dict[str, dict[str, float]]:
    """On clean tokens only: each head's mean attention entropy and mean maximum attention (over
    prompts and query positions), and each node's mean output norm (per position) and output
    variance across prompts (mean over positions and dimensions)."""
    shape = names.Shape.of(model)
    nodes = names.nodes(shape)
    _, values = cache_nodes(model, tokens, nodes)
    patterns = attention_patterns(model, tokens, range(shape.n_layers))
    out: dict[str, dict[str, float]] = {key: {} for key in ATTENTION + OUTPUT}
    with torch.no_grad():
        for layer in range(shape.n_layers):
            p = patterns[layer].double()  # [n, head, query, key]
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # [n, head, query]
            for h in range(shape.n_heads):
                node = names.head(layer, h)
                out["attention_entropy"][node] = float(entropy[:, h].mean())
                out["attention_max"][node] = float(p[:, h].amax(-1).mean())
        for node in nodes:
            site = hooks.hook_site(node)
            write = weights.head_write(model, node, values[node]) if site.is_head else values[node]
            write = write.double()  # [n, seq, d_model]
            out["output_norm"][node] = float(write.norm(dim=-1).mean())
            out["output_variance"][node] = float(write.var(dim=0).mean()) if write.shape[0] > 1 else 0.0
    return out


def depth_statistics(model) -> dict[str, dict[str, float]]:
    """Each node's layer: what "the circuit sits in the first layers", read off a case's code or
    circuit.yaml, would give away (both directions count, like every statistic)."""
    shape = names.Shape.of(model)
    return {"layer": {node: float(names.node_layer(node)) for node in names.nodes(shape)}}


def all_statistics(model, tokens: torch.Tensor) -> dict[str, dict[str, float]]:
    return {**depth_statistics(model), **weight_statistics(model), **activation_statistics(model, tokens)}
