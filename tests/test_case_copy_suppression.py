"""The copy_suppression case: its certificate passes on seeds 0-4 and fails when the mechanism it
checks is removed from the planted weights."""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import certify_instance, failed_checks

from mibench.api import Instance
from mibench.names import parse_node
from mibench.registry import load_case
from mibench.runner import prepare

SEEDS = range(5)


@pytest.fixture(scope="module")
def case():
    return load_case("copy_suppression")


def _certify(case, model, truth, seed):
    return certify_instance(case, Instance(model=model.to_bridge(), truth=truth, seed=seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_certificate_passes(case, seed):
    start = time.perf_counter()
    case.build(seed)
    print(f"\ncopy_suppression seed {seed}: build {time.perf_counter() - start:.2f} s")
    cert = prepare(case, seed).certificate
    assert cert.passed, cert.reason()
    names = [c.name for c in cert.checks]
    assert any(n.startswith("suppression direct effect") for n in names)
    assert any(n.startswith("suppression write") for n in names)


def test_medium_certifies(case):
    """At medium (6 × 8) the circuit is two heads among 46 look-alike channel heads."""
    prep = prepare(case, 0, size="medium")
    assert len(prep.ablator.all_nodes) == 48
    assert prep.certificate.passed, prep.certificate.reason()


def test_truth_and_metadata(case):
    truth = case.build(0).truth
    assert sorted(truth.nodes.values()) == ["copier", "copy_suppression"]
    (cs,) = [n for n, r in truth.nodes.items() if r == "copy_suppression"]
    assert truth.direct[cs] == -1
    assert cs.startswith("a1.") and truth.answer_layer == 1
    assert set(case.granularities) <= set(truth.granularities())


def test_roles_move_with_the_seed(case):
    placements = {tuple(sorted(case.build(s).truth.nodes)) for s in SEEDS}
    assert len(placements) > 1


def test_prompts(case):
    p = case.prompts(32, 0, "test")
    idx = np.arange(32)
    assert (p.clean[idx, p.positions["D"]] == p.wrong).all()
    assert not (p.clean == p.answer[:, None]).any()  # the answer is never in the context
    assert not (p.corrupted == p.wrong[:, None]).any()  # nothing to copy in corrupted prompts
    train = case.prompts(32, 0, "train")
    assert not (train.clean == p.clean).all()


def _head(truth, role):
    """(layer, head) of the node holding ``role``."""
    (node,) = [n for n, r in truth.nodes.items() if r == role]
    parsed = parse_node(node)
    return parsed.layer, parsed.index


def test_zeroing_suppressor_ov_fails(case):
    model, truth = case.planted(0)
    model.W_O[_head(truth, "copy_suppression")] = 0.0
    cert = _certify(case, model, truth, 0)
    failed = failed_checks(cert)
    assert not cert.passed
    assert {"suppression write", "suppression direct effect", "necessity"} <= failed, cert.reason()


def test_suppressor_without_copy_matching_fails(case):
    """Key no longer reads token identity: the head cannot find the predicted token."""
    model, truth = case.planted(0)
    model.W_K[_head(truth, "copy_suppression")] = 0.0
    cert = _certify(case, model, truth, 0)
    failed = failed_checks(cert)
    assert "suppression attention" in failed, cert.reason()
    assert not cert.passed


def test_zeroing_copier_ov_fails(case):
    model, truth = case.planted(0)
    model.W_O[_head(truth, "copier")] = 0.0
    cert = _certify(case, model, truth, 0)
    assert not cert.passed
