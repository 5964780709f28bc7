"""MIB interoperability on a real, externally produced file: MIB's published EAP-IG circuit for
IOI on GPT-2 small (tests/fixtures/mib, Apache-2.0; see SOURCE.md there)."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mibench import names
from mibench.api import MibenchError, Truth, validate_scores
from mibench.mib import (in_graph_nodes, magnitude_ranked, node_scores, read_graph, score_graph, write_graph,
                         write_node_graph)
from mibench.scoring import auroc, precision_recall_f1_at_k

FIXTURE = Path(__file__).parent / "fixtures" / "mib" / "ioi-eap-ig.json"


@pytest.fixture(scope="module")
def graph():
    assert FIXTURE.is_file(), f"the MIB fixture is missing: {FIXTURE}"
    return read_graph(FIXTURE, d_mlp=3072)


def test_mib_graph_names_are_mibench_names(graph):
    """Every one of GPT-2 small's 32,491 MIB edges is an edge mibench enumerates, and back."""
    assert len(graph.scores) == 32491 == len(names.edges(graph.shape))
    validate_scores(graph.scores, names.edges(graph.shape), "mib-eap-ig")


def test_scoring_a_published_circuit(graph):
    """MIB chose its in-graph edges by |score|: ranking by |score| must recover them."""
    labels = graph.scores.index.isin(list(graph.edges_in_graph)).astype(int)
    magnitude = graph.scores.abs().to_numpy()
    assert auroc(magnitude, labels) > 0.99
    precision, _, _ = precision_recall_f1_at_k(magnitude, labels, int(labels.sum()))
    assert precision > 0.9


def test_round_trip(graph, tmp_path):
    out = tmp_path / "graph.json"
    write_graph(out, graph.scores, graph.shape, d_model=768, top_n=len(graph.edges_in_graph))
    again = read_graph(out, d_mlp=3072)
    assert again.scores.equals(graph.scores)
    assert len(again.edges_in_graph) == len(graph.edges_in_graph)


def test_not_an_mib_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": {}}')
    with pytest.raises(MibenchError, match="not an MIB graph file"):
        read_graph(bad)


# --- node scores, the in-graph circuit and scoring a graph against a truth ------------------------

#: Wang et al.'s name movers and two S-inhibition heads, and two of their edges: a hand-made truth
#: for the fixture (the real one is the gpt2_ioi case, tested in test_graph_cli.py)
HAND_TRUTH = Truth(nodes={"a9.h9": "name_mover", "a9.h6": "name_mover", "a10.h0": "name_mover",
                          "a7.h3": "s_inhibition", "a8.h6": "s_inhibition"},
                   edges={"a9.h9->logits": "direct", "a8.h6->a9.h9<q>": "q", "a7.h3->a9.h6<q>": "q"},
                   edge_notes={"a7.h3->a9.h6<q>": ("nil", "left out of edge scoring")})


@pytest.fixture(scope="module")
def raw():
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("head", ["a9.h9", "a10.h7"])
def test_a_nodes_score_is_the_sum_of_its_outgoing_edges_magnitudes(graph, raw, head):
    """By hand, from the file's own text: every edge named ``head->…``."""
    outgoing = [v["score"] for name, v in raw["edges"].items() if name.startswith(f"{head}->")]
    incoming = [v["score"] for name, v in raw["edges"].items() if name.split("->")[1].split("<")[0] == head]
    assert len(outgoing) > 10 and len(incoming) > 10
    assert node_scores(graph, graph.shape)[head] == pytest.approx(sum(abs(s) for s in outgoing), rel=1e-12)
    both = node_scores(graph.scores, graph.shape, rule="in+out")[head]
    assert both == pytest.approx(sum(abs(s) for s in outgoing + incoming), rel=1e-12)


def test_node_scores_cover_heads_and_mlps_only(graph):
    scores = node_scores(graph, graph.shape)
    assert list(scores.index) == names.nodes(graph.shape)  # no input, no logits
    assert len(scores) == 12 * 13 and (scores > 0).all()
    with pytest.raises(MibenchError, match="unknown node rule 'in'"):
        node_scores(graph, graph.shape, rule="in")


def test_in_graph_nodes_are_the_files_heads_and_mlps(graph, raw):
    marked = {n for n, v in raw["nodes"].items() if v["in_graph"]} - {"input", "logits"}
    assert in_graph_nodes(graph) == marked and len(marked) == 79
    # a file without a nodes section: the heads and MLPs its in-graph edges touch
    touched = {part.split("<")[0] for e in graph.edges_in_graph for part in e.split("->")} - {"input", "logits"}
    assert in_graph_nodes(replace(graph, nodes_in_graph=None)) == touched


