"""The verification track: causal scrubbing on the induction circuit, claims of known status that
never carry their status, the error-rate arithmetic, and `mibench verify-claims`."""
from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import prepared

from mibench import names
from mibench.api import CaseView, Truth
from mibench.cli.main import main
from mibench.runner import run_seed
from mibench.verification import load_verifiers, verifier_classes
from mibench.verification.claims import build_claims, lookalike
from mibench.verification.track import VerificationRecord, error_rates, load_records, wilson
from mibench.verification.verifier import Claim


def _view(prep):
    return CaseView.of(prep.case, prep.instance.model, prep.prompts, prep.train_prompts, "node",
                       run_seed(prep.case.name, prep.instance.seed, prep.sample))


def _role(truth: Truth, role: str) -> str:
    return next(node for node, r in truth.nodes.items() if r == role)


def test_causal_scrubbing_accepts_induction_and_rejects_it_without_the_previous_token_head():
    prep = prepared("induction", 0)
    truth, view = prep.instance.truth, _view(prep)
    [scrubbing] = load_verifiers("causal_scrubbing")
    whole = scrubbing.verify(view, Claim(truth.nodes))
    assert whole.accept and whole.statistic >= scrubbing.threshold, whole.detail
    without = scrubbing.verify(view, Claim(set(truth.nodes) - {_role(truth, "previous_token")}))
    assert not without.accept and without.statistic < 0.5, without.detail


def test_claims_have_their_stated_statuses_and_carry_only_nodes():
    prep = prepared("induction", 0)
    truth, shape = prep.instance.truth, names.Shape.of(prep.instance.model)
    claims = build_claims(truth, shape, 0)
    assert [f.name for f in dataclasses.fields(Claim)] == ["nodes"]  # nothing else reaches a verifier
    by_label = {c.label: c for c in claims}
    assert set(by_label) == {"true", "minus_role:induction", "minus_role:previous_token", "plus_distractor",
                             "swap_lookalike:induction", "swap_lookalike:previous_token", "random"}
    assert [c.label for c in claims if c.correct] == ["true"]
    true_nodes = set(truth.nodes)
    assert by_label["true"].claim.nodes == true_nodes
    assert by_label["minus_role:induction"].claim.nodes == true_nodes - {_role(truth, "induction")}
    padded = by_label["plus_distractor"].claim.nodes
    assert padded > true_nodes and len(padded) == len(true_nodes) + 1
    swapped_out = _role(truth, "previous_token")
    swapped = by_label["swap_lookalike:previous_token"].claim.nodes
    [newcomer] = swapped - true_nodes
    assert swapped - {newcomer} == true_nodes - {swapped_out}
    assert names.parse_node(newcomer).kind == "head" and names.node_layer(newcomer) == names.node_layer(swapped_out)
    assert by_label["random"].claim.nodes != true_nodes and len(by_label["random"].claim) == len(true_nodes)
    assert build_claims(truth, shape, 0) == claims  # seeded: the same claims on every run


def test_a_lookalike_mlp_comes_from_the_nearest_layer_the_lower_on_a_tie():
    import numpy as np

    rng = np.random.default_rng(0)
    assert lookalike("m2", ["a2.h0", "m0", "m1", "m3"], rng) == "m1"
    assert lookalike("a2.h0", ["a2.h1", "a1.h0", "m2"], rng) == "a2.h1"
    assert lookalike("m2", ["a2.h0"], rng) is None


def _record(verifier: str, verdicts: list[tuple[str, bool, bool]], status: str = "ok") -> VerificationRecord:
    return VerificationRecord(verifier=verifier, case="c", seed=0, size="small", status=status, verdicts=[
        {"label": kind, "kind": kind, "role": "", "nodes": [], "correct": correct, "accept": accept,
         "statistic": 0.0, "p_value": None, "detail": "", "runtime_s": 0.0}
        for kind, correct, accept in verdicts])


def test_error_rates_count_accepted_wrong_and_rejected_true_claims():
    records = [
        _record("v", [("true", True, True), ("minus_role", False, True), ("minus_role", False, False),
                      ("random", False, False)]),
        _record("v", [("true", True, False), ("plus_distractor", False, True), ("random", False, False)]),
        _record("v", [("true", True, False)], status="uncertified"),  # not judged: counted apart
        _record("w", [("true", True, True), ("random", False, False)]),
    ]
    rates = error_rates(records)
    v = rates["v"]
    assert (v.far.k, v.far.n) == (2, 5) and (v.frr.k, v.frr.n) == (1, 2)
    assert {k: (r.k, r.n) for k, r in v.by_type.items()} == {
        "true": (1, 2), "minus_role": (1, 2), "plus_distractor": (1, 1), "random": (0, 2)}
    assert (v.instances, v.unjudged) == (2, 1)
    assert (rates["w"].far.k, rates["w"].frr.k) == (0, 0)
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_the_four_verifiers_are_discovered():
    assert {"causal_scrubbing", "equivalence", "independence", "minimality"} <= set(verifier_classes())


def test_verify_claims_runs_one_verifier_on_one_case_and_prints_the_table(tmp_path, capsys, monkeypatch):
    # the instance the other tests built (building and certifying is what costs here)
    cached = prepared("induction", 0)
    monkeypatch.setattr("mibench.runner.prepare", lambda case, seed, size: cached)
    code = main(["verify-claims", "--verifier", "causal_scrubbing", "--case", "induction", "--seeds", "0",
                 "--size", "small", "--results", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "## Verification track" in out and "| causal_scrubbing" in out and "false acceptance" in out
    [record] = load_records(tmp_path)
    assert record.status == "ok" and record.python_version and record.torch_version and record.machine
    assert {v["label"] for v in record.verdicts} >= {"true", "minus_role:previous_token"}
    assert next(v for v in record.verdicts if v["label"] == "true")["accept"]


def test_the_leaderboard_section_breaks_errors_down_by_case_and_runtimes_stay_out():
    from mibench.report.verification import case_rows, render_markdown, runtime_rows

    records = [_record("v", [("true", True, True), ("random", False, True)]),
               _record("v", [("true", True, False), ("random", False, False)])]
    records[1].case, records[0].runtime_s, records[1].runtime_s = "trap_backup", 1.0, 3.0
    headers, rows = case_rows(records)
    assert headers[1:] == [records[0].case, "trap_backup"]  # planted cases before traps
    assert rows == [["v", "1/1 · 0/1", "0/1 · 1/1"]]
    text = render_markdown(records)
    assert "### By case" in text and "1/1 · 0/1" in text
    records[0].runtime_s = 99.0  # runtimes go to RUNTIMES.md, never into the section
    assert render_markdown(records) == text
    assert runtime_rows(records) == [["v", "2", "4", "25.50"]]
