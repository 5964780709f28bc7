"""The TransformerLens 4.x ``TransformerBridge``: building the suite's own models, reaching inside a
block for partial reruns, and the library's workarounds. The only module that knows the native
architecture's module names (``original_model.layers[l].attn.o``, ``ln_out``, …).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def boot_native(weights: dict[str, np.ndarray], *, n_heads: int, n_ctx: int, d_mlp: int,
                layer_norm: bool) -> Any:
    """A native ``TransformerBridge`` (pre-LN, ReLU MLPs, learned positions, no biases except the
    MLP's input bias) with the given weights, in TransformerLens's shapes: ``W_E [vocab, d]``,
    ``W_pos [n_ctx, d]``, ``W_Q/W_K/W_V [layers, heads, d, d_head]``, ``W_O [layers, heads, d_head,
    d]``, ``W_in [layers, d, d_mlp]``, ``b_in [layers, d_mlp]``, ``W_out [layers, d_mlp, d]``,
    ``W_U [d, vocab]``. With ``layer_norm`` every norm is a LayerNorm with unit weight; ``d_mlp = 0``
    builds an attention-only model."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    n_layers, _, d_model, d_head = weights["W_Q"].shape
    d_vocab = weights["W_E"].shape[0]
    cfg = TransformerBridgeConfig(
        d_model=d_model, d_head=d_head, n_layers=n_layers, n_heads=n_heads, n_ctx=n_ctx,
        d_vocab=d_vocab, d_mlp=d_mlp or None, attn_only=not d_mlp, act_fn="relu",
        normalization_type="LN" if layer_norm else None, init_weights=False,
        positional_embedding_type="standard",
    )
    bridge = TransformerBridge.boot_native(cfg)
    native = bridge.original_model
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    stacked = n_heads * d_head
    with torch.no_grad():
        for p in native.parameters():
            p.zero_()
        native.tok_embed.weight.copy_(t(weights["W_E"]))
        native.pos.weight.copy_(t(weights["W_pos"]))
        native.head.weight.copy_(t(weights["W_U"].T))
        for layer, block in enumerate(native.layers):
            attn = block.attn
            # nn.Linear computes x @ weight.T; heads are stacked along the output dimension.
            for linear, key in ((attn.q, "W_Q"), (attn.k, "W_K"), (attn.v, "W_V")):
                linear.weight.copy_(t(weights[key][layer].transpose(0, 2, 1).reshape(stacked, d_model)))
            attn.o.weight.copy_(t(weights["W_O"][layer].reshape(stacked, d_model).T))
            if d_mlp:
                block.mlp.fc_in.weight.copy_(t(weights["W_in"][layer].T))
                block.mlp.fc_in.bias.copy_(t(weights["b_in"][layer]))
                block.mlp.fc_out.weight.copy_(t(weights["W_out"][layer].T))
            if layer_norm:
                block.ln1.weight.fill_(1.0)
                if d_mlp:
                    block.ln2.weight.fill_(1.0)
        if layer_norm:
            native.ln_out.weight.fill_(1.0)
    bridge.eval()
    return bridge


# --- inside a block, for reruns that start mid-model -------------------------------------------

def is_native_pre_ln(model) -> bool:
    """Whether every block is the native pre-LN block (attention, then MLP, each reading its own
    norm of the residual stream), whose parts the partial reruns below may call one at a time."""
    return all(type(b.original_component).__name__ == "NativeBlock" for b in model.blocks) \
        and not getattr(model.cfg, "parallel_attn_mlp", False)


def run_block(model, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """Block ``layer`` of the bridge on a residual stream (its hooks fire)."""
    out = model.blocks[layer](resid)
    return out[0] if isinstance(out, tuple) else out


def attention_out(model, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """Block ``layer``'s attention output (what it adds to the residual stream), native blocks only."""
    block = model.blocks[layer].original_component
    return block.attn(block.ln1(resid))[0]


def output_projection(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Block ``layer``'s attention output from its per-head values ``z`` ``[n, seq, heads·d_head]``
    (``attn.hook_z`` fires on them, so a patch of a head's ``z`` applies), native blocks only."""
    return model.blocks[layer].original_component.attn.o(z)


def add_mlp(model, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
    """``resid_mid`` plus block ``layer``'s MLP output (unchanged for attention-only models)."""
    if model.cfg.attn_only:
        return resid_mid
    block = model.blocks[layer].original_component
    return resid_mid + block.mlp(block.ln2(resid_mid))


def unembed_final(model, resid: torch.Tensor, positions: list[int] | None = None) -> torch.Tensor:
    """Logits from the final residual stream: final norm, then unembedding (hooks fire), at
    ``positions`` only when given. The norm sees every position, so a patch of the final residual
    at any position applies; the unembedding, the costly part, runs only where it is read."""
    normed = model.ln_final(resid)
    return model.unembed(normed if positions is None else normed[:, positions])


# --- workarounds ------------------------------------------------------------------------------

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


def hook_module(model, hook: str) -> torch.nn.Module:
    """The module behind a hook name, for libraries that attach to modules (Captum's layer
    attributions). Its raw output for attention hooks is ``[n, seq, heads·d_head]``: the bridge
    reshapes to ``[n, seq, head, d_head]`` only for TransformerLens hook functions."""
    return model.hook_dict[hook]


def apply_block_norm(model, layer: int, which: str, resid: torch.Tensor) -> torch.Tensor:
    """Block ``layer``'s ``ln1`` (before attention) or ``ln2`` (before the MLP) applied to a
    residual stream, through the wrapped module so that no hook fires."""
    module = getattr(model.blocks[layer], which)
    return getattr(module, "original_component", module)(resid)
