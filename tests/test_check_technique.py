"""The conformance suite: built-ins pass every check, broken adapters fail the right one."""
import pytest

from mibench.cli.main import main
from mibench.registry import technique_entries
from mibench.testing import check_technique, parametrize_with_checks

BUILT_IN = sorted(name for name, entry in technique_entries().items() if entry.source.endswith(".py"))


def test_every_issue_adapter_is_registered():
    assert set(BUILT_IN) >= {
        "random", "dla", "logit_lens", "tuned_lens", "activation_patching", "causal_tracing",
        "zero_ablation", "mean_ablation", "resample_ablation", "attribution_patching", "eap_ig",
        "integrated_gradients", "linear_probe", "composition_scores", "head_detector"}


@parametrize_with_checks(BUILT_IN)
def test_builtin_adapters_conform(technique, check):
    check(technique)


@pytest.mark.parametrize("fixture, failing", [
    ("raises", "check_output_index_and_values"),
    ("returns_nan", "check_output_index_and_values"),
    ("unknown_names", "check_output_index_and_values"),
    ("mutates_weights", "check_leaves_weights_unchanged"),
    ("syntax_error", "check_loads"),
])
def test_broken_adapters_fail(fixture, failing, fixture_technique):
    report = check_technique(fixture_technique(fixture))
    failed = {name for name, status, _ in report.results if status == "failed"}
    assert failing in failed and not report.ok


@pytest.mark.parametrize("fixture, why", [
    ("truth_by_closure", "no case reachable from the view's metric"),
    ("truth_by_import", "ground_truth is out of a technique's reach"),
    ("truth_by_search", "no Truth in this process"),
    ("exits", "exited with code 3 before returning scores"),
])
def test_adapters_that_reach_for_the_truth_or_crash_fail_with_the_reason(fixture, why, fixture_technique):
    """Each runs in a worker, as the runner runs it; none of these spellings of the old in-process
    leaks (the case behind the metric, an import of the case, a search of the process) finds a
    truth there, and the check's line says what happened."""
    report = check_technique(fixture_technique(fixture))
    messages = {name: message for name, status, message in report.results if status == "failed"}
    assert why in messages["check_output_index_and_values"] and not report.ok


def test_the_import_spelling_would_find_the_truth_outside_a_worker(fixture_technique):
    """The same adapter run in this process (which may import ground_truth) scores the truth
    perfectly: what stops it under check-technique and the runner is the worker, not the adapter."""
    from mibench.api import CaseView
    from mibench.registry import load_case, load_technique
    import numpy as np

    from mibench.scoring import auroc

    case = load_case("induction")
    instance = case.build(0)
    prompts = case.prompts(8, 0)
    view = CaseView.of(case, instance.model, prompts, prompts, "node", 0)
    scores = load_technique(fixture_technique("truth_by_import")).attribute(view)
    labels = np.array([c in instance.truth.nodes for c in scores.index])
    assert auroc(scores.to_numpy(), labels) == 1.0


def test_checks_run_every_declared_granularity_on_a_case_with_mlps(monkeypatch):
    """integrated_gradients scores nodes and neurons: both run, on cases whose models have MLPs."""
    from mibench import names, testing

    asked = []
    real = testing._check_unit
    monkeypatch.setattr(testing, "_check_unit", lambda g: asked.append(g) or real(g))
    report = check_technique("integrated_gradients")
    assert report.ok and {"node", "neuron"} <= set(asked)
    assert names.mlp(0) in real("node")[1] and real("neuron")[1]


def test_cli_prints_counts(capsys, fixture_technique):
    assert main(["check-technique", "dla"]) == 0
    out = capsys.readouterr().out
    assert "dla: 7 passed, 0 failed, 0 skipped" in out
    assert main(["check-technique", fixture_technique("raises")]) == 1


def test_cli_unknown_name_is_a_one_line_error(capsys):
    assert main(["check-technique", "dlaa"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Unknown technique 'dlaa'. Did you mean 'dla'" in err and len(err.splitlines()) == 1
