"""Activation patching (counterfactual / "noising" direction), node granularity.

For each head and MLP, run the clean prompts with that node's output replaced by its output on the
corrupted prompts, and score the node by how much the task metric drops:
``score = metric(clean) − metric(clean with node ← corrupted)``. Signed: a node whose corrupted
value raises the metric (a suppressor) gets a negative score; ranking uses the magnitude.

Cost: 2 forward passes to cache, plus one per node.

References: Vig et al. 2020 (causal mediation analysis); Meng et al. 2022; Wang et al. 2022;
Zhang & Nanda 2024, "Towards Best Practices of Activation Patching".
"""
from mibench.ablation import ablation_effects
from mibench.api import CaseView, Technique, make_scores


class ActivationPatching(Technique):
    name = "activation_patching"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward per node"
    description = "patch each node's output from the corrupted run into the clean run"

    def attribute(self, view: CaseView):
        effects = ablation_effects(view.model, view.prompts, view.components(), "corrupted", view.metric)
        return make_scores(effects)
