"""Shi et al. 2024's minimality test: is every claimed node needed?

For a claimed node v, its knockout effect is δ(v) = |m(C) − m(C \\ v)|, m the mean task metric of
the model with every node outside the given set resample-ablated (the suite's knockout). The
reference is a randomly inflated circuit: C ∪ {u} for a node u drawn uniformly from the unclaimed
nodes, with δ(u) = |m(C ∪ {u}) − m(C)|, the effect of knocking out a node known to be surplus. A
needed node should matter more than such a surplus node nearly always:

    H0 (per node v): P(δ(v) > δ(U)) ≥ q* = 0.9, U the random surplus node,

tested as the paper's code does: 100 draws of U, K = how many of them v beats, one-sided binomial
test of K against Binomial(100, 0.9) (alternative: less). The claim is rejected if any node's
H0 is rejected at α = 0.05 after Holm's correction over the claim's nodes (the paper's code leaves
the multiple-testing correction as a to-do); it is accepted when no node is rejected (failing to
reject: no evidence of a surplus node). The statistic is the smallest Holm-adjusted p-value. The
draws are seeded from the view's seed and the claim, and each distinct surplus node's effect is
measured once. An empty claim has no node to test and is accepted: minimality says nothing about
completeness.

Cost: one patched forward per claimed node and per unclaimed node, batched. Known to reject, by
construction, a true circuit that contains a backup node (silent while the node it backs up works,
so its knockout from the full circuit is as small as a surplus node's); and to accept incomplete
circuits and look-alike swaps whose nodes each matter once the rest is ablated.
"""
import numpy as np
from scipy.stats import binomtest

from mibench.report.stats import holm
from mibench.verification.verifier import Claim, Verdict, Verifier, knockouts


class Minimality(Verifier):
    name = "minimality"
    version = "1"
    description = ("Shi et al.'s minimality test: each claimed node's knockout beats a random surplus "
                   "node's >= 90% of the time (binomial, Holm, alpha 0.05)")
    citation = "Shi et al. 2024, Hypothesis Testing the Circuit Hypothesis in LLMs"
    cost = "1 patched forward per node of the model per claim (batched)"
    quantile = 0.9
    draws = 100
    alpha = 0.05

    def verify(self, view, claim: Claim) -> Verdict:
        ko = knockouts(view)
        nodes = sorted(claim.nodes)
        surplus = ko.complement(nodes)
        if not nodes or not surplus:
            why = "no node claimed" if not nodes else "every node claimed: no surplus node to compare with"
            return Verdict(True, 1.0, 1.0, f"{why}; nothing to test")
        circuit = set(nodes)
        # one run per set: the circuit, the circuit without each node, the circuit with each surplus node
        kept = [circuit, *(circuit - {v} for v in nodes), *(circuit | {u} for u in surplus)]
        means = [float(m.mean()) for m in ko.removing([ko.complement(k) for k in kept])]
        base = means[0]
        effect = {v: abs(base - m) for v, m in zip(nodes, means[1:1 + len(nodes)])}
        reference = np.array([abs(m - base) for m in means[1 + len(nodes):]])
        rng = np.random.default_rng([view.seed, *sorted(ko.all_nodes.index(v) for v in nodes)])
        drawn = reference[rng.integers(len(surplus), size=self.draws)]
        p = [binomtest(int((effect[v] > drawn).sum()), self.draws, self.quantile, alternative="less").pvalue
             for v in nodes]
        adjusted = holm(p)
        failing = [v for v, q in zip(nodes, adjusted) if q < self.alpha]
        worst = min(adjusted)
        detail = (f"not minimal: {', '.join(failing)} (Holm p < {self.alpha:g})" if failing
                  else f"every node beats a random surplus node (smallest Holm p {worst:.3g})")
        return Verdict(not failing, worst, worst, detail)
