"""Activation patching (counterfactual / "noising" direction), node and site granularity.

Node granularity: for each head and MLP, run the clean prompts with that node's output replaced by
its output on the corrupted prompts, and score the node by how much the task metric drops:
``score = metric(clean) − metric(clean with node ← corrupted)``.

Site granularity (``activation_patching@site``): for each residual site ``r{layer}@{label}``, run
the clean prompts with the residual stream before block ``layer`` (``hook_resid_pre``; the final
residual for ``layer = n_layers``) at each prompt's position of ``label`` replaced by its value on
the corrupted prompts, and score the same drop in the metric.

Signed: a node whose corrupted value raises the metric (a suppressor) gets a negative score;
ranking uses the magnitude.

Cost: 2 forward passes to cache, plus one per node (or site).

References: Vig et al. 2020 (causal mediation analysis); Meng et al. 2022; Wang et al. 2022;
Zhang & Nanda 2024, "Towards Best Practices of Activation Patching".
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import ablation_effects


class ActivationPatching(Technique):
    name = "activation_patching"
    version = "1"
    granularity = "node"
    granularities = ("node", "site")
    signed = True
    cost = "1 forward per node (or site)"
    description = "patch each node's output (or residual site) from the corrupted run into the clean run"

    def attribute(self, view: CaseView):
        # ablation_effects handles nodes and residual sites alike (sites read view.prompts.positions).
        effects = ablation_effects(view.model, view.prompts, view.components(), "corrupted", view.metric)
        return make_scores(effects)
