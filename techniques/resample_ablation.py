"""Resample ablation, node granularity.

For each head and MLP, run the clean prompts with that node's output replaced by its output on a
different clean prompt (a seeded derangement of the prompt set, ``mibench.model.ablation.derangement``),
and score ``metric(clean) − metric(clean with node resampled)``. Signed: ranking uses the magnitude.

What it gets right and wrong: the replacement is an output the node really produces, so the run
stays on the distribution (the ablation causal scrubbing recommends, Chan et al. 2022); but it
measures only the information that differs between prompts, is noisier than mean ablation (it
depends on which prompt is borrowed), and a node whose output is the same on every prompt of the
set scores 0 even if the task needs it (Zhang & Nanda 2024, "Towards Best Practices of
Activation Patching"; Heimersheim & Nanda 2024, "How to use and interpret activation patching").

Hyperparameters: the derangement is seeded by the run's seed. Cost: 1 forward pass to cache, plus
one per node.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import ablation_effects


class ResampleAblation(Technique):
    name = "resample_ablation"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward per node"
    description = "replace each node's output by its value on another clean prompt"
    citation = "Chan et al. 2022; Zhang & Nanda 2024; Heimersheim & Nanda 2024"

    def attribute(self, view: CaseView):
        effects = ablation_effects(view.model, view.prompts, view.components(), "resample", view.metric,
                                   view.seed)
        return make_scores(effects)
