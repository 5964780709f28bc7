"""The planted_trigger case: its certificate passes on seeds 0-4 and fails when the mechanism it
checks is removed from the planted weights (or the decoy is made to trigger)."""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pytest

from conftest import certify_instance, failed_checks

from mibench import names
from mibench.model.ablation import Ablator
from mibench.api import Instance
from mibench.registry import load_case
from mibench.runner import prepare

SEEDS = range(5)


@pytest.fixture(scope="module")
def case():
    return load_case("planted_trigger")


def _module(case):
    return sys.modules[type(case).__module__]


def _certify(case, model, truth, seed):
    return certify_instance(case, Instance(model=model.to_bridge(), truth=truth, seed=seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_certificate_passes(case, seed):
    start = time.perf_counter()
    case.build(seed)
    print(f"\nplanted_trigger seed {seed}: build {time.perf_counter() - start:.2f} s")
    cert = prepare(case, seed).certificate
    assert cert.passed, cert.reason()
    assert {"specificity", "neuron necessity", "neuron sufficiency", "site strictness",
            "site necessity r0@TRIG", "site necessity r1@END", "site necessity r2@END"} \
        <= {c.name for c in cert.checks}


def test_medium_certifies_seed_0(case):
    """At size medium (6 layers × 8 heads, an MLP in every block) the circuit is 1 head and 1 MLP
    among 54 busy nodes at drawn layers, and its certificate still passes; the TRIG residual up to
    the detector and the END residual from there to the final one are truth."""
    prep = prepare(case, 0, size="medium")
    assert prep.certificate.passed, prep.certificate.reason()
    truth = prep.instance.truth
    at = names.node_layer(next(n for n, role in truth.nodes.items() if role == "trigger_detector"))
    sites = [*(f"r{layer}@TRIG" for layer in range(at + 1)), *(f"r{layer}@END" for layer in range(at + 1, 7))]
    assert truth.labels("site") == {s: "trigger" for s in sites}


def test_truth_at_node_and_neuron_granularity(case):
    truth = case.build(0).truth
    assert sorted(truth.nodes.values()) == ["trigger_detector", "trigger_neuron"]
    assert "m1" in truth.nodes and truth.direct == {"m1": 1}
    assert len(truth.neurons) == _module(case).N_PAIRS
    assert set(truth.neurons.values()) == {"trigger_neuron"}
    assert all(names.node_layer(n) == 1 for n in truth.neurons)
    assert set(case.granularities) <= set(truth.granularities())


def test_site_truth_and_trigger_variable(case):
    truth = case.build(0).truth
    assert truth.labels("site") == {"r0@TRIG": "trigger", "r1@END": "trigger", "r2@END": "trigger"}
    p = case.prompts(32, 0, "test")
    roles = case._token_roles(0)
    trig = p.clean[np.arange(32), p.positions["TRIG"]]
    assert p.variables["trigger"].tolist() == [roles["trigger"].index(int(t)) for t in trig]


def _site_checks(case, sites, seed=0):
    """The case's site checks with ``sites`` as the site truth."""
    inst = case.build(seed)
    truth = dataclasses.replace(inst.truth, sites={"trigger": frozenset(sites)})
    prompts = case.prompts(case.n_prompts, seed, "test")
    return {c.name: c for c in case._site_checks(Instance(inst.model, truth, seed), prompts, case.task_metric(prompts))}


def test_decodable_but_unused_site_fails_site_necessity(case):
    """r1@TRIG carries the trigger (a probe reads it) but patching it changes nothing."""
    checks = _site_checks(case, {"r0@TRIG", "r1@TRIG", "r2@END"})
    assert not checks["site necessity r1@TRIG"].passed
    assert checks["site necessity r1@TRIG"].value < 0.05


def test_missing_truth_site_fails_site_strictness(case):
    checks = _site_checks(case, {"r0@TRIG", "r2@END"})
    assert not checks["site strictness"].passed and "r1@END" in checks["site strictness"].detail


def test_placement_moves_with_the_seed(case):
    neuron_sets = {tuple(sorted(case.planted(s)[1].neurons)) for s in SEEDS}
    assert len(neuron_sets) > 1


def test_prompts(case):
    roles = case._token_roles(0)
    p = case.prompts(32, 0, "test")
    idx = np.arange(32)
    trig = p.clean[idx, p.positions["TRIG"]]
    assert all(int(t) in roles["trigger"] for t in trig)
    assert all(int(t) in roles["decoy"] for t in p.corrupted[idx, p.positions["TRIG"]])
    assert (p.wrong == roles["default"]).all()
    assert [roles["target"][roles["trigger"].index(int(t))] for t in trig] == p.answer.tolist()


def test_zeroing_trigger_neuron_outputs_fails(case):
    model, truth = case.planted(0)
    for n in truth.neurons:
        model.W_out[1][names.parse_node(n).index] = 0.0
    cert = _certify(case, model, truth, 0)
    assert not cert.passed
    assert {"necessity", "neuron necessity"} <= failed_checks(cert), cert.reason()


def test_decoy_that_triggers_fails_specificity(case, monkeypatch):
    monkeypatch.setattr(_module(case), "DECOY_SHARE", 1.0)
    model, truth = case.planted(0)
    cert = _certify(case, model, truth, 0)
    assert "specificity" in failed_checks(cert), cert.reason()


def test_wrong_neuron_truth_fails_neuron_checks(case):
    """If the truth named distractor neurons instead, the neuron checks would catch it."""
    model, truth = case.planted(0)
    real = {names.parse_node(n).index for n in truth.neurons}
    fake = {names.neuron(1, i): "trigger_neuron" for i in range(32) if i not in real}
    fake = dict(list(fake.items())[:len(truth.neurons)])
    instance = Instance(model=model.to_bridge(), seed=0,
                        truth=dataclasses.replace(truth, neurons=fake))
    prompts = case.prompts(case.n_prompts, 0, "test")
    ablator = Ablator(instance.model, prompts, case.task_metric(prompts), seed=0)
    failed = {c.name for c in case.extra_checks(instance, prompts, ablator) if not c.passed}
    assert {"neuron necessity", "neuron sufficiency"} <= failed
