"""Unit tests of mibench/certificate.py: Check and Certificate semantics, and that ``certify`` on a
real instance (induction, seed 0) measures what each check claims to, failing when the truth labels
are wrong in the way that check measures.

Broken instances are made by editing the truth labels, not the model: the Ablator depends only on
the model and the prompts, so most tests certify an edited instance with the cached ablator of
``prepared("induction", 0)`` (cheap); one goes through ``conftest.certify_instance`` to show that
this is what the runner computes.
"""
from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import certify_instance, failed_checks, prepared
from mibench import certificate
from mibench.api import Truth
from mibench.certificate import THRESHOLDS, Certificate, Check, certify

# two cores shared with other jobs: one thread avoids oversubscription stalls
torch.set_num_threads(1)

CASE, SEED = "induction", 0
NAN, INF = float("nan"), float("inf")


# --- Check ------------------------------------------------------------------------------------

def test_check_at_least_passes_at_and_above_threshold_only():
    assert Check("x", 0.9, 0.9, ">=").passed
    assert Check("x", 0.95, 0.9, ">=").passed
    assert not Check("x", 0.8999, 0.9, ">=").passed


def test_check_at_most_passes_at_and_below_threshold_only():
    assert Check("x", 0.05, 0.05, "<=").passed
    assert Check("x", -1.0, 0.05, "<=").passed
    assert not Check("x", 0.0501, 0.05, "<=").passed


@pytest.mark.parametrize("op", [">=", "<="])
@pytest.mark.parametrize("value", [NAN, None, INF, -INF])
def test_check_never_passes_a_nan_none_or_infinite_value(value, op):
    """+inf would satisfy ``>=`` and -inf ``<=`` by comparison alone; a measurement that blew up
    (or was never made) must not certify anything."""
    assert not Check("x", value, 0.5, op).passed


# --- Certificate ------------------------------------------------------------------------------

def _cert(*checks: Check) -> Certificate:
    return Certificate("toy", 3, list(checks))


def test_certificate_without_checks_does_not_pass():
    assert not Certificate("toy", 0).passed


def test_certificate_passes_only_if_every_check_passes():
    good = [Check("accuracy", 1.0, 0.9, ">="), Check("strictness", 0.01, 0.05, "<=")]
    assert _cert(*good).passed
    assert not _cert(*good, Check("sufficiency", 0.5, 0.9, ">=")).passed
    assert not _cert(Check("necessity a0.h0", NAN, 0.5, "<="), *good).passed


def test_reason_names_each_failed_check_with_value_and_threshold():
    cert = _cert(Check("accuracy", 1.0, 0.9, ">="),
                 Check("necessity a0.h1", 0.75, 0.5, "<="),
                 Check("sufficiency", 0.25, 0.9, ">="))
    reason = cert.reason()
    assert "necessity a0.h1 = 0.750" in reason and "<= 0.5" in reason
    assert "sufficiency = 0.250" in reason and ">= 0.9" in reason
    assert "accuracy" not in reason  # passing checks are not reasons
    assert [c.name for c in cert.failed()] == ["necessity a0.h1", "sufficiency"]


def test_reason_is_empty_for_a_passing_certificate():
    assert _cert(Check("accuracy", 1.0, 0.9, ">=")).reason() == ""


def test_to_json_round_trips_and_records_passed_per_check():
    cert = _cert(Check("accuracy", 1.0, 0.9, ">=", "task accuracy"),
                 Check("strictness", 0.2, 0.05, "<=", "largest move (a1.h0)"))
    data = cert.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["case"] == "toy" and data["seed"] == 3 and data["passed"] is False
    assert [(c["name"], c["passed"]) for c in data["checks"]] == [("accuracy", True), ("strictness", False)]
    assert data["checks"][1] == {"name": "strictness", "value": 0.2, "threshold": 0.05, "op": "<=",
                                 "detail": "largest move (a1.h0)", "gates": True, "passed": False,
                                 "verdict": "FAIL"}


