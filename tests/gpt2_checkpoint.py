"""A randomly initialised GPT-2-architecture checkpoint in Hugging Face format, made by the tests
(no weights can be downloaded here): 12 layers x 12 heads like GPT-2 small, so the literature
cases' labels fit, but a small width, and a word-level tokenizer covering the IOI vocabulary.
Figures measured on it are meaningless; it proves the loading and running path."""
from __future__ import annotations

from pathlib import Path

BOS = "<|endoftext|>"
#: extra ordinary words, so that repeated-random-token prompts have tokens to draw from
FILLER = [f"w{i}" for i in range(60)]


def word_level_tokenizer(words: list[str]):
    """A fast tokenizer splitting on whitespace and punctuation, one token per known word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([BOS, *words]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=BOS))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=BOS, unk_token=BOS)


def make_tiny_gpt2(folder: str | Path, d_model: int = 48, seed: int = 0) -> Path:
    """Write the checkpoint (config.json, model.safetensors, tokenizer files) into ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ground_truth.gpt2_ioi.dataset import vocabulary

    folder = Path(folder)
    tokenizer = word_level_tokenizer([*vocabulary(), *FILLER])
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=d_model, n_layer=12, n_head=12,
                        n_inner=2 * d_model, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
