"""logit_lens, tuned_lens and linear_probe: what each must find on the planted cases.

* both lenses put the answer layer (the layer holding the direct-effect nodes) first on induction;
  the logit lens does on planted_trigger too, while the tuned lens finds planted_trigger's answer
  *decodable* one layer earlier (its translator reads the detector's "trigger i seen" feature
  before the trigger neurons write it into the logits) — a documented property of the method;
* decoding the final residual reproduces the model's logits; the tuned lens is deterministic;
* the probe reads the trigger at every truth site and also flags the decodable-but-unused sites
  r1@TRIG and r2@TRIG (what issue 5's trap_decodable_unused formalises).
"""
from __future__ import annotations

import pytest
import torch

from mibench.api import CaseView
from mibench.model.hooks import RESID_FINAL
from mibench.model.readout import decode
from mibench.registry import load_case, load_technique
from mibench.scoring import score_run

N_TEST, N_TRAIN = 32, 32


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(case_name: str, seed: int):
        if (case_name, seed) not in cache:
            case = load_case(case_name)
            cache[case_name, seed] = (case, case.build(seed), case.prompts(N_TEST, seed, "test"),
                                      case.prompts(N_TRAIN, seed, "train"))
        return cache[case_name, seed]
    return get


def _run(built, technique: str, case_name: str, seed: int, granularity: str, score: bool = True):
    case, instance, prompts, train = built(case_name, seed)
    tech = load_technique(technique)
    scores = tech.attribute(CaseView.of(case, instance.model, prompts, train, granularity, seed))
    metrics = score_run(scores, instance.truth, granularity, tech.signed) if score else None
    return scores, metrics, instance.truth


@pytest.mark.parametrize("case_name", ["induction", "planted_trigger", "copy_suppression"])
def test_decode_reproduces_logits(built, case_name):
    case, instance, prompts, _ = built(case_name, 0)
    with torch.no_grad():
        logits, cache = instance.model.run_with_cache(prompts.clean, names_filter=lambda n: n == RESID_FINAL)
    assert torch.allclose(decode(instance.model, cache[RESID_FINAL]), logits, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case_name", ["induction", "planted_trigger"])
def test_logit_lens_finds_the_answer_layer(built, case_name, seed):
    scores, metrics, truth = _run(built, "logit_lens", case_name, seed, "layer")
    assert metrics["answer_layer_error"] == 0, scores.to_dict()
    # the answer layer carries nearly all of the gain
    assert scores[f"L{truth.answer_layer}"] > 0.9 * scores.abs().sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_tuned_lens_finds_the_answer_layer_on_induction(built, seed):
    scores, metrics, _ = _run(built, "tuned_lens", "induction", seed, "layer")
    assert metrics["answer_layer_error"] == 0, scores.to_dict()


def test_tuned_lens_reads_planted_trigger_answer_one_layer_early(built):
    """The trigger's target is linearly decodable from the detector's copy at r1@END, so the L0
    translator already predicts it: the tuned lens credits L0 (answer_layer_error 1). Measured, not
    a bug: the tuned lens answers 'where is the prediction decodable', not 'who writes it'."""
    scores, metrics, _ = _run(built, "tuned_lens", "planted_trigger", 0, "layer")
    assert metrics["answer_layer_error"] == 1 and scores["L0"] > scores["L1"], scores.to_dict()


def test_tuned_lens_is_deterministic(built):
    first, _, _ = _run(built, "tuned_lens", "planted_trigger", 0, "layer", score=False)
    second, _, _ = _run(built, "tuned_lens", "planted_trigger", 0, "layer", score=False)
    assert first.equals(second)


def test_linear_probe_on_planted_trigger(built):
    scores, metrics, truth = _run(built, "linear_probe", "planted_trigger", 0, "site")
    truth_sites = set(truth.labels("site"))
    assert truth_sites == {"r0@TRIG", "r1@END", "r2@END"}
    chance = 1 - max(scores)  # scores are accuracy − chance; the best site is perfect
    assert all(scores[s] > 0.5 for s in truth_sites), scores.to_dict()
    flagged = {s for s in scores.index if s not in truth_sites and scores[s] > 0.5}
    print(f"\nlinear_probe planted_trigger: chance {chance:.2f}; non-truth sites flagged: {sorted(flagged)}; "
          f"AUROC {metrics['auroc']:.2f}")
    # decodable but unused: the trigger's embedding stays at TRIG after every layer
    assert flagged == {"r1@TRIG", "r2@TRIG"}
    assert all(scores[s] <= 0.05 for s in scores.index if s.endswith("@BOS") or s == "r0@END")


def test_linear_probe_scores_zero_without_variables(built):
    scores, _, _ = _run(built, "linear_probe", "induction", 0, "site", score=False)
    assert (scores == 0).all()
