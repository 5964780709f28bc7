"""MIB interoperability on a real, externally produced file: MIB's published EAP-IG circuit for
IOI on GPT-2 small (tests/fixtures/mib, Apache-2.0; see SOURCE.md there)."""
from pathlib import Path

import pytest

from mibench import names
from mibench.api import MibenchError, validate_scores
from mibench.mib import read_graph, write_graph
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
