"""Trap: a component that makes the answer right by suppressing the competitors (see README.md
beside this file). The metric is log p(answer); the suppressor's direct effect on the answer's
logit is zero."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, MetricSpec, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.weights import head_write, logit_writes
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.planted import random_orthogonal
from mibench.models.gating import constant_term, embed_flag, rows, set_qk_terms

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END = 0, 1
VOCAB = 40
N_GOLD, N_LURE_TOKENS = 8, 16  # the seed picks the gold tokens, the lure tokens and the fillers
N_ITEMS = N_GOLD + N_LURE_TOKENS
N_LURES = 5  # lures per prompt (plus one gold item)
CONTEXT = 12
N_CTX = CONTEXT + 2
D_HEAD = 24  # the mover's OV copies the 24 items
#: (layers, heads) per size; the two roles sit in random slots, every other head in a channel
SHAPES = {"small": (2, 4), "medium": (6, 8)}

# Planted strengths. Every channel's mover and suppressor are built by the same recipe with
# strengths from these ranges (README.md: the model runs many mover + suppressor channels at once;
# the task reads only channel 0). At the middle of the ranges the mover gives each candidate 8
# (+0.5 for a lure): attention ≈ 0.108 on the gold item and 0.178 on each lure; with gain 60 the
# gold item's logit is ≈ 6.5 and each lure's ≈ 10.7, so without the suppressor a lure wins. The
# suppressor spreads its attention over the 5 lures and writes −100 × their identities: each lure
# ends at ≈ −9.3.
ITEM_QK, LURE_BONUS, MOVER_GAIN = (7.5, 8.5), (0.4, 0.6), (55.0, 65.0)
SUPPRESS_QK, SUPPRESS_GAIN = (11.0, 13.0), (90.0, 110.0)
#: the other channels write their predictions into one shared block, each through its own random
#: frame (their outputs overlap, as heads' outputs do in a real residual stream; nothing but the
#: unembedding reads them)
AUX_DIM = 96
#: how strongly the unembedding reads the shared block, through a random map onto the items' logits:
#: each channel moves the items' logits by about 1 (the answer's is ≈ 6.5) and log p(answer) by
#: at most a few percent of the behaviour (a noise floor below the strictness threshold)
AUX_READ = 0.07

# Certificate extras (generic thresholds are in mibench.certificate.THRESHOLDS).
#: |the suppressor's direct effect on the answer's logit| / the clean answer logit: at most this
DIRECT_ANSWER_MAX = 0.05
#: behaviour lost (normalized, log p(answer)) when the suppressor is resample-ablated: at least
METRIC_EFFECT_MIN = 0.5
#: the suppressor's direct effect on the log-sum-exp of the logits (nats, negative) must be at
#: most this: it works by lowering the competitors
LSE_EFFECT_MAX = -3.0


def _token_roles(seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng([seed, 7])
    t = [int(x) for x in rng.permutation(np.arange(2, VOCAB))]
    return {"gold": sorted(t[:N_GOLD]), "lure": sorted(t[N_GOLD:N_GOLD + N_LURE_TOKENS]),
            "filler": sorted(t[N_GOLD + N_LURE_TOKENS:])}


class TrapSuppression(Case):
    name = "trap_suppression"
    version = "2"
    circuit = CIRCUIT
    sizes = tuple(SHAPES)
    tier = "trap"
    #: log p(answer) at the final position; accuracy: the answer is the top-1 prediction
    metric = MetricSpec(reads="log_prob")
    failure_mode = "suppression"
    description = ("a mover copies the gold item and five lures (the lures more); a suppressor "
                   "lowers the lures: the answer wins without its own logit ever moving; every "
                   "other head belongs to a look-alike mover + suppressor channel")

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, suppress: bool = True) -> Instance:
        """``suppress=False`` turns the circuit's suppressor into a booster (it attends to the gold
        item and raises its logit instead): the same accuracy, but by raising the answer."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        roles = _token_roles(seed)
        gold, lure = roles["gold"], roles["lure"]
        items = gold + lure
        # both roles read only the embeddings, so any two heads can host a channel: the heads are
        # paired at random, the first pair is the circuit (channel 0)
        slots = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        order = rng.permutation(len(slots))
        pairs = [(slots[int(order[i])], slots[int(order[i + 1])]) for i in range(0, len(slots), 2)]
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "item": 1, "lure": 1, "gold": 1,
                                 "out": N_ITEMS, "aux": AUX_DIM})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "item", items)
        embed_flag(model, "lure", lure)
        embed_flag(model, "gold", gold)
        model.unembed("out", items)  # channel 0's predictions, indexed by item, are the task's logits
        # the shared block reaches the items' logits through a random map (unit gain on average)
        readout = rng.normal(0.0, N_ITEMS ** -0.5, (AUX_DIM, N_ITEMS))
        model.unembed("aux", items, scale=AUX_READ, mixing=readout)

        tok = rows(layout, "tok")
        lure_idx = [items.index(t) for t in lure]
        for c, (mover, suppressor) in enumerate(pairs):
            # the channel's predictions, one direction per item: the task's readout for channel 0,
            # a random orthonormal frame of the shared block for every other channel
            predict = layout.basis("out") if c == 0 else \
                random_orthogonal(AUX_DIM, rng)[:N_ITEMS] @ layout.basis("aux")
            set_qk_terms(model, *mover, [constant_term(layout, "one", "item", rng.uniform(*ITEM_QK)),
                                         constant_term(layout, "one", "lure", rng.uniform(*LURE_BONUS))])
            model.set_ov(*mover, tok[items], predict, gain=rng.uniform(*MOVER_GAIN))
            qk, gain = rng.uniform(*SUPPRESS_QK), rng.uniform(*SUPPRESS_GAIN)
            if suppress or c > 0:
                set_qk_terms(model, *suppressor, [constant_term(layout, "one", "lure", qk)])
                model.set_ov(*suppressor, tok[lure], predict[lure_idx], gain=-gain)
            else:  # a booster: raises the gold item by what the suppressor took off each lure
                set_qk_terms(model, *suppressor, [constant_term(layout, "one", "gold", qk)])
                model.set_ov(*suppressor, tok[gold], predict[:N_GOLD], gain=gain / N_LURES)
        model.rotate(rng)
        mover, suppressor = pairs[0]
        truth = CIRCUIT.truth({"candidate_mover": [names.head(*mover)],
                               "suppressor": [names.head(*suppressor)]})
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (one gold item, N_LURES distinct lures, fillers; shuffled), END. The
        answer is the gold item; ``wrong`` is the first lure. Corrupted prompts replace the gold
        item and the lures by fresh ones (same places)."""
        roles = _token_roles(seed)
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, wrong, gold_at = [], [], [], [], []
        for _ in range(n):
            order = rng.permutation(CONTEXT)
            ctx = [int(t) for t in rng.choice(roles["filler"], size=CONTEXT)]
            cor = list(ctx)
            g, g2 = (int(t) for t in rng.choice(roles["gold"], size=2, replace=False))
            lures = [int(t) for t in rng.permutation(roles["lure"])]
            ls, ls2 = lures[:N_LURES], lures[N_LURES:2 * N_LURES]
            ctx[order[0]], cor[order[0]] = g, g2
            for i in range(N_LURES):
                ctx[order[1 + i]], cor[order[1 + i]] = ls[i], ls2[i]
            clean.append([BOS, *ctx, END])
            corrupted.append([BOS, *cor, END])
            answer.append(g)
            wrong.append(ls[0])
            gold_at.append(int(order[0]) + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "GOLD": torch.tensor(gold_at),
                       "END": torch.full((n,), N_CTX - 1)},
            variables={"gold": torch.tensor(answer)}, split=split)

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The suppressor's direct effect on the answer's logit is ~0, its direct effect on the
        log-sum-exp is large and negative, and resample-ablating it loses most of log p(answer)."""
        node = next(n for n, r in instance.truth.nodes.items() if r == "suppressor")
        write = head_write(instance.model, node, probe.clean_cache[node][:, -1])  # [n, d_model] at END
        idx = torch.arange(len(prompts))
        final = probe.clean_logits[:, -1, :]
        with torch.no_grad():
            delta = logit_writes(instance.model, write)  # the head's direct contribution to every logit
            on_answer = float(delta[idx, prompts.answer].abs().mean())
            answer_logit = float(final[idx, prompts.answer].mean())
            lse_effect = float((torch.logsumexp(final, -1) - torch.logsumexp(final - delta, -1)).mean())
        lost = 1.0 - probe.normalized(probe.metric_without([node]))
        return [
            Check("suppressor direct effect on answer logit", on_answer / abs(answer_logit),
                  DIRECT_ANSWER_MAX, "<=", f"|direct effect on the answer logit| ({on_answer:.3f}) / "
                  f"clean answer logit ({answer_logit:.2f})"),
            Check("suppressor direct effect on log-sum-exp", lse_effect, LSE_EFFECT_MAX, "<=",
                  "change of logsumexp(logits) at END caused by its write (nats)"),
            Check("suppressor effect on metric", lost, METRIC_EFFECT_MIN, ">=",
                  "log p(answer) lost (normalized) when it is resample-ablated"),
        ]
