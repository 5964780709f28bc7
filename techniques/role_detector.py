"""IOI role detector: label heads with the roles of Wang et al.'s IOI circuit from their attention
patterns, direct effects and two targeted ablations, on the view's clean prompts.

Rules (a head's attention "excess" on a key is its mean attention there minus the uniform
baseline 1 / (query index + 1), averaged over prompts; DE is its direct effect on the task metric,
``mibench.model.readout.direct_effects`` along the metric's gradient, so for IOI the
IO − S logit difference; ``m`` is the clean metric):

* ``previous_token``: excess on the previous position, averaged over every query position ≥ 1;
* ``duplicate_token``: at S2, excess on S1;
* ``induction``: at S2, excess on S1+1;
* ``name_mover``: at END, excess on IO, and DE ≥ 0.1·|m|;
* ``negative_name_mover``: the same attention, and DE ≤ −0.1·|m|;
* ``backup_name_mover``: silent on clean prompts (|DE| < 0.1·|m| and excess on IO at END below
  0.3), in a layer after the strongest name mover M (largest DE); when M is resample-ablated, its
  excess on IO at END reaches 0.3 and it compensates: ablating it as well costs at least 0.1·|m|
  more than ablating it alone on clean prompts (its conditional minus its clean ablation effect);
* ``s_inhibition``: at END, excess on S2, in a layer before M; and resample-ablating it lowers the
  labelled (positive and negative) name movers' attention on IO minus their attention on S2 at
  END by at least 0.2.

Each criterion is divided by its threshold (attention 0.3, DE and compensation 0.1·|m|, the
movers' attention drop 0.2) and a role's score is the smallest of these ratios, so a head meets
every criterion of a role exactly when the role's score is ≥ 1. A head is labelled with its
best-scoring role when that score is ≥ 1; the labels travel as ``scores.attrs["roles"]``
(``{head: role}``) and are scored per role by ``mibench.scoring.role_label_scores``. A head's node
score is its largest role score (MLPs 0), so AUROC and recall by role read "how circuit-like the
head looks". Every threshold was fixed before looking at any truth (0.3 attention above uniform,
the usual head-detector cut-off; 10 % of the clean metric for an effect; an attention drop of
0.2) and none was tuned. Roles whose position labels the prompts lack (IO, S1, S1+1, S2, END)
are skipped, so non-IOI cases get only previous-token scores.

Citation: Wang et al. 2022 (IOI circuit, path-patching definitions of the roles); McDougall et al.
2023 (negative and backup name movers); the attention rules follow TransformerLens's head
detectors. Cost: 2 forwards (patterns, direct effects), 1 + one batched pass per layer for the
clean single-head ablations, 1 ablated pattern pass and the batched conditional ablations of the
heads after M, and one pattern pass per S-inhibition candidate.

Known to miss: the three upstream roles are attention rules only, so every head with the same
pattern is labelled (look-alike channels' previous-token, duplicate-token and induction heads are
indistinguishable from the circuit's by pattern; their single ablations do nothing because the two
duplicate-detection routes are redundant). Backup and S-inhibition hinge on finding a name
mover first; a backup gated by something other than the strongest name mover's write is missed.
"""
import torch

from mibench import names
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import BaseRun, attention_patterns, metric_positions, node_values
from mibench.model.readout import direct_effects, metric_gradient

#: attention above the uniform baseline that counts as "attends to"
ATTENTION_EXCESS = 0.3
#: share of |clean metric| that counts as a direct effect or a compensation
EFFECT_SHARE = 0.1
#: drop in the name movers' (IO − S2) attention that counts as inhibiting S
INHIBITION_DROP = 0.2
#: the role labels, in the vocabulary of Wang et al. (and of the ioi case's circuit.yaml)
ROLES = ("previous_token", "duplicate_token", "induction", "s_inhibition", "name_mover",
         "negative_name_mover", "backup_name_mover")


def stacked_patterns(model, tokens, values=None, positions=None) -> torch.Tensor:
    """Every layer's attention pattern, ``[n, layer, head, query, key]``."""
    n_layers = model.cfg.n_layers
    patterns = attention_patterns(model, tokens, range(n_layers), values, positions)
    return torch.stack([patterns[layer] for layer in range(n_layers)], dim=1)


