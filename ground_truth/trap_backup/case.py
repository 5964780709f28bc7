"""Trap: a backup head that compensates for the main head (see README.md beside this file).
Single-node ablation and patching underestimate the main mover; every other head belongs to a
look-alike main/backup pair with a small, consistent effect on the metric, and those outrank it."""
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

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END, DEFAULT = 0, 1, 2  # DEFAULT is the wrong answer (a constant prior at END)
VOCAB = 48
#: the seed picks which ordinary tokens are items; the rest are fillers
N_ITEMS = 16
CONTEXT = 10
N_CTX = CONTEXT + 2
#: (layers, heads) per size. Every head is a main or a backup mover of one channel (a main/backup
#: pair), so a size needs an even number of heads.
SHAPES = {"small": (2, 4), "medium": (6, 8)}
#: the backup's QK has rank 1 (item flag) + N_ITEMS (gate) + 1 (sink)
D_HEAD = N_ITEMS + 2
DEFAULT_PRIOR = 4.0  # the END token's own vote for DEFAULT

# Every channel's main and backup mover are built by the same recipe, strengths drawn from the same
# ranges (see README.md: the model runs one main/backup pair per two heads; the task reads one).
#: main mover: attention score on the item flag (~all attention on X at either end)
MOVER_QK = (10.0, 14.0)
#: main mover: X's logit (channel 0) or X's coordinate in its channel's block
MAIN_GAIN = (8.0, 12.0)
#: backup: the BOS sink's score
BK_SINK = (9.0, 11.0)
#: backup: X's score above the sink once nothing predicts X (X gets ~73% of its attention) …
BK_OPEN = 1.0
#: … and how far a clean main mover's prediction of X lowers it (~27%). The gate's strength per
#: unit of prediction is BK_SHIFT / (that channel's main gain). Opening from 27% to 73% keeps the
#: gate in its near-linear range, so a main mover that writes the mean item (mean ablation: 1/16
#: of its gain on X) is compensated in proportion, as zero and resample ablation are exactly.
BK_SHIFT = 2.0
#: each distractor channel's block is read into filler tokens' logits at this scale (it changes the
#: model's predictions, not the task's pair) …
AUX_READ = 0.3
#: … and into its item's own logit at a small signed scale chosen so that resample-ablating the
#: channel's backup moves the metric by this share of the circuit's clean span (half the channels
#: positive, half negative): the noise floor, above the main mover's compensated ~0 and below the
#: certificate's strictness bound.
NOISE_SHARE = (0.01, 0.02)

# Certificate extras (generic thresholds are in mibench.certificate.THRESHOLDS).
#: ablating the main mover alone (zero, mean and resample) must lose less than this (normalized)
MAIN_ALONE_MAX_LOSS = 0.2
#: ablating the main and backup movers together must lose at least this
BOTH_MIN_LOSS = 0.8


