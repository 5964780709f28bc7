"""Zero ablation, node granularity.

For each head and MLP, run the clean prompts with that node's output (its ``hook_z`` slice, or
``hook_mlp_out``) set to zero, and score ``metric(clean) − metric(clean with node = 0)``. Signed:
ranking uses the magnitude.

What it gets wrong: zero is not a value the node ever takes, so the ablated run is off the model's
distribution. Nodes whose output is large but constant (bias-like components, attention sinks,
heads that write a fixed offset) get large effects although they carry no information about the
task, and downstream components can break for reasons unrelated to the circuit (Chan et al. 2022,
causal scrubbing; Zhang & Nanda 2024, "Towards Best Practices of Activation Patching"; Heimersheim
& Nanda 2024, "How to use and interpret activation patching"). Mean and resample ablation avoid
this.

Hyperparameters: none. Cost: 1 forward pass to cache, plus one per node.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import ablation_effects


class ZeroAblation(Technique):
    name = "zero_ablation"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward per node"
    description = "replace each node's output by zero on the clean prompts"
    citation = "Chan et al. 2022; Zhang & Nanda 2024; Heimersheim & Nanda 2024"

    def attribute(self, view: CaseView):
        effects = ablation_effects(view.model, view.prompts, view.components(), "zero", view.metric,
                                   view.seed)
        return make_scores(effects)
