"""Trap: a variable that is linearly decodable at a site the model never uses (see README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import ablation_effects, cache_nodes
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.gating import QKTerm, embed_flag, set_qk_terms

BOS, END, NOTE = 0, 1, 2
VOCAB = 32
N_KEYS = 8
CONTEXT = 8  # tokens between BOS and NOTE; one of them is a key
N_LAYERS, N_HEADS, D_HEAD = 2, 4, 16
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))
#: the site where the memo head leaves the variable for nobody
UNUSED_SITE = "r1@NOTE"

# Planted strengths (no LayerNorm): every position rests on BOS with attention logit 20, and the
# querying position scores 30 on the key, so the key leaks into no other position (weight e^-20).
KEY_QK, SINK_QK = 30.0, 20.0
ANSWER_GAIN = 10.0
MEMO_GAIN = 1.0
DISTRACTOR_WRITE = {"junk": 1.0, "out": 0.3}

# Thresholds of the trap's own checks.
#: |metric change| / clean metric when the unused site is patched from the corrupted run
UNUSED_EFFECT_MAX = 0.05
#: test accuracy of a least-squares linear decoder of the variable at the unused site
DECODABLE_MIN = 0.9
#: share of the clean metric removed by patching each truth site from the corrupted run
TRUTH_SITE_EFFECT_MIN = 0.5
#: train prompts for the least-squares decoder
N_DECODER_TRAIN = 256
#: measurement noise added to the decoder's features, as a share of the site's mean residual norm:
#: a noise-free planted model makes even a 1e-8 float-rounding trace exactly decodable, so the
#: check asks for decodability above this floor (a real signal, not a numerical echo)
DECODER_NOISE = 0.02


class TrapDecodableUnused(Case):
    name = "trap_decodable_unused"
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("a memo head writes the answer's identity at NOTE into a subspace nothing reads: "
                   "a probe finds it there, patching shows it is unused")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, memo: bool = True) -> tuple[PlantedModel, dict[str, list[str]], int]:
        """The planted weights (rotated, before export), where each role sits and the memo head's
        index. ``memo=False`` leaves the memo head out (removes the trap's mechanism), for tests."""
        rng = np.random.default_rng([seed, 0])
        keys = self._keys(seed)
        n_ctx = CONTEXT + 3
        layout = ResidualLayout({"tok": VOCAB, "const": 1, "kflag": 1, "qflag": 1, "nflag": 1,
                                 "out": VOCAB, "memo": N_KEYS, "pos": n_ctx, "junk": 8})
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=n_ctx)
        model.embed_tokens("tok")
        embed_flag(model, "const", list(range(VOCAB)))
        embed_flag(model, "kflag", keys)
        embed_flag(model, "qflag", [END])
        embed_flag(model, "nflag", [NOTE])
        model.embed_positions("pos")
        model.unembed("out")

        mover, memo_head = (int(h) for h in rng.choice(N_HEADS, size=2, replace=False))
        b = layout.basis
        sink = QKTerm(b("const"), b("tok")[[BOS]], SINK_QK)  # every position rests on BOS
        set_qk_terms(model, 0, mover, [QKTerm(b("qflag"), b("kflag"), KEY_QK), sink])
        model.set_ov(0, mover, b("tok")[keys], b("out")[keys], ANSWER_GAIN, offset=2)
        if memo:
            set_qk_terms(model, 0, memo_head, [QKTerm(b("nflag"), b("kflag"), KEY_QK), sink])
            model.set_ov(0, memo_head, b("tok")[keys], b("memo"), MEMO_GAIN, offset=2)
        for layer in range(N_LAYERS):
            for h in range(N_HEADS):
                if layer == 0 and h in (mover, memo_head):
                    continue
                # nothing reads "memo". Layer-0 distractors attend and read by position only, so no
                # trace of the key reaches NOTE except the memo head's (the decodability check
                # then fails when the memo head is removed); layer-1 ones also read tokens.
                reads = ["pos", "const", "junk"] if layer == 0 else ["tok", "pos", "junk"]
                model.add_distractor_head(layer, h, rng, read_blocks=reads, write=DISTRACTOR_WRITE)
        model.rotate(rng)
        return model, {"answer_mover": [names.head(0, mover)]}, memo_head

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        model, placement, _ = self.planted(seed)
        truth = CIRCUIT.truth(placement)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    @staticmethod
    def _keys(seed: int) -> list[int]:
        rng = np.random.default_rng([seed, 2])
        return rng.permutation(np.arange(3, VOCAB)).tolist()[:N_KEYS]

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one key at a random place), NOTE, END. Answer: the key;
        wrong: another key, which the corrupted prompt holds in the key's place. Variable ``key``:
        the index of the answer among the keys."""
        keys = self._keys(seed)
        fillers = np.array([t for t in range(3, VOCAB) if t not in keys])
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, wrong, where, index = [], [], [], [], [], []
        for _ in range(n):
            ctx = rng.permutation(fillers)[:CONTEXT]
            i, j = rng.choice(N_KEYS, size=2, replace=False)
            at = int(rng.integers(0, CONTEXT))
            c, x = ctx.copy(), ctx.copy()
            c[at], x[at] = keys[i], keys[j]
            clean.append([BOS, *c, NOTE, END])
            corrupted.append([BOS, *x, NOTE, END])
            answer.append(keys[i])
            wrong.append(keys[j])
            where.append(at + 1)
            index.append(int(i))
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "KEY": torch.tensor(where),
                       "NOTE": torch.full((n,), CONTEXT + 1), "END": torch.full((n,), CONTEXT + 2)},
            variables={"key": torch.tensor(index)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def decodability(self, model, site: str, prompts: PromptSet, seed: int) -> float:
        """Test accuracy of a least-squares linear decoder (one-hot targets plus a bias, fitted on
        N_DECODER_TRAIN train prompts) of the ``key`` variable at a residual site, with Gaussian
        noise of DECODER_NOISE times the mean residual norm added to the features. Plain numpy, so
        the check does not depend on any probe adapter."""
        train = self.prompts(N_DECODER_TRAIN, seed, "train")
        rng = np.random.default_rng([seed, 3])

        def features(p: PromptSet) -> np.ndarray:
            _, values = cache_nodes(model, p.clean, [site], p.positions)
            x = values[site].double().numpy()
            noise = DECODER_NOISE * np.linalg.norm(x, axis=-1).mean() / np.sqrt(x.shape[-1])
            x = x + noise * rng.standard_normal(x.shape)
            return np.hstack([x, np.ones((len(p), 1))])

        y = np.eye(N_KEYS)[train.variables["key"].numpy()]
        w, *_ = np.linalg.lstsq(features(train), y, rcond=None)
        pred = (features(prompts) @ w).argmax(-1)
        return float((pred == prompts.variables["key"].numpy()).mean())

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The mechanism: the variable is linearly decodable at the unused site, patching that site
        moves the metric by almost nothing, and patching each truth site removes most of it."""
        model, truth = instance.model, instance.truth
        sites = sorted(truth.sites["key"])
        effects = ablation_effects(model, prompts, [UNUSED_SITE, *sites], "corrupted", probe.metric)
        clean = max(probe.full, 1e-9)
        checks = [
            Check("unused site decodability", self.decodability(model, UNUSED_SITE, prompts,
                                                                 instance.seed),
                  DECODABLE_MIN, ">=", f"test accuracy of a least-squares decoder of 'key' at "
                                       f"{UNUSED_SITE} (chance 1/{N_KEYS})"),
            Check("unused site patching effect", abs(effects[UNUSED_SITE]) / clean, UNUSED_EFFECT_MAX,
                  "<=", f"|metric change| / clean metric when {UNUSED_SITE} is patched from the "
                        f"corrupted run"),
        ]
        for site in sites:
            checks.append(Check(f"truth site patching effect {site}", effects[site] / clean,
                                TRUTH_SITE_EFFECT_MIN, ">=",
                                f"share of the clean metric removed by patching {site} from the "
                                f"corrupted run"))
        return checks
