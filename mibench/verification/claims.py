"""Claims of known status, built from a case's Truth (the scoring side: this module reads the truth).

For one (case, seed) the track checks every verifier on these node-level claims:

* ``true``: the truth's nodes. Correct.
* ``minus_role``: the truth without every node of one role, one claim per role. Wrong: incomplete.
  (Where the case has one role this is the empty claim, "no node carries the behaviour".)
* ``plus_distractor``: the truth plus one non-truth node of the same kind (head or MLP) as a truth
  node drawn at random. Wrong: not minimal. The extra node does nothing, so the claim still
  reproduces the behaviour; only a minimality-type test can see it, which is why the track reports
  rates by claim type.
* ``swap_lookalike``: the truth with each node of one role replaced by a look-alike, one claim per
  role. The cases do not label which busy non-truth node imitates which role, so the rule is
  stated here: a look-alike is a non-truth node of the same kind in the same layer, drawn at
  random; where that layer has none (a layer holds one MLP), the same kind in the nearest layer
  that has one (the lower layer on a tie). A role with no node of its kind outside the truth gets
  no swap claim. Wrong: a wrong node.
* ``random``: as many nodes as the truth, drawn at random from all heads and MLPs (redrawn if it is
  the truth itself). Wrong.

Every draw comes from a generator seeded with the instance's seed, so the claims of a (case, seed)
are the same on every run. A :class:`~mibench.verification.verifier.Claim` carries only its
nodes; its type and status stay in the :class:`LabelledClaim` that wraps it here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mibench import names
from mibench.api import Truth
from mibench.verification.verifier import Claim

CLAIM_TYPES = ("true", "minus_role", "plus_distractor", "swap_lookalike", "random")
#: why each wrong claim type is wrong
WRONG_BECAUSE = {"minus_role": "incomplete", "plus_distractor": "not minimal",
                 "swap_lookalike": "wrong node", "random": "random"}


@dataclass(frozen=True)
class LabelledClaim:
    """A claim with what the track knows about it: its type, the role it changes (``""`` for
    claims that change none) and whether it is the true circuit."""

    claim: Claim
    kind: str
    role: str
    correct: bool

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.role}" if self.role else self.kind


def _kind(node: str) -> str:
    return names.parse_node(node).kind


def lookalike(node: str, candidates: list[str], rng: np.random.Generator) -> str | None:
    """A node of ``candidates`` of the same kind as ``node``, in its layer or else the nearest
    layer that has one (the lower on a tie); None if there is none of that kind."""
    same_kind = [c for c in candidates if _kind(c) == _kind(node)]
    if not same_kind:
        return None
    layer = names.node_layer(node)
    distance = {c: abs(names.node_layer(c) - layer) for c in same_kind}
    nearest = min(distance.values())
    pool = sorted(c for c in same_kind if distance[c] == nearest)
    lowest = min(names.node_layer(c) for c in pool)  # a tie between layers goes to the lower
    pool = [c for c in pool if names.node_layer(c) == lowest]
    return pool[int(rng.integers(len(pool)))]


def build_claims(truth: Truth, shape: names.Shape, seed: int) -> list[LabelledClaim]:
    """Every claim of the module docstring for one instance, in a fixed order."""
    rng = np.random.default_rng([seed, 0x5C1A])
    everything = names.nodes(shape)
    true_nodes = frozenset(truth.nodes)
    others = [n for n in everything if n not in true_nodes]
    roles = sorted(set(truth.nodes.values()))
    claims = [LabelledClaim(Claim(true_nodes), "true", "", True)]
    for role in roles:
        kept = {n for n, r in truth.nodes.items() if r != role}
        claims.append(LabelledClaim(Claim(kept), "minus_role", role, False))
    anchor = sorted(true_nodes)[int(rng.integers(len(true_nodes)))]
    same_kind = [n for n in others if _kind(n) == _kind(anchor)]
    if same_kind:
        extra = same_kind[int(rng.integers(len(same_kind)))]
        claims.append(LabelledClaim(Claim(true_nodes | {extra}), "plus_distractor", "", False))
    for role in roles:
        swapped, free = set(true_nodes), list(others)
        for node in sorted(n for n, r in truth.nodes.items() if r == role):
            replacement = lookalike(node, free, rng)
            if replacement is None:
                break
            swapped = (swapped - {node}) | {replacement}
            free.remove(replacement)
        else:
            claims.append(LabelledClaim(Claim(swapped), "swap_lookalike", role, False))
    if len(everything) > len(true_nodes):
        while True:
            drawn = frozenset(rng.choice(everything, size=len(true_nodes), replace=False).tolist())
            if drawn != true_nodes:
                break
        claims.append(LabelledClaim(Claim(drawn), "random", "", False))
    return claims
