"""Component, edge, site and layer names in the MIB / EAP-IG graph format.

Every score, truth label and result uses these strings, so results interoperate with the
Mechanistic Interpretability Benchmark's circuit files. Parsing is strict: a name that does not
follow the format raises ``ValueError`` saying what was expected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

GRANULARITIES = ("node", "edge", "neuron", "site", "layer")

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_NEURON = re.compile(r"^m(\d+)\.n(\d+)$")
_SITE = re.compile(r"^r(\d+)@([A-Za-z0-9_+\-]+)$")
_LAYER = re.compile(r"^L(\d+)$")
_EDGE = re.compile(r"^(.+)->(.+?)(?:<([qkv])>)?$")


@dataclass(frozen=True, order=True)
class Node:
    """A graph node: an attention head, a whole MLP layer, one MLP neuron, or the ends of the graph."""

    kind: str  # "head", "mlp", "neuron", "input", "logits"
    layer: int = -1
    index: int = -1  # head index or neuron index

    @property
    def name(self) -> str:
        if self.kind == "head":
            return head(self.layer, self.index)
        if self.kind == "mlp":
            return mlp(self.layer)
        if self.kind == "neuron":
            return neuron(self.layer, self.index)
        return self.kind


def head(layer: int, index: int) -> str:
    return f"a{layer}.h{index}"


def mlp(layer: int) -> str:
    return f"m{layer}"


def neuron(layer: int, index: int) -> str:
    return f"m{layer}.n{index}"


def site(layer: int, label: str) -> str:
    return f"r{layer}@{label}"


def layer_name(layer: int) -> str:
    return f"L{layer}"


def edge(src: str, dst: str, kind: str | None = None) -> str:
    """``src->dst<kind>``; the q/k/v kind is required exactly when ``dst`` is a head."""
    dst_node = parse_node(dst)
    if dst_node.kind == "head" and kind not in ("q", "k", "v"):
        raise ValueError(f"edge into head {dst} needs kind q, k or v, got {kind!r}")
    if dst_node.kind != "head" and kind is not None:
        raise ValueError(f"edge into {dst} takes no q/k/v kind, got {kind!r}")
    return f"{src}->{dst}" + (f"<{kind}>" if kind else "")


def parse_node(name: str) -> Node:
    if name in ("input", "logits"):
        return Node(name)
    if m := _HEAD.match(name):
        return Node("head", int(m[1]), int(m[2]))
    if m := _MLP.match(name):
        return Node("mlp", int(m[1]))
    if m := _NEURON.match(name):
        return Node("neuron", int(m[1]), int(m[2]))
    raise ValueError(f"{name!r} is not a node name; expected a{{layer}}.h{{head}}, m{{layer}}, "
                     f"m{{layer}}.n{{neuron}}, input or logits")


def parse_edge(name: str) -> tuple[Node, Node, str | None]:
    m = _EDGE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not an edge name; expected src->dst or src->dst<q|k|v>")
    return parse_node(m[1]), parse_node(m[2]), m[3]


def parse_site(name: str) -> tuple[int, str]:
    m = _SITE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a site name; expected r{{layer}}@{{position label}}")
    return int(m[1]), m[2]


def parse_layer(name: str) -> int:
    m = _LAYER.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a layer name; expected L{{layer}}")
    return int(m[1])


def node_layer(name: str) -> int:
    """The block a node's output is written in (used to map nodes to layers)."""
    node = parse_node(name)
    if node.kind in ("input", "logits"):
        raise ValueError(f"{name} has no layer")
    return node.layer


# --- enumeration for a model shape -------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """The parts of a model's config that decide which components exist."""

    n_layers: int
    n_heads: int
    d_mlp: int = 0  # 0 for attention-only models

    @classmethod
    def of(cls, model) -> "Shape":
        cfg = model.cfg
        attn_only = bool(getattr(cfg, "attn_only", False))
        return cls(cfg.n_layers, cfg.n_heads, 0 if attn_only else int(cfg.d_mlp or 0))

    @property
    def has_mlp(self) -> bool:
        return self.d_mlp > 0


def nodes(shape: Shape) -> list[str]:
    """Heads and MLPs in forward order: a0.h0 … a0.hN, m0, a1.h0, …"""
    out: list[str] = []
    for layer in range(shape.n_layers):
        out += [head(layer, h) for h in range(shape.n_heads)]
        if shape.has_mlp:
            out.append(mlp(layer))
    return out


def neurons(shape: Shape) -> list[str]:
    return [neuron(layer, n) for layer in range(shape.n_layers) for n in range(shape.d_mlp)]


def layers(shape: Shape) -> list[str]:
    return [layer_name(layer) for layer in range(shape.n_layers)]


def sites(shape: Shape, labels: list[str]) -> list[str]:
    return [site(layer, label) for layer in range(shape.n_layers + 1) for label in labels]


def edges(shape: Shape) -> list[str]:
    """All edges of the residual graph: every upstream writer to every downstream reader."""
    out: list[str] = []
    writers = ["input"]
    for layer in range(shape.n_layers):
        for h in range(shape.n_heads):
            for src in writers:
                out += [edge(src, head(layer, h), k) for k in "qkv"]
        layer_heads = [head(layer, h) for h in range(shape.n_heads)]
        if shape.has_mlp:
            out += [edge(src, mlp(layer)) for src in writers + layer_heads]
            writers = writers + layer_heads + [mlp(layer)]
        else:
            writers = writers + layer_heads
    out += [edge(src, "logits") for src in writers]
    return out


def components(shape: Shape, granularity: str, labels: list[str] | None = None) -> list[str]:
    """Every component name a technique of this granularity must score."""
    if granularity == "node":
        return nodes(shape)
    if granularity == "edge":
        return edges(shape)
    if granularity == "neuron":
        return neurons(shape)
    if granularity == "layer":
        return layers(shape)
    if granularity == "site":
        return sites(shape, labels or [])
    raise ValueError(f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
