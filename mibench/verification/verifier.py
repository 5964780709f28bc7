"""The verifier contract: a ``Verifier`` takes a view (model, prompts, metric; never the truth)
and a ``Claim`` (the nodes someone says form the circuit) and returns a ``Verdict``.

A claim holds only its nodes: whether it is the true circuit is known to the track that built it
(:mod:`mibench.verification.claims`), never to the verifier. A verdict is ``accept`` (for a
hypothesis test: the test failed to reject the claim at its level), the test's ``statistic``, its
``p_value`` (None for a verifier that thresholds a statistic instead of testing) and a one-line
``detail``.

Every knockout a verifier runs goes through :mod:`mibench.model.ablation` (:class:`Knockouts`
binds its ``Ablator`` to a view once), so "remove a node" means here what it means to the
certificates and the faithfulness score: its output resample-ablated, from another test prompt.
"""
from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterable

from mibench import names

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mibench.api import CaseView


@dataclass(frozen=True)
class Claim:
    """A claimed circuit: the node names (``a1.h3``, ``m0``) said to carry the behaviour."""

    nodes: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", frozenset(self.nodes))
        for node in self.nodes:
            if names.parse_node(node).kind not in ("head", "mlp"):
                raise ValueError(f"a claim names heads and MLPs only, got {node!r}")

    def __len__(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class Verdict:
    accept: bool
    statistic: float
    p_value: float | None
    detail: str = ""


class Verifier(ABC):
    """One way of checking a circuit claim. ``cost`` says how many patched forwards it needs."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    cost: ClassVar[str] = ""

    @abstractmethod
    def verify(self, view: "CaseView", claim: Claim) -> Verdict:
        """Accept or reject ``claim`` on ``view``'s model and test prompts (deterministic for
        ``view.seed``)."""


class Knockouts:
    """The task metric of a view's model with chosen nodes resample-ablated, per prompt.

    Built once per view (see :func:`knockouts`): an :class:`~mibench.model.ablation.Ablator` on the
    test prompts (seeded with ``view.seed``), whose clean cache and cached base run every
    verifier's patches reuse."""

    def __init__(self, view: "CaseView") -> None:
        from mibench.model.ablation import Ablator

        self.view = view
        self.ablator = Ablator(view.model, view.prompts, view.metric, seed=view.seed)
        self.all_nodes: list[str] = self.ablator.all_nodes
        self.clean = view.metric_per_prompt(self.ablator.base.logits)

    def complement(self, kept: Iterable[str]) -> list[str]:
        kept = set(kept)
        return [n for n in self.all_nodes if n not in kept]

    def per_prompt(self, values: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """Per-prompt metric with each node of ``values`` replaced by its value (one patched run)."""
        return self.view.metric_per_prompt(self.ablator.base.run(values))

    def removing(self, removed_sets: list[Iterable[str]]) -> list["torch.Tensor"]:
        """Per-prompt metric with each set of nodes resample-ablated, several sets per batched pass."""
        from mibench.model.ablation import MAX_BATCH_ROWS

        ablated = self.ablator.ablated
        patches = [{n: ablated[n] for n in removed} for removed in removed_sets]
        per_pass = max(1, MAX_BATCH_ROWS // len(self.view.prompts))
        out: list["torch.Tensor"] = []
        for i in range(0, len(patches), per_pass):
            out += [self.view.metric_per_prompt(logits)
                    for logits in self.ablator.base.run_batched(patches[i:i + per_pass])]
        return out


_knockouts: "weakref.WeakKeyDictionary[CaseView, Knockouts]" = weakref.WeakKeyDictionary()


def knockouts(view: "CaseView") -> Knockouts:
    """The view's :class:`Knockouts`, built on first use: every verifier run on every claim of one
    view shares its clean cache and base run."""
    if view not in _knockouts:
        _knockouts[view] = Knockouts(view)
    return _knockouts[view]
