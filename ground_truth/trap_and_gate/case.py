"""Trap: an AND gate (see README.md beside this file). A head attends to the item only when two
upstream conditions both hold; denoising that restores one condition at a time (causal tracing)
misses both condition heads, noising (activation patching, ablation) finds them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import plan_channels, random_layer_map, shuffled_readout
from mibench.models.gating import QKTerm, rows, set_qk_terms
from mibench.models.norms import embed_offset
from mibench.models.planted import random_orthogonal

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END, CUE1, CUE2, DEFAULT = 0, 1, 2, 3, 4
VOCAB = 40
N_ITEMS = 16
CONTEXT = 12  # units [CUE2 CUE1 X], [CUE1 Y], [CUE2 f Z] and 4 fillers, shuffled
N_CTX = CONTEXT + 2
D_HEAD = 24
#: (n_layers, n_heads) per size
SHAPES = {"small": (2, 4), "medium": (6, 8)}
#: each detector's offset and the cue flag it copies: a cue1 detector looks one position back for
#: CUE1, a cue2 detector two back for CUE2
OFFSET = {"cue1_detector": 1, "cue2_detector": 2}
CUE_FLAG = {"cue1_detector": 0, "cue2_detector": 1}  # rows of the "flag" block: cue1, cue2, plain, bos

# The model has LayerNorm (as the models causal tracing was designed for): Gaussian noise on an
# embedding then shrinks every feature the norm passes on, which is how noise erases a cue.
# Every token embeds tok (1) + a flag of size FLAG (CUE1, CUE2, BOS or "plain", so all tokens have
# the same norm) + its position (1), and a balance of −(FLAG + 2) spread over BALANCE directions of
# its own (spread, so that it adds little to the norm and to the noise), so that its coordinates
# sum to zero; every head's write sums to zero too. The residual then never has a component along
# the all-ones direction (which the random rotation keeps in place), LayerNorm's mean subtraction
# changes nothing, and every read is exact (a one-hot read would otherwise pick up minus the
# residual's mean). The embedding dominates the norm and
# every head writes well below it, so the residual's norm grows little with depth: the weights that
# read through a LayerNorm (which divides by that norm) are then about as large in the deep
# look-alikes as in the circuit's layers 0–1. The AND heads' sink reads BOS's flag, so a noised
# position (noise ~1/3 of FLAG per direction) never looks like BOS.
FLAG = 8.0
BALANCE = 10
EMB_SQ = 1.0 + FLAG ** 2 + 1.0 + (FLAG + 2.0) ** 2 / BALANCE

# The model runs several copies ("channels") of the AND circuit at once (README.md, "Distractors"):
# every channel's detectors copy the same cues into their own flags, and its AND head copies X into
# its own block, read by the unembedding through a shuffle of the vocabulary; only channel 0's writes
# the task's logits. Every role is built by the same recipe with strengths from the same ranges.
#: detectors: attention score on p − offset
PREV_QK_RANGE = (10.0, 14.0)
#: detectors: size of the flag they write at every position, "cue" or "no cue" (each with a balance
#: of the same size, so that it sums to zero)
COPY_RANGE = (0.25, 0.35)
#: AND head: score per condition flag; both flags beat the BOS sink, one does not: the sink is
#: SINK_SHARE_RANGE × the per-flag score (1.65–1.8: both flags beat it by ≥ 20 % of a flag, ~11,
#: so the open gate is saturated; one flag, or one restored condition beside a noised one (~1/3,
#: rarely 1/2), falls short by ≥ 15 %)
AND_QK_RANGE = (55.0, 65.0)
SINK_SHARE_RANGE = (1.65, 1.8)
#: AND head: a cue token itself is never the item: score −CUE_AVOID × the per-flag score on it. A
#: noised cue keeps ~1/3 of it, which outweighs the flags the noise fakes there (its noise along
#: the flag directions is comparable to a flag)
CUE_AVOID = 20.0
#: AND head: size of its write, at every position: the item it copies at END, elsewhere (and at END
#: when its gate is shut) its resting vector
MOVER_RANGE = (0.4, 0.6)
#: the task's readout: the circuit's AND head's write, of size MOVER_MID, reads as MOVER_LOGIT
MOVER_MID, MOVER_LOGIT = 0.5, 10.0
#: the END token's own vote for DEFAULT, as a share of the answer's logit
DEFAULT_SHARE = 0.3
#: how strongly the unembedding reads the other channels' writes, relative to the task's readout
AUX_READ = 0.1
#: a look-alike AND head writes this share of its item copy (signed, half of them negative) where
#: the task's readout reads it: ±1.2–2.6 % of the answer's logit, a small consistent effect on the
#: metric whenever its gate opens (as IOI's weak name movers and negative movers have)
ECHO_RANGE = (0.015, 0.022)

# Certificate extras.
#: the AND head's attention on X (clean) must be at least this ...
GATE_OPEN_MIN = 0.9
#: ... and at most this when one condition is removed (the other head ablated by zero / patched
#: from the corrupted run) or on the one-condition decoys
GATE_ONE_MAX = 0.1
#: denoising one condition in a noised run (causal tracing's restoration) must recover at most
#: this share of the metric, while restoring the AND head recovers at least DENOISE_HEAD_MIN
DENOISE_ONE_MAX = 0.1
DENOISE_HEAD_MIN = 0.8
#: noising one condition (patching its head from the corrupted run) must lose at least this
NOISE_ONE_MIN = 0.8


def _token_roles(seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng([seed, 7])
    ordinary = rng.permutation(np.arange(5, VOCAB))
    return sorted(int(t) for t in ordinary[:N_ITEMS]), sorted(int(t) for t in ordinary[N_ITEMS:])


class TrapAndGate(Case):
    name = "trap_and_gate"
    version = "2"
    circuit = CIRCUIT
    tier = "trap"
    sizes = tuple(SHAPES)
    failure_mode = "AND-gates"
    description = ("two detector heads set one condition each; an AND head copies the item only "
                   "when both hold: restoring one condition at a time (causal tracing) finds neither; "
                   "every other head belongs to a look-alike AND channel")

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, and_gate: bool = True) -> Instance:
        """``and_gate=False`` lowers every AND head's sink so that one condition suffices (an OR):
        then restoring one condition does recover the behaviour."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        items, _ = _token_roles(seed)
        # the circuit's layers are drawn (in order) so that its depth gives nothing away
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        channels = plan_channels(CIRCUIT, n_layers, n_heads, rng, layer_map=layer_map)
        while not any("and_mover" in ch.slots for ch in channels[1:]):
            # every role needs a look-alike (a role of its own kind would stand out); the small
            # model's planner sometimes fills its spare heads with detectors only
            channels = plan_channels(CIRCUIT, n_layers, n_heads, rng, layer_map=layer_map)
        # "bal": the embeddings' balance (see FLAG). Each detector writes a block of "cue", "no
        # cue" and its balance; each AND head an item block (the circuit's: the task's logits,
        # "out") and a block of its resting vector and its balance.
        blocks = {"tok": VOCAB, "flag": 4, "pos": N_CTX, "bal": BALANCE, "out": VOCAB}
        for ch in channels:
            for role in ch.slots:
                if role in OFFSET:
                    blocks[ch.block(role)] = 3
                else:
                    blocks[ch.block("rest")] = 2
                    if not ch.is_circuit:
                        blocks[ch.block(role)] = N_ITEMS
        layout = ResidualLayout(blocks)
        d = layout.d_model
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX, layer_norm=True)
        flag = layout.basis("flag")  # rows: cue1, cue2, plain, bos
        model.embed_tokens("tok")
        for row, tokens in enumerate([[CUE1], [CUE2], [t for t in range(VOCAB) if t not in (CUE1, CUE2, BOS)], [BOS]]):
            embed_offset(model, FLAG * flag[row], tokens)
        model.embed_positions("pos")
        embed_offset(model, -(FLAG + 2.0) / BALANCE * layout.basis("bal").sum(0))  # tok + flag + position

        # Every head writes a vector of the same size at every position (a detector its flag for
        # "cue" or "no cue", an AND head the item or its resting vector), so the squared norm each
        # LayerNorm divides by is the same everywhere (END also carries its vote for DEFAULT) and
        # does not change when a head is ablated: a look-alike head moves the task only through
        # what the unembedding reads of it. It is tracked as the heads are written.
        default_vote = DEFAULT_SHARE * MOVER_MID
        # END's vote, balanced like the rest of its embedding: what it adds to END's squared norm
        end_sq = default_vote ** 2 + ((FLAG + 2 + default_vote) ** 2 - (FLAG + 2) ** 2) / BALANCE
        sq = EMB_SQ

        def scale(extra: float = 0.0) -> float:  # a unit feature reads as this after the norm
            return float(np.sqrt(d / (sq + extra)))

        by_layer = {layer: [] for layer in range(n_layers)}
        for ch in channels:
            for role, (layer, head) in ch.slots.items():
                by_layer[layer].append((head, ch, role))
        copies: dict[tuple[int, str], float] = {}  # each detector's flag size, which its AND head reads
        # the look-alike AND heads echo X into the task's logits, half of them positively
        n_echo = sum("and_mover" in ch.slots for ch in channels[1:])
        signs = iter(rng.permutation([1.0, -1.0] * (n_echo // 2) + [1.0] * (n_echo % 2)))
        pos = layout.basis("pos")
        for layer in range(n_layers):
            written = 0.0  # squared size of this layer's writes, seen from the next layer on
            k, k_end = scale(), scale(end_sq)
            for head, ch, role in by_layer[layer]:
                if role in OFFSET:
                    o = OFFSET[role]
                    model.set_qk(layer, head, pos[o:], pos[:N_CTX - o], rng.uniform(*PREV_QK_RANGE) / k ** 2)
                    # copies whether the token one (two) back carries its cue: that cue's flag into
                    # its block's first direction, any other flag into the second
                    copy = rng.uniform(*COPY_RANGE)
                    cue = CUE_FLAG[role]
                    read = np.stack([flag[cue], flag[[i for i in range(4) if i != cue]].sum(0)])
                    block = layout.basis(ch.block(role))  # "cue", "no cue", balance
                    model.set_ov(layer, head, read, block[:2] - block[2], gain=copy / (FLAG * k))
                    copies[(ch.index, role)] = copy
                    written += 2 * copy ** 2
                else:
                    a = rng.uniform(*AND_QK_RANGE)
                    sink = a * (rng.uniform(*SINK_SHARE_RANGE) if and_gate else 0.6)
                    rest = rng.uniform(*PREV_QK_RANGE)
                    end = layout.basis("tok")[[END]]
                    # at END: a per cue flag its channel's detectors wrote and −CUE_AVOID·a on a cue
                    # token itself, against the sink on BOS; from every other token: BOS, as
                    # sharply as a detector attends to its position (``rest``)
                    set_qk_terms(model, layer, head, [
                        *(QKTerm(end, layout.basis(ch.block(r))[[0]], a / (k_end * k * copies[(ch.index, r)]))
                          for r in OFFSET),
                        QKTerm(end, flag[[3]], (sink - rest * k_end / k) / (k_end * k * FLAG)),
                        QKTerm(end[[0, 0]], flag[:2], -CUE_AVOID * a / (k_end * k * FLAG)),
                        QKTerm(flag[:3].sum(0, keepdims=True), flag[[3]], rest / (k ** 2 * FLAG ** 2))])
                    # copies the item it attends to (BOS: its resting vector): the circuit's into the
                    # task's logits, every other one into its own block through a random rotation,
                    # so that each item moves many tokens' logits a little once read below
                    move = rng.uniform(*MOVER_RANGE)
                    target = rows(layout, "out", items)
                    if not ch.is_circuit:
                        share = next(signs) * rng.uniform(*ECHO_RANGE)
                        # (the rotation keeps the all-ones direction: every item's copy has the same sum)
                        target = share * target + np.sqrt(1 - share ** 2) * \
                            random_orthogonal(N_ITEMS, rng, keep_ones=True) @ layout.basis(ch.block(role))
                    # each item's copy minus the items' mean: writes of equal size that sum to zero
                    # (see FLAG); once read, one item up and all items down by 1/N_ITEMS of that. The
                    # resting vector, as large and also summing to zero, is not read.
                    target = target - target.mean(0)
                    rest_block = layout.basis(ch.block("rest"))
                    resting = np.linalg.norm(target[0]) * (rest_block[0] - rest_block[1]) / np.sqrt(2)
                    model.set_ov(layer, head, rows(layout, "tok", items + [BOS]), np.vstack([target, resting]),
                                 gain=move / k)
                    written += (1 - 1 / N_ITEMS) * move ** 2
            sq += written

        # readouts: the task's logits read "out" (and END's vote for DEFAULT); every other
        # channel's sinks (its AND head's items, or a partial channel's detector flags) are read
        # through a shuffle of the vocabulary at AUX_READ of that scale; resting vectors are not read
        out_scale = MOVER_LOGIT / (MOVER_MID * scale(end_sq))
        model.unembed("out", scale=out_scale)
        embed_offset(model, default_vote * (layout.basis("out")[DEFAULT] - layout.basis("bal").sum(0) / BALANCE), [END])
        for ch in channels[1:]:
            for role in ch.sinks(CIRCUIT):
                shuffled_readout(model, ch.block(role), rng, AUX_READ * out_scale)
        model.rotate(rng)
        truth = CIRCUIT.truth({role: [names.head(*slot)] for role, slot in channels[0].slots.items()},
                              layer_map=layer_map, n_layers=n_layers)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, the units [CUE2 CUE1 X], [CUE1 Y], [CUE2 f Z] and 4 fillers in random order, END.
        X has both conditions, the decoys Y and Z one each. The answer is X, the wrong token
        DEFAULT. Corrupted prompts replace every cue by a filler (both conditions broken).
        Position labels mark the cues (X's and the decoys'); the items are not labelled, so
        methods that perturb "the informative positions" perturb the conditions, not X itself
        (X's position is fixed by its cues: CUE1 + 1)."""
        items, fillers = _token_roles(seed)
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer = [], [], []
        labels = {k: [] for k in ("BOS", "CUE2", "CUE1", "DCUE1", "DCUE2", "END")}
        for _ in range(n):
            x, y, z = (int(t) for t in rng.choice(items, size=3, replace=False))
            f = lambda: int(rng.choice(fillers))  # noqa: E731
            units = [["A", [CUE2, CUE1, x]], ["B", [CUE1, y]], ["C", [CUE2, f(), z]]] + \
                    [["f", [f()]] for _ in range(4)]
            order = rng.permutation(len(units))
            seq, at = [BOS], {}
            for i in order:
                at[units[i][0]] = len(seq)
                seq += units[i][1]
            seq.append(END)
            cor = [f() if t in (CUE1, CUE2) else t for t in seq]
            clean.append(seq)
            corrupted.append(cor)
            answer.append(x)
            for k, v in (("BOS", 0), ("CUE2", at["A"]), ("CUE1", at["A"] + 1),
                         ("DCUE1", at["B"]), ("DCUE2", at["C"]), ("END", N_CTX - 1)):
                labels[k].append(v)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.full((n,), DEFAULT),
            positions={k: torch.tensor(v) for k, v in labels.items()},
            variables={"X": torch.tensor(answer)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The gate, measured: the AND head attends to X only with both conditions; noising one
        condition (patching from the corrupted run) loses the behaviour; restoring one condition
        into a run whose cues are noised (as causal tracing does) recovers almost nothing."""
        from mibench.model.ablation import attention_patterns, cache_nodes, run_with_values
        from mibench.model.noising import embedding_noise, key_positions, noised

        model, truth = instance.model, instance.truth
        det = sorted(n for n, r in truth.nodes.items() if r.endswith("detector"))
        gate = next(n for n, r in truth.nodes.items() if r == "and_mover")
        idx = torch.arange(len(prompts))
        g = names.parse_node(gate)
        x_at = prompts.positions["CUE1"] + 1

        def attention_on_x(values=None) -> float:
            pattern = attention_patterns(model, prompts.clean, [g.layer], values)[g.layer]
            return float(pattern[idx, g.index, -1, x_at].mean())

        checks = [Check("gate open (clean)", attention_on_x(), GATE_OPEN_MIN, ">=",
                        "AND head's attention on X at END, clean prompts")]
        zeros = {n: torch.zeros_like(probe.clean_cache[n]) for n in det}
        for n in det:
            checks.append(Check(f"gate shut without {n}", attention_on_x({n: zeros[n]}),
                                GATE_ONE_MAX, "<=", "attention on X with that condition zeroed"))
        _, corrupted = cache_nodes(model, prompts.corrupted, det + [gate])
        for n in det:
            lost = 1.0 - probe.normalized(probe.metric_with({n: corrupted[n]}))
            checks.append(Check(f"noising {n}", lost, NOISE_ONE_MIN, ">=",
                                "behaviour lost when it is patched from the corrupted run"))
        # denoising, as causal tracing does it: noise the cue embeddings, restore one node
        labels = ["CUE2", "CUE1", "DCUE1", "DCUE2"]
        noise = embedding_noise(model, prompts, key_positions(prompts, labels), 3.0, probe.seed)
        with noised(model, noise), torch.no_grad():
            base = float(probe.metric(model(prompts.clean)))
            span = probe.full - base
            for n in det + [gate]:
                m = float(probe.metric(run_with_values(model, prompts.clean, {n: probe.clean_cache[n]})))
                rec = (m - base) / span
                if n == gate:
                    checks.append(Check(f"denoising {n}", rec, DENOISE_HEAD_MIN, ">=",
                                        "share recovered restoring the AND head into a noised run"))
                else:
                    checks.append(Check(f"denoising {n}", rec, DENOISE_ONE_MAX, "<=",
                                        "share recovered restoring one condition into a noised run"))
        return checks
