"""The metrics table is the one owner of metric names: scoring computes exactly its entries, and
every view (result summary, both terminal tables, the leaderboard) shows whatever it holds."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from mibench import metrics
from mibench.api import Truth
from mibench.cli.main import main
from mibench.names import GRANULARITIES
from mibench.results import RunRecord, load_records
from mibench.scoring import score_run

DETAILS = {"k", "n_components", "recall_by_role", "failures"}  # what score_run adds to the metrics


def test_table_is_well_formed():
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names)) and len({m.label for m in metrics.METRICS}) == len(names)
    for m in metrics.METRICS:
        assert m.description and set(m.granularities) <= set(GRANULARITIES), m.name
        assert dataclasses.is_dataclass(m) and m.__dataclass_params__.frozen
    # every granularity has at least the ranking metrics, as columns
    assert all({"auroc", "ap", "f1_at_k"} <= {m.name for m in metrics.columns([g])} for g in GRANULARITIES)


def test_score_run_records_exactly_the_table_metrics_of_its_granularity():
    truth = Truth(nodes={"a1.h2": "ind"}, direct={"a1.h2": 1}, answer_layer=1)
    node = score_run(pd.Series({"a0.h0": 0.1, "a1.h2": 0.9}), truth, "node", signed=False)
    layer = score_run(pd.Series({"L0": 0.2, "L1": 0.9}), truth, "layer", signed=False)
    curves = {"faithfulness_curve", "faithfulness_counterfactual_curve", "faithfulness_optimal_curve"}
    assert set(node) == {m.name for m in metrics.applicable("node")} | DETAILS | curves
    assert set(layer) == {m.name for m in metrics.applicable("layer")} | DETAILS
    assert "answer_layer_error" in layer and "faithfulness" not in layer


def test_summary_has_every_metric_of_the_table():
    record = RunRecord(technique="dla", case="induction", seed=0, granularity="layer", status="ok",
                       metrics={"auroc": 0.75, "answer_layer_error": 1, "fooled": False})
    summary = record.summary()
    assert {m.name for m in metrics.METRICS} <= set(summary)
    assert summary["auroc"] == 0.75 and summary["answer_layer_error"] == 1 and summary["faithfulness"] is None
    assert summary["fooled"] is False
    json.dumps(summary)


def test_an_added_metric_shows_up_everywhere(tmp_path, monkeypatch, capsys):
    """One entry in the table: computed by scoring, stored in the result, and shown by `mibench
    run`, `mibench run --json`, `mibench report` and the leaderboard (Markdown and HTML)."""
    added = metrics.Metric("truth_share", "truth share",
                           "share of the components in the truth set; the chance level of AP.",
                           False, GRANULARITIES, lambda run: run.k / run.x.size)
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, added))
    results = tmp_path / "results"

    assert main(["run", "--technique", "random", "--case", "induction", "--seeds", "0",
                 "--size", "small", "--results", str(results), "--no-progress"]) == 0
    header, _, *rows = capsys.readouterr().out.splitlines()
    assert "truth share" in header and "faithful. (cf)" in header  # random runs at node, edge, layer
    records = {r.technique: r for r in load_records(results)[0]}
    assert set(records) == {"random", "random@edge", "random@layer"}
    value = records["random"].metrics["truth_share"]
    assert 0 < value < 1 and f"{value:.3f}" in next(row for row in rows if row.startswith("random "))
    assert records["random"].summary()["truth_share"] == value

    assert main(["run", "--technique", "random@node", "--case", "induction", "--seeds", "0", "--json",
                 "--size", "small", "--results", str(tmp_path / "again"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["truth_share"] == value

    assert main(["report", "--technique", "random", "--case", "induction", "--size", "small",
                 "--results", str(results)]) == 0
    assert f"truth share {value:.3f}" in capsys.readouterr().out

    out = tmp_path / "board"
    assert main(["leaderboard", "--results", str(results), "--out", str(out), "--size", "small"]) == 0
    board = (out / "LEADERBOARD.md").read_text()
    assert "- **truth share** (`truth_share`, lower is better): share of the components" in board
    rankings = board.split("## Rankings")[1].split("## Chance levels")[0]
    assert "| truth share" in rankings and f"{value:.2f}" in rankings
    assert "truth share" in board.split("**node granularity** (sorted by AUROC)")[1]
    page = (out / "report.html").read_text()
    assert "<th>truth share</th>" in page and "<b>truth share</b>" in page


def test_format_value():
    assert metrics.format_value(None) == "-"
    assert metrics.format_value(2) == "2"
    assert metrics.format_value(0.12345) == "0.123"


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_columns_of_one_granularity_are_defined_there(granularity):
    assert all(granularity in m.granularities and m.column for m in metrics.columns([granularity]))
