"""Gaussian noising of the input embeddings, for causal tracing (Meng et al. 2022, ROME).

Causal tracing corrupts a run not with a counterfactual prompt but by adding Gaussian noise to the
token embeddings (``hook_embed``, before the positional embedding is added) at chosen positions.
This module builds that noise once, from a seed, and applies it with a TransformerLens hook
context, so that it composes with :func:`mibench.model.ablation.run_with_values` (which restores clean
values inside the noised run):

    noise = embedding_noise(model, prompts, key_positions(prompts, labels), scale=3.0, seed=seed)
    with noised(model, noise):
        logits = run_with_values(model, prompts.clean, {node: clean_value}, positions=prompts.positions)

The noise standard deviation is ``scale`` × the standard deviation of the clean prompts' token
embeddings (over every prompt, position and residual dimension); ROME uses scale 3.

Only full forward passes see the noise: :class:`~mibench.model.ablation.BaseRun` and the
``Ablator`` start from residuals cached before the context, so patch noised runs with
:func:`~mibench.model.ablation.run_with_values`, as causal tracing does.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mibench.model.hooks import EMBED


@dataclass(frozen=True)
class EmbeddingNoise:
    """Noise to add to the token embeddings: ``values[i, j]`` at position ``index[i, j]`` of prompt i."""

    index: torch.Tensor  # LongTensor [n, k]: the noised positions of each prompt
    values: torch.Tensor  # [n, k, d_model]
    std: float  # the noise standard deviation that was used

    def add_to(self, embed: torch.Tensor) -> torch.Tensor:
        out = embed.clone()
        rows = torch.arange(embed.shape[0])[:, None].expand_as(self.index)
        out[rows, self.index] = out[rows, self.index] + self.values.to(embed.dtype)
        return out


def key_positions(prompts, labels: list[str]) -> torch.Tensor:
    """The positions of ``labels`` in each prompt, ``[n, len(labels)]`` (a LongTensor)."""
    missing = [label for label in labels if label not in prompts.positions]
    if missing:
        raise ValueError(f"position labels {missing} are not declared by these prompts; "
                         f"declared: {list(prompts.positions)}")
    return torch.stack([prompts.positions[label] for label in labels], dim=1).long()


def embedding_noise(model, prompts, index: torch.Tensor, scale: float = 3.0,
                    seed: int = 0) -> EmbeddingNoise:
    """Gaussian noise for the token embeddings of ``prompts.clean`` at positions ``index``
    (``[n, k]``, e.g. from :func:`key_positions`), with standard deviation ``scale`` × the std of
    the clean token embeddings; seeded, so one run draws the same noise however often it is applied."""
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean, names_filter=lambda name: name == EMBED)
    embed = cache[EMBED]
    std = float(embed.std()) * scale
    index = index.long()
    generator = torch.Generator().manual_seed(int(seed))
    values = torch.randn((*index.shape, embed.shape[-1]), generator=generator) * std
    return EmbeddingNoise(index, values, std)


@contextmanager
def noised(model, noise: EmbeddingNoise):
    """Every forward pass inside this context has ``noise`` added to its token embeddings."""

    def hook(act, hook):  # noqa: ARG001 - TransformerLens hook signature
        return noise.add_to(act)

    with model.hooks(fwd_hooks=[(EMBED, hook)]):
        yield
