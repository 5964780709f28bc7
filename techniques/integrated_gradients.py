"""Integrated gradients (layer attribution through Captum), node and neuron granularity.

Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks", via Captum's
``LayerIntegratedGradients`` (Kokhlikyan et al. 2020). For each layer's hook module — every
``blocks.{l}.attn.hook_z`` (heads) and ``blocks.{l}.hook_mlp_out`` (MLPs) for nodes, every
``blocks.{l}.mlp.hook_post`` for neurons — Captum runs the clean tokens with that layer's output
replaced by points on the straight line from its value on the corrupted tokens (the baseline) to
its value on the clean tokens, and integrates the gradient of the per-prompt metric along it.
Attributions are summed per head / MLP / neuron over positions and dimensions and averaged over
prompts, so by Captum's completeness a layer's scores sum to
``metric(clean) − metric(clean with that layer's output ← corrupted)`` (tested). Each layer is
attributed separately (its own path), not jointly with the others. Signed.

Hyperparameters: n_steps = 16, Captum's default Gauss–Legendre quadrature.
Cost per layer hook: 2 forward passes (Captum's clean and baseline layer activations) + n_steps
forward and n_steps backward passes; node granularity has n_layers × (1 + has MLP) layer hooks,
neuron granularity n_layers; plus one prompt's forward (``mibench.model.bridge.release_graph``).
"""
import torch
from captum.attr import LayerIntegratedGradients

from mibench import names
from mibench.api import CaseView, Technique, make_scores
from mibench.model import bridge, hooks


class IntegratedGradients(Technique):
    name = "integrated_gradients"
    version = "1"
    granularity = "node"
    granularities = ("node", "neuron")
    signed = True
    n_steps = 16
    cost = "per layer: 2 + 16 forward, 16 backward"
    description = "Captum layer integrated gradients per head, MLP or neuron, corrupted run as baseline"
    citation = "Sundararajan et al. 2017; Captum (Kokhlikyan et al. 2020)"

    def attribute(self, view: CaseView):
        model, prompts, shape = view.model, view.prompts, view.shape
        n = len(prompts)

        def per_prompt_metric(tokens, index):
            return view.metric_per_prompt(model(tokens), prompts.take(index))

        def layer_attribution(hook: str) -> torch.Tensor:
            lig = LayerIntegratedGradients(per_prompt_metric, bridge.hook_module(model, hook))
            attr = lig.attribute(prompts.clean, baselines=prompts.corrupted,
                                 additional_forward_args=(torch.arange(n),), n_steps=self.n_steps,
                                 internal_batch_size=n)  # one step's prompts per pass, not all 16
            return attr.detach().sum(dim=(0, 1)) / n  # [features], prompt mean, positions summed

        scores = {}
        for layer in range(shape.n_layers):
            if view.granularity == "neuron":
                per_neuron = layer_attribution(hooks.mlp_post(layer))
                scores.update({names.neuron(layer, i): float(v) for i, v in enumerate(per_neuron)})
                continue
            per_head = layer_attribution(hooks.attn(layer, "z")).reshape(shape.n_heads, -1).sum(-1)
            scores.update({names.head(layer, h): float(v) for h, v in enumerate(per_head)})
            if shape.has_mlp:
                scores[names.mlp(layer)] = float(layer_attribution(hooks.mlp_out(layer)).sum())
        bridge.release_graph(model, prompts.clean)
        return make_scores({c: scores[c] for c in view.components()})
