"""Weight-norm baseline: rank nodes by how large their weights are, without running the model.

Not interpretability: it never runs the model, reads no metric, answer or corrupted prompt. A head
scores ‖W_V W_O‖_F · ‖W_Q W_Kᵀ‖_F (the norms of its OV and QK circuits), an MLP
‖W_in‖_F · ‖W_out‖_F. On a benchmark whose circuits are the only loud part of each model it finds
them; on a benchmark worth its name it is at chance (the fingerprint audit,
:mod:`mibench.fingerprint`, checks the same statistics against the truth).

Cost: 0 passes.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.statistics import weight_statistics


class WeightNorm(Technique):
    name = "weight_norm"
    version = "1"
    granularity = "node"
    cost = "0 passes"
    description = "‖OV‖·‖QK‖ per head, ‖W_in‖·‖W_out‖ per MLP (baseline: no forward pass, no metric)"

    def attribute(self, view: CaseView):
        stats = weight_statistics(view.model)
        scores = {}
        for node in view.components():
            if node in stats["ov_norm"]:
                scores[node] = stats["ov_norm"][node] * stats["qk_norm"][node]
            else:
                scores[node] = stats["mlp_in_norm"][node] * stats["mlp_out_norm"][node]
        return make_scores(scores)
