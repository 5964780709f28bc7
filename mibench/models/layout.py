"""Named, disjoint subspaces of the residual stream.

A planted circuit writes each variable (token identity, position, "previous token", …) into its
own block of residual dimensions, so every head reads and writes exactly what the circuit says.
The random rotation applied afterwards (``PlantedModel.rotate``) hides this axis alignment.
"""
from __future__ import annotations

import numpy as np


class ResidualLayout:
    def __init__(self, blocks: dict[str, int]) -> None:
        self.slices: dict[str, slice] = {}
        start = 0
        for name, size in blocks.items():
            if size <= 0:
                raise ValueError(f"subspace {name!r} needs a positive size, got {size}")
            self.slices[name] = slice(start, start + size)
            start += size
        self.d_model = start

    def size(self, block: str) -> int:
        s = self.slices[block]
        return s.stop - s.start

    def basis(self, block: str) -> np.ndarray:
        """The block's unit directions as rows: ``[size, d_model]``."""
        out = np.zeros((self.size(block), self.d_model))
        out[:, self.slices[block]] = np.eye(self.size(block))
        return out

    def direction(self, block: str, index: int) -> np.ndarray:
        return self.basis(block)[index]
