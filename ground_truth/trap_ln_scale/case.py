"""Trap: a head whose whole effect runs through the final LayerNorm's scale (see README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import ablation_effects
from mibench.model.readout import direct_effects, metric_gradient
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.gating import QKTerm, embed_flag, set_qk_terms
from mibench.models.norms import calibrate_head_gain, embed_offset, offset_vector

BOS, END = 0, 1
VOCAB = 32
N_KEYS = 8  # candidate answers; the clean prompt holds one of them (flagged in its embedding)
CONTEXT = 8  # tokens between BOS and END
N_LAYERS, N_HEADS, D_HEAD = 3, 4, 16
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Planted strengths (post-LayerNorm units: a residual of a few unit directions is rescaled to norm
# sqrt(d_model) ~ 9, so scores of ~0.25 per unit pair give attention logits of ~12).
BULK = 40.0  # norm of the END token's constant offset, orthogonal to the unembedding
KEY_QK, SINK_QK = 0.25, 0.1
ANSWER_GAIN = 0.75  # the mover's OV gain: ~4 units of the answer direction at END
CANCEL = 1.0  # share of the bulk the scale head cancels on clean prompts (calibrated on prompts)
DISTRACTOR_WRITE = {"junk": 0.1, "out": 0.02}

# Thresholds of the trap's own checks.
#: |frozen-scale direct effect of the scale head| / |that of the answer mover|
FROZEN_DIRECT_SHARE_MAX = 0.02
#: share of the clean logit difference lost when the scale head is patched from the corrupted run
TOTAL_EFFECT_MIN = 0.5


class TrapLNScale(Case):
    name = "trap_ln_scale"
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("a head cancels a large constant offset orthogonal to the unembedding: its whole "
                   "effect runs through the final LayerNorm's scale, invisible to frozen-scale DLA")
    necessity_exempt = {
        "scale_head": "its clean output is the same on every clean prompt (it cancels a constant "
                      "offset whenever a key is present), so resampling it from another clean prompt "
                      "changes nothing; its total effect is measured by corrupted patching in the "
                      "'scale head total effect' check instead",
    }

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int) -> tuple[PlantedModel, dict[str, list[str]]]:
        """The planted weights (rotated, before export) and where each role sits. Tests edit the
        returned weights to remove the mechanism."""
        rng = np.random.default_rng([seed, 0])
        keys = self._token_roles(seed)["key"]
        n_ctx = CONTEXT + 2
        layout = ResidualLayout({"tok": VOCAB, "flag": 1, "bulk": 1, "out": VOCAB, "pos": n_ctx,
                                 "junk": 8})
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=n_ctx, layer_norm=True)
        model.embed_tokens("tok")
        embed_flag(model, "flag", keys)  # one shared "is a key" direction
        embed_offset(model, offset_vector(model, {"bulk": BULK}), [END])
        model.embed_positions("pos")
        model.unembed("out")

        mover = int(rng.integers(0, N_HEADS))
        scaler = int(rng.integers(0, N_HEADS))
        tok, out = layout.basis("tok"), layout.basis("out")
        bulk, flag = layout.basis("bulk"), layout.basis("flag")
        for layer, head in ((0, mover), (1, scaler)):
            set_qk_terms(model, layer, head, [QKTerm(bulk, flag, KEY_QK),
                                              QKTerm(bulk, tok[[BOS]], SINK_QK)])
        model.set_ov(0, mover, tok[keys], out[keys], ANSWER_GAIN, offset=2)
        model.set_ov(1, scaler, flag, -bulk, offset=2)

        for layer in range(N_LAYERS):
            for h in range(N_HEADS):
                if (layer, h) not in ((0, mover), (1, scaler)):
                    model.add_distractor_head(layer, h, rng, read_blocks=["tok", "pos", "junk"],
                                              write=DISTRACTOR_WRITE)
        # the scale head cancels CANCEL of the bulk on average over clean prompts
        calib = self.prompts(32, seed, "train").clean
        calibrate_head_gain(model, 1, scaler, calib, None, layout.direction("bulk", 0), -CANCEL * BULK)
        model.rotate(rng)
        return model, {"answer_mover": [names.head(0, mover)], "scale_head": [names.head(1, scaler)]}

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        model, placement = self.planted(seed)
        return Instance(model=model.to_bridge(), truth=CIRCUIT.truth(placement), seed=seed, size=size)

    @staticmethod
    def _token_roles(seed: int) -> dict:
        rng = np.random.default_rng([seed, 2])
        toks = rng.permutation(np.arange(2, VOCAB)).tolist()
        return {"key": toks[:N_KEYS], "filler": toks[N_KEYS:]}

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one key at a random place), END. Answer: the key;
        wrong: another key. Corrupted prompts put an unused filler where the key was, so neither
        the mover nor the scale head finds anything to attend to."""
        roles = self._token_roles(seed)
        keys, fillers = roles["key"], np.array(roles["filler"])
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, wrong, where = [], [], [], [], []
        for _ in range(n):
            ctx = rng.permutation(fillers)[:CONTEXT + 1]
            i, j = rng.choice(N_KEYS, size=2, replace=False)
            at = int(rng.integers(0, CONTEXT))
            c, x = ctx[:CONTEXT].copy(), ctx[:CONTEXT].copy()
            c[at], x[at] = keys[i], ctx[CONTEXT]
            clean.append([BOS, *c, END])
            corrupted.append([BOS, *x, END])
            answer.append(keys[i])
            wrong.append(keys[j])
            where.append(at + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "KEY": torch.tensor(where),
                       "END": torch.full((n,), CONTEXT + 1)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def frozen_direct_effects(self, model, prompts: PromptSet, nodes: list[str]) -> dict[str, float]:
        """Each node's direct effect on the mean metric through the final LayerNorm with the clean
        scale frozen and the unembedding (what DLA measures)."""
        metric = self.task_metric(prompts)
        return direct_effects(model, prompts.clean, lambda logits: metric_gradient(metric, logits), nodes)

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The mechanism: the scale head's frozen-scale direct effect is ~0 next to the mover's, while
        patching it from the corrupted run removes most of the logit difference."""
        model, truth = instance.model, instance.truth
        (mover,) = [n for n, r in truth.nodes.items() if r == "answer_mover"]
        (scaler,) = [n for n, r in truth.nodes.items() if r == "scale_head"]
        direct = self.frozen_direct_effects(model, prompts, [mover, scaler])
        share = abs(direct[scaler]) / max(abs(direct[mover]), 1e-9)
        effect = ablation_effects(model, prompts, [scaler], "corrupted", probe.metric)[scaler]
        total = effect / max(probe.full, 1e-9)
        return [
            Check("scale head frozen-scale direct effect", share, FROZEN_DIRECT_SHARE_MAX, "<=",
                  f"|DLA({scaler})| / |DLA({mover})| with the final LayerNorm's clean scale frozen "
                  f"({direct[scaler]:.3g} vs {direct[mover]:.3g})"),
            Check("scale head total effect", total, TOTAL_EFFECT_MIN, ">=",
                  f"share of the clean logit difference lost when {scaler} is patched from the "
                  f"corrupted run"),
        ]
