"""The random baseline: every component gets an independent uniform score.

Every table needs it: a technique that does no better than this has found nothing. Seeded by the
run's seed, so the same command gives the same numbers.
"""
import numpy as np

from mibench.api import CaseView, Technique, make_scores


class RandomBaseline(Technique):
    name = "random"
    version = "1"
    granularity = "node"
    cost = "0 passes"
    description = "uniform random scores (baseline)"

    def attribute(self, view: CaseView):
        components = view.components()
        rng = np.random.default_rng([view.seed, 7919])
        return make_scores(rng.random(len(components)), index=components)
