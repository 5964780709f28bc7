import json

from mibench.results import SCHEMA_VERSION, RunRecord, load_records, write_record


def _record(**kw):
    base = dict(technique="dla", case="induction", seed=0, granularity="node", status="ok",
                metrics={"auroc": float("nan")})
    return RunRecord(**{**base, **kw})


def test_write_is_atomic_and_round_trips(tmp_path):
    path = write_record(tmp_path, _record())
    assert path == tmp_path / "dla" / "induction" / "small" / "seed0.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["metrics"]["auroc"] is None
    assert not list(tmp_path.rglob("*.tmp"))
    records, excluded = load_records(tmp_path)
    assert len(records) == 1 and not excluded


def test_unreadable_or_foreign_files_are_excluded_with_a_reason(tmp_path):
    write_record(tmp_path, _record())
    bad = tmp_path / "dla" / "other" / "seed0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    old = tmp_path / "dla" / "old" / "seed0.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"schema_version": 0}))
    v1 = tmp_path / "dla" / "v1" / "seed0.json"  # before provenance
    v1.parent.mkdir(parents=True)
    v1.write_text(json.dumps({**_record().to_json(), "schema_version": 1}))
    records, excluded = load_records(tmp_path)
    assert len(records) == 1
    reasons = {e.path.split("/")[-2]: e.reason for e in excluded}
    assert "unreadable JSON" in reasons["other"] and "schema_version 0" in reasons["old"]
    assert reasons["v1"] == f"schema_version 1, expected {SCHEMA_VERSION}"


def test_records_carry_provenance(tmp_path):
    import subprocess
    from datetime import datetime, timedelta, timezone
    from importlib.metadata import version
    from pathlib import Path

    import mibench

    record = _record()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(mibench.__file__).parent,
                          capture_output=True, text=True).stdout.strip()
    # -dirty when this checkout has uncommitted code changes (see the test below)
    assert record.mibench_commit in ((head, head + "-dirty") if head else (None,))
    assert record.torch_version == version("torch")
    assert record.transformer_lens_version == version("transformer-lens")
    assert record.python_version.count(".") == 2
    made = datetime.fromisoformat(record.created_utc)
    assert made.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - made) < timedelta(minutes=1)
    write_record(tmp_path, record)
    (loaded,), _ = load_records(tmp_path)
    assert loaded.created_utc == record.created_utc and loaded.mibench_commit == record.mibench_commit


def test_git_commit_only_of_mibench_own_checkout(tmp_path, monkeypatch):
    import subprocess

    from mibench.results import _git_commit

    assert _git_commit(tmp_path) is None  # not a git checkout
    repo = tmp_path / "project"
    package = repo / "venv" / "site-packages" / "mibench"
    package.mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    assert _git_commit(package) is None  # inside another project's repository: not ours
    own = repo / "mibench"
    own.mkdir()
    assert len(_git_commit(own)) == 40
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert _git_commit(own) is None  # git missing


def test_files_missing_a_field_are_excluded_not_filled_in(tmp_path):
    path = write_record(tmp_path, _record())
    data = json.loads(path.read_text())
    del data["created_utc"]
    path.write_text(json.dumps(data))
    records, excluded = load_records(tmp_path)
    assert not records and "missing fields ['created_utc']" in excluded[0].reason


def test_load_record_says_which_file_and_what_is_wrong(tmp_path):
    import pytest

    from mibench.api import MibenchError
    from mibench.results import load_record

    path = write_record(tmp_path, _record())
    assert load_record(path).technique == "dla"
    path.write_text(json.dumps({**json.loads(path.read_text()), "extra": 1}))
    with pytest.raises(MibenchError, match=r"seed0\.json' is unusable: unknown fields \['extra'\]") as info:
        load_record(path)
    assert len(str(info.value).splitlines()) == 1


def test_provenance_commit_says_when_the_code_was_not_committed(tmp_path):
    """A result computed by uncommitted code is marked -dirty; changed results are not code."""
    import subprocess

    from mibench.results import _git_commit

    package = tmp_path / "mibench"
    (package).mkdir()
    (package / "code.py").write_text("x = 1\n")
    (tmp_path / "leaderboard").mkdir()
    (tmp_path / "leaderboard" / "r.json").write_text("{}\n")
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],  # noqa: E731
                                       cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert _git_commit(package) == head
    (tmp_path / "leaderboard" / "r.json").write_text('{"new": 1}\n')
    assert _git_commit(package) == head
    (package / "code.py").write_text("x = 2\n")
    assert _git_commit(package) == head + "-dirty"
