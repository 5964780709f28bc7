"""MLP key-value writers for planted models: feature-detecting neurons and distractor neurons.

A planted MLP neuron is a key (the direction it reads), a threshold (its bias) and a value (the
direction it writes per unit of activation). With ReLU, a threshold makes the neuron an AND-like
detector: it stays silent until the feature it reads exceeds the threshold, so a weaker version of
the feature (a look-alike input) does nothing. These helpers only call
:meth:`~mibench.models.PlantedModel.set_neurons`, so rotation and export treat them like any weight.
"""
from __future__ import annotations

import numpy as np

from mibench.models.planted import PlantedModel


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.where(norms == 0, 1.0, norms)


def set_threshold_neurons(model: PlantedModel, layer: int, neurons: list[int], read: np.ndarray,
                          write: np.ndarray, threshold: float | np.ndarray, gain: float = 1.0) -> None:
    """Neuron ``neurons[i]`` computes ``gain * relu(x · read_i − threshold)`` and writes that
    activation times ``write_i``. ``read`` and ``write`` are ``[len(neurons), d_model]``."""
    read = np.atleast_2d(read)
    write = np.atleast_2d(write)
    if read.shape[0] != len(neurons) or write.shape[0] != len(neurons):
        raise ValueError(f"{len(neurons)} neurons need {len(neurons)} read and write rows, got "
                         f"{read.shape[0]} and {write.shape[0]}")
    threshold = np.broadcast_to(np.asarray(threshold, dtype=float), (len(neurons),))
    model.set_neurons(layer, neurons, gain * read, write, bias=-gain * threshold)


def add_distractor_neurons(model: PlantedModel, layer: int, neurons: list[int],
                           rng: np.random.Generator, *, read_blocks: list[str],
                           write: dict[str, float], read_scale: float = 1.0,
                           bias: tuple[float, float] = (-0.1, 0.1)) -> None:
    """Neurons with random keys over ``read_blocks`` (unit norm times ``read_scale``), a bias drawn
    uniformly from ``bias``, and random values of norm ``write[block]`` per unit activation in
    each named block: plausible-looking neurons whose effect on the task is bounded by the
    chosen write sizes."""
    if not neurons:
        return
    d = model.layout.d_model
    mask = np.zeros(d)
    for block in read_blocks:
        mask[model.layout.slices[block]] = 1.0
    k = len(neurons)
    read = read_scale * _unit_rows(rng.standard_normal((k, d)) * mask)
    out = np.zeros((k, d))
    for block, size in write.items():
        part = rng.standard_normal((k, model.layout.size(block)))
        out[:, model.layout.slices[block]] = size * _unit_rows(part)
    model.set_neurons(layer, neurons, read, out, bias=rng.uniform(bias[0], bias[1], size=k))