def test_a_measured_check_flags_without_failing_the_certificate():
    """The literature tier's checks report against a reference: a miss is a flag, not a failure."""
    cert = _cert(Check("accuracy", 1.0, 0.9, ">="), Check("complement", 0.7, 0.5, "<=", gates=False))
    assert cert.passed and cert.failed() == [] and cert.reason() == ""
    assert [c["verdict"] for c in cert.to_json()["checks"]] == ["pass", "flag"]


def test_rows_print_the_threshold_and_verdict_of_each_check():
    rows = _cert(Check("accuracy", 1.0, 0.9, ">="), Check("strictness", 0.2, 0.05, "<=")).rows()
    assert rows[0][:4] == ["accuracy", "1.000", ">= 0.9", "pass"]
    assert rows[1][:4] == ["strictness", "0.200", "<= 0.05", "FAIL"]


# --- certify on stand-ins (values chosen by the test) ----------------------------------------

class _StubAblator:
    """What certify reads of an Ablator, on the normalized scale directly: ``single[node]`` is the
    behaviour left with ``node`` ablated, ``kept`` the behaviour left with only the truth kept."""

    def __init__(self, single: dict[str, float], kept: float, accuracy: float = 1.0) -> None:
        self.all_nodes = list(single)
        self.single, self.kept = single, kept
        self.clean_logits = None
        self.metric = SimpleNamespace(accuracy=lambda logits: accuracy)

    def single_removals(self, nodes):
        return {n: self.single[n] for n in nodes}

    def normalized(self, value: float) -> float:
        return value

    def metric_keeping(self, kept) -> float:
        return self.kept


def _stub_certify(truth_nodes: dict[str, str], ablator: _StubAblator) -> Certificate:
    case = SimpleNamespace(name="stub", circuit=None, necessity_exempt={},
                           extra_checks=lambda instance, prompts, probe: [])
    instance = SimpleNamespace(truth=Truth(nodes=truth_nodes), seed=7)
    return certify(case, instance, None, ablator)


def test_stub_certificate_passes_and_has_no_labels_check_without_circuit_yaml():
    cert = _stub_certify({"a0.h0": "r"}, _StubAblator({"a0.h0": 0.1, "a0.h1": 1.0}, kept=1.0))
    assert cert.passed, cert.reason()
    assert [c.name for c in cert.checks] == ["accuracy", "necessity a0.h0", "sufficiency", "strictness"]
    assert (cert.case, cert.seed) == ("stub", 7)


def test_strictness_counts_a_move_in_either_direction():
    """A non-truth node whose ablation *raises* the behaviour (normalized 1.3) moves it by 0.3."""
    cert = _stub_certify({"a0.h0": "r"}, _StubAblator({"a0.h0": 0.1, "a0.h1": 1.3, "a0.h2": 0.98},
                                                      kept=1.0))
    strict = _check(cert, "strictness")
    assert strict.value == pytest.approx(0.3) and "a0.h1" in strict.detail
    assert failed_checks(cert) == {"strictness"}


def test_nan_normalized_values_fail_their_checks():
    """A metric that does not move under full ablation makes ``normalized`` NaN: nothing passes."""
    cert = _stub_certify({"a0.h0": "r"}, _StubAblator({"a0.h0": NAN, "a0.h1": NAN}, kept=NAN))
    assert failed_checks(cert) == {"necessity", "sufficiency", "strictness"}


# --- certify on a real instance ---------------------------------------------------------------

def _prep():
    return prepared(CASE, SEED)


def _with_nodes(nodes: dict[str, str]):
    """The induction instance with its truth's node labels replaced by ``nodes`` (model untouched)."""
    instance = _prep().instance
    return dataclasses.replace(instance, truth=dataclasses.replace(instance.truth, nodes=nodes))


def _certify_nodes(nodes: dict[str, str]) -> Certificate:
    """Certify relabelled truth with the cached ablator (it does not depend on the truth)."""
    prep = _prep()
    return certify(prep.case, _with_nodes(nodes), prep.prompts, prep.ablator)


def _role(role: str) -> str:
    (node,) = [n for n, r in _prep().instance.truth.nodes.items() if r == role]
    return node


