"""Induction: a planted 2-layer attention-only model whose every head is an induction-circuit look-alike
(see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, MetricSpec, PromptSet, prompt_rng
from mibench.circuit import Circuit
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import plan_channels, random_codes, random_layer_map, shuffled_readout

BOS = 0
VOCAB = 48  # token 0 is BOS; 1..47 are ordinary tokens
HALF = 10  # length of the random sequence that is repeated
N_CTX = 2 * HALF + 4
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))
#: (layers, heads per layer) at each size; the circuit is two heads at every size
SHAPES = {"small": (2, 4), "medium": (6, 8), "large": (12, 12)}

# Every head is built by its role's recipe, with strengths drawn from the same ranges, so nothing
# task-agnostic tells the circuit's heads from the others (see README.md: the model runs many
# induction "channels" at once; only one of them writes the task's logits).
#: attention score on the matching key: ~all attention on it at either end of the range
QK_RANGE = (10.0, 14.0)
#: a previous-token head's copy of the previous token (per unit of token identity)
COPY_RANGE = (0.8, 1.2)
#: an induction head's write per unit of copied token identity: the circuit's makes the next
#: token's logit about 10
GAIN_RANGE = (8.0, 12.0)
#: a channel's "previous token" is a random unit code per token in a block of this many dimensions
#: (not one-hot: many channels fit in a modest residual). An induction head's score on a key whose
#: code is another token's is the codes' overlap, ~N(0, 1/16) times the strength: the matching key
#: still takes nearly all the attention.
CODE_DIM = 16
#: how strongly the unembedding reads what the other channels write (into a shuffle of the
#: vocabulary), divided by the square root of the number of channels read out: with four channels
#: each one's predictions move other tokens' logits by 2-4, below the answer's ~10; with many,
#: each moves them less, so that tokens that several channels happen to predict at once do not
#: outscore the answer. Each channel nudges the task metric a little (through the mean logit).
AUX_READ = 0.6


class Induction(Case):
    name = "induction"
    version = "3"
    circuit = CIRCUIT
    tier = "planted"
    sizes = tuple(SHAPES)
    #: over the repeated half (positions HALF+1 … 2·HALF−1, where induction predicts the next
    #: token): the correct next token's logit minus the mean logit (centred, so a uniform shift of
    #: all logits does not count as induction); accuracy: top-1 next-token prediction
    metric = MetricSpec(reads="centred_logit", target="next_token",
                        positions_from_end=tuple(range(HALF - 1, 0, -1)))
    description = ("previous-token head K-composes with an induction head to copy [A][B]…[A]→[B]; "
                   "every other head belongs to a look-alike induction channel writing other predictions")

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        rng = np.random.default_rng([seed, 0])
        n_layers, n_heads = SHAPES[size]
        # the circuit's own layers are drawn too (in order), so "it sits in the first layers" is
        # no give-away in a deeper model
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        channels = plan_channels(CIRCUIT, n_layers, n_heads, rng, layer_map=layer_map)
        layout = ResidualLayout({"tok": VOCAB, "pos": N_CTX, "out": VOCAB, "aux": VOCAB,
                                 **{ch.block("prev"): CODE_DIM for ch in channels}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=VOCAB,
                             d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        model.embed_positions("pos")
        model.unembed("out")
        aux_read = AUX_READ / np.sqrt(len(channels) - 1)
        shuffled_readout(model, "aux", rng, aux_read)

        tok, pos = layout.basis("tok"), layout.basis("pos")
        for ch in channels:
            codes = random_codes(layout, ch.block("prev"), VOCAB, rng)  # token -> its code
            if "previous_token" in ch.slots:  # attends to p - 1 and writes that token's code
                layer, h = ch.slots["previous_token"]
                model.set_qk(layer, h, pos[1:N_CTX], pos[: N_CTX - 1], rng.uniform(*QK_RANGE))
                model.set_ov(layer, h, tok, codes, gain=rng.uniform(*COPY_RANGE))
            if "induction" in ch.slots:  # current token vs previous-token code, copies the token
                layer, h = ch.slots["induction"]
                model.set_qk(layer, h, tok, codes, rng.uniform(*QK_RANGE))
                # the circuit's writes the task's logits; another channel's the shared aux block,
                # through its own shuffle of the vocabulary (it predicts another token)
                write = layout.basis("out") if ch.is_circuit else layout.basis("aux")[rng.permutation(VOCAB)]
                model.set_ov(layer, h, tok, write, gain=rng.uniform(*GAIN_RANGE))
            elif not ch.is_circuit:  # a previous-token head nobody reads is read by the unembedding
                shuffled_readout(model, ch.block("prev"), rng, aux_read)
        model.rotate(rng)
        truth = CIRCUIT.truth({role: [names.head(*slot)] for role, slot in channels[0].slots.items()},
                              layer_map=layer_map, n_layers=n_layers)
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

