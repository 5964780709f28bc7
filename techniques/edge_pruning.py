"""Edge Pruning: learn a continuous mask over the edges by gradient descent, edge granularity.

Bhaskar, Wettig, Zhong & Chen 2024, "Finding Transformer Circuits with Edge Pruning". Each edge
has one logit ℓ_e and keeps a share m_e = sigmoid(ℓ_e) of its clean write: the receiver reads
``resid + Σ_s (1 − m[s, r]) (corrupted_write(s) − current_write(s))`` (the suite's edge mechanism,
:mod:`mibench.model.edges`, differentiable in the mask). The logits start at ``init_logit`` (every
edge kept, m ≈ 0.95) and Adam minimises

    KL(full model ‖ masked model)  +  λ · mean_e(m_e)

with the KL of the next-token distribution at the metric's positions, averaged over positions and
prompts (ACDC's distance), and the penalty the expected share of edges kept. Scores are the final
logits (higher = kept).

Simplification (stated): the paper samples hard-concrete masks during training and thresholds
their deterministic test-time value, with a Lagrangian that drives sparsity to a target. Here the
mask is a plain sigmoid at temperature 1, nothing is sampled, and λ is fixed: the ranking by final
logit stands in for the circuits the paper finds at different sparsity targets.

Fitting is on ``view.train_prompts`` (the first ``n_prompts``, never the scored test prompts),
split into fixed minibatches of ``batch`` prompts visited in turn: no randomness at all, so the
scores are the same for every seed.

Hyperparameters: ``n_prompts`` = 8 train prompts in minibatches of ``batch`` = 4, ``steps`` = 48
Adam steps at ``lr`` = 0.15 (Adam moves each logit by about ``lr`` a step, so 48 × 0.15 spans
the range from kept, 3, to well removed), ``penalty`` λ = 1.0, ``init_logit`` = 3.
Cost: 2 forwards per minibatch (clean and corrupted writes) + per step one masked forward and its
backward on a minibatch; every edge is partly removed, so a masked forward recomputes every
receiver's input (several forwards' worth of work per row). Counted on 64 scored prompts: 3.3
forward + 3.0 backward passes; in the runner on a loaded 2-core machine 7 s on ioi medium,
13–15 s on induction medium (ioi AUROC 0.999, AP 0.92 / 0.88 on seeds 0 / 1; induction 1.0).
Known to miss:

* redundant routes: when two routes each suffice, weakening either alone costs almost nothing,
  so the penalty pulls both down until the KL pushes back, and one of them (or both, to a middle
  value) may end ranked below edges of a single route;
* edges the corruption does not change: their KL gradient is exactly zero, so only the penalty
  moves them, all by the same amount (Adam's steps are per-parameter and sign-like). They end tied
  at one logit below ``init_logit``, beneath every edge the KL holds up and above the edges whose
  removal lowers the KL (edges that work against the task are pushed down faster);
* with a fixed λ the fit stops short of a sharp circuit; the ranking, not a threshold, is scored.

The model is left unchanged: only the mask logits require a gradient, and the gradient is taken
with ``torch.autograd.grad`` with respect to them alone, so no weight gradient is accumulated.
"""
from __future__ import annotations

import torch

from mibench.api import CaseView, TaskMetric, Technique, make_scores
from mibench.model import bridge
from mibench.model.edges import EdgePatcher


def kl_from(full_log_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(full ‖ masked), averaged over prompts and read positions (one mask: a scalar)."""
    log_q = torch.log_softmax(logits, dim=-1)
    return (full_log_probs.exp() * (full_log_probs - log_q)).sum(-1).mean()


class EdgePruning(Technique):
    name = "edge_pruning"
    version = "1"
    granularity = "edge"
    signed = False
    n_prompts = 8
    batch = 4
    steps = 48
    lr = 0.15
    penalty = 1.0
    init_logit = 3.0
    cost = "2 forward per minibatch + 48 × (masked forward + backward) on minibatches of 4 prompts"
    description = "a sigmoid mask per edge fitted by Adam to keep KL(full ‖ masked) low at a sparsity penalty"
    citation = "Bhaskar et al. 2024, Finding Transformer Circuits with Edge Pruning"

    def attribute(self, view: CaseView):
        prompts = view.train_prompts
        n = min(self.n_prompts, len(prompts))
        positions = TaskMetric(view.metric.spec, prompts).positions  # train prompts' own length
        with torch.no_grad():  # the fixed runs are constants of the fit
            patchers = [EdgePatcher(view.model, prompts.clean[i:i + self.batch],
                                    prompts.corrupted[i:i + self.batch], positions)
                        for i in range(0, n, self.batch)]
        full = [torch.log_softmax(p.clean_logits, dim=-1) for p in patchers]
        graph = patchers[0].graph
        logits = torch.full((1, len(graph.edges)), self.init_logit, requires_grad=True)
        optimiser = torch.optim.Adam([logits], lr=self.lr)
        for step in range(self.steps):
            which = step % len(patchers)
            mask = torch.sigmoid(logits)
            loss = kl_from(full[which], patchers[which].run(graph.keep_mask(mask))[0]) + \
                self.penalty * mask.mean()
            (logits.grad,) = torch.autograd.grad(loss, [logits])
            optimiser.step()
        bridge.release_graph(view.model, prompts.clean)
        return make_scores(logits.detach()[0].tolist(), graph.edges)
