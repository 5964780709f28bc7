"""A case's ``circuit.yaml``: the circuit as data (roles, edges between roles, direct effects,
variables, citations), turned into a :class:`~mibench.api.Truth` once a seed has placed each role
on concrete components. Unknown fields are rejected so a typo cannot silently drop a label."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mibench import names
from mibench.api import MibenchError, Truth

_FIELDS = {"name", "roles", "edges", "direct", "variables", "answer_layer", "targets", "citations"}
_ROLE_FIELDS = {"layer", "kind", "description"}


@dataclass(frozen=True)
class Circuit:
    name: str
    roles: dict[str, dict]
    edges: list[tuple[str, str, str]]  # (source role, destination role, kind)
    direct: dict[str, int]
    variables: dict[str, str]
    answer_layer: int | None
    targets: dict[str, str]
    citations: list[str]

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise MibenchError(f"cannot read {path}: {exc}") from exc
        unknown = set(data) - _FIELDS
        if unknown:
            raise MibenchError(f"{path}: unknown fields {sorted(unknown)}; allowed: {sorted(_FIELDS)}")
        for role, spec in data.get("roles", {}).items():
            bad = set(spec) - _ROLE_FIELDS
            if bad:
                raise MibenchError(f"{path}: role {role!r} has unknown fields {sorted(bad)}")
        edges = [tuple(e) for e in data.get("edges", [])]
        for e in edges:
            if len(e) != 3:
                raise MibenchError(f"{path}: edge {list(e)} must be [source, destination, kind]")
        return cls(data["name"], data.get("roles", {}), edges, data.get("direct", {}),
                   data.get("variables", {}), data.get("answer_layer"), data.get("targets", {}),
                   data.get("citations", []))

    def truth(self, placement: dict[str, list[str]], sites: dict[str, frozenset[str]] | None = None,
              neurons: dict[str, str] | None = None) -> Truth:
        """The Truth once each role is placed on components (``role -> [node names]``)."""
        missing = set(self.roles) - set(placement)
        if missing:
            raise ValueError(f"roles {sorted(missing)} of {self.name} were not placed")

        def members(role: str) -> list[str]:
            return [role] if role in ("input", "logits") else placement[role]

        nodes = {node: role for role, placed in placement.items() for node in placed}
        edges: dict[str, str] = {}
        for src_role, dst_role, kind in self.edges:
            for src in members(src_role):
                for dst in members(dst_role):
                    into_head = names.parse_node(dst).kind == "head"
                    edges[names.edge(src, dst, kind if into_head else None)] = kind
        direct = {node: int(sign) for role, sign in self.direct.items() for node in placement[role]}
        return Truth(nodes=nodes, edges=edges, direct=direct, neurons=neurons or {},
                     sites=sites or {}, answer_layer=self.answer_layer, targets=dict(self.targets))
