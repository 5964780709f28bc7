"""Verifies a case's ground truth by intervention, through the same Ablator the scorer uses.

Every figure is a measurement of the model on the test prompts; the truth only says which nodes to
ablate. On the normalized scale of :class:`~mibench.model.ablation.Ablator` (1 = clean behaviour,
0 = every node resample-ablated):

* accuracy      — the case's task accuracy on clean prompts;
* labels        — every role is placed where the case's ``circuit.yaml`` says (layer, kind), and
                  the truth has the granularities the file promises (a consistency check, not a
                  measurement);
* necessity     — ablating one truth node leaves at most ``necessity`` of the behaviour;
* sufficiency   — ablating every non-truth node keeps at least ``sufficiency`` of it;
* strictness    — no single non-truth node moves it by more than ``strictness``;
* plus the case's role-specific checks (backup compensation, trap mechanisms, …).

A case whose certificate fails is never scored.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: The one place certificate thresholds live; printed with every certificate.
THRESHOLDS = {"accuracy": 0.9, "necessity": 0.5, "sufficiency": 0.9, "strictness": 0.05}


@dataclass
class Check:
    name: str
    value: float
    threshold: float
    op: str  # ">=" or "<="
    detail: str = ""

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"check {self.name!r}: op must be '>=' or '<=', got {self.op!r}")

    @property
    def shown(self) -> str:
        """The value as printed (``n/a`` for a value that could not be measured)."""
        return "n/a" if self.value is None else f"{self.value:.3f}"

    @property
    def passed(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclass
class Certificate:
    case: str
    seed: int
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "seed": self.seed, "passed": self.passed,
                "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}

    def reason(self) -> str:
        return "; ".join(f"{c.name} = {c.shown} (needs {c.op} {c.threshold:g})" for c in self.failed())

    def rows(self) -> list[list[Any]]:
        return [[c.name, c.shown, f"{c.op} {c.threshold:g}", "pass" if c.passed else "FAIL",
                 c.detail] for c in self.checks]


def certify(case, instance, prompts, ablator) -> Certificate:
    """Measure the certificate of one (case, seed) on ``prompts`` with ``ablator`` (built on them)."""
    truth = instance.truth
    cert = Certificate(case.name, instance.seed)
    cert.checks.append(Check("accuracy", ablator.metric.accuracy(ablator.clean_logits),
                             THRESHOLDS["accuracy"], ">=", "task accuracy on clean prompts"))
    if case.circuit is not None:  # not a measurement: the labels must be where circuit.yaml says
        wrong = case.circuit.disagreements(truth)
        cert.checks.append(Check("labels match circuit.yaml", float(len(wrong)), 0.0, "<=",
                                 "; ".join(wrong) or "every role placed at its stated layer and kind"))
    single = ablator.single_removals(ablator.all_nodes)  # one batched pass per block
    for node, role in sorted(truth.nodes.items()):
        if role in case.necessity_exempt:
            continue
        remaining = ablator.normalized(single[node])
        cert.checks.append(Check(f"necessity {node}", remaining, THRESHOLDS["necessity"], "<=",
                                 f"{role}: behaviour left after resample-ablating it"))
    kept = ablator.normalized(ablator.metric_keeping(truth.nodes))
    cert.checks.append(Check("sufficiency", kept, THRESHOLDS["sufficiency"], ">=",
                             "behaviour left with only the truth nodes intact"))
    others = [n for n in ablator.all_nodes if n not in truth.nodes]
    if others:
        moves = {n: abs(1.0 - ablator.normalized(single[n])) for n in others}
        worst = max(moves, key=moves.get)
        cert.checks.append(Check("strictness", moves[worst], THRESHOLDS["strictness"], "<=",
                                 f"largest move by one non-truth node ({worst})"))
    cert.checks.extend(case.extra_checks(instance, prompts, ablator))
    return cert


#: a truth edge whose path effect stays below this share of the clean metric on every seed is nil
EDGE_NIL = 0.01


@dataclass(frozen=True)
class EdgeEffect:
    """One edge of the circuit (between roles) measured by path patching over seeds."""

    source: str  # role, or "input"
    destination: str  # role, or "logits"
    kind: str
    shares: tuple[float, ...]  # per seed and placed edge: path effect / clean metric
    note: str | None = None  # circuit.yaml's label: "nil", "redundant" or none

    @property
    def nil(self) -> bool:
        return max(abs(s) for s in self.shares) < EDGE_NIL

    @property
    def consistent(self) -> bool:
        """An unlabelled edge must move the metric; one labelled nil must not (a redundant one may
        be nil alone: the case's certificate checks its routes together)."""
        return self.note == "redundant" or self.nil == (self.note == "nil")

    def row(self) -> list[str]:
        mean = sum(self.shares) / len(self.shares)
        verdict = ("nil" if self.nil else "") + (f" (labelled {self.note})" if self.note else "")
        if not self.consistent:
            verdict += " MISLABELLED"
        return [f"{self.source} -> {self.destination} <{self.kind}>", f"{mean:+.3f}",
                f"{max(abs(s) for s in self.shares):.3f}", verdict.strip()]


def edge_effects(preps) -> list[EdgeEffect]:
    """Each truth edge's effect, measured by path patching under the case's corruption (the
    sender's corrupted write delivered to the receiver's input only) on each prepared seed, as a
    share of the clean metric, grouped by the roles it joins. Reported by ``mibench verify``; a nil
    edge (below :data:`EDGE_NIL` on every seed) is one the corruption never moves on its own."""
    from mibench import names
    from mibench.model.paths import path_effects

    grouped: dict[tuple[str, str, str, str | None], list[float]] = {}
    for prep in preps:
        truth = prep.instance.truth
        effects = path_effects(prep.instance.model, prep.prompts, list(truth.edges), prep.ablator.metric)
        for edge, effect in effects.items():
            src, dst, _ = names.parse_edge(edge)
            note = truth.edge_notes.get(edge, (None, ""))[0]
            key = (truth.nodes.get(src.name, src.name), truth.nodes.get(dst.name, dst.name), truth.edges[edge], note)
            grouped.setdefault(key, []).append(effect / prep.ablator.full)
    return [EdgeEffect(src, dst, kind, tuple(shares), note) for (src, dst, kind, note), shares in grouped.items()]
