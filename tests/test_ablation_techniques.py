"""Ablation-family adapters: zero / mean / resample ablation, causal tracing, composition scores,
head detectors and activation patching, each with an assertion about what it must find on a
planted case, and comparisons with TransformerLens's own implementations where one exists."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from scipy.stats import spearmanr

from mibench.model.ablation import cache_nodes, run_with_values
from mibench.api import CaseView
from mibench.registry import load_case, load_technique

N_PROMPTS = 32


@lru_cache(maxsize=None)
def built(case_name: str, seed: int):
    case = load_case(case_name)
    instance = case.build(seed)
    return case, instance, case.prompts(N_PROMPTS, seed, "test"), case.prompts(N_PROMPTS, seed, "train")


def view(case_name: str, seed: int, granularity: str) -> tuple[CaseView, object]:
    case, instance, prompts, train = built(case_name, seed)
    return CaseView.of(case, instance.model, prompts, train, granularity, seed), instance.truth


def top(scores, k: int) -> set[str]:
    return set(scores.abs().sort_values(ascending=False, kind="stable").index[:k])


@pytest.mark.parametrize("name", ["zero_ablation", "mean_ablation", "resample_ablation"])
def test_ablations_rank_induction_heads_top2(name):
    v, truth = view("induction", 0, "node")
    scores = load_technique(name).attribute(v)
    assert top(scores, 2) == set(truth.nodes), scores.sort_values().to_dict()
    assert (scores[list(truth.nodes)] > 0).all()  # ablating either head hurts induction


def test_causal_tracing_nodes_planted_trigger():
    v, truth = view("planted_trigger", 0, "node")
    scores = load_technique("causal_tracing").attribute(v)
    assert top(scores, 2) == set(truth.nodes), scores.sort_values().to_dict()
    # restoring either truth node alone recovers (nearly) all of the noised-away behaviour
    assert (scores[list(truth.nodes)] > 0.5).all()


def site_comparison(case_name: str = "planted_trigger", seed: int = 0):
    """Causal tracing vs activation patching at every residual site: (Spearman rho, both series)."""
    v, _ = view(case_name, seed, "site")
    tracing = load_technique("causal_tracing").attribute(v)
    patching = load_technique("activation_patching").attribute(v)
    rho = spearmanr(tracing.abs().to_numpy(), patching.abs().to_numpy()).statistic
    return float(rho), tracing, patching


def test_causal_tracing_sites_compared_with_activation_patching():
    rho, tracing, patching = site_comparison()
    # Both must put the trigger position before the detector reads it at the top; the
    # detector has moved the information to END after block 0.
    assert tracing.abs().idxmax() in {"r0@TRIG", "r1@END", "r2@END"}
    assert patching.abs().idxmax() in {"r0@TRIG", "r1@END", "r2@END"}
    assert tracing["r0@TRIG"] > 0.9 and abs(tracing["r0@BOS"]) < 0.05
    assert rho > 0.5, (rho, tracing.to_dict(), patching.to_dict())


def test_composition_scores_match_library_for_one_pair():
    from transformer_lens import FactoredMatrix
    from transformer_lens.utilities.matrix import composition_scores

    from techniques.composition_scores import head_pair_scores

    v, truth = view("induction", 0, "edge")
    model = v.model
    (k_edge,) = [e for e, kind in truth.edges.items() if kind == "k" and not e.startswith("input")]
    src, dst = k_edge.split("->")
    l1, h1 = (int(x) for x in src[1:].split(".h"))
    l2, h2 = (int(x) for x in dst.split("<")[0][1:].split(".h"))
    with torch.no_grad():
        ov = FactoredMatrix(model.W_V[l1, h1], model.W_O[l1, h1])
        qk_t = FactoredMatrix(model.W_Q[l2, h2], model.W_K[l2, h2].T).T  # K-composition reads W_QK^T
        direct = float(composition_scores(ov, qk_t, broadcast_dims=False))
    pairs = head_pair_scores(model)
    ours = pairs[k_edge]
    assert ours == pytest.approx(direct, rel=1e-5, abs=1e-6)
    # and one V-composition pair, to check the mode mapping
    with torch.no_grad():
        v_direct = float(composition_scores(ov, FactoredMatrix(model.W_V[l2, h2], model.W_O[l2, h2]),
                                            broadcast_dims=False))
    assert pairs[f"{src}->{dst.split('<')[0]}<v>"] == pytest.approx(v_direct, rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_composition_scores_find_k_composition_but_not_which_channel_the_task_uses(seed):
    """induction runs one K-composition channel per previous-token / induction head pair; only one
    feeds the task. The weights show every channel's K edge alike (within 5% of each other, far
    above every other edge), so composition scores rank the planted edge among them and cannot
    single it out."""
    v, truth = view("induction", seed, "edge")
    scores = load_technique("composition_scores").attribute(v)
    (k_edge,) = [e for e, kind in truth.edges.items() if kind == "k" and not e.startswith("input")]
    top = scores.sort_values(ascending=False)
    channels = top[top > 0.5 * top.iloc[0]]
    assert k_edge in channels.index and len(channels) >= 2, top.head(5).to_dict()
    assert all(e.endswith("<k>") for e in channels.index)
    assert channels.min() > 0.95 * channels.max()
    assert top.iloc[len(channels)] < 0.01 * channels.min()
    non_head = [e for e in scores.index if e.startswith("input") or "m" in e.split("->")[1][:1]
                or e.endswith("logits")]
    assert (scores[non_head] == 0).all()


def test_head_detector_finds_the_head_types_but_not_which_the_task_uses():
    """Every layer-0 head of induction is a previous-token head and every layer-1 head an
    induction head; only one pair feeds the task. The detectors see the types (layer 0 scores
    high as previous-token heads, layer 1 as induction heads) and score each layer's heads alike."""
    from techniques.head_detector import detector_scores

    v, truth = view("induction", 0, "node")
    per_detector = detector_scores(v.model, v.prompts.clean)
    prev, ind = per_detector["previous_token_head"], per_detector["induction_head"]
    layer0 = [n for n in prev if n.startswith("a0.")]
    layer1 = [n for n in prev if n.startswith("a1.")]
    assert min(prev[n] for n in layer0) > 0.9 > max(prev[n] for n in layer1)
    assert min(ind[n] for n in layer1) > 0.4 > max(ind[n] for n in layer0)
    assert max(prev[n] for n in layer0) - min(prev[n] for n in layer0) < 0.02
    assert max(ind[n] for n in layer1) - min(ind[n] for n in layer1) < 0.02


