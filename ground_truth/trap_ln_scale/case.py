"""Trap: a head whose whole effect runs through the final LayerNorm's scale, among look-alike
channels that do the same at other positions (see README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, Truth, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import ablation_effects
from mibench.model.readout import direct_effects, metric_gradient
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import (QueryHead, random_layer_map, readout_blocks,
                                     shuffled_readout)
from mibench.models.gating import QKTerm, embed_flag, set_qk_terms
from mibench.models.norms import embed_offset, ln_coordinate

BOS, END = 0, 1
#: marker tokens M1 … M24 sit between the context and END, in this order, in every prompt: the
#: query positions of the look-alike channels (END is the circuit's)
N_MARKERS = 24
MARKERS = list(range(2, 2 + N_MARKERS))
N_KEYS = 8  # candidate answers; the clean prompt holds one of them (flagged in its embedding)
N_FILLERS = 14
VOCAB = 2 + N_MARKERS + N_KEYS + N_FILLERS
CONTEXT = 8  # tokens between BOS and the markers
N_CTX = 1 + CONTEXT + N_MARKERS + 1
D_HEAD = 8
#: layers × heads per size
SHAPES = {"small": (3, 4), "medium": (6, 8)}
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Every head is one of two recipes, whichever channel it belongs to, with strengths drawn from the
# same ranges (see README.md, "Distractors"). Scores and writes are stated in post-LayerNorm terms
# and converted into weights from the model's width, so they mean the same at every size.
#: the constant offset ("bulk") each query token (END, every marker) carries, orthogonal to the
#: unembedding; BOS carries one too (see planted)
BULK_RANGE = (36.0, 44.0)
#: attention score on the key from the head's own query position …
KEY_SCORE_RANGE = (28.0, 36.0)
#: … and on BOS from every position (the sink; its query reads the shared `const` direction, so
#: it is weakest where a bulk dominates the residual: this is its score there)
SINK_SCORE_RANGE = (18.0, 22.0)
#: a mover's write: this many residual units of the key's identity
MOVE_RANGE = (3.0, 5.0)
#: how strongly the unembedding reads a look-alike mover's copy (each block into its own shuffle
#: of the vocabulary): it moves other tokens' logits, and the task's metric only when the shuffle
#: sends a key onto the answer or the wrong key (noise floor 0.002–0.025 on seeds 0–4)
AUX_READ = 0.1
#: share of the non-circuit heads that are scale look-alikes. The circuit is half scale heads, so
#: norms and ranks are balanced near a half; but a scale look-alike writes nothing at END, so its
#: DLA is exactly zero like the circuit's scale head, and the more of them, the closer DLA's
#: ranking looks to right by accident. 0.35 keeps every audit statistic within 0.35–0.65 and
#: DLA's AUROC at 0.50–0.70 (seeds 0–4)
SCALE_SHARE = 0.35
#: look-alike movers that query END (besides the circuit's): their writes reach the task's logits
#: only through their shuffles, a small noise floor
N_END_MOVERS = 2

# Thresholds of the trap's own checks.
#: |frozen-scale direct effect of the scale head| / |that of the answer mover|
FROZEN_DIRECT_SHARE_MAX = 0.02
#: share of the clean logit difference lost when the scale head is patched from the corrupted run
TOTAL_EFFECT_MIN = 0.5


def plan(n_layers: int, n_heads: int, layer_map: dict[int, int],
         rng: np.random.Generator) -> list[QueryHead]:
    """Every head's recipe and query position. The circuit: a mover and a scale head, both at END,
    in the layers ``layer_map`` gives circuit.yaml's 0 and 1. The other heads: movers in L0, and
    above it scale heads (SCALE_SHARE of the non-circuit heads) and movers. N_END_MOVERS look-alike
    movers query END, no later than the circuit's scale head. Each scale
    look-alike gets a marker of its own, whose bulk it cancels, and a mover at the same layer or
    below that queries the same marker (the prediction it sharpens); a head that queries a bulk must
    run before the bulk is cancelled. The remaining movers join a random position they can still
    read, or a marker of their own whose bulk stays."""
    slots = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    mover0, scale0 = (layer_map[0], int(rng.integers(n_heads))), (layer_map[1], int(rng.integers(n_heads)))
    others = [s for s in slots if s not in (mover0, scale0)]
    upper = [s for s in others if s[0] >= 1]
    n_scale = min(int(SCALE_SHARE * len(others)), N_MARKERS, len(upper))
    scales = sorted(upper[i] for i in rng.choice(len(upper), size=n_scale, replace=False))
    order = [s for s in rng.permutation(len(others)).tolist() for s in [others[s]] if s not in scales]
    markers = [int(m) for m in rng.permutation(MARKERS)]
    heads = [QueryHead(*mover0, "mover", END), QueryHead(*scale0, "scale", END)]

    def take(top: int) -> tuple[int, int] | None:
        """A mover not yet placed whose layer is at most ``top``."""
        slot = next((s for s in order if s[0] <= top), None)
        if slot is not None:
            order.remove(slot)
        return slot

    for _ in range(N_END_MOVERS):
        slot = take(scale0[0])
        if slot is not None:
            heads.append(QueryHead(*slot, "mover", END))
    readable = {END: scale0[0]}  # query position -> the last layer that still sees its bulk
    for slot in scales:
        partner = take(slot[0])
        if partner is None:  # nothing left to sharpen at this layer: the head is a mover instead
            order.append(slot)
            continue
        marker = markers.pop()
        readable[marker] = slot[0]
        heads += [QueryHead(*slot, "scale", marker), QueryHead(*partner, "mover", marker)]
    for slot in order:
        fits = [q for q, top in readable.items() if slot[0] <= top]
        if markers and (not fits or rng.random() < 0.3):
            fits = [markers.pop()]
            readable[fits[0]] = n_layers
        heads.append(QueryHead(*slot, "mover", int(fits[int(rng.integers(len(fits)))])))
    return readout_blocks(heads)


class TrapLNScale(Case):
    name = "trap_ln_scale"
    version = "2"
    circuit = CIRCUIT
    tier = "trap"
    sizes = ("small", "medium")
    failure_mode = "effects through LayerNorm's scale"
    description = ("a head cancels a large constant offset orthogonal to the unembedding: its whole "
                   "effect runs through the final LayerNorm's scale, invisible to frozen-scale DLA; "
                   "every other head is a look-alike mover or scale head at another query position")
    necessity_exempt = {
        "scale_head": "its clean output is the same on every clean prompt (it cancels a constant "
                      "offset whenever a key is present), so resampling it from another clean prompt "
                      "changes nothing; its total effect is measured by corrupted patching in the "
                      "'scale head total effect' check instead",
    }

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, size: str = DEFAULT_SIZE) -> tuple[PlantedModel, Truth]:
        """The planted weights (rotated, before export) and the truth. Tests edit the returned
        weights to remove the mechanism. The circuit's layers are drawn (in order), so that their
        depth gives nothing away; the truth's answer layer moves with them."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        keys = self._token_roles(seed)["key"]
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        heads = plan(n_layers, n_heads, layer_map, rng)
        queries = [END, *MARKERS]
        carriers = [BOS, *queries]  # tokens with a bulk of their own
        readouts = sorted({h.readout for h in heads if h.recipe == "mover"} - {"out"})
        layout = ResidualLayout({"tok": VOCAB, "const": 1, "flag": 1, "bulk": 2 * len(carriers),
                                 "out": VOCAB, "pos": N_CTX,
                                 **{block: N_KEYS for block in readouts}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX, layer_norm=True)
        model.embed_tokens("tok")
        embed_flag(model, "const", list(range(VOCAB)))
        embed_flag(model, "flag", keys)  # one shared "is a key" direction
        # each bulk is a difference of two coordinates: orthogonal to the all-ones direction, so the
        # LayerNorm's mean subtraction leaves it unchanged and it has no part along any logit
        pairs = layout.basis("bulk").reshape(len(carriers), 2, -1)
        bulk = {t: (pairs[i, 0] - pairs[i, 1]) / np.sqrt(2) for i, t in enumerate(carriers)}
        # each query token carries its own constant offset; so does BOS, where every head rests
        # (the "massive activation" of an attention sink): the heads' small writes while resting
        # there barely change its LayerNorm, so a head's rest write is the same at every depth
        size_of = {t: rng.uniform(*BULK_RANGE) for t in carriers}
        for t in carriers:
            embed_offset(model, size_of[t] * bulk[t], [t])
        model.embed_positions("pos")
        model.unembed("out")
        for block in readouts:
            shuffled_readout(model, block, rng, AUX_READ)

        # what each head sees through its LayerNorm, from the embeddings written above (no head
        # writes at a key or at BOS, and a query position's bulk dominates it until its scale head
        # cancels it)
        b = layout.basis

        def embedding(token: int, position: int) -> np.ndarray:
            x = b("tok")[token] + b("const")[0] + b("pos")[position]
            return x + (b("flag")[0] if token in keys else 0) + size_of.get(token, 0) * bulk.get(token, 0)

        key_x, bos_x = embedding(keys[0], 1), embedding(BOS, 0)
        flag_at_key = ln_coordinate(key_x, b("flag")[0])
        tok_at_key = ln_coordinate(key_x, b("tok")[keys[0]])
        bos_at_bos = ln_coordinate(bos_x, bulk[BOS])
        for head in heads:
            q_x = embedding(head.query, 1 + CONTEXT)
            bulk_at_q = ln_coordinate(q_x, bulk[head.query])
            const_at_q = ln_coordinate(q_x, b("const")[0])
            key_score, sink_score = rng.uniform(*KEY_SCORE_RANGE), rng.uniform(*SINK_SCORE_RANGE)
            set_qk_terms(model, head.layer, head.index,
                         [QKTerm(bulk[head.query][None], b("flag"), key_score / (bulk_at_q * flag_at_key)),
                          QKTerm(b("const"), bulk[BOS][None], sink_score / (const_at_q * bos_at_bos))])
            if head.recipe == "mover":
                gain = rng.uniform(*MOVE_RANGE) / tok_at_key
                if head.readout == "out":  # the task's readout: the key's own logit
                    write = b("out")[keys]
                else:  # the key's identity in a block of its own, read into a shuffle of tokens
                    write = b(head.readout)
                model.set_ov(head.layer, head.index, b("tok")[keys], write, gain)
            else:  # attending to the key (weight 1 - e^-6 or more), it cancels the query's bulk
                model.set_ov(head.layer, head.index, b("flag"), -bulk[head.query][None],
                             size_of[head.query] / flag_at_key)
        model.rotate(rng)
        placement = {"answer_mover": [heads[0].node], "scale_head": [heads[1].node]}
        return model, CIRCUIT.truth(placement, layer_map=layer_map, n_layers=n_layers)

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        model, truth = self.planted(seed, size)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    @staticmethod
    def _token_roles(seed: int) -> dict:
        rng = np.random.default_rng([seed, 2])
        toks = rng.permutation(np.arange(2 + N_MARKERS, VOCAB)).tolist()
        return {"key": toks[:N_KEYS], "filler": toks[N_KEYS:]}

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one key at a random place), the markers M1 … M24, END.
        Answer: the key; wrong: another key. Corrupted prompts put an unused filler where the key
        was, so no head finds anything to attend to."""
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
            clean.append([BOS, *c, *MARKERS, END])
            corrupted.append([BOS, *x, *MARKERS, END])
            answer.append(keys[i])
            wrong.append(keys[j])
            where.append(at + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "KEY": torch.tensor(where),
                       "END": torch.full((n,), N_CTX - 1)}, split=split)

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