def _distractor(layer: int) -> str:
    """A head of ``layer`` that the truth does not label."""
    truth = _prep().instance.truth.nodes
    return next(n for n in _prep().ablator.all_nodes if n.startswith(f"a{layer}.") and n not in truth)


def _check(cert: Certificate, name: str) -> Check:
    (found,) = [c for c in cert.checks if c.name == name]
    return found


def test_certify_produces_the_expected_checks():
    prep = _prep()
    truth = prep.instance.truth.nodes
    assert not prep.case.necessity_exempt  # else some necessity checks would be absent
    expected = {"accuracy", "labels match circuit.yaml", "sufficiency", "strictness",
                *(f"necessity {node}" for node in truth)}
    assert {c.name for c in prep.certificate.checks} == expected
    assert len(prep.certificate.checks) == len(expected)  # no duplicates


def test_certify_values_are_finite_and_in_range_and_pass():
    cert = _prep().certificate
    assert cert.passed, cert.reason()
    for c in cert.checks:
        if c.name != "labels match circuit.yaml":
            assert isinstance(c.value, float) and math.isfinite(c.value), c
    assert 0.9 <= _check(cert, "accuracy").value <= 1.0
    assert _check(cert, "labels match circuit.yaml").value == 0
    for c in cert.checks:
        if c.name.startswith("necessity "):
            assert -0.1 <= c.value <= 0.5, c
    assert 0.9 <= _check(cert, "sufficiency").value <= 1.1
    assert 0.0 <= _check(cert, "strictness").value <= 0.05


def test_certify_values_match_direct_ablations():
    """Each measured value is the Ablator quantity it claims to be, recomputed here one ablation
    at a time (not through the batched single_removals the certificate uses)."""
    prep = _prep()
    ab, truth, cert = prep.ablator, prep.instance.truth.nodes, prep.certificate
    assert _check(cert, "accuracy").value == ab.metric.accuracy(ab.clean_logits)
    for node in truth:
        alone = ab.normalized(ab.metric_without([node]))
        assert _check(cert, f"necessity {node}").value == pytest.approx(alone, abs=1e-4)
    kept = ab.normalized(ab.metric_without([n for n in ab.all_nodes if n not in truth]))
    assert _check(cert, "sufficiency").value == pytest.approx(kept, abs=1e-4)
    moves = [abs(1 - ab.normalized(ab.metric_without([n]))) for n in ab.all_nodes if n not in truth]
    assert _check(cert, "strictness").value == pytest.approx(max(moves), abs=1e-4)


def test_certify_uses_thresholds_and_ops_from_THRESHOLDS():
    expected_op = {"accuracy": ">=", "necessity": "<=", "sufficiency": ">=", "strictness": "<="}
    seen = set()
    for c in _prep().certificate.checks:
        kind = c.name.split()[0]
        if kind in THRESHOLDS:
            assert c.threshold == THRESHOLDS[kind], c
            assert c.op == expected_op[kind], c
            seen.add(kind)
    assert seen == set(expected_op) == set(THRESHOLDS)


def test_certify_reads_THRESHOLDS_when_it_runs(monkeypatch):
    """THRESHOLDS is the one place thresholds live: changing any entry changes the check that
    certify produces (and the verdict)."""
    truth = dict(_prep().instance.truth.nodes)
    assert _certify_nodes(truth).passed
    patched = {"accuracy": 1.5, "necessity": -0.75, "sufficiency": 1.25, "strictness": -1.0}
    for kind, value in patched.items():
        monkeypatch.setitem(certificate.THRESHOLDS, kind, value)
    cert = _certify_nodes(truth)
    for c in cert.checks:
        kind = c.name.split()[0]
        if kind in patched:
            assert c.threshold == patched[kind] and not c.passed, c
    assert failed_checks(cert) == set(patched)


