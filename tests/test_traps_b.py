"""Traps trap_ln_scale, trap_lens_offset and trap_decodable_unused: certificates pass on seeds 0-4,
each trap's own check fails once its mechanism is removed from the planted weights, and on every
seed the targeted technique is fooled while a robust one is not (the documented outcome)."""
from __future__ import annotations


import pytest

from mibench import names
from mibench.model.ablation import Ablator
from mibench.api import Instance
from mibench.certificate import certify
from mibench.registry import load_case, load_technique
from mibench.runner import run_one

from conftest import prepared

SEEDS = range(5)
TRAPS = ("trap_ln_scale", "trap_lens_offset", "trap_decodable_unused")
_RUNS: dict = {}


def _run(case: str, technique: str, granularity: str, seed: int):
    """One run's metrics, cached per module (several tests read the same runs)."""
    key = (case, technique, granularity, seed)
    if key not in _RUNS:
        record = run_one(load_technique(technique), prepared(case, seed), granularity)
        assert record.status == "ok", record.error
        _RUNS[key] = record.metrics
    return _RUNS[key]


def _certify_edited(case_name: str, model, seed: int):
    """Certificate of an edited planted model, with the unedited build's truth."""
    case = load_case(case_name)
    truth = prepared(case_name, seed).instance.truth
    instance = Instance(model=model.to_bridge(), truth=truth, seed=seed)
    prompts = case.prompts(case.n_prompts, seed, "test")
    ablator = Ablator(instance.model, prompts, case.task_metric(prompts), seed=seed)
    return {c.name: c for c in certify(case, instance, prompts, ablator).checks}


# --- certificates -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", TRAPS)
def test_certificate_passes(case, seed):
    prep = prepared(case, seed)
    assert prep.case.tier == "trap"
    assert prep.instance.truth.targets, "a trap names the technique it is built to fool"
    assert prep.certificate.passed, prep.certificate.reason()


def test_truths_and_targets():
    # the circuits sit at drawn layers: the answer layer is the mover's, before the scale head's
    # (trap_ln_scale) and before the final block, which removes the offset (trap_lens_offset)
    ln = prepared("trap_ln_scale", 0).instance.truth
    layer = {role: names.node_layer(node) for node, role in ln.nodes.items()}
    assert sorted(layer) == ["answer_mover", "scale_head"]
    assert set(ln.targets) == {"dla"} and ln.answer_layer == layer["answer_mover"] < layer["scale_head"]
    assert set(ln.labels("layer")) == {names.layer_name(layer[r]) for r in layer}
    lens_prep = prepared("trap_lens_offset", 0)
    lens = lens_prep.instance.truth
    assert set(lens.targets) == {"logit_lens"} and set(lens.labels("layer")) == {names.layer_name(lens.answer_layer)}
    assert lens.answer_layer < names.Shape.of(lens_prep.instance.model).n_layers - 1
    dec = prepared("trap_decodable_unused", 0)
    assert set(dec.instance.truth.targets) == {"linear_probe"}
    assert set(dec.instance.truth.sites) <= set(dec.prompts.variables)
    assert dec.case.unused_site(dec.instance.truth) not in dec.instance.truth.labels("site")


# --- each check fails without its mechanism -----------------------------------------------------

def test_ln_scale_check_fails_without_the_scale_head():
    case = load_case("trap_ln_scale")
    model, truth = case.planted(0)
    head = names.parse_node(next(n for n, role in truth.nodes.items() if role == "scale_head"))
    model.W_O[head.layer, head.index] = 0.0
    checks = _certify_edited("trap_ln_scale", model, 0)
    assert not checks["scale head total effect"].passed
    assert prepared("trap_ln_scale", 0).certificate.passed


def test_lens_offset_check_fails_without_the_offset():
    case = load_case("trap_lens_offset")
    model, _ = case.planted(0, offset_scale=0.0)
    checks = _certify_edited("trap_lens_offset", model, 0)
    assert not checks["logit lens accuracy at the answer layer"].passed
    assert checks["linear readout accuracy at the answer layer"].passed


def test_decodable_unused_check_fails_without_the_memo_head():
    case = load_case("trap_decodable_unused")
    model, _, _ = case.planted(0, memo=False)
    checks = _certify_edited("trap_decodable_unused", model, 0)
    assert not checks["unused site decodability"].passed
    assert checks["unused site patching effect"].passed


# --- the documented outcome: targeted technique fooled, robust one not --------------------------

def test_dla_fooled_by_ln_scale_activation_patching_not():
    dla = [_run("trap_ln_scale", "dla", "node", s) for s in SEEDS]
    patching = [_run("trap_ln_scale", "activation_patching", "node", s) for s in SEEDS]
    assert all(m["fooled"] for m in dla)
    assert not any(m["fooled"] for m in patching)
    for d, p in zip(dla, patching):
        assert d["recall_by_role"]["scale_head"] == 0.0
        assert p["auroc"] - d["auroc"] >= 0.3


def test_logit_lens_fooled_by_lens_offset_tuned_lens_not():
    lens = [_run("trap_lens_offset", "logit_lens", "layer", s) for s in SEEDS]
    tuned = [_run("trap_lens_offset", "tuned_lens", "layer", s) for s in SEEDS]
    assert all(m["fooled"] and m["answer_layer_error"] > 0 for m in lens)
    assert sum(m["answer_layer_error"] == 0 and not m["fooled"] for m in tuned) >= 4


def test_linear_probe_fooled_by_decodable_unused_patching_not():
    probe = [_run("trap_decodable_unused", "linear_probe", "site", s) for s in SEEDS]
    patching = [_run("trap_decodable_unused", "activation_patching", "site", s) for s in SEEDS]
    assert all(m["fooled"] for m in probe)
    assert not any(m["fooled"] for m in patching)
    for pr, pa in zip(probe, patching):
        assert pa["auroc"] - pr["auroc"] >= 0.2
        assert pr["precision_at_k"] <= 0.5
