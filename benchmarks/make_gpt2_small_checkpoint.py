"""Write a randomly initialised GPT-2 small checkpoint (Hugging Face format) into DIR.

Why: GPT-2's weights cannot be downloaded here, but what the literature tier costs depends only on
the model's size and architecture. This checkpoint has exactly GPT-2 small's (``GPT2Config()``
defaults: 12 layers x 12 heads, d_model 768, 1024 positions, 50257 tokens), so the times measured
on it are GPT-2 small's; the scores and figures measured on it are meaningless.

The tokenizer is word-level (the IOI vocabulary, then filler words ``w0, w1, ...``), padded to
GPT-2's 50257 entries so that the unembedding has GPT-2's size.

    python benchmarks/make_gpt2_small_checkpoint.py DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the repo's cases and the tests' tokenizer helper

GPT2_VOCAB_SIZE = 50257


def padded_words(words: list[str], size: int) -> list[str]:
    """``words``, then filler words ``w0, w1, ...``, so that with BOS there are ``size`` entries."""
    known = set(words)
    fillers = (f"w{i}" for i in range(size) if f"w{i}" not in known)  # a filler must add an entry
    padded = list(dict.fromkeys(words))
    padded += [next(fillers) for _ in range(size - 1 - len(padded))]  # the tokenizer adds BOS
    return padded


def make_gpt2_small(folder: str | Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into ``folder``."""
    import torch
    from gpt2_checkpoint import word_level_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from ground_truth.gpt2_ioi.dataset import vocabulary

    folder = Path(folder)
    tokenizer = word_level_tokenizer(padded_words(vocabulary(), GPT2_VOCAB_SIZE))
    config = GPT2Config()
    if len(tokenizer) != config.vocab_size:
        raise SystemExit(f"tokenizer has {len(tokenizer)} entries, GPT-2 small {config.vocab_size}")
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python {sys.argv[0]} DIR")
    print(make_gpt2_small(sys.argv[1]))
