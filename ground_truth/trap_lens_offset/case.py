"""Trap: a constant residual offset that only the final block removes, hiding the answer from the
logit lens at every intermediate layer (see README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.readout import cache_residuals, decode
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.gating import QKTerm, embed_flag, set_qk_terms
from mibench.models.mlp import add_distractor_neurons
from mibench.models.norms import add_constant_neurons, offset_vector

BOS, END = 0, 1
VOCAB = 32
N_KEYS = 8
N_NONSENSE = 3  # filler tokens whose unembedding the offset points at
CONTEXT = 8
N_LAYERS, N_HEADS, D_HEAD, D_MLP = 3, 4, 16, 8
N_CONSTANT = 2  # constant neurons per bias-like MLP
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Planted strengths (post-LayerNorm units: each of the ~3 unit directions of an embedding becomes
# ~5 after the block's LayerNorm).
KEY_QK, SINK_QK = 0.45, 0.18
ANSWER_GAIN = 0.75  # ~4 units of the answer direction at END
OFFSET = 15.0  # the offset's part in its own subspace (orthogonal to the unembedding)
NONSENSE_LOGIT = 8.0  # the offset's part along each nonsense token's unembedding direction
DISTRACTOR_WRITE = {"junk": 0.1, "out": 0.02}

# Thresholds of the trap's own checks.
#: top-1 accuracy of the logit lens after the answer layer, at most chance (1 / N_KEYS) plus this
LENS_MARGIN = 0.1
#: top-1 accuracy of a least-squares linear readout (residual after the answer layer -> final logits)
READOUT_ACCURACY_MIN = 0.9
#: train prompts for that readout (more than d_model, so the least-squares fit is determined)
N_READOUT_TRAIN = 256


class TrapLensOffset(Case):
    name = "trap_lens_offset"
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("the answer is formed in layer 0, but a constant offset removed only by the final "
                   "block hides it from the logit lens, which credits the final layer")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, offset_scale: float = 1.0) -> tuple[PlantedModel, dict[str, list[str]]]:
        """The planted weights (rotated, before export) and where each role sits.
        ``offset_scale`` = 0 removes the offset (the mechanism), for tests."""
        rng = np.random.default_rng([seed, 0])
        roles = self._token_roles(seed)
        keys = roles["key"]
        n_ctx = CONTEXT + 2
        layout = ResidualLayout({"tok": VOCAB, "flag": 1, "qflag": 1, "offset": 1, "out": VOCAB,
                                 "pos": n_ctx, "junk": 8})
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=n_ctx, d_mlp=D_MLP, layer_norm=True)
        model.embed_tokens("tok")
        embed_flag(model, "flag", keys)
        embed_flag(model, "qflag", [END])
        model.embed_positions("pos")
        model.unembed("out")

        mover = int(rng.integers(0, N_HEADS))
        tok, out = layout.basis("tok"), layout.basis("out")
        set_qk_terms(model, 0, mover, [QKTerm(layout.basis("qflag"), layout.basis("flag"), KEY_QK),
                                       QKTerm(layout.basis("qflag"), tok[[BOS]], SINK_QK)])
        model.set_ov(0, mover, tok[keys], out[keys], ANSWER_GAIN, offset=2)

        # the offset: added by constant neurons of m0, removed by constant neurons of the final MLP
        nonsense = np.zeros(VOCAB)
        nonsense[roles["nonsense"]] = NONSENSE_LOGIT
        offset = offset_scale * offset_vector(model, {"offset": OFFSET, "out": nonsense})
        constant = sorted(int(i) for i in rng.choice(D_MLP, size=N_CONSTANT, replace=False))
        last = N_LAYERS - 1
        if offset_scale:
            add_constant_neurons(model, 0, constant, offset)
            add_constant_neurons(model, last, constant, -offset)

        for layer in range(N_LAYERS):
            for h in range(N_HEADS):
                if (layer, h) != (0, mover):
                    model.add_distractor_head(layer, h, rng, read_blocks=["tok", "pos", "junk"],
                                              write=DISTRACTOR_WRITE)
            add_distractor_neurons(model, layer, [i for i in range(D_MLP) if i not in constant], rng,
                                   read_blocks=["tok", "pos", "junk"], write={"junk": 0.05, "out": 0.01})
        model.rotate(rng)
        return model, {"answer_mover": [names.head(0, mover)]}

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        model, placement = self.planted(seed)
        return Instance(model=model.to_bridge(), truth=CIRCUIT.truth(placement), seed=seed, size=size)

    @staticmethod
    def _token_roles(seed: int) -> dict:
        rng = np.random.default_rng([seed, 2])
        toks = rng.permutation(np.arange(2, VOCAB)).tolist()
        fillers = toks[N_KEYS:]
        return {"key": toks[:N_KEYS], "filler": fillers, "nonsense": fillers[:N_NONSENSE]}

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one key at a random place), END. Answer: the key; wrong:
        another key, which the corrupted prompt holds in the key's place."""
        roles = self._token_roles(seed)
        keys, fillers = roles["key"], np.array(roles["filler"])
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, wrong, where = [], [], [], [], []
        for _ in range(n):
            ctx = rng.permutation(fillers)[:CONTEXT]
            i, j = rng.choice(N_KEYS, size=2, replace=False)
            at = int(rng.integers(0, CONTEXT))
            c, x = ctx.copy(), ctx.copy()
            c[at], x[at] = keys[i], keys[j]
            clean.append([BOS, *c, END])
            corrupted.append([BOS, *x, END])
            answer.append(keys[i])
            wrong.append(keys[j])
            where.append(at + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "KEY": torch.tensor(where),
                       "END": torch.full((n,), CONTEXT + 1)},
            variables={"key": torch.tensor([keys.index(int(a)) for a in answer])}, split=split)

    # --- checks -------------------------------------------------------------------------------

    @staticmethod
    def _end_residual(model, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Final logits at END and the residual after block ``layer`` at END."""
        logits, residuals = cache_residuals(model, tokens)  # residuals[l + 1] follows block l
        return logits[:, -1], residuals[layer + 1][:, -1]

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The mechanism: right after the answer layer the logit lens (final norm + unembedding on
        the residual) names the wrong token, while a linear readout of the same residual fitted to the
        final logits recovers the answer."""
        model, seed = instance.model, instance.seed
        layer = instance.truth.answer_layer
        _, resid = self._end_residual(model, prompts.clean, layer)
        with torch.no_grad():
            lens = decode(model, resid)
        lens_acc = float((lens.argmax(-1) == prompts.answer).float().mean())

        train = self.prompts(N_READOUT_TRAIN, seed, "train")
        train_logits, train_resid = self._end_residual(model, train.clean, layer)
        x = np.hstack([train_resid.double().numpy(), np.ones((len(train), 1))])
        w, *_ = np.linalg.lstsq(x, train_logits.double().numpy(), rcond=None)
        x_test = np.hstack([resid.double().numpy(), np.ones((len(prompts), 1))])
        readout = x_test @ w
        readout_acc = float((readout.argmax(-1) == prompts.answer.numpy()).mean())
        return [
            Check("logit lens accuracy at the answer layer", lens_acc, 1.0 / N_KEYS + LENS_MARGIN, "<=",
                  f"top-1 accuracy of decoding the residual after L{layer} at END through the final "
                  f"norm and unembedding (chance 1/{N_KEYS})"),
            Check("linear readout accuracy at the answer layer", readout_acc, READOUT_ACCURACY_MIN, ">=",
                  f"top-1 accuracy of a least-squares map (fitted on {N_READOUT_TRAIN} train prompts) "
                  f"from the residual after L{layer} at END to the final logits"),
        ]
