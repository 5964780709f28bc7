"""Trap: a constant bias component (see README.md beside this file). Zero ablation flags the bias
components (m0, m1, a BOS-sink head) as essential; mean / resample ablation and counterfactual
patching find them irrelevant, because their output is (nearly) the same on every prompt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import node_values
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.gating import constant_term, embed_flag, rows, set_qk_terms
from mibench.models.mlp import add_distractor_neurons
from mibench.models.norms import embed_offset

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END, MARK, DEFAULT = 0, 1, 2, 3  # DEFAULT is the wrong answer (a strong prior at END)
VOCAB = 40
N_ITEMS = 16  # the seed picks which ordinary tokens are items (possible answers); the rest fill
CONTEXT = 10  # tokens between BOS and END: fillers, MARK and the item X right after it
N_CTX = CONTEXT + 2
N_LAYERS, N_HEADS, D_HEAD, D_MLP = 2, 4, 24, 8

# Planted strengths.
PREV_QK = 12.0  # marker: position p attends to p − 1
MOVER_QK, MOVER_SINK = 12.0, 4.0  # mover: "marked" key 12, BOS sink 4 (per unit query flag)
MOVER_GAIN = 10.0  # X's logit from the mover
DEFAULT_PRIOR = 38.0  # the END token's own vote for DEFAULT (a bigram prior)
BIAS_OFFSET = 12.0  # each of the three bias components lowers DEFAULT's logit by this, constantly
# clean logit difference ≈ 10 − (38 − 3·12) = 8; zeroing one bias component costs 12 (m0 more)
DISTRACTOR_WRITE = {"junk": 1.0, "out": 0.15}

# Certificate extras (generic thresholds are in mibench.certificate.THRESHOLDS).
#: zero-ablating each bias component must leave at most this much behaviour (normalized)
ZERO_DESTROYS_MAX = 0.5
#: resample- and mean-ablating it must move the behaviour by at most this (normalized)
RESAMPLE_MOVES_MAX = 0.05
#: the spread of each bias component's output over prompts (at END), relative to its norm
CONSTANT_SPREAD_MAX = 0.05


def _token_roles(seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng([seed, 7])
    ordinary = rng.permutation(np.arange(4, VOCAB))
    return sorted(int(t) for t in ordinary[:N_ITEMS]), sorted(int(t) for t in ordinary[N_ITEMS:])


class TrapBiasComponent(Case):
    name = "trap_bias_component"
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("a marker head and a mover copy the marked item; m0, m1 and a BOS-sink head "
                   "write a constant bias the model relies on: zero ablation calls them essential")

    def planted(self, seed: int, *, bias: bool = True):
        """The planted weights and role placement. ``bias=False`` moves the constant into the
        embeddings (the components become inert), removing the trap's mechanism."""
        rng = np.random.default_rng([seed, 0])
        items, _ = _token_roles(seed)
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "bos": 1, "mark": 1, "marked": 1,
                                 "query": 1, "pos": N_CTX, "out": VOCAB, "junk": 16})
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX, d_mlp=D_MLP)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "mark", [MARK])
        model.embed_positions("pos")
        model.unembed("out")
        out = layout.basis("out")
        embed_offset(model, DEFAULT_PRIOR * out[DEFAULT], [END])

        marker = (0, int(rng.integers(N_HEADS)))
        mover = (1, int(rng.integers(N_HEADS)))
        free = [(l, h) for l in range(N_LAYERS) for h in range(N_HEADS) if (l, h) not in (marker, mover)]
        sink = free[int(rng.integers(len(free)))]

        pos = layout.basis("pos")
        model.set_qk(*marker, pos[1:N_CTX], pos[:N_CTX - 1], PREV_QK)
        model.set_ov(*marker, rows(layout, "mark"), rows(layout, "marked"))
        set_qk_terms(model, *mover, [constant_term(layout, "query", "marked", MOVER_QK),
                                     constant_term(layout, "query", "bos", MOVER_SINK)])
        model.set_ov(*mover, rows(layout, "tok", items), out[items], gain=MOVER_GAIN)

        # the bias components: m0's neuron 0 fires on its bias alone and writes the mover's query
        # flag and a DEFAULT offset; m1's neuron 0 writes another offset; the sink head attends to
        # BOS from everywhere and writes a third. Neuron / head indices are seeded.
        n0, n1 = int(rng.integers(D_MLP)), int(rng.integers(D_MLP))
        zero_read = np.zeros((1, layout.d_model))
        q_write = layout.basis("query")[0] - BIAS_OFFSET * out[DEFAULT]
        if bias:
            model.set_neurons(0, [n0], zero_read, q_write[None], bias=1.0)
            model.set_neurons(1, [n1], zero_read, (-BIAS_OFFSET * out[DEFAULT])[None], bias=1.0)
            set_qk_terms(model, *sink, [constant_term(layout, "one", "bos", 12.0)])
            model.set_ov(*sink, rows(layout, "bos"), (-BIAS_OFFSET * out[DEFAULT])[None])
        else:  # the same constant, written by the embeddings of every token instead
            embed_offset(model, q_write - 2 * BIAS_OFFSET * out[DEFAULT])
            model.add_distractor_head(*sink, rng, read_blocks=["tok", "pos", "junk"],
                                      write=DISTRACTOR_WRITE)
        for l, h in free:
            if (l, h) != sink:
                model.add_distractor_head(l, h, rng, read_blocks=["tok", "pos", "junk"],
                                          write=DISTRACTOR_WRITE)
        for layer, keep in ((0, n0), (1, n1)):
            add_distractor_neurons(model, layer, [i for i in range(D_MLP) if i != keep], rng,
                                   read_blocks=["tok", "pos", "junk"], write={"junk": 0.5, "out": 0.02},
                                   read_scale=0.3)
        model.rotate(rng)
        placement = {"marker": [names.head(*marker)], "mover": [names.head(*mover)]}
        return model, placement, {"m0": "mlp0", "m1": "mlp1", names.head(*sink): "sink head"}

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, bias: bool = True) -> Instance:
        self.check_size(size)
        model, placement, _ = self.planted(seed, bias=bias)
        return Instance(model=model.to_bridge(), truth=CIRCUIT.truth(placement), seed=seed, size=size)

    def bias_components(self, seed: int) -> list[str]:
        """The trap's bias components for ``seed`` (for tests and the certificate)."""
        return sorted(self.planted(seed)[2])

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers, MARK, then the item X right after it), END. The answer is
        X, the wrong token DEFAULT. Corrupted prompts replace MARK by a filler (nothing is marked,
        so the mover falls back to its BOS sink and DEFAULT wins)."""
        items, fillers = _token_roles(seed)
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, where = [], [], [], []
        for _ in range(n):
            ctx = [int(t) for t in rng.choice(fillers, size=CONTEXT)]
            at = int(rng.integers(1, CONTEXT))  # index of X inside the context
            x = int(rng.choice(items))
            ctx[at] = x
            cor = list(ctx)
            ctx[at - 1] = MARK
            cor[at - 1] = int(rng.choice(fillers))
            clean.append([BOS, *ctx, END])
            corrupted.append([BOS, *cor, END])
            answer.append(x)
            where.append(at + 1)
        where_t = torch.tensor(where)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.full((n,), DEFAULT),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "MARK": where_t - 1, "X": where_t,
                       "END": torch.full((n,), N_CTX - 1)},
            variables={"X": torch.tensor(answer)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """For each bias component: zero ablation destroys the behaviour, resample and mean
        ablation leave it, and its output hardly varies over prompts."""
        model = instance.model
        comps = self.bias_components(instance.seed)
        checks = []
        zero = node_values(model, prompts, comps, "zero", probe.seed, probe.clean_cache)
        mean = node_values(model, prompts, comps, "mean", probe.seed, probe.clean_cache)
        for c in comps:
            left = probe.normalized(probe.metric_with({c: zero[c]}))
            checks.append(Check(f"zero ablation destroys {c}", left, ZERO_DESTROYS_MAX, "<=",
                                "behaviour left after zero-ablating the bias component"))
            moved = max(abs(1.0 - probe.normalized(probe.metric_without([c]))),
                        abs(1.0 - probe.normalized(probe.metric_with({c: mean[c]}))))
            checks.append(Check(f"resample/mean ablation keeps {c}", moved, RESAMPLE_MOVES_MAX, "<=",
                                "largest move after resample- or mean-ablating it"))
            end = probe.clean_cache[c][:, -1]
            spread = float((end - end.mean(0)).norm(dim=-1).max() / end.mean(0).norm().clamp_min(1e-9))
            checks.append(Check(f"constant output {c}", spread, CONSTANT_SPREAD_MAX, "<=",
                                "largest deviation of its END output from the mean / mean's norm"))
        return checks
