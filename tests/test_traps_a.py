"""Traps A (trap_backup, trap_suppression, trap_and_gate, trap_bias_component): each certificate
passes on seeds 0-4, each trap check fails when its mechanism is removed, and the targeted built-in
technique is fooled while a robust one is not (the documented outcome, with a margin)."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from conftest import prepared
from mibench.model.ablation import Ablator
from mibench.certificate import certify
from mibench.registry import load_case, load_technique, technique_entries
from mibench.runner import run_one

torch.set_num_threads(1)

SEEDS = range(5)
TRAPS = ("trap_backup", "trap_suppression", "trap_and_gate", "trap_bias_component")
#: the fooled technique's mean AUROC must be at least this far below the robust one's
AUROC_MARGIN = 0.2
#: the share of seeds on which the targeted technique must be fooled (and the robust one not)
FOOLED_SHARE = 0.8

# trap -> (targeted technique, robust technique)
OUTCOMES = {
    "trap_backup": [("resample_ablation", "dla"), ("zero_ablation", "dla"),
                    ("activation_patching", "dla")],
    "trap_suppression": [("logit_attribution", "activation_patching")],
    "trap_and_gate": [("causal_tracing", "activation_patching")],
    "trap_bias_component": [("zero_ablation", "resample_ablation"), ("zero_ablation", "mean_ablation"),
                            ("zero_ablation", "activation_patching")],
}


def _certify(case, instance, seed):
    prompts = case.prompts(case.n_prompts, seed, "test")
    ablator = Ablator(instance.model, prompts, case.task_metric(prompts), seed=seed)
    return certify(case, instance, prompts, ablator)


def _checks(cert, prefix: str):
    found = [c for c in cert.checks if c.name.startswith(prefix)]
    assert found, f"no check named {prefix!r}"
    return found


@lru_cache(maxsize=None)
def _record(technique: str, case: str, seed: int):
    return run_one(load_technique(technique), prepared(case, seed))


@pytest.mark.parametrize("case", TRAPS)
def test_certificate_passes_seeds_0_to_4(case):
    assert load_case(case).tier == "trap"
    for seed in SEEDS:
        cert = prepared(case, seed).certificate
        assert cert.passed, f"{case} seed {seed}: {cert.reason()}"
        assert prepared(case, seed).instance.truth.targets, f"{case} has no targets"


def test_backup_check_fails_without_the_gate():
    case = load_case("trap_backup")
    cert = _certify(case, case.build(0, backup_gate=False), 0)
    assert not all(c.passed for c in _checks(cert, "main alone")), cert.reason()


def test_suppression_check_fails_when_it_boosts_instead():
    case = load_case("trap_suppression")
    cert = _certify(case, case.build(0, suppress=False), 0)
    assert not all(c.passed for c in _checks(cert, "suppressor direct effect")), cert.reason()


def test_and_gate_check_fails_for_an_or_gate():
    case = load_case("trap_and_gate")
    cert = _certify(case, case.build(0, and_gate=False), 0)
    denoise = [c for c in _checks(cert, "denoising") if "detector" not in c.detail and c.op == "<="]
    assert denoise and not all(c.passed for c in denoise), cert.reason()


def test_bias_check_fails_when_the_bias_is_in_the_embeddings():
    case = load_case("trap_bias_component")
    cert = _certify(case, case.build(0, bias=False), 0)
    assert not all(c.passed for c in _checks(cert, "zero ablation destroys")), cert.reason()


def _pairs():
    for case, pairs in OUTCOMES.items():
        for fooled, robust in pairs:
            yield pytest.param(case, fooled, robust, id=f"{case}-{fooled}-vs-{robust}")


@pytest.mark.parametrize("case,fooled,robust", list(_pairs()))
def test_targeted_technique_is_fooled_and_robust_one_is_not(case, fooled, robust):
    available = technique_entries()
    for name in (fooled, robust):
        if name not in available:
            pytest.xfail(f"waits for issue 4: {name}")
    assert fooled in prepared(case, 0).instance.truth.targets
    assert robust not in prepared(case, 0).instance.truth.targets
    bad = [_record(fooled, case, s) for s in SEEDS]
    good = [_record(robust, case, s) for s in SEEDS]
    for r in bad + good:
        assert r.status == "ok", f"{r.technique} on {case} seed {r.seed}: {r.error}"
    auroc_bad = sum(r.metrics["auroc"] for r in bad) / len(bad)
    auroc_good = sum(r.metrics["auroc"] for r in good) / len(good)
    assert auroc_bad <= auroc_good - AUROC_MARGIN, (auroc_bad, auroc_good)
    assert sum(r.metrics["fooled"] for r in bad) >= FOOLED_SHARE * len(bad)
    assert sum(not r.metrics["fooled"] for r in good) >= FOOLED_SHARE * len(good)
