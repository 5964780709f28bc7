"""Trap: a variable that is linearly decodable at a site the model never uses (see README.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, Truth, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import ablation_effects, cache_nodes
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import random_layer_map, shuffled_readout
from mibench.models.gating import QKTerm, embed_flag, set_qk_terms

BOS, END, NOTE = 0, 1, 2
VOCAB = 32
N_KEYS = 8
CONTEXT = 8  # tokens between BOS and NOTE; one of them is a key
N_CTX = CONTEXT + 3
D_HEAD = 8
#: layers × heads per size
SHAPES = {"small": (2, 4), "medium": (6, 8)}
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Every head is one recipe, a key mover, whichever channel it belongs to, with strengths drawn from
# the same ranges (see README.md, "Distractors"). No LayerNorm: scores and writes are exact.
#: attention score on the key from the head's own query position (END or NOTE) …
KEY_SCORE_RANGE = (26.0, 34.0)
#: … and on BOS from every position (the sink: the key leaks nowhere else, weight ~e^-20)
SINK_SCORE_RANGE = (18.0, 22.0)
#: a mover's write: this many residual units of the key's identity (the circuit's is the answer's
#: logit)
MOVE_RANGE = (8.0, 12.0)
#: how strongly the unembedding reads a look-alike mover's copy (each block into its own shuffle of the
#: vocabulary): it moves other tokens' logits (at NOTE, or at END beside the answer), and the
#: task's metric only when the shuffle sends a key onto the answer or the wrong key
AUX_READ = 0.05
#: readout blocks the look-alike movers share (keeps d_model modest at every size)
N_READOUTS = 8

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


@dataclass(frozen=True)
class Head:
    """One head of the model (every head is a key mover): the token whose position it queries (END
    or NOTE) and the residual block its copy goes to."""

    layer: int
    index: int
    query: int
    readout: str

    @property
    def node(self) -> str:
        return names.head(self.layer, self.index)


def plan(n_layers: int, n_heads: int, layer: int, rng: np.random.Generator) -> list[Head]:
    """Every head's query position and readout block. The circuit's mover: in ``layer``, at END,
    into the task's "out". The memo head: another head of that layer, the only one up to it at NOTE
    (so no other trace of the key reaches the unused site, the residual at NOTE after ``layer``).
    Every other head queries END up to that layer, END or NOTE at random above it. The look-alike
    movers copy into N_READOUTS blocks in turn (without a LayerNorm, movers that share a block
    just add their predictions through the same shuffle)."""
    mover, memo = (int(h) for h in rng.choice(n_heads, size=2, replace=False))
    heads = [Head(layer, mover, END, "out"), Head(layer, memo, NOTE, "read0")]
    for at in range(n_layers):
        for h in rng.permutation(n_heads).tolist():
            if at == layer and h in (mover, memo):
                continue
            query = END if at <= layer or rng.random() < 0.5 else NOTE
            heads.append(Head(at, h, query, f"read{(len(heads) - 1) % N_READOUTS}"))
    return heads


class TrapDecodableUnused(Case):
    name = "trap_decodable_unused"
    version = "2"
    circuit = CIRCUIT
    tier = "trap"
    sizes = ("small", "medium")
    failure_mode = "decodable but unused information"
    description = ("a memo head writes the answer's identity at NOTE into a subspace the task's path "
                   "never reads: a probe finds it there, patching shows it is unused; every head is a "
                   "look-alike key mover")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, memo: bool = True, size: str = DEFAULT_SIZE
                ) -> tuple[PlantedModel, Truth, int]:
        """The planted weights (rotated, before export), the truth and the memo head's index.
        ``memo=False`` leaves the memo head out (removes the trap's mechanism), for tests. The
        circuit's layer is drawn, so that its depth gives nothing away; the truth's answer layer and
        residual sites move with it (the key's own residual up to the mover, END's after it)."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        keys = self._keys(seed)
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        heads = plan(n_layers, n_heads, layer_map[0], rng)
        readouts = sorted({h.readout for h in heads} - {"out"})
        layout = ResidualLayout({"tok": VOCAB, "const": 1, "kflag": 1, "qflag": 1, "nflag": 1,
                                 "out": VOCAB, "pos": N_CTX, **{block: N_KEYS for block in readouts}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        embed_flag(model, "const", list(range(VOCAB)))
        embed_flag(model, "kflag", keys)
        embed_flag(model, "qflag", [END])
        embed_flag(model, "nflag", [NOTE])
        model.embed_positions("pos")
        model.unembed("out")
        for block in readouts:
            shuffled_readout(model, block, rng, AUX_READ)

        b = layout.basis
        query_flag = {END: b("qflag"), NOTE: b("nflag")}
        for n, head in enumerate(heads):
            key_score, sink_score = rng.uniform(*KEY_SCORE_RANGE), rng.uniform(*SINK_SCORE_RANGE)
            move = rng.uniform(*MOVE_RANGE)
            if n == 1 and not memo:  # drawn all the same, so every other head is unchanged
                continue
            set_qk_terms(model, head.layer, head.index,
                         [QKTerm(query_flag[head.query], b("kflag"), key_score),
                          QKTerm(b("const"), b("tok")[[BOS]], sink_score)])  # rest on BOS
            write = b("out")[keys] if head.readout == "out" else b(head.readout)
            model.set_ov(head.layer, head.index, b("tok")[keys], write, move)
        model.rotate(rng)
        truth = CIRCUIT.truth({"answer_mover": [heads[0].node]}, layer_map=layer_map, n_layers=n_layers)
        return model, truth, heads[1].index

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        model, truth, _ = self.planted(seed, size=size)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    @staticmethod
    def unused_site(truth: Truth) -> str:
        """Where the memo head leaves the variable for no reader on the task's path: NOTE's residual
        right after the circuit's layer (the memo head's)."""
        return names.site(truth.answer_layer + 1, "NOTE")

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
        unused = self.unused_site(truth)
        effects = ablation_effects(model, prompts, [unused, *sites], "corrupted", probe.metric)
        clean = max(probe.full, 1e-9)
        checks = [
            Check("unused site decodability", self.decodability(model, unused, prompts, instance.seed),
                  DECODABLE_MIN, ">=", f"test accuracy of a least-squares decoder of 'key' at "
                                       f"{unused} (chance 1/{N_KEYS})"),
            Check("unused site patching effect", abs(effects[unused]) / clean, UNUSED_EFFECT_MAX,
                  "<=", f"|metric change| / clean metric when {unused} is patched from the "
                        f"corrupted run"),
        ]
        for site in sites:
            checks.append(Check(f"truth site patching effect {site}", effects[site] / clean,
                                TRUTH_SITE_EFFECT_MIN, ">=",
                                f"share of the clean metric removed by patching {site} from the "
                                f"corrupted run"))
        return checks
