"""Direct logit attribution (DLA), node granularity.

Each head's and MLP's output on the clean prompts is read straight through the final LayerNorm
(with the clean run's scale frozen) and the unembedding, and projected on the metric's direction:
the gradient of the task metric with respect to the logits, which for the default logit-difference
metric is exactly W_U[:, answer] − W_U[:, wrong] at the final position. Signed: a component that
pushes the metric down (a negative or suppressing head) scores negative; ranking uses magnitude.

DLA sees only direct effects: components that act through later components score ~0 by design.

Cost: 1 forward pass.

References: Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits");
nostalgebraist 2020 (logit lens); Wang et al. 2022 (IOI, direct logit attribution of heads).
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.readout import direct_effects, metric_gradient


class DirectLogitAttribution(Technique):
    name = "dla"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward"
    description = "each node's direct effect on the metric through the frozen final LayerNorm"

    def attribute(self, view: CaseView):
        return make_scores(direct_effects(view.model, view.prompts.clean,
                                          lambda logits: metric_gradient(view.metric, logits)))
