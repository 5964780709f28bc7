"""Writers for norm-related mechanisms: constant residual offsets and writes that act only through a
LayerNorm's scale.

Real models carry large, nearly constant directions in their residual stream (outlier or "rogue"
dimensions; Kovaleva et al. 2021, Timkey & van Schijndel 2021) and change what the residual's
coordinates mean from one block to the next (Belrose et al. 2023). A planted model gets the same
properties from these helpers:

* :func:`offset_vector` — a vector of a given norm spread over named subspaces;
* :func:`embed_offset` — every token's embedding carries the same vector (a constant offset written
  by the embeddings);
* :func:`add_constant_neurons` — MLP neurons that read nothing and fire at a constant level from
  their bias, writing a fixed vector at every position: a bias-like component (GPT-2's MLP0 is the
  classic example). A pair of them, one adding an offset and a later one removing it, is an affine
  change of the residual's coordinates between blocks;
* :func:`calibrate_head_gain` — rescale a head's OV so that its mean write along a direction, measured
  on real prompts through the model's own LayerNorms, has a target size (for example, exactly
  cancelling an offset).

Nothing here knows about a particular circuit; every helper only edits PlantedModel weights, so
rotation and export treat the result like any other weight.
"""
from __future__ import annotations

import numpy as np

from mibench.models.planted import PlantedModel


def offset_vector(model: PlantedModel, parts: dict[str, float | np.ndarray]) -> np.ndarray:
    """A residual vector (in the planted, unrotated basis) made of one part per subspace.

    ``parts[block]`` is either a norm (the vector gets that much along the block's first direction)
    or an array of the block's size (used as the block's coordinates)."""
    layout = model.layout
    out = np.zeros(layout.d_model)
    for block, value in parts.items():
        value = np.asarray(value, dtype=float)
        if value.ndim == 0:
            out += float(value) * layout.direction(block, 0)
        else:
            if value.shape != (layout.size(block),):
                raise ValueError(f"offset part for {block!r} needs {layout.size(block)} coordinates, "
                                 f"got shape {value.shape}")
            out[layout.slices[block]] += value
    return out


def embed_offset(model: PlantedModel, vector: np.ndarray, tokens: list[int] | None = None) -> None:
    """Every token in ``tokens`` (all by default) writes ``vector`` in its embedding."""
    tokens = list(range(model.d_vocab)) if tokens is None else tokens
    for tok in tokens:
        model.W_E[tok] += vector


def add_constant_neurons(model: PlantedModel, layer: int, neurons: list[int], vector: np.ndarray,
                         level: float = 1.0) -> None:
    """Neurons that read nothing and fire at ``level`` from their bias, writing ``vector`` in total
    (shared equally among them) at every position: a constant, input-independent write."""
    if level <= 0:
        raise ValueError(f"a constant neuron needs a positive level (ReLU), got {level}")
    if not neurons:
        raise ValueError("add_constant_neurons needs at least one neuron")
    k = len(neurons)
    read = np.zeros((k, model.layout.d_model))
    write = np.tile(vector / (k * level), (k, 1))
    model.set_neurons(layer, neurons, read, write, bias=np.full(k, float(level)))


def calibrate_head_gain(model: PlantedModel, layer: int, head: int, tokens, position: int | None,
                        direction: np.ndarray, target: float) -> float:
    """Scale head ``(layer, head)``'s OV so that its mean write along ``direction`` (planted basis,
    before rotation) at ``position`` (the last one if None) over ``tokens`` equals ``target``.

    The head's write passes through the model's LayerNorms and attention, so it is measured on the
    exported model rather than computed by hand. Call before :meth:`PlantedModel.rotate` (the
    measurement is in the planted basis). Returns the factor applied."""
    from mibench import names
    from mibench.model.ablation import cache_nodes

    _, values = cache_nodes(model.to_bridge(), tokens, [names.head(layer, head)])
    z = values[names.head(layer, head)][:, -1 if position is None else position]
    write = z.double().numpy() @ model.W_O[layer, head]
    measured = float((write @ direction).mean())
    if abs(measured) < 1e-9:
        raise ValueError(f"head a{layer}.h{head} writes nothing along the direction; cannot calibrate")
    factor = target / measured
    model.W_O[layer, head] *= factor
    return factor


def ln_coordinate(x: np.ndarray, direction: np.ndarray) -> float:
    """The coordinate along ``direction`` of LayerNorm(x) (unit weight, no bias), in the planted
    basis: what a head reading ``direction`` sees at a position whose residual is ``x``."""
    centred = x - x.mean()
    return float(centred @ direction / np.sqrt((centred ** 2).mean() + 1e-5))
