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

from mibench import names
from mibench.api import CaseView, Technique, make_scores
from mibench.readout import RESID_FINAL, frozen_scale, residual_gradient


class LogitAttribution(Technique):
    name = "logit_attribution"
    version = "1"
    granularity = "node"
    signed = True
    cost = "1 forward"
    description = "each node's direct effect on the answer token's logit at the final position"
    citation = "Elhage et al. 2021; Wang et al. 2022"

    def attribute(self, view: CaseView):
        model, shape, prompts = view.model, view.shape, view.prompts
        wanted = {RESID_FINAL} | {f"blocks.{l}.attn.hook_z" for l in range(shape.n_layers)}
        if shape.has_mlp:
            wanted |= {f"blocks.{l}.hook_mlp_out" for l in range(shape.n_layers)}
        with torch.no_grad():
            logits, cache = model.run_with_cache(prompts.clean, names_filter=lambda n: n in wanted)
            onehot = torch.zeros_like(logits)
            onehot[torch.arange(logits.shape[0]), -1, prompts.answer] = 1.0 / logits.shape[0]
            scale = frozen_scale(model, cache[RESID_FINAL])
            direction = residual_gradient(model, onehot, scale)
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
