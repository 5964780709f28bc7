"""A case's ``circuit.yaml``: the circuit as data (roles with their layer and kind, edges between
roles, direct effects, variables and the residual sites that carry them, neuron-level roles,
citations), turned into a :class:`~mibench.api.Truth` once a seed has placed each role on concrete
components. The one statement of a case's circuit: its granularities follow from what it labels,
and :meth:`Circuit.disagreements` checks a built instance against it. Unknown fields are rejected
so a typo cannot silently drop a label."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mibench import names
from mibench.api import MibenchError, Truth, granularities_labelled

_FIELDS = {"roles", "edges", "direct", "variables", "sites", "neurons", "answer_layer", "targets",
           "citations"}
#: ``components``: where a paper found the role (literature cases); planted cases place roles per seed
_ROLE_FIELDS = {"layer", "kind", "description", "components"}
#: what an edge's optional fourth element may say about an edge whose path effect alone is nil:
#: ``nil`` — the case's corruption never changes what flows along it (left out of edge scoring);
#: ``redundant`` — another route carries the same information (scored; the certificate checks the
#: routes together)
EDGE_NOTES = ("nil", "redundant")


@dataclass(frozen=True)
class Circuit:
    name: str
    roles: dict[str, dict]
    edges: list[tuple[str, str, str]]  # (source role, destination role, kind)
    direct: dict[str, int]
    variables: dict[str, str]
    sites: dict[str, frozenset[str]]  # variable -> the residual sites that carry it on the causal path
    neurons: dict[str, str]  # role -> what its neurons do (which neurons: placed by the seed)
    answer_layer: int | None
    targets: dict[str, str]
    citations: list[str]
    edge_notes: dict[tuple[str, str, str], tuple[str, str]]  # edge -> (note, why); see EDGE_NOTES

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
        edges, edge_notes = [], {}
        for e in data.get("edges", []):
            note = e[3] if len(e) == 4 else None
            if len(e) not in (3, 4) or (note is not None and not (
                    isinstance(note, dict) and len(note) == 1 and set(note) <= set(EDGE_NOTES))):
                raise MibenchError(f"{path}: edge {list(e)} must be [source, destination, kind] or "
                                   f"[source, destination, kind, {{nil|redundant: why}}]")
            edges.append(tuple(e[:3]))
            if note:
                edge_notes[tuple(e[:3])] = next(iter(note.items()))
        sites = {variable: frozenset(site_list) for variable, site_list in data.get("sites", {}).items()}
        for variable, site_set in sites.items():
            if variable not in data.get("variables", {}):
                raise MibenchError(f"{path}: sites name variable {variable!r}, which `variables` does not declare")
            for site in site_set:
                names.parse_site(site)
        neurons = dict(data.get("neurons", {}))
        unknown_roles = (set(data.get("direct", {})) | set(neurons)) - set(data.get("roles", {}))
        if unknown_roles:
            raise MibenchError(f"{path}: {sorted(unknown_roles)} are not roles of this circuit")
        return cls(path.parent.name, data.get("roles", {}), edges, data.get("direct", {}),
                   data.get("variables", {}), sites, neurons, data.get("answer_layer"),
                   data.get("targets", {}), data.get("citations", []), edge_notes)

    def granularities(self) -> tuple[str, ...]:
        """The granularities this circuit has truth at (as :meth:`Truth.granularities` will say)."""
        return granularities_labelled(self.edges, self.neurons, self.sites, self.direct)

    def disagreements(self, truth: Truth) -> list[str]:
        """Where a built instance's truth departs from this file: a role placed on a component of
        another kind than stated, roles placed out of circuit.yaml's layer order (a larger model
        may place the circuit at other layers, keeping their order and which roles share one), a
        role not placed, or truth at other granularities."""
        out = []
        placed: dict[str, list[str]] = {}
        for node, role in truth.nodes.items():
            placed.setdefault(role, []).append(node)
        for role, spec in self.roles.items():
            if role not in placed:
                out.append(f"role {role} is not placed on any component")
                continue
            for node in placed[role]:
                parsed = names.parse_node(node)
                if "kind" in spec and spec["kind"] != parsed.kind:
                    out.append(f"{role} is a {spec['kind']} in circuit.yaml but placed on {node}")
        layered = [(role, node, spec["layer"], names.parse_node(node).layer)
                   for role, spec in self.roles.items() if "layer" in spec for node in placed.get(role, [])]
        for i, (role_a, node_a, yaml_a, at_a) in enumerate(layered):
            for role_b, node_b, yaml_b, at_b in layered[i + 1:]:
                if (yaml_a < yaml_b) != (at_a < at_b) or (yaml_a > yaml_b) != (at_a > at_b):
                    out.append(f"{role_a} on {node_a} (layer {yaml_a} in circuit.yaml) and {role_b} on "
                               f"{node_b} (layer {yaml_b}) are out of circuit.yaml's layer order")
        for role in set(placed) - set(self.roles):
            out.append(f"{placed[role]} have role {role}, which circuit.yaml does not declare")
        if truth.granularities() != self.granularities():
            out.append(f"the instance has truth at {', '.join(truth.granularities())}; circuit.yaml "
                       f"at {', '.join(self.granularities())}")
        return out

    def fixed_placement(self) -> dict[str, list[str]]:
        """Each role on the components circuit.yaml names for it (a literature case's labels)."""
        unplaced = [role for role, spec in self.roles.items() if not spec.get("components")]
        if unplaced:
            raise MibenchError(f"{self.name}/circuit.yaml: roles {unplaced} name no components")
        placement = {role: list(spec["components"]) for role, spec in self.roles.items()}
        for role, nodes in placement.items():
            for node in nodes:
                names.parse_node(node)
        return placement

    def truth(self, placement: dict[str, list[str]], neurons: dict[str, str] | None = None,
              layer_map: dict[int, int] | None = None, n_layers: int | None = None) -> Truth:
        """The Truth once each role is placed on components (``role -> [node names]``) and, for
        the neuron-level roles, on neurons (``neuron name -> role``). A circuit placed at other
        layers than circuit.yaml's (``layer_map``: yaml layer -> model layer, in a model of
        ``n_layers``) has its answer layer and residual sites moved with it."""
        missing = set(self.roles) - set(placement)
        if missing:
            raise ValueError(f"roles {sorted(missing)} of {self.name} were not placed")
        neurons = neurons or {}
        if set(neurons.values()) != set(self.neurons):
            raise ValueError(f"{self.name}: circuit.yaml has neuron-level roles {sorted(self.neurons)}; "
                             f"the placed neurons have roles {sorted(set(neurons.values()))}")

        def members(role: str) -> list[str]:
            return [role] if role in ("input", "logits") else placement[role]

        nodes = {node: role for role, placed in placement.items() for node in placed}
        edges: dict[str, str] = {}
        edge_notes: dict[str, tuple[str, str]] = {}
        for src_role, dst_role, kind in self.edges:
            for src in members(src_role):
                for dst in members(dst_role):
                    into_head = names.parse_node(dst).kind == "head"
                    label = names.edge(src, dst, kind if into_head else None)
                    edges[label] = kind
                    if (src_role, dst_role, kind) in self.edge_notes:
                        edge_notes[label] = self.edge_notes[(src_role, dst_role, kind)]
        direct = {node: int(sign) for role, sign in self.direct.items() for node in placement[role]}
        sites, answer_layer = dict(self.sites), self.answer_layer
        if layer_map is not None:
            if n_layers is None:
                raise ValueError("a layer_map needs the model's n_layers (to place the final residual)")
            sites = {v: frozenset(s for site in site_set for s in self._moved_site(site, layer_map, n_layers))
                     for v, site_set in sites.items()}
            answer_layer = None if answer_layer is None else layer_map[answer_layer]
        return Truth(nodes=nodes, edges=edges, edge_notes=edge_notes, direct=direct, neurons=dict(neurons),
                     sites=sites, answer_layer=answer_layer, targets=dict(self.targets))

    def _moved_site(self, site: str, layer_map: dict[int, int], n_layers: int) -> list[str]:
        """Residual site ``r{L}@P`` of circuit.yaml (the input of yaml layer L) in the placed
        model: every depth between the block that wrote it and the block that reads it, since
        the layers in between leave it where it is."""
        depth, label = names.parse_site(site)
        yaml_layers = sorted(layer_map)
        below = [layer for layer in yaml_layers if layer < depth]
        above = [layer for layer in yaml_layers if layer >= depth]
        first = layer_map[below[-1]] + 1 if below else 0
        last = layer_map[above[0]] if above else n_layers
        return [names.site(d, label) for d in range(first, last + 1)]
