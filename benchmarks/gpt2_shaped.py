"""A randomly initialised GPT-2-small-shaped model (TransformerLens 4.x native bridge) and a
benchmark Case around it, so techniques can be timed on a realistic size without a model hub."""
from __future__ import annotations

import torch

from mibench.api import Case, Instance, PromptSet, Truth

N_PROMPTS, N_TOKENS = 16, 20


def gpt2_shaped(n_layers: int = 12, seed: int = 0):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(d_model=768, d_head=64, n_layers=n_layers, n_heads=12, n_ctx=64,
                                  d_vocab=50257, d_mlp=3072, act_fn="gelu_new", normalization_type="LN",
                                  seed=seed, positional_embedding_type="standard")
    model = TransformerBridge.boot_native(cfg)
    model.eval()
    return model


def prompts(n: int = N_PROMPTS, seed: int = 0) -> PromptSet:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 50257, (n, N_TOKENS), generator=g)
    corrupted = clean.clone()
    corrupted[:, : N_TOKENS // 2] = torch.randint(0, 50257, (n, N_TOKENS // 2), generator=g)
    answer, wrong = torch.randint(0, 50257, (n,), generator=g), torch.randint(0, 50257, (n,), generator=g)
    return PromptSet(clean, corrupted, answer, wrong, {"END": torch.full((n,), N_TOKENS - 1)})


def logit_diff(logits: torch.Tensor, p: PromptSet) -> torch.Tensor:
    """Per-prompt logit difference at the final position (works on full or final-only logits)."""
    final = logits[:, -1]
    idx = torch.arange(final.shape[0])
    return final[idx, p.answer] - final[idx, p.wrong]


class GPT2Shaped(Case):
    """Not a known circuit: a stand-in case so adapters can be timed on a GPT-2-sized model."""

    name = "gpt2_shaped_benchmark"

    def __init__(self, n_layers: int = 12) -> None:
        self.n_layers = n_layers

    def build(self, seed: int) -> Instance:
        return Instance(gpt2_shaped(self.n_layers, seed), Truth(nodes={"a0.h0": "none"}), seed)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        return prompts(n, seed + (0 if split == "test" else 1000) + 10_000 * sample)

    def metric(self, logits, prompts):
        return logit_diff(logits, prompts)
