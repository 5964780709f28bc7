"""TransformerLens hook names, and where each component's value lives among them.

The one place in the suite that spells a hook name. Every other module (ablation, gradients, the
lenses, cases, techniques) asks here, so a TransformerLens rename touches this file only. The
names are TransformerLens's own (``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_resid_pre``, …),
which a 4.x ``TransformerBridge`` exposes through ``hook_dict`` and ``run_with_cache``.

Pure strings: importing this module imports no heavy library.
"""
from __future__ import annotations

from dataclasses import dataclass

from mibench import names

#: the token embeddings, before the positional embedding is added (causal tracing noises these)
EMBED = "hook_embed"
#: the final residual stream, as the final norm reads it
RESID_FINAL = "ln_final.hook_in"


def resid_pre(layer: int) -> str:
    """The residual stream entering block ``layer`` (``resid_pre(0)`` is the embedding sum)."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """The residual stream between block ``layer``'s attention and its MLP (what the MLP reads)."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def attn(layer: int, what: str) -> str:
    """An attention hook of block ``layer``: ``q``, ``k``, ``v``, ``z`` (per-head outputs before
    the output projection), ``pattern`` (``[n, head, query, key]``) or ``attn_scores``."""
    if what not in ("q", "k", "v", "z", "pattern", "attn_scores"):
        raise ValueError(f"unknown attention hook {what!r}")
    return f"blocks.{layer}.attn.hook_{what}"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def mlp_pre(layer: int) -> str:
    """The MLP's pre-activations (one per neuron)."""
    return f"blocks.{layer}.mlp.hook_pre"


def mlp_post(layer: int) -> str:
    """The MLP's neuron activations."""
    return f"blocks.{layer}.mlp.hook_post"


def residual_depths(n_layers: int) -> list[str]:
    """The residual stream before block 0, then after each block (``n_layers + 1`` hooks)."""
    return [resid_pre(0)] + [resid_post(layer) for layer in range(n_layers)]


@dataclass(frozen=True)
class HookSite:
    """Where a component's value lives: a hook, an index inside its activation and, for residual
    sites, a position label."""

    hook: str
    index: int | None  # head or neuron index inside the hook's activation; None for whole layer
    label: str | None = None  # position label, for residual sites
    layer: int = 0  # the block whose forward produces (or, for sites, receives) the value

    @property
    def is_head(self) -> bool:
        return self.hook.endswith(".attn.hook_z")


def hook_site(component: str, n_layers: int | None = None) -> HookSite:
    """Where a node's output (or a residual site's value) lives among the model's hooks:

    * a head ``a{l}.h{h}`` is its slice of ``attn.hook_z`` (its write is ``z @ W_O[h]``; the shared
      output bias ``b_O`` belongs to no head);
    * an MLP ``m{l}`` is ``hook_mlp_out``; a neuron ``m{l}.n{i}`` its entry of ``mlp.hook_post``;
    * a residual site ``r{l}@{label}`` is ``hook_resid_pre`` of block ``l`` at that label's position;
      with ``n_layers`` given, ``r{n_layers}@…`` is the final residual (``ln_final.hook_in``).
    """
    if component.startswith("r") and "@" in component:
        layer, label = names.parse_site(component)
        if n_layers is not None and layer == n_layers:
            return HookSite(RESID_FINAL, None, label, layer)
        return HookSite(resid_pre(layer), None, label, layer)
    parsed = names.parse_node(component)
    if parsed.kind == "head":
        return HookSite(attn(parsed.layer, "z"), parsed.index, None, parsed.layer)
    if parsed.kind == "mlp":
        return HookSite(mlp_out(parsed.layer), None, None, parsed.layer)
    if parsed.kind == "neuron":
        return HookSite(mlp_post(parsed.layer), parsed.index, None, parsed.layer)
    raise ValueError(f"{component} has no output to ablate")
