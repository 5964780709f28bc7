"""Induction in GPT-2 small on repeated random tokens: the induction and previous-token heads the
literature reports, on the user's own weights (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench.api import MetricSpec, MibenchError, PromptSet, prompt_rng
from mibench.circuit import Circuit
from mibench.literature import LiteratureCase

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))
#: random tokens per half (the sequence is BOS, HALF tokens, then the first HALF − 1 again)
HALF = 20


class GPT2Induction(LiteratureCase):
    name = "gpt2_induction"
    version = "1"
    circuit = CIRCUIT
    description = "induction and previous-token heads of GPT-2 small on repeated random tokens"
    # as the planted induction case: every position of the repeat, centred logit of the next token
    metric = MetricSpec(reads="centred_logit", target="next_token", positions_from_end=tuple(range(HALF - 1, 0, -1)))

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, HALF distinct random tokens, then the first HALF − 1 of them again; the answer is
        the last token of the first half. Corrupted prompts replace the first half by fresh
        tokens, so nothing repeats (as in the planted ``induction`` case)."""
        tokenizer = self.tokenizer()
        special = set(tokenizer.all_special_ids)
        ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
        if len(ordinary) < 2 * HALF + 1:
            raise MibenchError(f"case {self.name!r} needs {2 * HALF + 1} ordinary tokens; the tokenizer has "
                               f"{len(ordinary)}")
        rng = prompt_rng(seed, split, sample)
        bos = tokenizer.bos_token_id
        clean, corrupted, wrong = [], [], []
        for _ in range(n):
            toks = rng.choice(ordinary, size=2 * HALF + 1, replace=False)
            first, fresh = toks[:HALF], toks[HALF: 2 * HALF - 1]
            clean.append([bos, *first, *first[:-1]])
            corrupted.append([bos, *fresh, toks[2 * HALF - 1], *first[:-1]])
            wrong.append(toks[2 * HALF])  # a token in neither prompt
        clean_t = torch.tensor(clean)
        positions = {"BOS": 0, "SRC": HALF - 1, "SRC+1": HALF, "END": 2 * HALF - 1}
        return PromptSet(clean=clean_t, corrupted=torch.tensor(corrupted), answer=clean_t[:, HALF],
                         wrong=torch.tensor(wrong), positions={k: torch.full((n,), v) for k, v in positions.items()},
                         split=split)
