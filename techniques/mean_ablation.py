"""Mean ablation, node granularity.

For each head and MLP, run the clean prompts with that node's output replaced by its mean over the
prompt set (per position), and score ``metric(clean) − metric(clean with node = mean)``. Signed:
ranking uses the magnitude.

What it gets wrong: the mean keeps the node's average output, so constant (bias-like) parts no
longer count, unlike zero ablation; but the mean of a node's outputs need not be an output the
node ever produces (it can still be off-distribution), and whatever the node carries that is
constant across the prompt set is invisible (Chan et al. 2022, causal scrubbing; Zhang & Nanda
2024, "Towards Best Practices of Activation Patching"; Heimersheim & Nanda 2024, "How to use and
interpret activation patching").

Hyperparameters: the prompt set over which the mean is taken (the case's test prompts). Cost:
1 forward pass to cache, plus one per node.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import ablation_effects


class MeanAblation(Technique):
    name = "mean_ablation"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward per node"
    description = "replace each node's output by its mean over the prompt set (per position)"
    citation = "Chan et al. 2022; Zhang & Nanda 2024; Heimersheim & Nanda 2024"

    def attribute(self, view: CaseView):
        effects = ablation_effects(view.model, view.prompts, view.components(), "mean", view.metric,
                                   view.seed)
        return make_scores(effects)
