"""Logit attribution to the correct token, node granularity.

The common "how much does this component push up the right answer" practice: each head's and
MLP's output at the final position on the clean prompts is read through the final LayerNorm (the
clean run's scale frozen) and the unembedding column of the answer token, ``W_U[:, answer]``,
and summed over prompts. Unlike ``dla``, which projects on the gradient of the case's metric with
respect to the logits, this reads the answer logit only, whatever the metric is: a component that
makes the answer win by lowering the *other* logits (the log-sum-exp of a log-probability metric)
gets no credit.

Signed (a component that lowers the answer's logit scores negative); ranking uses magnitude.
Cost: 1 forward pass.

References: Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits", direct logit
attribution); nostalgebraist 2020 (logit lens); Wang et al. 2022 (IOI).
"""
import torch

from mibench.api import CaseView, Technique, make_scores
from mibench.model.readout import direct_effects


class LogitAttribution(Technique):
    name = "logit_attribution"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward"
    description = "each node's direct effect on the answer token's logit at the final position"
    citation = "Elhage et al. 2021; Wang et al. 2022"

    def attribute(self, view: CaseView):
        answer = view.prompts.answer

        def answer_logit(logits: torch.Tensor) -> torch.Tensor:
            """Gradient of the mean final-position answer logit with respect to the logits."""
            onehot = torch.zeros_like(logits)
            onehot[torch.arange(logits.shape[0]), -1, answer] = 1.0 / logits.shape[0]
            return onehot

        return make_scores(direct_effects(view.model, view.prompts.clean, answer_logit))
