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

A literature case (:mod:`mibench.literature`) gets a certificate that measures and flags instead of
gating: its checks carry ``gates=False``, a reference instead of a threshold, and the verdict
``ok`` or ``flag`` (see :func:`certify_literature`).
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
    threshold: float | None  # None: reported with no reference (a measured check only)
    op: str  # ">=" or "<="
    detail: str = ""
    #: False for a measurement reported against a reference (the literature tier): it flags, and
    #: never stops a case from being scored
    gates: bool = True

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"check {self.name!r}: op must be '>=' or '<=', got {self.op!r}")
        if self.threshold is None and self.gates:
            raise ValueError(f"check {self.name!r}: a gating check needs a threshold")

    @property
    def shown(self) -> str:
        """The value as printed (``n/a`` for a value that could not be measured)."""
        return "n/a" if self.value is None else f"{self.value:.3f}"

    @property
    def passed(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        if self.threshold is None:
            return True
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    @property
    def needs(self) -> str:
        return needs(self.op, self.threshold)

    @property
    def verdict(self) -> str:
        if self.gates:
            return "pass" if self.passed else "FAIL"
        return "ok" if self.passed else "flag"


@dataclass
class Certificate:
    case: str
    seed: int
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks if c.gates)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.gates and not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "seed": self.seed, "passed": self.passed,
                "checks": [{**asdict(c), "passed": c.passed, "verdict": c.verdict} for c in self.checks]}

    def reason(self) -> str:
        return "; ".join(f"{c.name} = {c.shown} (needs {c.needs})" for c in self.failed())

    def rows(self) -> list[list[Any]]:
        return [[c.name, c.shown, c.needs, c.verdict, c.detail] for c in self.checks]


def needs(op: str, threshold: float | None) -> str:
    """What a check asks of its value, as printed (a stored check too: its JSON fields)."""
    return "-" if threshold is None else f"{op} {threshold:g}"


def certify(case, instance, prompts, ablator) -> Certificate:
    """Measure the certificate of one (case, seed) on ``prompts`` with ``ablator`` (built on them)."""
    if getattr(case, "tier", None) == "literature":
        return certify_literature(case, instance, ablator)
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


#: a label's single-node effect (share of the behaviour lost when it alone is ablated) counts as
#: contradicting the label only beyond this margin of the sign the label implies
CONTRADICTION_MARGIN = 0.01


def certify_literature(case, instance, ablator) -> Certificate:
    """The literature tier's certificate: measurements on the user's weights, each against a
    reference, flagged where they contradict the paper's labels; none of them gates.

    * accuracy — task accuracy on clean prompts (reference: the planted tier's threshold);
    * circuit faithfulness — behaviour left with only the labelled nodes intact, every other node
      resample-ablated (reference: the planted tier's sufficiency);
    * complement — behaviour left with the labelled nodes ablated and the rest intact (reference:
      the planted tier's necessity);
    * effect of each label — the share of the behaviour lost when that node alone is ablated:
      a negative mover (``direct`` −1) should raise the metric when removed, any other label lower
      it; flagged when the measurement has the other sign by more than ``CONTRADICTION_MARGIN``.
      Roles the case exempts from necessity (backup heads, silent by design) are reported, never
      flagged.
    """
    truth = instance.truth
    cert = Certificate(case.name, instance.seed)
    measured = lambda *args: Check(*args, gates=False)  # noqa: E731
    cert.checks.append(measured("accuracy", ablator.metric.accuracy(ablator.clean_logits),
                                THRESHOLDS["accuracy"], ">=", "task accuracy on clean prompts"))
    cert.checks.append(measured("circuit faithfulness", ablator.normalized(ablator.metric_keeping(truth.nodes)),
                                THRESHOLDS["sufficiency"], ">=",
                                "behaviour left with only the labelled nodes intact (the rest resample-ablated)"))
    cert.checks.append(measured("complement", ablator.normalized(ablator.metric_without(truth.nodes)),
                                THRESHOLDS["necessity"], "<=",
                                "behaviour left with every labelled node resample-ablated"))
    single = ablator.single_removals(truth.nodes)
    for node in (n for n in ablator.all_nodes if n in truth.nodes):  # in model order
        role = truth.nodes[node]
        lost = 1.0 - ablator.normalized(single[node])
        if role in case.necessity_exempt:
            cert.checks.append(measured(f"effect {node}", lost, None, ">=",
                                        f"{role}: share of the behaviour lost when it alone is ablated "
                                        f"(not flagged: {case.necessity_exempt[role]})"))
        elif truth.direct.get(node) == -1:
            cert.checks.append(measured(f"effect {node}", lost, CONTRADICTION_MARGIN, "<=",
                                        f"{role}: share lost when it alone is ablated (a negative mover "
                                        f"should raise the metric when removed)"))
        else:
            cert.checks.append(measured(f"effect {node}", lost, -CONTRADICTION_MARGIN, ">=",
                                        f"{role}: share lost when it alone is ablated (should be positive)"))
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
