"""Trap: a backup head that compensates for the main head (see README.md beside this file).
Single-node ablation and patching underestimate the main mover; distractor heads with a small,
uncompensated effect then outrank it."""
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
from mibench.models.gating import constant_term, embed_flag, prediction_gate_term, rows, set_qk_terms
from mibench.models.norms import embed_offset

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END, DEFAULT = 0, 1, 2  # DEFAULT is the wrong answer (a constant prior at END)
VOCAB = 64
#: the seed picks which ordinary tokens are items; the rest are fillers. Many items keep the main
#: mover's *mean* output (1/N_ITEMS of its gain on every item) small, so mean ablation triggers
#: the same compensation as zero and resample ablation.
N_ITEMS = 40
CONTEXT = 10
N_CTX = CONTEXT + 2
N_LAYERS, N_HEADS, D_HEAD = 2, 4, 48

# Planted strengths.
MOVER_QK = 12.0  # main mover and copiers: END → the item flag
MAIN_GAIN = 10.0  # X's logit from the main mover
DEFAULT_PRIOR = 4.0  # the END token's own vote for DEFAULT
# Backup gate: score on X = BK_ITEM − BK_PREDICT · (X's logit already written by the main mover),
# against a BOS sink BK_SINK. Clean: 14.153 − 0.5·10 − 10 = −0.847 → 30% of its attention on X;
# main mover ablated: 4.153 → 98.5%. Its gain is chosen so that the extra 68.5% replaces the main
# mover's 10 exactly (BACKUP_GAIN below), which is what hides the main mover from single ablations.
BK_ITEM, BK_PREDICT, BK_SINK = 14.153, 0.5, 10.0
_sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
BK_OPEN_CLEAN = _sig(BK_ITEM - BK_PREDICT * MAIN_GAIN - BK_SINK)
BK_OPEN_ABLATED = _sig(BK_ITEM - BK_SINK)
BACKUP_GAIN = MAIN_GAIN / (BK_OPEN_ABLATED - BK_OPEN_CLEAN)
SPAN = MAIN_GAIN + BK_OPEN_CLEAN * BACKUP_GAIN  # clean logit of X, ≈ the normalization span
#: Distractor heads are weak copiers with a consistent effect of this share of SPAN (random per
#: head, half of them negative so that together they cancel and sufficiency holds); they write a
#: second unembedded subspace that the backup's gate does not read, so nothing compensates them.
COPIER_SHARE = (0.028, 0.045)

# Certificate extras (generic thresholds are in mibench.certificate.THRESHOLDS).
#: ablating the main mover alone (zero, mean and resample) must lose less than this (normalized)
MAIN_ALONE_MAX_LOSS = 0.2
#: ablating the main and backup movers together must lose at least this
BOTH_MIN_LOSS = 0.8
#: the main mover's single resample-ablation loss divided by the smallest distractor's loss must
#: be at most this: the underestimate is visible in a ranking
RANK_RATIO_MAX = 1.0


