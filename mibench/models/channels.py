"""Look-alike channels: a planted model that runs its case's own mechanism many times over.

A real model's non-circuit heads are not silent: each attends sharply somewhere, writes with norms
like the circuit's and matters for some behaviour. A planted case gets the same by hosting several
copies ("channels") of its own mechanism, each in its own residual blocks. Channel 0 is the circuit:
it writes what the task reads. Every other channel's outputs are read by the unembedding through a
random shuffle of the vocabulary at a lower scale (:func:`shuffled_readout`), so it moves other
tokens' logits (it is busy) and the task's metric only a little (a noise floor). A case builds every
role of every channel by the same recipe with strengths from the same ranges, so no task-agnostic
statistic tells the circuit's components from the rest.

:func:`plan_channels` places the channels on a model's heads and MLP neuron groups: channel 0 at the
layers circuit.yaml states, the others at random increasing maps of those layers. A channel that does
not fit whole keeps an upstream-closed part of the circuit (a role only together with every role it
reads from), so every slot hosts a role whose inputs exist, and the channel's *sink* roles (those
whose readers are missing) are the ones whose writes get a readout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mibench import names
from mibench.circuit import Circuit
from mibench.models.planted import PlantedModel

#: a head slot is (layer, head); an MLP slot is (layer, neuron group)
Slot = tuple[int, int]


@dataclass(frozen=True)
class Channel:
    """One copy of the mechanism: which slot hosts each of its roles (a partial channel has fewer)."""

    index: int
    slots: dict[str, Slot]

    @property
    def is_circuit(self) -> bool:
        return self.index == 0

    def block(self, name: str) -> str:
        """This channel's copy of the residual block ``name`` (channel 0 keeps the plain name)."""
        return name if self.index == 0 else f"{name}@{self.index}"

    def sinks(self, circuit: Circuit) -> list[str]:
        """The roles of this channel that no other role of this channel reads."""
        readers = {src for src, dst, _ in circuit.edges if dst in self.slots}
        return [role for role in self.slots if role not in readers]


def upstream(circuit: Circuit) -> dict[str, set[str]]:
    """Each role's direct inputs among the circuit's roles (from circuit.yaml's edges)."""
    return {role: {src for src, dst, _ in circuit.edges if dst == role and src in circuit.roles}
            for role in circuit.roles}


def circuit_layers(circuit: Circuit) -> list[int]:
    """The distinct layers circuit.yaml places roles in, ascending."""
    return sorted({spec["layer"] for spec in circuit.roles.values()})


def random_layer_map(circuit: Circuit, n_layers: int, rng: np.random.Generator) -> dict[int, int]:
    """A random strictly increasing map of circuit.yaml's layers into ``range(n_layers)``: where the
    circuit sits in a model deeper than it needs (so that "the circuit is in the first layers" is
    not a give-away). Roles keep their order; pass the map to :func:`plan_channels` and
    :meth:`Circuit.truth`."""
    layers = circuit_layers(circuit)
    if len(layers) > n_layers:
        raise ValueError(f"the circuit spans {len(layers)} layers, the model has {n_layers}")
    return dict(zip(layers, sorted(int(x) for x in rng.choice(n_layers, size=len(layers), replace=False))))