def test_scoring_the_fixture_against_a_hand_made_truth(graph, raw):
    result = score_graph(graph, HAND_TRUTH)
    values = node_scores(graph, graph.shape)
    assert result["node"]["auroc"] == pytest.approx(auroc_by_hand(values, list(HAND_TRUTH.nodes)), abs=1e-12)
    assert result["node"]["k"] == 5 and result["node"]["n_components"] == 156
    assert result["node"]["node_rule"] == "out"
    # the file's circuit: all five heads are in it, among its 79 heads and MLPs
    assert result["node"]["in_graph"] == {"size": 79, "precision": 5 / 79, "recall": 1.0}
    # edges: the nil edge leaves the truth and the candidates (it is in MIB's circuit)
    nil, truth_edges = "a7.h3->a9.h6<q>", ["a9.h9->logits", "a8.h6->a9.h9<q>"]
    assert raw["edges"][nil]["in_graph"]
    edge = result["edge"]
    assert edge["k"] == 2 and edge["n_components"] == 32491 - 1
    hits = [e for e in truth_edges if raw["edges"][e]["in_graph"]]
    assert "a9.h9->logits" in hits
    assert edge["in_graph"] == {"size": 755, "precision": len(hits) / 755, "recall": len(hits) / 2}
    magnitude = graph.scores.drop(nil).abs()
    assert edge["auroc"] == pytest.approx(auroc_by_hand(magnitude, truth_edges), abs=1e-12)


def auroc_by_hand(values: pd.Series, members: list[str]) -> float:
    """The share of (member, other) pairs in which the member scores higher, ties one half."""
    inside, outside = values[members].to_numpy(), values.drop(members).to_numpy()
    pairs = (inside[:, None] > outside[None, :]) + 0.5 * (inside[:, None] == outside[None, :])
    return float(pairs.mean())


def test_a_truth_without_edges_scores_nodes_only(graph):
    result = score_graph(graph, Truth(nodes={"a9.h9": "name_mover"}))
    assert set(result) == {"node"}
    assert result["node"]["auroc"] == 1.0  # a9.h9 writes the most: the largest outgoing total


def test_node_graph_round_trip(graph, tmp_path):
    """A node-granularity file: node scores in ``nodes``, ``edges`` empty; read back, its own
    node scores are what is scored, and its in_graph nodes are the top n by |score|."""
    values = pd.Series(np.linspace(-1.0, 1.0, 156), index=names.nodes(graph.shape))
    out = tmp_path / "nodes.json"
    write_node_graph(out, values, graph.shape, d_model=768, top_n=4)
    data = json.loads(out.read_text())
    assert data["edges"] == {} and set(data["cfg"]) == {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}
    again = read_graph(out)
    assert again.scores is None and again.node_scores.equals(values)
    assert in_graph_nodes(again) == {"m11", "a11.h11", "a0.h0", "a0.h1"}  # |±1| and the next two
    result = score_graph(again, Truth(nodes={"a0.h0": "x"}))
    assert result["node"]["node_rule"] is None and result["node"]["auroc"] == pytest.approx(154.5 / 155)


def test_unsigned_scores_with_negatives_are_shifted_to_rank_by_magnitude():
    signed = pd.Series({"a": -3.0, "b": 1.0, "c": 2.0})
    assert magnitude_ranked(signed, signed=True).equals(signed)  # |-3| first, as scoring ranks it
    shifted = magnitude_ranked(signed, signed=False)  # unsigned: -3 is the least important
    assert list(shifted.abs().sort_values().index) == ["a", "b", "c"] and shifted["c"] - shifted["b"] == 1.0
    plain = pd.Series({"a": 0.0, "b": 2.0})
    assert magnitude_ranked(plain, signed=False).equals(plain)


@pytest.mark.parametrize("text, message", [
    ("not json {", "not an MIB graph file"),
    ('[1, 2]', "not an MIB graph file"),
    ('{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4}, "nodes": {}, '
     '"edges": {"input->a0.h0<q>": {"score": 1.0, "in_graph": true}}}', "scores 1 of the 5 edges"),
    ('{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4}, '
     '"nodes": {"a3.h0": {"in_graph": true}}, "edges": {}}', "nodes are not in the graph"),
    ('{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 4}, "nodes": {}, '
     '"edges": {}}', "scores no edge and no node"),
    ('{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": true, "d_model": 4}, "nodes": {}, '
     '"edges": {}}', "parallel_attn_mlp"),
])
def test_bad_graph_files(tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(MibenchError, match=message):
        read_graph(bad)
