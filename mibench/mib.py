"""Reading and writing circuits in the MIB / EAP-IG graph format (Mueller et al. 2025).

A graph file has ``cfg`` (n_layers, n_heads, parallel_attn_mlp, d_model), ``nodes``
(``{name: {"in_graph": bool}}``) and ``edges`` (``{src->dst<q|k|v>: {"score": float,
"in_graph": bool}}``), with the same component names mibench uses, so an edge-level technique's
scores can be exported for MIB's tools and MIB's published circuits scored by mibench.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mibench import names
from mibench.api import MibenchError


@dataclass
class MibGraph:
    shape: names.Shape
    scores: pd.Series  # edge name -> score
    edges_in_graph: set[str]
    nodes_in_graph: set[str]


def read_graph(path: str | Path, d_mlp: int = 0) -> MibGraph:
    """Read an MIB graph file. ``d_mlp`` only marks the model as having MLPs (MIB graphs always
    have MLP nodes, ``m{layer}``); its value is not stored in the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        cfg, nodes, edges = data["cfg"], data["nodes"], data["edges"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MibenchError(f"{path} is not an MIB graph file (cfg, nodes, edges): {exc}") from exc
    shape = names.Shape(int(cfg["n_layers"]), int(cfg["n_heads"]), d_mlp or 1)
    expected = set(names.edges(shape))
    unknown = [e for e in edges if e not in expected]
    if unknown:
        raise MibenchError(f"{path}: {len(unknown)} edges are not in the graph of a "
                           f"{shape.n_layers}-layer, {shape.n_heads}-head model, e.g. {unknown[:3]}")
    scores = pd.Series({e: float(v["score"]) for e, v in edges.items()}, dtype="float64")
    return MibGraph(shape, scores.reindex(names.edges(shape)),
                    {e for e, v in edges.items() if v.get("in_graph")},
                    {n for n, v in nodes.items() if v.get("in_graph")})


def write_graph(path: str | Path, scores: pd.Series, shape: names.Shape, d_model: int, top_n: int) -> None:
    """Write edge scores as an MIB graph with the ``top_n`` edges by |score| in the graph (and
    the nodes they touch)."""
    edges = names.edges(shape)
    scores = scores.reindex(edges)
    if scores.isna().any():
        raise MibenchError("write_graph needs a score for every edge of the model's graph")
    kept = set(scores.abs().sort_values(ascending=False, kind="stable").index[:top_n])
    touched = {part for e in kept for part in (str(n.name) for n in names.parse_edge(e)[:2])}
    nodes = ["input", *names.nodes(shape), "logits"]
    data = {"cfg": {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "parallel_attn_mlp": False,
                    "d_model": d_model},
            "nodes": {n: {"in_graph": n in touched} for n in nodes},
            "edges": {e: {"score": float(scores[e]), "in_graph": e in kept} for e in edges}}
    Path(path).write_text(json.dumps(data))
