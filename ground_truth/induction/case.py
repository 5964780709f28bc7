"""Induction: a planted 2-layer attention-only model whose every head is an induction-circuit look-alike
(see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.circuit import Circuit
from mibench.models import PlantedModel, ResidualLayout

BOS = 0
VOCAB = 48  # token 0 is BOS; 1..47 are ordinary tokens
HALF = 10  # length of the random sequence that is repeated
N_HEADS = 4
N_CTX = 2 * HALF + 4
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Every head of a layer is built by the same recipe, its strengths drawn from the same ranges, so
# nothing task-agnostic tells the circuit's heads from the others (see README.md: the model runs
# N_HEADS induction "channels" at once; only one of them writes the task's logits).
#: attention score on the matching key: ~all attention on it at either end of the range
QK_RANGE = (10.0, 14.0)
#: a layer-0 head's copy of the previous token (per unit of token identity)
COPY_RANGE = (0.8, 1.2)
#: a layer-1 head's write per unit of copied token identity: the circuit's makes the next token's
#: logit about 10
GAIN_RANGE = (8.0, 12.0)
#: how strongly the unembedding reads the distractor channels' outputs (each into a permutation of
#: the vocabulary): their predictions move other tokens' logits by 2-4, below the answer's ~10,
#: so each distractor nudges the task metric a little (the mean logit) without taking it over
AUX_READ = 0.3


class Induction(Case):
    name = "induction"
    version = "2"
    circuit = CIRCUIT
    tier = "planted"
    description = ("previous-token head (L0) K-composes with an induction head (L1) to copy [A][B]…[A]→[B]; "
                   "every other head is a look-alike induction channel writing other predictions")

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        rng = np.random.default_rng([seed, 0])
        channels = [f"prev{c}" for c in range(N_HEADS)]
        aux = [f"aux{c}" for c in range(N_HEADS)]
        layout = ResidualLayout({"tok": VOCAB, "pos": N_CTX, "out": VOCAB,
                                 **{c: VOCAB for c in channels}, **{a: VOCAB for a in aux}})
        model = PlantedModel(layout, n_layers=2, n_heads=N_HEADS, d_head=VOCAB, d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        model.embed_positions("pos")
        model.unembed("out")
        for block in aux:  # each distractor channel predicts through its own shuffle of the vocabulary
            model.unembed(block, [int(t) for t in rng.permutation(VOCAB)], scale=AUX_READ)

        tok, pos = layout.basis("tok"), layout.basis("pos")
        # layer 0: every head is a previous-token head copying into its own channel
        for h in range(N_HEADS):
            model.set_qk(0, h, pos[1:N_CTX], pos[: N_CTX - 1], rng.uniform(*QK_RANGE))
            model.set_ov(0, h, tok, layout.basis(channels[h]), gain=rng.uniform(*COPY_RANGE))
        # layer 1: every head is an induction head keyed on one layer-0 channel (K-composition);
        # the circuit's writes the logits the task reads, the others their own channel's shuffle
        reads = rng.permutation(N_HEADS)
        ind_head = int(rng.integers(N_HEADS))
        for h in range(N_HEADS):
            model.set_qk(1, h, tok, layout.basis(channels[reads[h]]), rng.uniform(*QK_RANGE))
            target = "out" if h == ind_head else aux[h]
            model.set_ov(1, h, tok, layout.basis(target), gain=rng.uniform(*GAIN_RANGE))
        model.rotate(rng)
        truth = CIRCUIT.truth({"previous_token": [names.head(0, int(reads[ind_head]))],
                               "induction": [names.head(1, ind_head)]})
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

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
