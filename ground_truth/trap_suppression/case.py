"""Trap: a component that makes the answer right by suppressing the competitors (see README.md
beside this file). The metric is log p(answer); the suppressor's direct effect on the answer's
logit is zero."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.weights import head_write, logit_writes
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.gating import constant_term, embed_flag, rows, set_qk_terms

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END = 0, 1
VOCAB = 40
N_GOLD, N_LURE_TOKENS = 8, 16  # the seed picks the gold tokens, the lure tokens and the fillers
N_LURES = 5  # lures per prompt (plus one gold item)
CONTEXT = 12
N_CTX = CONTEXT + 2
N_LAYERS, N_HEADS, D_HEAD = 2, 4, 32

# Planted strengths. The candidate mover gives each candidate 8 (+0.5 for a lure): attention
# ≈ 0.108 on the gold item and 0.178 on each lure; with gain 60 the gold item's logit is ≈ 6.5 and
# each lure's ≈ 10.7, so without the suppressor a lure wins. The suppressor spreads its attention
# over the 5 lures and writes −100 × their identities: each lure ends at ≈ −9.3.
ITEM_QK, LURE_BONUS, MOVER_GAIN = 8.0, 0.5, 60.0
SUPPRESS_QK, SUPPRESS_GAIN = 12.0, 100.0
DISTRACTOR_WRITE = {"junk": 1.0, "out": 0.1}

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
    version = "1"
    circuit = CIRCUIT
    tier = "trap"
    description = ("a mover copies the gold item and five lures (the lures more); a suppressor "
                   "lowers the lures: the answer wins without its own logit ever moving")

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, suppress: bool = True) -> Instance:
        """``suppress=False`` turns the suppressor into a booster (it attends to the gold item and
        raises its logit instead): the same accuracy, but by raising the answer."""
        self.check_size(size)
        rng = np.random.default_rng([seed, 0])
        roles = _token_roles(seed)
        gold, lure = roles["gold"], roles["lure"]
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "bos": 1, "item": 1, "lure": 1,
                                 "gold": 1, "pos": N_CTX, "out": VOCAB, "junk": 16})
        model = PlantedModel(layout, n_layers=N_LAYERS, n_heads=N_HEADS, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "item", gold + lure)
        embed_flag(model, "lure", lure)
        embed_flag(model, "gold", gold)
        model.embed_positions("pos")
        model.unembed("out")

        slots = [(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)]
        picked = rng.choice(len(slots), size=2, replace=False)
        mover, suppressor = slots[int(picked[0])], slots[int(picked[1])]
        cands = gold + lure
        set_qk_terms(model, *mover, [constant_term(layout, "one", "item", ITEM_QK),
                                     constant_term(layout, "one", "lure", LURE_BONUS)])
        model.set_ov(*mover, rows(layout, "tok", cands), rows(layout, "out", cands), gain=MOVER_GAIN)
        if suppress:
            set_qk_terms(model, *suppressor, [constant_term(layout, "one", "lure", SUPPRESS_QK)])
            model.set_ov(*suppressor, rows(layout, "tok", lure), rows(layout, "out", lure),
                         gain=-SUPPRESS_GAIN)
        else:  # a booster: raises the gold item by what the suppressor took off each lure
            set_qk_terms(model, *suppressor, [constant_term(layout, "one", "gold", SUPPRESS_QK)])
            model.set_ov(*suppressor, rows(layout, "tok", gold), rows(layout, "out", gold),
                         gain=SUPPRESS_GAIN / N_LURES)
        for l, h in slots:
            if (l, h) not in (mover, suppressor):
                model.add_distractor_head(l, h, rng, read_blocks=["tok", "pos", "junk"],
                                          write=DISTRACTOR_WRITE)
        model.rotate(rng)
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

    def metric(self, logits: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        """log p(answer) at the final position."""
        logp = torch.log_softmax(logits[:, -1, :], dim=-1)
        return logp[torch.arange(logp.shape[0]), prompts.answer]

    def accuracy(self, logits: torch.Tensor, prompts: PromptSet) -> float:
        """Share of prompts whose top-1 prediction at END is the answer."""
        return float((logits[:, -1, :].argmax(-1) == prompts.answer).float().mean())

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
