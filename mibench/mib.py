"""Reading, writing and scoring circuits in the MIB / EAP-IG graph format (Mueller et al. 2025).

A graph file has ``cfg`` (n_layers, n_heads, parallel_attn_mlp, d_model), ``nodes``
(``{name: {"in_graph": bool}}``, optionally with a ``"score"``) and ``edges`` (``{src->dst<q|k|v>:
{"score": float, "in_graph": bool}}``), with the same component names mibench uses, so an
edge-level technique's scores can be exported for MIB's tools and MIB's published circuits scored
by mibench. MIB ranks and selects by |score| (its ``apply_topn`` / ``apply_threshold`` default to
``absolute=True``); so do :func:`score_graph` and :func:`write_graph`.

MIB's graphs always hold MLP nodes; a file for an attention-only model (mibench's planted cases)
simply names none, and :func:`read_graph` tells the two apart by whether the file names an MLP.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mibench import names
from mibench.api import MibenchError

if TYPE_CHECKING:  # pragma: no cover
    from mibench.api import Truth

#: How a node's score is reduced from edge scores (see :func:`node_scores`).
NODE_RULES = ("out", "in+out")

_MLP_NODE = re.compile(r"m\d+")
_MLP_END = re.compile(r"(?:^m\d+->|->m\d+$)")  # an edge from or into an MLP
#: an edge's sender and receiver (a head's q/k/v input is the head's): names.parse_edge's pattern,
#: vectorised, for the 32,491 edges of GPT-2 small
_EDGE_ENDS = r"^(?P<src>.+)->(?P<dst>.+?)(?:<[qkv]>)?$"


@dataclass
class MibGraph:
    shape: names.Shape
    scores: pd.Series | None  # edge name -> score, every edge of the shape; None if the file scores no edge
    edges_in_graph: set[str]
    nodes_in_graph: set[str] | None  # None when the file has no nodes section
    node_scores: pd.Series | None = None  # head/MLP -> the file's own node score (MIB's optional "score")


def read_graph(path: str | Path, d_mlp: int | None = None) -> MibGraph:
    """Read an MIB graph file. ``d_mlp`` says whether the model has MLPs (MIB does not store
    d_mlp; 0 for attention-only); by default the file decides: it has MLPs if it names one.
    Every error is a one-line :class:`MibenchError` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        cfg = data["cfg"]
        nodes, edges = data.get("nodes"), data.get("edges") or {}
        if cfg.get("parallel_attn_mlp"):
            raise MibenchError(f"{path} is a graph of a model with parallel attention and MLP "
                               f"(parallel_attn_mlp); mibench's graphs are sequential")
        if d_mlp is None:
            d_mlp = int(any(map(_MLP_NODE.fullmatch, nodes or {})) or any(map(_MLP_END.search, edges)))
        shape = names.Shape(int(cfg["n_layers"]), int(cfg["n_heads"]), d_mlp)
        scores = _edge_scores(path, edges, shape)
        node_values = _node_scores(path, nodes or {}, shape)
        edges_in = {e for e, v in edges.items() if v.get("in_graph")}
        nodes_in = None if nodes is None else {n for n, v in nodes.items() if v.get("in_graph")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MibenchError(f"{path} is not an MIB graph file (cfg, nodes, edges): "
                           f"{type(exc).__name__}: {exc}") from exc
    if scores is None and node_values is None:
        raise MibenchError(f"{path} scores no edge and no node: nothing to score")
    return MibGraph(shape, scores, edges_in, nodes_in, node_values)


def describe_shape(shape: names.Shape) -> str:
    """``12-layer, 12-head model with MLPs``: a shape as error messages name it."""
    return (f"{shape.n_layers}-layer, {shape.n_heads}-head model "
            + ("with MLPs" if shape.has_mlp else "without MLPs"))


def _edge_scores(path: Path, edges: dict[str, Any], shape: names.Shape) -> pd.Series | None:
    """Every edge's score in ``names.edges`` order; None for a file without edges. A partial or
    foreign edge list is an error: MIB's loader would score the missing edges 0, silently."""
    if not edges:
        return None
    expected = names.edges(shape)
    known = set(expected)
    unknown = [e for e in edges if e not in known]
    if unknown:
        raise MibenchError(f"{path}: {len(unknown)} edges are not in the graph of a "
                           f"{describe_shape(shape)}, e.g. {unknown[:3]}")
    missing = [e for e in expected if e not in edges]
    if missing:
        raise MibenchError(f"{path} scores {len(edges)} of the {len(expected)} edges of a "
                           f"{describe_shape(shape)}; missing e.g. {missing[:3]}")
    scores = pd.Series({e: float(edges[e]["score"]) for e in expected}, dtype="float64")
    _check_finite(path, scores, "edge")
    return scores


def _node_scores(path: Path, nodes: dict[str, Any], shape: names.Shape) -> pd.Series | None:
    """The file's own head/MLP scores (``input`` and ``logits`` are not scored nodes); None
    when no node carries one. Checks every node name against the shape."""
    expected = names.nodes(shape)
    known = {"input", "logits", *expected}
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise MibenchError(f"{path}: {len(unknown)} nodes are not in the graph of a "
                           f"{describe_shape(shape)}, e.g. {unknown[:3]}")
    scored = {n: v["score"] for n, v in nodes.items() if "score" in v and n not in ("input", "logits")}
    if not scored:
        return None
    missing = [n for n in expected if n not in scored]
    if missing:
        raise MibenchError(f"{path} scores {len(scored)} of the {len(expected)} heads and MLPs of a "
                           f"{describe_shape(shape)}; missing e.g. {missing[:3]}")
    scores = pd.Series({n: float(scored[n]) for n in expected}, dtype="float64")
    _check_finite(path, scores, "node")
    return scores


def _check_finite(path: Path, scores: pd.Series, what: str) -> None:
    bad = [name for name, value in scores.items() if not math.isfinite(value)]
    if bad:
        raise MibenchError(f"{path}: {len(bad)} {what} scores are not finite, e.g. {bad[:3]}")


def _graph_json(shape: names.Shape, d_model: int, nodes: dict, edges: dict) -> str:
    cfg = {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "parallel_attn_mlp": False,
           "d_model": d_model}
    return json.dumps({"cfg": cfg, "nodes": nodes, "edges": edges})


def _write(path: str | Path, text: str) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise MibenchError(f"cannot write the graph to {str(path)!r}: {exc.strerror or exc}") from exc


def _top_by_magnitude(scores: pd.Series, top_n: int) -> set[str]:
    return set(scores.abs().sort_values(ascending=False, kind="stable").index[:top_n])


def write_graph(path: str | Path, scores: pd.Series, shape: names.Shape, d_model: int, top_n: int) -> None:
    """Write edge scores as an MIB graph with the ``top_n`` edges by |score| in the graph (and
    the nodes they touch). Plain top-n, not MIB's ``apply_topn`` (which grows a connected graph
    back from the logits): a reader who wants MIB's selection can rerun it on the scores."""
    edges = names.edges(shape)
    scores = scores.reindex(edges)
    if scores.isna().any():
        raise MibenchError("write_graph needs a score for every edge of the model's graph")
    kept = _top_by_magnitude(scores, top_n)
    touched = {part for e in kept for part in (str(n.name) for n in names.parse_edge(e)[:2])}
    nodes = ["input", *names.nodes(shape), "logits"]
    _write(path, _graph_json(shape, d_model, {n: {"in_graph": n in touched} for n in nodes},
                             {e: {"score": float(scores[e]), "in_graph": e in kept} for e in edges}))


def write_node_graph(path: str | Path, scores: pd.Series, shape: names.Shape, d_model: int,
                     top_n: int) -> None:
    """Write node scores as an MIB graph: each head and MLP as ``{"score", "in_graph"}`` with the
    ``top_n`` by |score| in the graph, ``edges`` empty. MIB's format has this slot: its
    ``Graph.to_json`` writes a node's ``score`` when the graph has node scores and its
    ``from_json`` reads it back, and ``edges`` must be present but may be empty. ``input`` and
    ``logits`` are written in the graph unscored, as the ends every circuit keeps (MIB keeps
    ``logits`` in every graph)."""
    heads_and_mlps = names.nodes(shape)
    scores = scores.reindex(heads_and_mlps)
    if scores.isna().any():
        raise MibenchError("write_node_graph needs a score for every head and MLP of the model")
    kept = _top_by_magnitude(scores, top_n)
    nodes = {"input": {"in_graph": True},
             **{n: {"score": float(scores[n]), "in_graph": n in kept} for n in heads_and_mlps},
             "logits": {"in_graph": True}}
    _write(path, _graph_json(shape, d_model, nodes, {}))


def magnitude_ranked(scores: pd.Series, signed: bool) -> pd.Series:
    """Scores whose |value| ranks the components as mibench's scoring ranks them, for a file whose
    readers rank by |score| (MIB, :func:`score_graph`). A signed technique's scores are kept as
    they are (scoring ranks them by magnitude too); an unsigned technique's are kept when none is
    negative, else shifted up by their minimum, which keeps their order and their gaps."""
    values = scores.astype("float64")
    if signed or values.min() >= 0:
        return values
    return values - values.min()


# --- from edges to nodes ----------------------------------------------------------------------

def node_scores(graph_or_edge_scores: MibGraph | pd.Series, shape: names.Shape, rule: str = "out") -> pd.Series:
    """Each head's and MLP's score, reduced from edge scores (``input`` and ``logits`` are not
    nodes). MIB scores edges; a node needs one stated reduction:

    * ``out`` (the default): the sum of |score| over the node's outgoing edges. A node matters to
      the extent later components and the logits read what it writes, and removing a node from a
      circuit removes exactly its outgoing edges (node ablation replaces its output), so their
      summed magnitudes are the edge-level estimate of the node's own effect.
    * ``in+out``: the sum of |score| over its incoming (q, k, v or MLP input) and outgoing
      edges; this also credits a node for how much its inputs matter, which is the importance of
      the writers upstream of it as much as its own.

    Every node of ``shape`` is returned, in ``names.nodes`` order; a node without edges scores 0.
    """
    if rule not in NODE_RULES:
        raise MibenchError(f"unknown node rule {rule!r}; expected one of {', '.join(NODE_RULES)}")
    scores = graph_or_edge_scores.scores if isinstance(graph_or_edge_scores, MibGraph) else graph_or_edge_scores
    if scores is None:
        raise MibenchError("the graph has no edge scores to reduce to node scores")
    ends = pd.Series(scores.index, dtype="object").str.extract(_EDGE_ENDS)
    if ends.isna().any().any():
        raise MibenchError(f"{list(scores.index[ends['src'].isna()][:3])} are not edge names; "
                           f"expected src->dst or src->dst<q|k|v>")
    magnitude = pd.Series(scores.abs().to_numpy())
    totals = magnitude.groupby(ends["src"]).sum()
    if rule == "in+out":
        totals = totals.add(magnitude.groupby(ends["dst"]).sum(), fill_value=0.0)
    return totals.reindex(names.nodes(shape), fill_value=0.0).astype("float64")


def in_graph_nodes(graph: MibGraph) -> set[str]:
    """The heads and MLPs the file marks ``in_graph``; for a file without a nodes section, those
    touched by an ``in_graph`` edge."""
    components = set(names.nodes(graph.shape))
    if graph.nodes_in_graph is not None:
        return graph.nodes_in_graph & components
    touched = {n.name for e in graph.edges_in_graph for n in names.parse_edge(e)[:2]}
    return touched & components


# --- scoring a graph against a truth ----------------------------------------------------------

def circuit_precision_recall(circuit: set[str], truth_set: set[str] | dict[str, str]) -> dict[str, Any]:
    """The in-graph circuit against the truth set: ``size``, ``precision`` (None for an empty
    circuit) and ``recall`` (None for an empty truth set)."""
    hits = len(circuit & set(truth_set))
    return {"size": len(circuit),
            "precision": hits / len(circuit) if circuit else None,
            "recall": hits / len(truth_set) if truth_set else None}


def score_graph(graph: MibGraph, truth: "Truth", rule: str = "out") -> dict[str, dict[str, Any]]:
    """Score a graph file against a truth, per granularity (``edge`` when both the graph and the
    truth have edges, ``node`` always), with exactly what the runner records for a run
    (:func:`mibench.scoring.score_run`, ranking by |score| as MIB does; the faithfulness metrics
    need the model and are None here), plus ``in_graph``: the file's circuit against the truth
    set (:func:`circuit_precision_recall`). Edges the truth marks ``nil`` leave both, as in
    scoring. Node scores are the file's own when it has them, else :func:`node_scores` with
    ``rule``; ``node_rule`` says which (None for the file's own)."""
    from mibench.scoring import score_run

    out: dict[str, dict[str, Any]] = {}
    truth_edges = truth.labels("edge")
    if graph.scores is not None and truth_edges:
        out["edge"] = {**score_run(graph.scores, truth, "edge", signed=True),
                       "in_graph": circuit_precision_recall(graph.edges_in_graph - truth.nil_edges, truth_edges)}
    own = graph.node_scores is not None
    values = graph.node_scores if own else node_scores(graph, graph.shape, rule)
    out["node"] = {**score_run(values, truth, "node", signed=True),
                   "in_graph": circuit_precision_recall(in_graph_nodes(graph), truth.labels("node")),
                   "node_rule": None if own else rule}
    return out
