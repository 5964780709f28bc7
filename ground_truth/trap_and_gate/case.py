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
from mibench.models.gating import constant_term, embed_flag, rows, set_qk_terms
from mibench.models.norms import embed_offset

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END, CUE1, CUE2, DEFAULT = 0, 1, 2, 3, 4
VOCAB = 40
N_ITEMS = 16
CONTEXT = 12  # units [CUE2 CUE1 X], [CUE1 Y], [CUE2 f Z] and 4 fillers, shuffled
N_CTX = CONTEXT + 2
N_LAYERS, N_HEADS, D_HEAD = 2, 4, 24

# The model has LayerNorm (as the models causal tracing was designed for): Gaussian noise on an
# embedding then shrinks every feature the norm passes on, which is how noise erases a cue.
# Every token embeds tok (1) + one/bos (1) + a flag of size FLAG (CUE1, CUE2 or "plain", so all
# tokens have the same norm) + position (1): |x|² = 12 before the first LayerNorm.
FLAG = 3.0
EMB_SQ = 1.0 + 1.0 + FLAG ** 2 + 1.0
DEFAULT_PRIOR = 3.0  # the END token's own vote for DEFAULT
PREV_QK = 12.0  # detectors: attention score on p − 1 (p − 2) for unit positions
# AND head: score per condition flag AND_QK (clean X carries both: 2·60 = 120), BOS sink AND_SINK
# (100): both flags beat the sink by 20, one flag (a decoy, or one restored condition in a noised
# run, where the other shrinks to ~1/3) falls short by ≥ 15.
AND_QK, AND_SINK = 60.0, 100.0
MOVER_GAIN = 10.0
#: distractor heads read the cue tokens and write DEFAULT's logit: a small consistent effect (this
#: share of the metric when the cues are removed, half of them negative) that resample ablation
#: does not see (every prompt has the same cues) but patching and denoising do; plus junk
READER_SHARE = (0.05, 0.09)
READER_QK = 3.0

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
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("two detector heads set one condition each; an AND head copies the item only "
                   "when both hold: restoring one condition at a time (causal tracing) finds neither")

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, and_gate: bool = True) -> Instance:
        """``and_gate=False`` lowers the AND head's sink so that one condition suffices (an OR):
        then restoring one condition does recover the behaviour."""
        self.check_size(size)
        rng = np.random.default_rng([seed, 0])
        items, _ = _token_roles(seed)
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "bos": 1, "cue1": 1, "cue2": 1,
                                 "plain": 1, "f1": 1, "f2": 1, "pos": N_CTX, "out": VOCAB,
                                 "junk": 16})
        d = layout.d_model
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX, layer_norm=True)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "cue1", [CUE1], scale=FLAG)
        embed_flag(model, "cue2", [CUE2], scale=FLAG)
        embed_flag(model, "plain", [t for t in range(VOCAB) if t not in (CUE1, CUE2)], scale=FLAG)
        model.embed_positions("pos")
        model.unembed("out")
        embed_offset(model, DEFAULT_PRIOR * layout.basis("out")[DEFAULT], [END])
        # LayerNorm gains: a unit direction in a residual of squared norm s reads as sqrt(d / s)
        k0 = np.sqrt(d / EMB_SQ)  # any token before block 0 (and BOS, fillers, cues at block 1)
        k_end = np.sqrt(d / (EMB_SQ + DEFAULT_PRIOR ** 2))  # END
        k_x = np.sqrt(d / (EMB_SQ + 2.0))  # X at block 1 (both unit flags written)

        slots = [(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)]
        l0 = rng.permutation(N_HEADS)
        det1, det2 = (0, int(l0[0])), (0, int(l0[1]))
        gate = (1, int(rng.integers(N_HEADS)))
        pos = layout.basis("pos")
        model.set_qk(*det1, pos[1:N_CTX], pos[:N_CTX - 1], PREV_QK / k0 ** 2)
        model.set_ov(*det1, rows(layout, "cue1"), rows(layout, "f1"), gain=1.0 / (FLAG * k0))
        model.set_qk(*det2, pos[2:N_CTX], pos[:N_CTX - 2], PREV_QK / k0 ** 2)
        model.set_ov(*det2, rows(layout, "cue2"), rows(layout, "f2"), gain=1.0 / (FLAG * k0))
        sink = AND_SINK if and_gate else AND_QK * 0.6
        set_qk_terms(model, *gate, [constant_term(layout, "one", "f1", AND_QK / (k_end * k_x)),
                                    constant_term(layout, "one", "f2", AND_QK / (k_end * k_x)),
                                    constant_term(layout, "one", "bos", sink / (k_end * k0))])
        model.set_ov(*gate, rows(layout, "tok", items), rows(layout, "out", items),
                     gain=MOVER_GAIN / k_x)

        others = [s for s in slots if s not in (det1, det2, gate)]
        signs = rng.permutation([1.0, -1.0] * (len(others) // 2) + [1.0] * (len(others) % 2))
        cue_rows = rows(layout, "cue1") + rows(layout, "cue2")
        for (l, h), sign in zip(others, signs):
            model.add_distractor_head(l, h, rng, read_blocks=["tok", "pos", "junk"],
                                      write={"junk": 0.03}, qk_strength=2.0 / k0 ** 2)
            share = rng.uniform(*READER_SHARE)
            model.set_qk(l, h, rows(layout, "one"), cue_rows, READER_QK / (k_end * k0 * FLAG), offset=8)
            # reads ~FLAG·k0 on a cue; writes −sign·share·MOVER_GAIN on DEFAULT's logit
            model.set_ov(l, h, cue_rows, -sign * share * MOVER_GAIN / (FLAG * k0)
                         * layout.basis("out")[[DEFAULT]], offset=8)
        model.rotate(rng)
        truth = CIRCUIT.truth({"cue1_detector": [names.head(*det1)],
                               "cue2_detector": [names.head(*det2)],
                               "and_mover": [names.head(*gate)]})
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
