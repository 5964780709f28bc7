"""Attribution patching (AtP), node granularity; edge granularity as EAP.

Node (AtP; Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Kramár et
al. 2024, "AtP*"): the first-order Taylor estimate of activation patching,
``score(node) = (a_clean − a_corrupted) · ∂metric/∂a`` at the clean run, summed over prompts,
positions and dimensions, where ``a`` is the node's output (a head's ``hook_z`` slice, an MLP's
``hook_mlp_out``). It estimates activation_patching's ``metric(clean) − metric(clean with node ←
corrupted)``: signed, a suppressor scores negative. Known failure (Kramár et al.): saturated
attention softmaxes make the gradient through queries and keys vanish, so a head that acts only
through another head's attention pattern can be badly underestimated.

Edge (EAP; Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery"):
``score(u→v) = (w_u,clean − w_u,corrupted) · ∂metric/∂(v's input)`` where ``w_u`` is u's write into
the residual stream (head: ``z_h @ W_O[h]``; MLP: ``hook_mlp_out``; input: embedding sum) and the
gradient is taken per destination: a head's q, k or v input residual (through its ``ln1``), an
MLP's input residual (through ``ln2``), the final residual for ``logits``. Every edge of the graph
gets its computed value. The mechanics live in :mod:`mibench.model.gradients`.

Hyperparameters: none. Cost: 2 forward passes (clean with gradients, corrupted) + 1 backward pass.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model import gradients


class AttributionPatching(Technique):
    name = "attribution_patching"
    version = "1"
    granularity = "node"
    granularities = ("node", "edge")
    signed = True
    cost = "2 forward + 1 backward"
    description = "first-order estimate of activation patching, (clean − corrupted) · gradient (AtP / EAP)"
    citation = "Nanda 2023; Kramár et al. 2024 (AtP*); Syed et al. 2023 (EAP)"

    def attribute(self, view: CaseView):
        model, prompts = view.model, view.prompts
        clean = gradients.forward(model, prompts.clean, view.metric)
        corrupted = gradients.forward(model, prompts.corrupted)  # no-grad run last: see release_graph
        if view.granularity == "edge":
            delta = gradients.write_differences(model, clean, corrupted)
            scores = gradients.edge_scores(view.shape, delta, gradients.input_gradients(model, clean))
        else:
            scores = gradients.node_scores(model, clean, corrupted)
        return make_scores({c: scores[c] for c in view.components()})
