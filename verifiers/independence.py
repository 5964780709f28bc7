"""Shi et al. 2024's independence test: once the circuit is knocked out, is what remains unrelated to
the model's behaviour?

If the claimed nodes alone carry the task, the complement (the model with every claimed node
resample-ablated, the suite's knockout) cannot perform it, so its per-prompt task metric carries no
information about the full model's:

    H0: s(complement, X) is independent of s(model, X), X a random test prompt.

Tested as the paper does, with the Hilbert–Schmidt independence criterion (Gretton et al. 2007;
Gaussian kernels) and a permutation test of 1000 permutations of the complement's scores; the
p-value counts the permutations whose HSIC is at least the observed one, plus one (so that it is
never 0). Accept the claim when p ≥ α = 0.05: the test fails to reject independence (absence of
evidence of dependence, not proof of independence). Departure from the paper's code
(``circuitry``): each variable's kernel width is the median of its own pairwise distances (the
usual median heuristic) rather than the median distance between the two samples, which is not
invariant to a shift of one of them; a variable with no spread (every score equal) is independent
of anything, and the claim is accepted.

Cost: 1 patched forward per claim plus the permutations (a 64 × 64 kernel each). Known to miss:
everything a claim adds (a distractor, a look-alike alongside the truth) and omitted nodes that do
not carry the task alone; and it can reject a true circuit when the prompts' own features (which
token is the answer) move both scores together through paths outside any circuit.
"""
import torch

from mibench.verification.verifier import Claim, Verdict, Verifier, knockouts


def _centred_kernel(x: torch.Tensor) -> torch.Tensor:
    distances = (x[:, None] - x[None, :]) ** 2
    apart = distances[~torch.eye(len(x), dtype=torch.bool)].sqrt()
    width = apart.median()
    if width == 0:  # most scores tie (a discrete metric): the median would be 0, so take the spread
        width = apart.max()
    kernel = torch.exp(-distances / (2 * width ** 2))
    centring = torch.eye(len(x), dtype=x.dtype) - 1.0 / len(x)
    return centring @ kernel @ centring


def hsic_test(x: torch.Tensor, y: torch.Tensor, permutations: int, seed: int) -> tuple[float, float]:
    """HSIC of ``x`` and ``y`` and its permutation p-value (``y`` permuted, with a seeded generator)."""
    x, y = x.double(), y.double()
    n = len(x)
    k, l = _centred_kernel(x), _centred_kernel(y)
    observed = float((k * l).sum()) / (n - 1) ** 2  # trace(K H L H) with both kernels centred
    generator = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(permutations)])
    permuted = l[perms[:, :, None], perms[:, None, :]]  # [permutations, n, n]
    null = (k[None] * permuted).sum(dim=(1, 2)) / (n - 1) ** 2
    p = (1 + int((null >= observed - 1e-12).sum())) / (1 + permutations)
    return observed, p


class Independence(Verifier):
    name = "independence"
    version = "1"
    description = ("Shi et al.'s independence test: HSIC permutation test between the complement's "
                   "and the model's per-prompt scores (alpha 0.05)")
    citation = "Shi et al. 2024, Hypothesis Testing the Circuit Hypothesis in LLMs"
    cost = "1 patched forward per claim, 1000 permutations"
    permutations = 1000
    alpha = 0.05

    def verify(self, view, claim: Claim) -> Verdict:
        ko = knockouts(view)
        complement = ko.removing([claim.nodes])[0]
        if float(complement.std()) < 1e-9 or float(ko.clean.std()) < 1e-9:
            return Verdict(True, 0.0, 1.0, "a score with no spread is independent of any other")
        hsic, p = hsic_test(complement, ko.clean, self.permutations, view.seed)
        return Verdict(bool(p >= self.alpha), hsic, p,
                       f"HSIC {hsic:.4g}; H0 complement independent of model: p = {p:.3g} "
                       f"({'not rejected' if p >= self.alpha else 'rejected'} at {self.alpha:g})")
