"""Attention-sharpness baseline: rank heads by how sharply they attend on the clean prompts.

Not interpretability: one forward pass over the clean prompts, no metric, answer or corrupted
prompt. A head scores minus its mean attention entropy (over prompts and query positions), so the
sharpest heads rank first. MLPs have no attention; each scores the mean of the head scores, so
they sit in the middle of the ranking rather than at either end.

On a benchmark whose circuit heads are the only ones that attend sharply it finds them; a
benchmark worth its name puts it at chance (see :mod:`mibench.fingerprint`).

Cost: 1 forward pass.
"""
import numpy as np

from mibench.api import CaseView, Technique, make_scores
from mibench.model.statistics import activation_statistics


class AttentionEntropy(Technique):
    name = "attention_entropy"
    version = "1"
    granularity = "node"
    cost = "1 forward"
    description = "minus each head's mean attention entropy on the clean prompts (baseline: no metric)"

    def attribute(self, view: CaseView):
        entropy = activation_statistics(view.model, view.prompts.clean)["attention_entropy"]
        sharpness = {head: -value for head, value in entropy.items()}
        middle = float(np.mean(list(sharpness.values())))
        return make_scores({node: sharpness.get(node, middle) for node in view.components()})
