"""Shi et al. 2024's equivalence test: does the circuit perform like the full model, prompt by prompt?

The circuit is the model with every unclaimed node resample-ablated (the suite's knockout). On each
test prompt x, Δ(x) = s(circuit, x) − s(model, x), with s the case's per-prompt task metric. If the
two are equivalent, neither outperforms the other more often than chance allows:

    H0: |P(Δ > 0) − 1/2| ≤ ε, with ε = 0.1 (the paper's Table 1),

tested with the paper's binomial statistic t = |k/n − 1/2|, k the prompts where the circuit does
better: p = P(|K/n − 1/2| ≥ t) for K ~ Binomial(n, 1/2 + ε), the least favourable point of H0.
Accept the claim when p ≥ α = 0.05, i.e. when the test fails to reject equivalence (acceptance is
an absence of evidence against the claim, not a proof of it). Departures from the paper's code
(``circuitry``): t is computed from the share of prompts with Δ > 0, as the paper defines it (the
code used the mean of Δ), and prompts with Δ = 0 exactly are dropped, as in a sign test (the paper
notes its test needs Δ ≠ 0); with every Δ = 0 the circuit is the model and the claim is accepted.

Cost: 1 patched forward per claim. Known to miss: extra inert nodes (plus a distractor), omitted
nodes whose knockout does not change the metric, and, with only 64 prompts, circuits that are
worse on most prompts by a tiny margin are rejected as readily as ones that are much worse (the test
sees only the sign of Δ).
"""
import math

from mibench.verification.verifier import Claim, Verdict, Verifier, knockouts


def equivalence_p_value(k: int, n: int, epsilon: float) -> float:
    """P(|K/n − 1/2| ≥ |k/n − 1/2|) for K ~ Binomial(n, 1/2 + ε)."""
    from scipy.stats import binom

    t = abs(k / n - 0.5)
    ks = [j for j in range(n + 1) if abs(j / n - 0.5) >= t - 1e-12]
    return float(min(1.0, sum(binom.pmf(j, n, 0.5 + epsilon) for j in ks)))


class Equivalence(Verifier):
    name = "equivalence"
    version = "1"
    description = ("Shi et al.'s equivalence test: circuit and model outperform each other equally "
                   "often (eps 0.1, alpha 0.05)")
    citation = "Shi et al. 2024, Hypothesis Testing the Circuit Hypothesis in LLMs"
    cost = "1 patched forward per claim"
    epsilon = 0.1
    alpha = 0.05

    def verify(self, view, claim: Claim) -> Verdict:
        ko = knockouts(view)
        circuit = ko.removing([ko.complement(claim.nodes)])[0]
        delta = circuit - ko.clean
        k, n = int((delta > 0).sum()), int((delta != 0).sum())
        if n == 0:
            return Verdict(True, 0.5, 1.0, "the circuit matches the model on every prompt")
        p = equivalence_p_value(k, n, self.epsilon)
        share = k / n
        return Verdict(bool(p >= self.alpha), share, p,
                       f"circuit better on {k}/{n} prompts; H0 |P(delta>0) - 1/2| <= {self.epsilon:g}: "
                       f"p = {p:.3g} ({'not rejected' if p >= self.alpha else 'rejected'} at {self.alpha:g})")
