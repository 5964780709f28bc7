"""Induction: a planted 2-layer attention-only model (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import Case, Instance, PromptSet, prompt_rng
from mibench.circuit import Circuit
from mibench.models import PlantedModel, ResidualLayout

BOS = 0
VOCAB = 48  # token 0 is BOS; 1..47 are ordinary tokens
HALF = 10  # length of the random sequence that is repeated
N_HEADS = 4
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Planted strengths: attention scores of 12 put ~all attention on the matching key; the
# induction head's OV gain of 10 makes the copied token's logit about 10.
PREV_QK, INDUCTION_QK, INDUCTION_GAIN = 12.0, 12.0, 10.0


class Induction(Case):
    name = "induction"
    version = "1"
    circuit = CIRCUIT
    tier = "planted"
    description = "previous-token head (L0) K-composes with an induction head (L1) to copy [A][B]…[A]→[B]"

    def build(self, seed: int) -> Instance:
        rng = np.random.default_rng([seed, 0])
        n_ctx = 2 * HALF + 4
        layout = ResidualLayout({"tok": VOCAB, "prev": VOCAB, "out": VOCAB, "pos": n_ctx, "junk": 16})
        model = PlantedModel(layout, n_layers=2, n_heads=N_HEADS, d_head=VOCAB, d_vocab=VOCAB, n_ctx=n_ctx)
        model.embed_tokens("tok")
        model.embed_positions("pos")
        model.unembed("out")

        prev_head, ind_head = (int(h) for h in rng.integers(0, N_HEADS, size=2))
        pos = layout.basis("pos")
        # previous-token head: query at position p matches key at p-1; copies the token there
        model.set_qk(0, prev_head, pos[1:n_ctx], pos[: n_ctx - 1], PREV_QK)
        model.set_ov(0, prev_head, layout.basis("tok"), layout.basis("prev"))
        # induction head: query = current token, key = previous token (K-composition)
        model.set_qk(1, ind_head, layout.basis("tok"), layout.basis("prev"), INDUCTION_QK)
        model.set_ov(1, ind_head, layout.basis("tok"), layout.basis("out"), INDUCTION_GAIN)

        for h in range(N_HEADS):
            if h != prev_head:
                model.add_distractor_head(0, h, rng, read_blocks=["tok", "pos"],
                                          write={"junk": 1.0, "prev": 0.05, "out": 0.3})
            if h != ind_head:
                model.add_distractor_head(1, h, rng, read_blocks=["tok", "pos", "prev", "junk"],
                                          write={"junk": 1.0, "out": 0.5})
        model.rotate(rng)
        truth = CIRCUIT.truth({"previous_token": [names.head(0, prev_head)],
                               "induction": [names.head(1, ind_head)]})
        return Instance(model=model.to_bridge(), truth=truth, seed=seed)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, HALF distinct random tokens, then the first HALF-1 of them again. The answer is the
        last token of the first half (what induction predicts at the end). Corrupted prompts keep
        the second half and replace the first half by fresh tokens, so nothing repeats: the
        queries are unchanged and only what earlier positions offer as keys differs, which is
        what both the previous-token and the induction head carry."""
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, wrong = [], [], []
        for _ in range(n):
            toks = rng.permutation(np.arange(1, VOCAB))
            first, fresh = toks[:HALF], toks[HALF: 2 * HALF - 1]
            clean.append([BOS, *first, *first[:-1]])
            corrupted.append([BOS, *fresh, toks[2 * HALF - 1], *first[:-1]])
            wrong.append(toks[2 * HALF])  # a token absent from both prompts
        clean_t = torch.tensor(clean)
        answer = clean_t[:, HALF]
        positions = {"BOS": 0, "SRC": HALF - 1, "SRC+1": HALF, "END": 2 * HALF - 1}
        return PromptSet(
            clean=clean_t, corrupted=torch.tensor(corrupted), answer=answer,
            wrong=torch.tensor(wrong),
            positions={k: torch.full((n,), v) for k, v in positions.items()}, split=split)

    @staticmethod
    def _targets(prompts: PromptSet) -> torch.Tensor:
        """Next-token targets over the repeated half: positions HALF+1 … 2·HALF−1."""
        return torch.cat([prompts.clean[:, HALF + 2:], prompts.answer[:, None]], dim=1)

    def metric_positions(self, prompts: PromptSet) -> list[int]:
        """The repeated half, where induction predicts the next token: HALF+1 … 2·HALF−1."""
        return list(range(HALF + 1, 2 * HALF))

    def metric(self, logits: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        """Mean over the repeated half of the correct next token's logit minus the mean logit
        (centred, so a uniform shift of all logits does not count as induction)."""
        correct = logits.gather(-1, self._targets(prompts)[..., None])[..., 0]
        return (correct - logits.mean(dim=-1)).mean(dim=-1)

    def accuracy(self, logits: torch.Tensor, prompts: PromptSet) -> float:
        """Top-1 accuracy of the next-token prediction over the repeated half."""
        return float((logits.argmax(-1) == self._targets(prompts)).float().mean())
