"""Edge attribution patching with integrated gradients (EAP-IG), edge granularity.

Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness: Going Beyond Circuit Overlap When
Finding Model Mechanisms" (the method family that won MIB's circuit-localisation track). Like EAP
(see ``attribution_patching``), ``score(u→v) = (w_u,clean − w_u,corrupted) · ḡ_v``, but ``ḡ_v``,
the gradient of the metric with respect to v's input residual (per q/k/v input of a head, per MLP
input, the final residual for ``logits``), is averaged over ``m`` points on the straight line from
the corrupted to the clean input embeddings: the block-0 residual stream (token + position
embedding, ``blocks.0.hook_resid_pre``) is replaced by ``e_corr + (k/m)(e_clean − e_corr)`` for
k = 0 … m−1 (a left Riemann sum, as in the authors' reference implementation as we understand it;
k = m would be the clean run). The activation differences come from the plain clean and corrupted
runs. Signed.

Hyperparameters: m = 5 interpolation steps (``steps``).
Cost: 2 + m forward passes and m backward passes (7 forward + 5 backward with m = 5), plus one
prompt's forward (see ``mibench.model.bridge.release_graph``).
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model import bridge, gradients


class EAPIG(Technique):
    name = "eap_ig"
    version = "1"
    granularity = "edge"
    signed = True
    steps = 5
    cost = "7 forward + 5 backward (m = 5)"
    description = "EAP with the input gradient averaged along the corrupted→clean embedding path"
    citation = "Hanna et al. 2024, Have Faith in Faithfulness"

    def attribute(self, view: CaseView):
        model, prompts, m = view.model, view.prompts, self.steps
        clean = gradients.forward(model, prompts.clean)
        corrupted = gradients.forward(model, prompts.corrupted)
        delta = gradients.write_differences(model, clean, corrupted)
        e_clean, e_corr = clean.acts[gradients.RESID_INPUT], corrupted.acts[gradients.RESID_INPUT]
        del clean, corrupted  # their other activations are a gigabyte on GPT-2 small
        mean_grad = None
        for k in range(m):
            point = e_corr + (k / m) * (e_clean - e_corr)
            run = gradients.forward(model, prompts.clean, view.metric, resid_input=point)
            mean_grad = gradients.input_gradients(model, run, into=mean_grad)  # summed in place
            del run
        for g in mean_grad.values():
            g /= m
        bridge.release_graph(model, prompts.clean)
        scores = gradients.edge_scores(view.shape, delta, mean_grad)
        return make_scores({c: scores[c] for c in view.components()})
