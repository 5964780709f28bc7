"""``mibench export-graph`` and ``mibench score-graph``: a run exported to an MIB graph and scored
back gives the figures the runner stored; MIB's published EAP-IG circuit scored against the
gpt2_ioi case; one-line errors for bad inputs.

The subcommands are called through their own ``add_arguments`` and ``main`` (the lead registers
them in ``mibench.cli.main``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from conftest import prepared
from mibench.api import MibenchError
from mibench.cli import export_graph, score_graph
from mibench.mib import read_graph
from mibench.registry import load_case, load_technique
from mibench.results import write_record
from mibench.runner import run_one

FIXTURE = Path(__file__).parent / "fixtures" / "mib" / "ioi-eap-ig.json"
TECHNIQUE, CASE, SEED = "attribution_patching", "ioi", 0
SIZE = "small"  # what conftest.prepared builds, so the session shares one certified instance


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def score_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert score_graph.main(parse(score_graph, [*argv, "--json"])) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs filed as ``mibench run`` files them (what ``run_grid`` does for each run of a
    unit: ``run_one``, then ``write_record``), on the session's certified ioi small seed 0: AtP
    at node granularity and EAP at edge granularity."""
    results = tmp_path_factory.mktemp("results")
    technique = load_technique(TECHNIQUE)
    records = {g: run_one(technique, prepared(CASE, SEED), g) for g in ("node", "edge")}
    for record in records.values():
        assert record.status == "ok", record.error
        write_record(results, record)
    return results, records


@pytest.mark.parametrize("granularity", ["edge", "node"])
def test_an_exported_run_scores_as_the_runner_scored_it(runs, tmp_path, capsys, granularity):
    results, records = runs
    record = records[granularity]
    out = tmp_path / f"{granularity}.json"
    assert export_graph.main(parse(export_graph, ["--technique", record.technique, "--case", CASE,
                                                  "--seed", str(SEED), "--size", SIZE,
                                                  "--results", str(results), str(out)])) == 0
    assert f"the top {len(record.truth_labels)} by |score|" in capsys.readouterr().out
    scored = score_json(capsys, [str(out), "--case", CASE, "--seed", str(SEED), "--size", SIZE])
    figures = scored[granularity]
    for name in ("auroc", "ap", "precision_at_k", "recall_at_k", "f1_at_k"):
        assert figures[name] == pytest.approx(record.metrics[name], abs=1e-9), name
    assert figures["k"] == record.metrics["k"] == len(record.truth_labels)
    assert 0.5 < record.metrics["auroc"] < 1.0  # a ranking with errors: the equality is not 1 == 1
    graph = read_graph(out)
    assert (graph.scores if granularity == "edge" else graph.node_scores).to_dict() == record.scores
    # the default circuit is the top k by |score|, k the truth set's size; scored, the truth's nil
    # edges leave it as they leave scoring
    circuit = graph.edges_in_graph if granularity == "edge" else graph.nodes_in_graph - {"input", "logits"}
    assert len(circuit) == len(record.truth_labels)
    assert figures["in_graph"]["recall"] == len(circuit & set(record.truth_labels)) / len(record.truth_labels)


def test_top_n_sets_the_circuit_size(runs, tmp_path, capsys):
    results, records = runs
    out = tmp_path / "edge.json"
    export_graph.main(parse(export_graph, ["--technique", records["edge"].technique, "--case", CASE,
                                           "--size", SIZE, "--results", str(results), "--top-n", "7", str(out)]))
    assert len(read_graph(out).edges_in_graph) == 7
    assert "(--top-n)" in capsys.readouterr().out


def test_a_missing_result_names_the_command_that_makes_it(tmp_path):
    args = parse(export_graph, ["--technique", "eap_ig", "--case", CASE, "--seed", "3", "--size", SIZE,
                                "--results", str(tmp_path), str(tmp_path / "out.json")])
    with pytest.raises(MibenchError, match=r"run `mibench run --technique eap_ig --case ioi --seeds 3 "
                                           r"--size small --results "):
        export_graph.main(args)


def test_mibs_published_circuit_against_the_gpt2_ioi_case(capsys):
    """EAP-IG's IOI circuit from MIB, against Wang et al.'s heads: far above chance at both
    granularities, and the table says how node scores were made."""
    scored = score_json(capsys, [str(FIXTURE), "--case", "gpt2_ioi"])
    truth = load_case("gpt2_ioi").truth(0, scored["size"])
    assert scored["node"]["k"] == len(truth.nodes) and scored["edge"]["k"] == len(truth.labels("edge"))
    assert scored["node"]["auroc"] > 0.8 and scored["edge"]["auroc"] > 0.8
    assert scored["node"]["in_graph"]["recall"] > 0.8  # MIB's circuit holds most of the paper's heads
    assert score_graph.main(parse(score_graph, [str(FIXTURE), "--case", "gpt2_ioi", "--rule", "in+out"])) == 0
    table = capsys.readouterr().out
    assert "incoming and outgoing edges (--rule in+out)" in table and "in_graph recall" in table


def test_score_graph_help_states_the_node_rule():
    parser = argparse.ArgumentParser()
    score_graph.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "sum of |score| over each head's and MLP's outgoing edges" in text


def test_a_file_that_is_not_json(tmp_path):
    bad = tmp_path / "graph.json"
    bad.write_text("this is not JSON")
    with pytest.raises(MibenchError, match=r"graph.json is not an MIB graph file"):
        score_graph.main(parse(score_graph, [str(bad), "--case", "induction", "--size", "small"]))


def test_a_graph_of_another_model(capsys):
    with pytest.raises(MibenchError, match=r"is a graph of a 12-layer, 12-head model with MLPs, but case "
                                           r"induction at size small is a 2-layer, 4-head model without MLPs"):
        score_graph.main(parse(score_graph, [str(FIXTURE), "--case", "induction", "--size", "small"]))
