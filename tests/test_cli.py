"""The command line: the issue's commands, one-line errors with exit code 2, error runs recorded."""
import json
import subprocess
import sys

import pytest

from mibench.cli.main import main


def _cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "mibench.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def test_run_json_prints_one_ok_record_per_seed(tmp_path):
    code, out, err = _cli("run", "--technique", "activation_patching", "--case", "induction",
                          "--seeds", "0-4", "--size", "small", "--json", "--results", str(tmp_path))
    assert code == 0, err
    runs = [json.loads(line) for line in out.splitlines()]
    assert len(runs) == 5 and all(r["status"] == "ok" for r in runs)
    # piped, not a terminal: no progress bar, but a line per finished (case, seed)
    lines = err.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("[5/5 runs] induction seed 4: 1 ok; certifying ")
    for key in ("technique", "case", "seed", "granularity", "status", "auroc", "ap", "precision_at_k",
                "recall_at_k", "f1_at_k", "faithfulness", "runtime_s", "error"):
        assert key in runs[0]
    assert all(r["auroc"] == 1.0 for r in runs)
    assert len(list(tmp_path.glob("activation_patching/induction/small/seed*.json"))) == 5


@pytest.mark.parametrize("args, message", [
    (["run", "--technique", "activation_pacthing"], "Unknown technique 'activation_pacthing'. Did you mean 'activation_patching'"),
    (["run", "--technique", "dla", "--case", "inducton"], "Unknown case 'inducton'. Did you mean 'induction'"),
    (["run", "--technique", "dla", "--seeds", "4-1"], "bad seed range '4-1'"),
    (["run", "--technique", "dla", "--seeds", "x"], "bad seed range 'x'"),
    (["verify", "--case", "nope"], "Unknown case 'nope'"),
    (["leaderboard", "--results", "/nonexistent/results"], "results folder '/nonexistent/results' does not exist"),
    (["run"], "the following arguments are required: --technique"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(args))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_broken_adapter_file_is_a_one_line_error(fixture_technique, capsys):
    assert main(["run", "--technique", fixture_technique("syntax_error"), "--case", "induction",
                 "--seeds", "0", "--size", "small"]) == 2
    err = capsys.readouterr().err
    assert "cannot import" in err and "SyntaxError" in err and len(err.strip().splitlines()) == 1


def test_failing_techniques_are_recorded_and_others_finish(tmp_path, fixture_technique):
    techniques = ",".join([fixture_technique(n) for n in ("raises", "returns_nan", "unknown_names",
                                                           "mutates_weights")] + ["dla"])
    code, out, err = _cli("run", "--technique", techniques, "--case", "induction", "--seeds", "0",
                          "--size", "small", "--json", "--results", str(tmp_path))
    assert code == 1  # some runs errored
    runs = {r["technique"]: r for r in map(json.loads, out.splitlines())}
    assert runs["dla"]["status"] == "ok"
    assert "this adapter always fails" in runs["fixture_raises"]["error"]
    assert "non-finite scores" in runs["fixture_nan"]["error"]
    assert "unknown component names ['a9.h9']" in runs["fixture_unknown"]["error"]
    assert "changed the model's weights" in runs["fixture_mutates"]["error"]
    for name in ("fixture_raises", "fixture_nan", "fixture_unknown", "fixture_mutates", "dla"):
        record = json.loads((tmp_path / name / "induction" / "small" / "seed0.json").read_text())
        assert record["status"] == ("ok" if name == "dla" else "error")


def test_list_and_leaderboard(tmp_path):
    code, out, _ = _cli("list", "techniques")
    assert code == 0 and all(t in out for t in ("random", "activation_patching", "dla"))
    code, out, _ = _cli("list", "cases")
    assert code == 0 and "induction" in out and "planted" in out
    results = tmp_path / "results"
    run = ("run", "--technique", "dla,random", "--case", "induction", "--seeds", "0-1", "--size", "small",
           "--results", str(results))
    assert _cli(*run)[0] == 0
    # a rerun keeps the 8 current results (dla; random at node, edge, layer) instead of rewriting them
    code, out, _ = _cli(*run)
    assert code == 0 and "0 runs written" in out and "8 current results kept" in out
    assert f"next: mibench leaderboard --size small --results {results}   (LEADERBOARD.md" in out
    code, out, err = _cli("leaderboard", "--results", str(results), "--size", "small")  # written beside them
    assert code == 0, err
    first = (results / "LEADERBOARD.md").read_text()
    assert "| dla" in first and "induction" in first and (results / "RUNTIMES.md").is_file()
    _cli("leaderboard", "--results", str(results), "--out", str(tmp_path), "--size", "small")
    assert (tmp_path / "LEADERBOARD.md").read_text() == first  # byte-identical regeneration
    # private-seed results beside public ones: refused, not blended into one table
    assert _cli("run", "--technique", "dla", "--case", "induction", "--seeds", "2", "--size", "small",
                "--results", str(results), "--seed-salt", "s3cret")[0] == 0
    code, _, err = _cli("leaderboard", "--results", str(results), "--out", str(tmp_path), "--size", "small")
    assert code == 2 and "mixes results on private seeds" in err and len(err.strip().splitlines()) == 1


def test_verify_prints_certificates():
    code, out, _ = _cli("verify", "--case", "induction", "--seeds", "0", "--size", "small", "--skip-audit")
    assert code == 0
    assert "induction (small) seed 0: PASS" in out and "necessity" in out and ">= 0.9" in out
    assert "fingerprint audit: skipped" in out
    # the K-composition edge carries the effect; the queries' input edges never change (nil)
    assert "previous_token -> induction <k>" in out and "3 of 7 truth edges are nil" in out
    assert "MISLABELLED" not in out


def test_verify_rejects_a_size_the_case_does_not_build():
    code, _, err = _cli("verify", "--case", "trap_suppression", "--size", "huge", "--skip-audit")
    assert code == 2 and "has no 'huge' size" in err


def test_verify_fails_a_case_that_its_fingerprint_gives_away(monkeypatch, capsys):
    """A case built the old way (two loud circuit heads among quiet distractors): the audit says
    so and verify exits 1."""
    from test_fingerprint import _OldStyle

    from mibench.cli import common, main as cli_main
    from mibench import registry

    monkeypatch.setattr(registry, "load_case", lambda name: _OldStyle())
    monkeypatch.setattr(common, "case_names", lambda pattern: ["old_style"])
    code = cli_main.main(["verify", "--case", "old_style", "--seeds", "0", "--audit-seeds", "0-5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "old_style (small) fingerprint audit over seeds 0-5" in out and "FAIL" in out
    assert "old_style (small) fingerprint audit (ov_norm" in out


def test_case_patterns():
    from mibench.api import MibenchError
    from mibench.cli.common import case_names

    traps = case_names("trap_*")
    assert len(traps) == 7 and all(t.startswith("trap_") for t in traps)
    assert case_names("induction,trap_b*") == ["induction", "trap_backup", "trap_bias_component"]
    with pytest.raises(MibenchError, match="no case matches 'nope_\\*'"):
        case_names("nope_*")


def test_closed_pipe_exits_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "mibench.cli.main", "list", "techniques"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before mibench writes, as with `| head -3`
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == ""


def test_report_reads_through_the_schema_check(tmp_path, capsys):
    from mibench.results import SCHEMA_VERSION, RunRecord, write_record

    path = write_record(tmp_path, RunRecord(technique="dla", case="induction", seed=0,
                                            granularity="node", status="ok"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 1}))
    assert main(["report", "--technique", "dla", "--case", "induction", "--size", "small",
                 "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and f"schema_version 1, expected {SCHEMA_VERSION}" in err and len(err.splitlines()) == 1


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout the tests run from")
def test_the_quick_start_leaves_a_fresh_clone_clean_and_says_what_next(tmp_path):
    """The README's first command, on one instance: results go to ./mibench-results (ignored by
    git), never into the committed leaderboard, and the run ends with where they went and the
    next commands."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True)
    code, out, err = _cli("run", "--technique", "activation_patching", "--case", "induction",
                          "--seeds", "0", "--size", "small", cwd=clone)
    assert code == 0, err
    assert list((clone / "mibench-results").glob("activation_patching/induction/small/seed0.json"))
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
    assert "1 runs written to mibench-results/" in out
    assert "next: mibench leaderboard --size small --results mibench-results" in out
    assert "mibench report --technique activation_patching --case induction --seed 0" in out
    code, out, err = _cli("leaderboard", "--size", "small", cwd=clone)  # the next step, as printed
    assert code == 0, err
    assert (clone / "mibench-results" / "LEADERBOARD.md").is_file()
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                          capture_output=True, text=True, check=True).stdout == ""