def test_necessity_fails_for_a_distractor_labelled_as_circuit():
    """A distractor head given a real role (in the role's own layer, so the labels check holds):
    resample-ablating it leaves the whole behaviour, so its necessity check fails, and only it."""
    prep = _prep()
    extra = _distractor(0)
    cert = certify_instance(prep.case, _with_nodes({**prep.instance.truth.nodes, extra: "previous_token"}))
    assert failed_checks(cert) == {"necessity"}, cert.reason()
    assert [c.name for c in cert.failed()] == [f"necessity {extra}"]
    assert _check(cert, f"necessity {extra}").value > 0.9


def test_dropping_a_circuit_node_fails_labels_sufficiency_and_strictness():
    """Without the previous-token head in the truth, keeping only the truth loses the behaviour
    (sufficiency) and that head, now a non-truth node, moves the metric by ~1 (strictness). The
    role is then placed nowhere, which the labels check reports."""
    prep = _prep()
    dropped = _role("previous_token")
    cert = _certify_nodes({n: r for n, r in prep.instance.truth.nodes.items() if n != dropped})
    assert failed_checks(cert) == {"labels match circuit.yaml", "sufficiency", "strictness"}, cert.reason()
    assert "previous_token" in _check(cert, "labels match circuit.yaml").detail
    assert _check(cert, "sufficiency").value < 0.5
    strict = _check(cert, "strictness")
    assert strict.value > 0.5 and dropped in strict.detail


def test_misplaced_role_fails_necessity_sufficiency_and_strictness_not_labels():
    """The previous-token role moved to a distractor of the same layer: the labels check still
    holds, but the distractor is not necessary, the truth is not sufficient and the real head is
    a non-truth node that moves the metric."""
    prep = _prep()
    real, fake = _role("previous_token"), _distractor(0)
    nodes = {(fake if n == real else n): r for n, r in prep.instance.truth.nodes.items()}
    cert = _certify_nodes(nodes)
    assert failed_checks(cert) == {"necessity", "sufficiency", "strictness"}, cert.reason()
    assert [c.name for c in cert.failed() if c.name.startswith("necessity")] == [f"necessity {fake}"]
    assert real in _check(cert, "strictness").detail


def test_labels_check_fails_for_a_role_in_the_wrong_layer():
    prep = _prep()
    wrong_layer = _distractor(1)
    cert = _certify_nodes({**prep.instance.truth.nodes, wrong_layer: "previous_token"})
    labels = _check(cert, "labels match circuit.yaml")
    # two disagreements: with the other previous-token head (same role, other layer) and with the
    # induction head (same layer, where circuit.yaml puts it after)
    assert not labels.passed and labels.value == 2
    assert wrong_layer in labels.detail and "layer 0" in labels.detail


def test_necessity_exempt_roles_get_no_necessity_check(monkeypatch):
    prep = _prep()
    monkeypatch.setattr(prep.case, "necessity_exempt", {"previous_token": "exempt for this test"})
    extra = _distractor(0)
    cert = _certify_nodes({**prep.instance.truth.nodes, extra: "previous_token"})
    names = {c.name for c in cert.checks}
    assert f"necessity {extra}" not in names and f"necessity {_role('previous_token')}" not in names
    assert f"necessity {_role('induction')}" in names
    assert cert.passed, cert.reason()


def test_case_extra_checks_are_part_of_the_certificate(monkeypatch):
    prep = _prep()
    extra = Check("case-specific", 0.0, 1.0, ">=")
    monkeypatch.setattr(prep.case, "extra_checks", lambda instance, prompts, probe: [extra])
    cert = _certify_nodes(dict(prep.instance.truth.nodes))
    assert cert.checks[-1] is extra
    assert [c.name for c in cert.failed()] == ["case-specific"]


def test_an_unmeasured_value_prints_as_n_a_and_an_unknown_op_is_refused():
    cert = Certificate("c", 0, [Check("necessity a0.h0", None, 0.5, "<=")])
    assert cert.reason() == "necessity a0.h0 = n/a (needs <= 0.5)"
    assert cert.rows()[0][1] == "n/a"
    with pytest.raises(ValueError, match="op must be"):
        Check("x", 0.1, 0.5, ">")
