"""Composition scores (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"),
edge granularity, from the weights alone.

For every pair of heads (earlier layer → later layer) the Q-, K- and V-composition scores
``‖W_OV^src · W^dst‖_F / (‖W_OV^src‖_F ‖W^dst‖_F)`` measure how much of what the source head
writes the destination head's query (``W^dst = W_QK``), key (``W_QK^T``) or value (``W_OV``)
reads. They are computed by TransformerLens (``TransformerBridge.all_composition_scores(mode)``,
which calls ``transformer_lens.utilities.matrix.composition_scores`` on factored matrices) and
mapped onto edge names ``a{l1}.h{h1}->a{l2}.h{h2}<q|k|v>`` (mode Q → ``<q>``, K → ``<k>``,
V → ``<v>``).

Every other edge — from ``input``, into or out of an MLP, into ``logits`` — has no composition
score and gets 0: the method says nothing about them, so they rank last (tied). A circuit whose
edges are mostly input/MLP/logit edges will therefore score a low recall here by construction.

Caveats: the scores ignore LayerNorm, biases and the actual inputs (no prompts are used), and a
random pair of matrices already has a baseline score around 1/sqrt(d_model) or so; weight-based
composition says what *could* be communicated, not what is on the task.

Hyperparameters: none. Cost: 0 forward passes (weights only).
"""
import torch

from mibench import names
from mibench.api import CaseView, Technique, make_scores

MODES = {"Q": "q", "K": "k", "V": "v"}


def head_pair_scores(model) -> dict[str, float]:
    """Composition score of every (earlier head → later head, q/k/v) edge, keyed by edge name."""
    shape = names.Shape.of(model)
    out: dict[str, float] = {}
    with torch.no_grad():
        for mode, kind in MODES.items():
            scores = model.all_composition_scores(mode)
            layers = list(scores.layer_indices)
            tensor = torch.as_tensor(scores.scores).detach()  # [src layer, src head, dst layer, dst head]
            for i, l1 in enumerate(layers):
                for j, l2 in enumerate(layers):
                    if l1 >= l2:
                        continue
                    for h1 in range(shape.n_heads):
                        for h2 in range(shape.n_heads):
                            edge = names.edge(names.head(l1, h1), names.head(l2, h2), kind)
                            out[edge] = float(tensor[i, h1, j, h2])
    return out


class CompositionScores(Technique):
    name = "composition_scores"
    version = "1"
    granularity = "edge"
    signed = False
    cost = "0 passes (weights only)"
    description = "Q/K/V composition scores between head pairs from the weights; other edges 0"
    citation = "Elhage et al. 2021, A Mathematical Framework for Transformer Circuits"

    def attribute(self, view: CaseView):
        pairs = head_pair_scores(view.model)
        return make_scores({edge: pairs.get(edge, 0.0) for edge in view.components()})