def excess(patterns: torch.Tensor, positions: dict, query: str, key: str) -> torch.Tensor:
    """Mean attention from ``query`` to ``key`` minus the uniform baseline, ``[layer, head]``."""
    rows = torch.arange(patterns.shape[0])
    q, k = positions[query], positions[key]
    attention = patterns[rows, :, :, q, k]  # [n, layer, head]
    return (attention - 1.0 / (q + 1).to(attention.dtype)[:, None, None]).mean(dim=0)


def previous_token_excess(patterns: torch.Tensor) -> torch.Tensor:
    """Attention on position p − 1 minus the uniform baseline, over queries p ≥ 1, ``[layer, head]``."""
    seq = patterns.shape[-1]
    query = torch.arange(1, seq)
    attention = patterns[..., query, query - 1]  # [n, layer, head, seq - 1]
    return (attention - 1.0 / (query + 1).to(attention.dtype)).mean(dim=(0, -1))


def grid(values: dict[str, float], shape: names.Shape) -> torch.Tensor:
    """Per-head values as a ``[layer, head]`` tensor (heads missing from ``values`` get 0)."""
    return torch.tensor([[values.get(names.head(l, h), 0.0) for h in range(shape.n_heads)]
                         for l in range(shape.n_layers)], dtype=torch.float64)


def mover_attention_gap(patterns: torch.Tensor, positions: dict, movers: list[tuple[int, int]]) -> float:
    """The movers' mean attention at END on IO minus on S2."""
    gap = excess(patterns, positions, "END", "IO") - excess(patterns, positions, "END", "S2")
    return float(torch.stack([gap[l, h] for l, h in movers]).mean())


def role_scores(view: CaseView) -> dict[str, torch.Tensor]:
    """Each role's score per head, ``{role: [layer, head]}``; ≥ 1 means every criterion is met."""
    model, prompts, shape = view.model, view.prompts, view.shape
    labels = set(prompts.positions)
    patterns = stacked_patterns(model, prompts.clean)
    out = {"previous_token": previous_token_excess(patterns) / ATTENTION_EXCESS}
    if {"S1", "S2"} <= labels:
        out["duplicate_token"] = excess(patterns, prompts.positions, "S2", "S1") / ATTENTION_EXCESS
    if {"S1+1", "S2"} <= labels:
        out["induction"] = excess(patterns, prompts.positions, "S2", "S1+1") / ATTENTION_EXCESS
    if not {"IO", "END"} <= labels:
        return out

    heads = [names.head(l, h) for l in range(shape.n_layers) for h in range(shape.n_heads)]
    with torch.no_grad():
        clean_metric = float(view.metric(model(prompts.clean)))
    effect_unit = EFFECT_SHARE * max(abs(clean_metric), 1e-6)
    de = grid(direct_effects(model, prompts.clean, lambda logits: metric_gradient(view.metric, logits),
                             heads), shape) / effect_unit
    attends_io = excess(patterns, prompts.positions, "END", "IO").double() / ATTENTION_EXCESS
    out["name_mover"] = torch.minimum(attends_io, de)
    out["negative_name_mover"] = torch.minimum(attends_io, -de)
    named = out["name_mover"] >= 1
    if not named.any():
        return out
    strongest = divmod(int(torch.where(named, de, -torch.inf).argmax()), shape.n_heads)
    movers = [tuple(map(int, lh)) for lh in
              torch.nonzero(named | (out["negative_name_mover"] >= 1)).tolist()]

    ablated = node_values(model, prompts, heads, "resample", view.seed)
    mover = names.head(*strongest)
    out["backup_name_mover"] = backup_scores(view, ablated, mover, strongest[0], de, attends_io,
                                             effect_unit)
    if "S2" in labels:
        out["s_inhibition"] = inhibition_scores(view, patterns, ablated, movers, strongest[0])
    return out