def test_detector_scores_agree_with_transformer_lens_detect_head_patterns():
    """Our per-prompt loop equals TL's detection on one prompt (same functions, same cache)."""
    from transformer_lens.head_detector import (compute_head_attention_similarity_score,
                                                get_induction_head_detection_pattern)

    from techniques.head_detector import detector_scores

    v, truth = view("induction", 0, "node")
    tokens = v.prompts.clean[:1]
    ours = detector_scores(v.model, tokens)["induction_head"]
    _, cache = v.model.run_with_cache(tokens)
    pattern = get_induction_head_detection_pattern(tokens[0])
    for node, value in ours.items():
        layer, head = (int(x) for x in node[1:].split(".h"))
        ref = compute_head_attention_similarity_score(
            cache[f"blocks.{layer}.attn.hook_pattern"][0, head].detach(), pattern,
            exclude_bos=False, exclude_current_token=False, error_measure="mul")
        assert value == pytest.approx(ref, abs=1e-6)


def test_activation_patching_matches_transformer_lens_patching():
    """TL patches clean head outputs (hook_z, all positions) into the corrupted run; run the
    suite's patching in the same direction through mibench.model.ablation and compare."""
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    v, _ = view("induction", 0, "node")
    model, prompts = v.model, v.prompts
    metric = lambda logits: v.metric(logits)  # noqa: E731
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(prompts.clean)
        tl = get_act_patch_attn_head_out_all_pos(model, prompts.corrupted, clean_cache, metric)
    tl = torch.as_tensor(getattr(tl, "tensor", tl)).detach()
    heads = [n for n in v.components() if n.startswith("a")]
    _, clean_values = cache_nodes(model, prompts.clean, heads)
    for node in heads:
        layer, head = (int(x) for x in node[1:].split(".h"))
        ours = float(metric(run_with_values(model, prompts.corrupted, {node: clean_values[node]})))
        assert ours == pytest.approx(float(tl[layer, head]), abs=1e-4), node