def _token_roles(seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng([seed, 7])
    ordinary = rng.permutation(np.arange(3, VOCAB))
    return sorted(int(t) for t in ordinary[:N_ITEMS]), sorted(int(t) for t in ordinary[N_ITEMS:])


class TrapBackup(Case):
    name = "trap_backup"
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("a main mover copies the item; a gated backup mover takes over when it is "
                   "ablated, so single-node ablation and patching underestimate the main mover")
    necessity_exempt = {
        "main_mover": "the backup mover compensates when it is ablated alone (the trap); checked "
                      "by 'main alone' and 'main + backup'",
        "backup_mover": "partly silent while the main mover works; checked by 'main + backup'",
    }

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, backup_gate: bool = True) -> Instance:
        """``backup_gate=False`` removes the gate (prediction term and sink): the backup then
        copies at full strength all the time and no longer compensates."""
        self.check_size(size)
        rng = np.random.default_rng([seed, 0])
        items, _ = _token_roles(seed)
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "bos": 1, "item": 1, "pos": N_CTX,
                                 "out": VOCAB, "out2": VOCAB, "junk": 16})
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "item", items)
        model.embed_positions("pos")
        model.unembed("out")
        model.unembed("out2")
        embed_offset(model, DEFAULT_PRIOR * layout.basis("out")[DEFAULT], [END])

        main = (0, int(rng.integers(N_HEADS)))
        backup = (1, int(rng.integers(N_HEADS)))
        tok_items = rows(layout, "tok", items)
        set_qk_terms(model, *main, [constant_term(layout, "one", "item", MOVER_QK)])
        model.set_ov(*main, tok_items, rows(layout, "out", items), gain=MAIN_GAIN)
        terms = [constant_term(layout, "one", "item", BK_ITEM)]
        if backup_gate:
            terms += [prediction_gate_term(layout, "out", "tok", BK_PREDICT, items),
                      constant_term(layout, "one", "bos", BK_SINK)]
        set_qk_terms(model, *backup, terms)
        model.set_ov(*backup, tok_items, rows(layout, "out", items), gain=BACKUP_GAIN)

        # distractors: random attention and junk writes (rank 8), plus a weak copy of the item
        # into "out2" with a seeded consistent effect, half of them negative
        others = [(l, h) for l in range(N_LAYERS) for h in range(N_HEADS) if (l, h) not in (main, backup)]
        signs = rng.permutation([1.0, -1.0] * (len(others) // 2) + [1.0] * (len(others) % 2))
        for (l, h), sign in zip(others, signs):
            model.add_distractor_head(l, h, rng, read_blocks=["tok", "pos", "junk"],
                                      write={"junk": 1.0}, qk_strength=2.0)
            share = rng.uniform(*COPIER_SHARE)
            model.set_qk(l, h, rows(layout, "one"), rows(layout, "item"), MOVER_QK, offset=8)
            model.set_ov(l, h, tok_items, rows(layout, "out2", items), gain=sign * share * SPAN,
                         offset=8)
        model.rotate(rng)
        truth = CIRCUIT.truth({"main_mover": [names.head(*main)], "backup_mover": [names.head(*backup)]})
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one item X at a random place), END; the answer is X,
        the wrong token DEFAULT. Corrupted prompts put another item in X's place."""
        items, fillers = _token_roles(seed)
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, where = [], [], [], []
        for _ in range(n):
            ctx = [int(t) for t in rng.choice(fillers, size=CONTEXT)]
            at = int(rng.integers(0, CONTEXT))
            x, y = (int(t) for t in rng.choice(items, size=2, replace=False))
            cor = list(ctx)
            ctx[at], cor[at] = x, y
            clean.append([BOS, *ctx, END])
            corrupted.append([BOS, *cor, END])
            answer.append(x)
            where.append(at + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.full((n,), DEFAULT),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "X": torch.tensor(where),
                       "END": torch.full((n,), N_CTX - 1)},
            variables={"X": torch.tensor(answer)}, split=split)

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The hydra effect, measured: the main mover alone (zero, mean, resample) loses little,
        both movers together lose most, and the main mover's single loss falls below every
        distractor's."""
        truth = instance.truth
        main = [n for n, r in truth.nodes.items() if r == "main_mover"]
        backup = [n for n, r in truth.nodes.items() if r == "backup_mover"]
        checks = []
        for how in ("zero", "mean"):
            values = node_values(instance.model, prompts, main, how, probe.seed, probe.clean_cache)
            lost = 1.0 - probe.normalized(probe.metric_with(values))
            checks.append(Check(f"main alone ({how})", lost, MAIN_ALONE_MAX_LOSS, "<=",
                                f"behaviour lost when only the main mover is {how}-ablated"))
        lost_main = 1.0 - probe.normalized(probe.metric_without(main))
        checks.append(Check("main alone (resample)", lost_main, MAIN_ALONE_MAX_LOSS, "<=",
                            "behaviour lost when only the main mover is resample-ablated"))
        lost_both = 1.0 - probe.normalized(probe.metric_without(main + backup))
        checks.append(Check("main + backup", lost_both, BOTH_MIN_LOSS, ">=",
                            "behaviour lost when both movers are resample-ablated"))
        others = [n for n in probe.all_nodes if n not in truth.nodes]
        weakest = min(abs(1.0 - probe.normalized(probe.metric_without([n]))) for n in others)
        ratio = abs(lost_main) / weakest if weakest > 1e-9 else float("inf")
        checks.append(Check("main below distractors", ratio, RANK_RATIO_MAX, "<=",
                            f"main mover's single loss ({abs(lost_main):.3f}) / smallest distractor "
                            f"move ({weakest:.3f})"))
        return checks
