"""Path patching, edge granularity: the effect of each sender→receiver path on its own.

Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object Identification in
GPT-2 small" (the method that found the IOI circuit; Goldowsky-Dill et al. 2023 formalise it). For
every edge ``src->dst<kind>`` of the graph, the sender's write on the corrupted prompts replaces
its write on the clean prompts *only* in what the receiver reads — a head's query, key or value
input, an MLP's input, or the final residual for ``logits`` — and every other path keeps its
clean value; the receiver's changed output flows on through the rest of the clean run. Score =
metric(clean) − metric(path patched): positive where the path carries what the behaviour needs,
negative where it works against it (a negative name mover's path). Signed: ranked by magnitude.
The patching itself is the suite's one implementation, :func:`mibench.model.paths.path_effects`.

Hyperparameters: none (the case's corruption and metric).
Cost: 2 forward passes (clean and corrupted writes) + one forward per edge (thousands on the
``medium`` cases; batched).
Known to miss: any edge whose information also reaches the receiver by another route (AND-free
redundancy: each of two routes alone carries nothing, so each path's effect is nil), and edges
the corruption does not change (a path patch measures the effect of *this* corruption only).
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.paths import path_effects


class PathPatching(Technique):
    name = "path_patching"
    version = "1"
    granularity = "edge"
    signed = True
    cost = "2 forward + 1 forward per edge"
    description = "metric drop when one edge's sender is patched from the corrupted run for that receiver only"
    citation = "Wang et al. 2022, Interpretability in the Wild (path patching)"

    def attribute(self, view: CaseView):
        edges = view.components()
        return make_scores(path_effects(view.model, view.prompts, edges, view.metric))
