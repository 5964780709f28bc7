"""Activation-norm baseline: rank nodes by the size of what they write on the clean prompts.

Not interpretability: one forward pass over the clean prompts, no metric, answer or corrupted
prompt. Each head and MLP scores the mean norm (per position) of its write into the residual
stream: a head's ``z @ W_O``, an MLP's output. A benchmark worth its name puts it at chance
(see :mod:`mibench.fingerprint`).

Cost: 1 forward pass.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.statistics import activation_statistics


class ActivationNorm(Technique):
    name = "activation_norm"
    version = "1"
    granularity = "node"
    cost = "1 forward"
    description = "mean norm of each node's write on the clean prompts (baseline: no metric)"

    def attribute(self, view: CaseView):
        norms = activation_statistics(view.model, view.prompts.clean)["output_norm"]
        return make_scores({node: norms[node] for node in view.components()})
