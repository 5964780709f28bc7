"""Building blocks for planted models: residual subspaces, head and MLP writers, basis rotation and
distractor components. Every planted case builds its model from these, so the matrix code lives once."""
from mibench.models.layout import ResidualLayout
from mibench.models.planted import PlantedModel

__all__ = ["ResidualLayout", "PlantedModel"]
