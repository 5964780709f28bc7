import json

from mibench.results import SCHEMA_VERSION, RunRecord, load_records, write_record


def _record(**kw):
    base = dict(technique="dla", case="induction", seed=0, granularity="node", status="ok",
                metrics={"auroc": float("nan")})
    return RunRecord(**{**base, **kw})


def test_write_is_atomic_and_round_trips(tmp_path):
    path = write_record(tmp_path, _record())
    assert path == tmp_path / "dla" / "induction" / "seed0.json"
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
    records, excluded = load_records(tmp_path)
    assert len(records) == 1
    reasons = {e.path.split("/")[-2]: e.reason for e in excluded}
    assert "unreadable JSON" in reasons["other"] and "schema_version 0" in reasons["old"]
