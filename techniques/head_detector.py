"""Head detectors (TransformerLens ``transformer_lens.head_detector``), node granularity.

TransformerLens's three built-in detection patterns — previous-token (attend to position p−1),
duplicate-token (attend to earlier occurrences of the current token) and induction (attend to the
token after an earlier occurrence of the current token) — are built per clean prompt from its
tokens (``get_previous_token_head_detection_pattern`` and its siblings), and each head's attention
pattern (``blocks.{l}.attn.hook_pattern``) is compared with them by
``compute_head_attention_similarity_score`` with TransformerLens's defaults: ``error_measure="mul"``
(the share of the head's attention that falls on the pattern), BOS and the current token not
excluded. This is what ``detect_head`` does for one string; the planted models have no tokenizer,
so the adapter feeds the prompt token tensors and cached patterns directly (same functions, no
``model.to_tokens``).

A head's score is, for each detector, its mean score over the clean prompts, and then the maximum
over the three detectors; MLPs score 0 (the detectors only read attention). The per-detector
values are available from :func:`detector_scores`. The Scores contract has one number per
component, so the role each detector names is not passed on; how well the top heads match each
*role* of the truth is what the scorer's ``recall_by_role`` reports.

Caveats: a detector is a fixed pattern; heads doing a task the three patterns do not describe
(e.g. a trigger detector, a copy-suppression head) score only by accident, and the "mul" score
caps induction-like heads below 1 on prompts where half the positions have no earlier repeat.

Hyperparameters: the three TL detectors; error_measure "mul"; exclude_bos = exclude_current_token
= False. Cost: 1 forward pass.
"""
import torch
from transformer_lens.head_detector import (
    compute_head_attention_similarity_score,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

from mibench import names
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import attention_patterns

DETECTORS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}
ERROR_MEASURE = "mul"
EXCLUDE_BOS = False
EXCLUDE_CURRENT_TOKEN = False


def detector_scores(model, tokens: torch.Tensor) -> dict[str, dict[str, float]]:
    """``{detector: {head: mean score over prompts}}`` for the three TransformerLens detectors."""
    shape = names.Shape.of(model)
    patterns = attention_patterns(model, tokens, range(shape.n_layers))
    out: dict[str, dict[str, float]] = {}
    for detector, make_pattern in DETECTORS.items():
        totals = torch.zeros(shape.n_layers, shape.n_heads, dtype=torch.float64)
        for i in range(tokens.shape[0]):
            pattern = make_pattern(tokens[i].cpu())
            for layer in range(shape.n_layers):
                attention = patterns[layer][i]  # [head, q, k]
                for h in range(shape.n_heads):
                    totals[layer, h] += compute_head_attention_similarity_score(
                        attention[h].detach().cpu().float(), pattern,
                        exclude_bos=EXCLUDE_BOS, exclude_current_token=EXCLUDE_CURRENT_TOKEN,
                        error_measure=ERROR_MEASURE)
        means = totals / tokens.shape[0]
        out[detector] = {names.head(l, h): float(means[l, h])
                         for l in range(shape.n_layers) for h in range(shape.n_heads)}
    return out


class HeadDetector(Technique):
    name = "head_detector"
    version = "1"
    granularity = "node"
    signed = False
    cost = "1 forward"
    description = "max over TransformerLens's previous-token, duplicate-token and induction detectors"
    citation = "TransformerLens head_detector; Olsson et al. 2022; Wang et al. 2022"

    def attribute(self, view: CaseView):
        per_detector = detector_scores(view.model, view.prompts.clean)
        scores = {}
        for node in view.components():
            if names.parse_node(node).kind == "head":
                scores[node] = max(values[node] for values in per_detector.values())
            else:
                scores[node] = 0.0
        return make_scores(scores)
