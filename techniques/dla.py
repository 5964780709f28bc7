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
import torch

from mibench import names
from mibench.api import CaseView, Technique, make_scores
from mibench.readout import RESID_FINAL, frozen_scale, metric_gradient, residual_gradient


class DirectLogitAttribution(Technique):
    name = "dla"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward"
    description = "each node's direct effect on the metric through the frozen final LayerNorm"

    def attribute(self, view: CaseView):
        model, shape = view.model, view.shape
        wanted = {RESID_FINAL} | {f"blocks.{l}.attn.hook_z" for l in range(shape.n_layers)}
        if shape.has_mlp:
            wanted |= {f"blocks.{l}.hook_mlp_out" for l in range(shape.n_layers)}
        with torch.no_grad():
            logits, cache = model.run_with_cache(view.prompts.clean, names_filter=lambda n: n in wanted)
        scale = frozen_scale(model, cache[RESID_FINAL])
        direction = residual_gradient(model, metric_gradient(view, logits), scale)
        scores = {}
        with torch.no_grad():
            for layer in range(shape.n_layers):
                z = cache[f"blocks.{layer}.attn.hook_z"]
                per_head = torch.einsum("bphk,hkd,bpd->h", z, model.W_O[layer].detach(), direction)
                for h in range(shape.n_heads):
                    scores[names.head(layer, h)] = float(per_head[h])
                if shape.has_mlp:
                    out = cache[f"blocks.{layer}.hook_mlp_out"]
                    scores[names.mlp(layer)] = float((out * direction).sum())
        return make_scores(scores)