def _token_roles(seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng([seed, 7])
    ordinary = rng.permutation(np.arange(3, VOCAB))
    return sorted(int(t) for t in ordinary[:N_ITEMS]), sorted(int(t) for t in ordinary[N_ITEMS:])


def _open(score: float, sink: float) -> float:
    """The backup's attention on X at END: X at ``score``, BOS at ``sink``, the CONTEXT other
    tokens (fillers and END itself) at 0."""
    return float(np.exp(score) / (np.exp(score) + np.exp(sink) + CONTEXT))


Slot = tuple[int, int]  # (layer, head)


def pair_heads(n_layers: int, n_heads: int, rng: np.random.Generator) -> list[tuple[Slot, Slot]]:
    """Every head of the model as the main or the backup mover of one channel, the main strictly
    below its backup; the first pair has its main in layer 0 and its backup in layer 1, as
    circuit.yaml states (the build draws the circuit's pair in a deeper model). Layer 0 holds only mains and the top layer only backups; each layer in
    between a random number of backups, each paired with a random main still unpaired below it.
    (``plan_channels`` would leave lone main movers whose copies nothing compensates.)"""
    middle = n_layers - 2
    while True:  # per middle layer, how many of its heads are backups
        n_backups = [int(b) for b in rng.integers(0, n_heads + 1, size=middle)]
        unpaired, ok = n_heads, True
        for b in n_backups:
            ok &= b <= unpaired
            unpaired += n_heads - 2 * b
        if ok and unpaired == n_heads and (middle == 0 or n_backups[0] >= 1):
            break
    n_backups = [0, *n_backups, n_heads]
    pairs: list[tuple[Slot, Slot]] = []
    pool: list[Slot] = []
    for layer, b in enumerate(n_backups):
        heads = [(layer, int(h)) for h in rng.permutation(n_heads)]
        for backup in heads[:b]:
            # channel 0's backup (the first one in layer 1) reads channel 0's main (first in layer 0)
            main = pool.pop(0) if not pairs else pool.pop(int(rng.integers(len(pool))))
            pairs.append((main, backup))
        pool += heads[b:]
    return pairs


class TrapBackup(Case):
    name = "trap_backup"
    version = "2"
    circuit = CIRCUIT
    tier = "trap"
    sizes = tuple(SHAPES)
    failure_mode = "backup heads"
    description = ("a main mover copies the item; a gated backup mover takes over when it is "
                   "ablated, so single-node ablation and patching underestimate the main mover; "
                   "every other head is a look-alike main/backup pair")
    necessity_exempt = {
        "main_mover": "the backup mover compensates when it is ablated alone (the trap); checked "
                      "by 'main alone' and 'main + backup'",
        "backup_mover": "partly silent while the main mover works; checked by 'main + backup'",
    }

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, backup_gate: bool = True) -> Instance:
        """``backup_gate=False`` removes every backup's gate (prediction term and sink): a backup
        then copies at full strength all the time and no longer compensates."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        items, fillers = _token_roles(seed)
        pairs = pair_heads(n_layers, n_heads, rng)
        if n_layers > 2:  # a deeper model: the circuit is any of the pairs, so its layers say nothing
            pairs.insert(0, pairs.pop(int(rng.integers(len(pairs)))))
        blocks = ["out"] + [f"out@{c}" for c in range(1, len(pairs))]
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "bos": 1, "item": 1, "prior": 1,
                                 **{b: N_ITEMS for b in blocks}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "item", items)
        embed_flag(model, "prior", [END], scale=DEFAULT_PRIOR)
        model.unembed("prior", [DEFAULT])
        model.unembed("out", items)

        tok_items = rows(layout, "tok", items)
        span = None  # the circuit's clean logit of X: main gain + backup's clean contribution
        signs = rng.permutation([1.0, -1.0] * (len(pairs) // 2))[: len(pairs) - 1]
        for c, (main, backup) in enumerate(pairs):
            block = blocks[c]
            gain, sink = rng.uniform(*MAIN_GAIN), rng.uniform(*BK_SINK)
            set_qk_terms(model, *main, [constant_term(layout, "one", "item", rng.uniform(*MOVER_QK))])
            model.set_ov(*main, tok_items, rows(layout, block), gain=gain)
            terms = [constant_term(layout, "one", "item", sink + BK_OPEN)]
            if backup_gate:
                terms += [prediction_gate_term(layout, block, "tok", BK_SHIFT / gain, items,
                                               predicted_indices=list(range(N_ITEMS))),
                          constant_term(layout, "one", "bos", sink)]
            set_qk_terms(model, *backup, terms)
            # the gain whose extra attention, once the main's prediction is gone, replaces the main
            opened = _open(sink + BK_OPEN, sink) - _open(sink + BK_OPEN - BK_SHIFT, sink)
            backup_gain = gain / opened
            model.set_ov(*backup, tok_items, rows(layout, block), gain=backup_gain)
            clean_backup = _open(sink + BK_OPEN - BK_SHIFT, sink) * backup_gain
            if c == 0:
                span = gain + clean_backup
                continue
            model.unembed(block, [int(t) for t in rng.permutation(fillers)[:N_ITEMS]], scale=AUX_READ)
            model.unembed(block, items, scale=signs[c - 1] * rng.uniform(*NOISE_SHARE) * span / clean_backup)
        model.rotate(rng)
        (main, backup) = pairs[0]
        truth = CIRCUIT.truth({"main_mover": [names.head(*main)], "backup_mover": [names.head(*backup)]},
                              layer_map={0: main[0], 1: backup[0]}, n_layers=n_layers)
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
        both movers together lose most, and single-node resample ablation ranks the main mover
        out of the top k (k = the number of truth nodes)."""
        truth = instance.truth
        main = [n for n, r in truth.nodes.items() if r == "main_mover"]
        backup = [n for n, r in truth.nodes.items() if r == "backup_mover"]
        checks = []
        for how in ("zero", "mean"):
            values = node_values(instance.model, prompts, main, how, probe.seed, probe.clean_cache)
            lost = 1.0 - probe.normalized(probe.metric_with(values))
            checks.append(Check(f"main alone ({how})", lost, MAIN_ALONE_MAX_LOSS, "<=",
                                f"behaviour lost when only the main mover is {how}-ablated"))
        single = probe.single_removals(probe.all_nodes)
        moves = {n: abs(1.0 - probe.normalized(m)) for n, m in single.items()}
        checks.append(Check("main alone (resample)", moves[main[0]], MAIN_ALONE_MAX_LOSS, "<=",
                            "behaviour lost when only the main mover is resample-ablated"))
        lost_both = 1.0 - probe.normalized(probe.metric_without(main + backup))
        checks.append(Check("main + backup", lost_both, BOTH_MIN_LOSS, ">=",
                            "behaviour lost when both movers are resample-ablated"))
        above = sum(moves[n] > moves[main[0]] for n in moves if n != main[0])
        checks.append(Check("main out of the top k", above, len(truth.nodes), ">=",
                            f"nodes whose single resample ablation moves the behaviour more than "
                            f"the main mover's ({moves[main[0]]:.3f}); the top {len(truth.nodes)} "
                            f"then misses it"))
        return checks