def backup_scores(view: CaseView, ablated: dict, mover: str, mover_layer: int, de: torch.Tensor,
                  attends_io: torch.Tensor, effect_unit: float) -> torch.Tensor:
    """Backup score per head: silent on clean prompts, attending to IO and compensating once
    ``mover`` is ablated; 0 for heads that are not silent or not after the mover."""
    model, prompts, shape = view.model, view.prompts, view.shape
    later = [names.head(l, h) for l in range(mover_layer + 1, shape.n_layers) for h in range(shape.n_heads)]
    scores = torch.zeros(shape.n_layers, shape.n_heads, dtype=torch.float64)
    if not later:
        return scores
    ablated_patterns = stacked_patterns(model, prompts.clean, {mover: ablated[mover]})
    attends_io_ablated = excess(ablated_patterns, prompts.positions, "END", "IO").double() / ATTENTION_EXCESS
    # compensation: what a head adds once the mover is gone, beyond what it adds on clean prompts
    base = BaseRun(model, prompts.clean, prompts.positions, read_positions=metric_positions(view.metric))
    clean_metric = float(view.metric(base.logits))
    clean_effect = grid({node: clean_metric - value for node, value in
                         base.single_metrics(later, ablated, view.metric).items()}, shape)
    without_mover = float(view.metric(base.run({mover: ablated[mover]})))
    conditional = {}
    chunk = max(1, 256 // len(prompts))  # rows per batched pass, as BaseRun.single_metrics does
    for i in range(0, len(later), chunk):
        group = later[i:i + chunk]
        logits = base.run_batched([{mover: ablated[mover], node: ablated[node]} for node in group])
        conditional.update({node: without_mover - float(view.metric(lg)) for node, lg in zip(group, logits)})
    compensation = (grid(conditional, shape) - clean_effect) / effect_unit
    silent = (de.abs() < 1) & (attends_io < 1)
    scores = torch.where(silent, torch.minimum(attends_io_ablated, compensation), scores)
    scores[:mover_layer + 1] = 0.0
    return scores


def inhibition_scores(view: CaseView, patterns: torch.Tensor, ablated: dict,
                      movers: list[tuple[int, int]], mover_layer: int) -> torch.Tensor:
    """S-inhibition score per head: attention at END on S2, and the movers' attention gap
    (IO − S2) lost when the head is ablated; 0 for heads not before the strongest mover."""
    model, prompts, shape = view.model, view.prompts, view.shape
    attends_s2 = excess(patterns, prompts.positions, "END", "S2").double() / ATTENTION_EXCESS
    scores = torch.zeros(shape.n_layers, shape.n_heads, dtype=torch.float64)
    clean_gap = mover_attention_gap(patterns, prompts.positions, movers)
    for layer, head in torch.nonzero(attends_s2[:mover_layer] >= 1).tolist():
        node = names.head(layer, head)
        gap = mover_attention_gap(stacked_patterns(model, prompts.clean, {node: ablated[node]}),
                                  prompts.positions, movers)
        scores[layer, head] = min(float(attends_s2[layer, head]), (clean_gap - gap) / INHIBITION_DROP)
    return scores


def labels_from(scores: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each head whose best role score is ≥ 1, with that role."""
    roles = list(scores)
    stacked = torch.stack([scores[r].double() for r in roles])  # [role, layer, head]
    best, which = stacked.max(dim=0)
    return {names.head(l, h): roles[int(which[l, h])]
            for l, h in torch.nonzero(best >= 1).tolist()}


class RoleDetector(Technique):
    name = "role_detector"
    version = "1"
    granularity = "node"
    signed = False
    cost = "~5 forwards + batched single-head ablations"
    description = ("labels IOI roles (name movers, negative/backup movers, S-inhibition, induction, "
                   "duplicate/previous token) from attention, direct effects and ablations")
    citation = "Wang et al. 2022; McDougall et al. 2023"

    def attribute(self, view: CaseView):
        per_role = role_scores(view)
        best = torch.stack([s.double() for s in per_role.values()]).max(dim=0).values
        scores = make_scores({node: float(best[parsed.layer, parsed.index]) if parsed.kind == "head" else 0.0
                              for node in view.components() for parsed in [names.parse_node(node)]})
        scores.attrs["roles"] = labels_from(per_role)
        return scores