def plan_channels(circuit: Circuit, n_layers: int, n_heads: int, rng: np.random.Generator,
                  mlp_groups: int = 0, mlp_layers=None, layer_map: dict[int, int] | None = None,
                  max_tries: int = 2000) -> list[Channel]:
    """Fill every head (and ``mlp_groups`` neuron groups of the MLP of each layer in ``mlp_layers``,
    all by default, if the circuit has MLP roles) with channels. Channel 0 sits at circuit.yaml's
    layers mapped by ``layer_map`` (unchanged by default); each further channel at a random
    strictly increasing map of those layers into the model's, built around a randomly chosen free
    slot so that every slot ends up used. Raises if a slot cannot host any role."""
    roles = sorted(circuit.roles, key=lambda r: circuit.roles[r]["layer"])
    kinds = {r: circuit.roles[r].get("kind", "head") for r in roles}
    inputs = upstream(circuit)
    layers = circuit_layers(circuit)
    layer_map = layer_map or {layer: layer for layer in layers}
    if max(layer_map.values()) >= n_layers:
        raise ValueError(f"the circuit needs {max(layer_map.values()) + 1} layers, the model has {n_layers}")
    capacity = {"head": n_heads, "mlp": mlp_groups}
    mlp_layers = set(range(n_layers) if mlp_layers is None else mlp_layers)
    free = {(kind, layer): [int(i) for i in rng.permutation(capacity[kind])]
            if kind == "head" or layer in mlp_layers else []
            for kind in ("head", "mlp") for layer in range(n_layers)}

    def place(layer_map: dict[int, int], index: int) -> Channel:
        slots: dict[str, Slot] = {}
        for role in roles:
            layer = layer_map.get(circuit.roles[role]["layer"])
            pool = free[(kinds[role], layer)] if layer is not None else []
            if pool and inputs[role] <= set(slots):
                slots[role] = (layer, pool.pop())
        return Channel(index, slots)

    channels = [place(layer_map, 0)]
    if len(channels[0].slots) != len(roles):
        raise ValueError(f"the circuit does not fit a {n_layers}×{n_heads} model at layers {layer_map}")
    for _ in range(max_tries):
        open_slots = [(kind, layer) for (kind, layer), pool in free.items() if pool]
        if not open_slots:
            return channels
        kind, layer = open_slots[int(rng.integers(len(open_slots)))]
        # a role of that kind that can sit at this layer with room below for the layers it reads
        # from; roles mapped past the top layer are left out of this channel
        fits = [r for r in roles if kinds[r] == kind and layers.index(circuit.roles[r]["layer"]) <= layer]
        if not fits:
            continue
        role = fits[int(rng.integers(len(fits)))]
        at = layers.index(circuit.roles[role]["layer"])
        below = sorted(int(x) for x in rng.choice(layer, size=at, replace=False))
        n_above = min(len(layers) - at - 1, n_layers - layer - 1)
        above = sorted(int(x) for x in rng.choice(np.arange(layer + 1, n_layers), size=n_above, replace=False))
        layer_map = dict(zip(layers, [*below, layer, *above]))
        channel = place(layer_map, len(channels))
        if channel.slots:
            channels.append(channel)
    left = [(kind, layer) for (kind, layer), pool in free.items() if pool]
    raise ValueError(f"could not place a role on every slot; left: {left}")


def shuffled_readout(model: PlantedModel, block: str, rng: np.random.Generator, scale: float) -> None:
    """The unembedding reads ``block``'s i-th direction into the logit of a random token (distinct
    tokens for distinct directions), at ``scale``: a channel's output changes the model's
    predictions without being the task's readout."""
    size = model.layout.size(block)
    if size > model.d_vocab:
        raise ValueError(f"block {block!r} has {size} directions but the vocabulary only {model.d_vocab} tokens")
    tokens = [int(t) for t in rng.permutation(model.d_vocab)[:size]]
    model.unembed(block, tokens, scale=scale)


def random_codes(layout, block: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random unit vectors inside ``block`` as rows ``[n, d_model]``: codes for n items (tokens,
    say) in fewer dimensions than one-hot, so many channels fit in a modest residual. Two codes
    overlap by ~N(0, 1/size)."""
    raw = rng.standard_normal((n, layout.size(block)))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)) @ layout.basis(block)


@dataclass(frozen=True)
class QueryHead:
    """One head of a model whose heads act at chosen query positions: its recipe (e.g. "mover"),
    the token whose position it queries (END or a marker) and, for a mover, the residual block its
    copy goes to."""

    layer: int
    index: int
    recipe: str
    query: int
    readout: str = "out"

    @property
    def node(self) -> str:
        return names.head(self.layer, self.index)


def readout_blocks(heads: list[QueryHead], n_circuit: int = 2) -> list[QueryHead]:
    """The first ``n_circuit`` heads (the circuit's channel) keep their readout (the task's "out");
    the look-alike movers of one query position copy into blocks of their own, ``read{i}``. Movers at
    different positions never write at the same place, so they share blocks: block i holds the i-th
    look-alike mover of every position."""
    seen: dict[int, int] = {}
    out = heads[:n_circuit]
    for h in heads[n_circuit:]:
        if h.recipe == "mover":
            seen[h.query] = seen.get(h.query, -1) + 1
            h = QueryHead(h.layer, h.index, h.recipe, h.query, f"read{seen[h.query]}")
        out.append(h)
    return out
