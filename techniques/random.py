"""The random baseline: every component gets an independent uniform score.

Every table needs it, so it scores every granularity: a technique that does no better than this
has found nothing. Seeded by the run's seed, so the same command gives the same numbers.
"""
import zlib

import numpy as np

from mibench.api import CaseView, Technique, make_scores


class RandomBaseline(Technique):
    name = "random"
    version = "2"
    granularity = "node"
    granularities = ("node", "edge", "neuron", "site", "layer")
    cost = "0 passes"
    description = "uniform random scores (baseline)"

    def attribute(self, view: CaseView):
        components = view.components()
        # seeded by run seed and case, so different cases get independent draws
        rng = np.random.default_rng([view.seed, zlib.crc32(view.case_name.encode())])
        return make_scores(rng.random(len(components)), index=components)
