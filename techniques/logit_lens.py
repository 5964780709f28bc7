"""Logit lens, layer granularity (nostalgebraist 2020, "interpreting GPT: the logit lens").

The residual stream before block 0 (``blocks.0.hook_resid_pre``: the embeddings) and after each
block (``blocks.{l}.hook_resid_post``; the last one is the real final residual) is decoded through
the model's final norm, applied for real with its scale recomputed from each residual, and the
unembedding (``mibench.model.readout.decode``). The case's metric is computed on those logits at every
position (some metrics read several positions), and layer ``L{l}`` scores the gain it contributes:
``metric(decode(after block l)) − metric(decode(before block l))``. The gains sum to
metric(clean logits) − metric(decoded embeddings).

Signed: a layer that pushes the metric down (a suppressing layer) scores negative; scoring ranks by
magnitude. The lens reads the residual in the output basis, so a layer whose contribution is only
readable by later layers (not yet in the unembedding's basis) gains little: the logit lens finds
where the answer becomes *directly* decodable, not every layer that computes it.

Hyperparameters: none. Cost: 1 forward pass on the test prompts (the decoding is matrix
products on cached residuals, not model passes).
"""
import torch

from mibench.api import CaseView, Technique, make_scores
from mibench.model.readout import cache_residuals, decode, lens_gains

class LogitLens(Technique):
    name = "logit_lens"
    version = "1"
    granularity = "layer"
    signed = True
    cost = "1 forward"
    description = "gain in the metric from decoding the residual after vs before each layer"
    citation = "nostalgebraist 2020, interpreting GPT: the logit lens"

    def attribute(self, view: CaseView):
        model = view.model
        logits, residuals = cache_residuals(model, view.prompts.clean)
        with torch.no_grad():
            decoded = [decode(model, r) for r in residuals[:-1]] + [logits]
        return make_scores(lens_gains(view, decoded))
