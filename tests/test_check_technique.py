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


def test_cli_prints_counts(capsys, fixture_technique):
    assert main(["check-technique", "dla"]) == 0
    out = capsys.readouterr().out
    assert "dla: 7 passed, 0 failed, 0 skipped" in out
    assert main(["check-technique", fixture_technique("raises")]) == 1


def test_cli_unknown_name_is_a_one_line_error(capsys):
    assert main(["check-technique", "dlaa"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Unknown technique 'dlaa'. Did you mean 'dla'" in err and len(err.splitlines()) == 1
