"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME),
node and site granularity.

Method:

1. Corrupt: add Gaussian noise to the token embeddings (``hook_embed``, before the positional
   embedding) of the clean prompts at the case's *key positions*. The noise standard deviation is
   ``NOISE_SCALE`` = 3 × the standard deviation of the clean prompts' token embeddings (ROME's
   choice); it is drawn once per run from ``view.seed`` and the same draw is used in every pass.
2. Restore: for each node (head output ``hook_z`` slice or ``hook_mlp_out``), or each residual
   site ``r{layer}@{label}`` (``hook_resid_pre`` at that label's position), run the noised prompts
   with that one value set back to its clean value.
3. Score the recovered fraction ``(m(noised + restored) − m(noised)) / (m(clean) − m(noised))``.
   If noising does not move the metric (|m(clean) − m(noised)| < 1e-6) the raw difference
   ``m(noised + restored) − m(noised)`` is returned instead, so scores stay finite.

Key positions: ROME noises the subject tokens. The suite's cases do not mark a "subject", so the
key positions are every position label the case declares except ``BOS`` and the final position
(the query, where the metric is read): the tokens that carry the case's information (``TRIG`` in
planted_trigger, ``D`` in copy_suppression, ``SRC``/``SRC+1`` in induction). A case whose only
labels are BOS and the final position has nothing to noise; the adapter then noises every
position except BOS and the last.

Signed (restoring a suppressor can lower the metric); ranking uses the magnitude. Unlike
activation patching, which moves clean → corrupted prompts, causal tracing restores clean values
into a noise-corrupted run (the "denoising" direction): it finds what is *sufficient* to recover
the behaviour, where patching finds what is *necessary* (Heimersheim & Nanda 2024).

Hyperparameters: NOISE_SCALE = 3.0; the key positions above; one noise draw per run.
Cost: 2 forward passes (clean cache, noised baseline) plus 1 to measure the embedding std, plus
one per node (or site).
"""
import torch

from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import cache_nodes, run_with_values
from mibench.model.noising import embedding_noise, key_positions, noised

NOISE_SCALE = 3.0
DEGENERATE = 1e-6


def key_labels(prompts) -> list[str]:
    """Every declared position label except BOS and the final position (see the module docstring)."""
    final = prompts.clean.shape[1] - 1
    labels = [label for label, pos in prompts.positions.items()
              if label != "BOS" and not bool((pos == final).all()) and not bool((pos == 0).all())]
    return labels


class CausalTracing(Technique):
    name = "causal_tracing"
    version = "1"
    granularity = "node"
    granularities = ("node", "site")
    signed = True
    cost = "3 forward + 1 forward per node (or site)"
    description = "noise the key input embeddings, restore one clean value, score the recovered fraction"
    citation = "Meng et al. 2022, Locating and Editing Factual Associations in GPT (ROME)"

    def attribute(self, view: CaseView):
        model, prompts = view.model, view.prompts
        components = view.components()
        labels = key_labels(prompts)
        if labels:
            index = key_positions(prompts, labels)
        else:  # no informative labels: noise every position but BOS and the last
            index = torch.arange(1, prompts.clean.shape[1] - 1).repeat(len(prompts), 1)
        noise = embedding_noise(model, prompts, index, NOISE_SCALE, view.seed)

        clean_logits, clean_values = cache_nodes(model, prompts.clean, components, prompts.positions)
        m_clean = float(view.metric(clean_logits))
        with noised(model, noise), torch.no_grad():
            m_noised = float(view.metric(model(prompts.clean)))
            restored = {c: float(view.metric(run_with_values(model, prompts.clean, {c: clean_values[c]},
                                                             positions=prompts.positions)))
                        for c in components}
        span = m_clean - m_noised
        scale = span if abs(span) >= DEGENERATE else 1.0
        return make_scores({c: (restored[c] - m_noised) / scale for c in components})
