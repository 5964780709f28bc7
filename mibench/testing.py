"""``check_technique``: the conformance suite every adapter must pass (after scikit-learn's
``check_estimator``). Flat ``check_<property>`` functions, each returning ``None`` on success or
raising ``CheckFailed`` / ``CheckSkipped``; a report with one line per check and the counts.

In a test suite::

    from mibench.testing import parametrize_with_checks

    @parametrize_with_checks(["dla", "path/to/my_adapter.py"])
    def test_conformance(technique, check):
        check(technique)
"""
from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from mibench import names
from mibench.api import CaseView, MibenchError, Technique, validate_scores
from mibench.model.passes import PassCounter

#: The time budget, in forward-pass equivalents over the prompt set (a backward pass counts as
#: two): measured by the pass counter, so it means the same on every machine and no check
#: depends on wall-clock time. Work outside the model (fitting a probe, say) is not counted.
PASS_BUDGET = 500.0
N_PROMPTS = 16
FORBIDDEN_IMPORTS = ("mibench.scoring", "mibench.certificate", "mibench.runner", "ground_truth")


class CheckFailed(Exception):
    pass


class CheckSkipped(Exception):
    pass


@lru_cache(maxsize=4)
def _smallest_case(granularity: str):
    """The cheapest case with truth at ``granularity``: (case, test prompts, train prompts).

    Granularities are read from each case class itself rather than from the listing cache."""
    from mibench.registry import case_entries, load_case

    for name in sorted(case_entries(), key=lambda n: (n != "induction", n)):
        case = load_case(name)
        if granularity in case.granularities:
            return case, case.prompts(N_PROMPTS, 0, "test"), case.prompts(N_PROMPTS, 0, "train")
    raise CheckSkipped(f"no case has ground truth at {granularity!r} granularity")


def _view(technique: Technique) -> CaseView:
    """A fresh model for every check (building is deterministic), so one check cannot leak into
    the next through the model."""
    case, prompts, train = _smallest_case(technique.granularity)
    return CaseView.of(case, case.build(0).model, prompts, train, technique.granularity, 0)


def _attribute(technique: Technique, view: CaseView):
    import torch

    torch.manual_seed(0)
    return technique.attribute(view)


def check_metadata(technique: Technique) -> None:
    name = getattr(technique, "name", None)
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise CheckFailed(f"`name` must be a non-empty string without spaces, got {name!r}")
    if technique.granularity not in names.GRANULARITIES:
        raise CheckFailed(f"`granularity` {technique.granularity!r} is not one of {names.GRANULARITIES}")
    if not isinstance(technique.signed, bool):
        raise CheckFailed(f"`signed` must be True or False, got {technique.signed!r}")
    if not str(getattr(technique, "version", "")):
        raise CheckFailed("`version` must be set so results record which version ran")


def check_never_sees_truth(technique: Technique) -> None:
    """The adapter imports nothing that holds the truth, and its view carries none."""
    source = inspect.getsource(inspect.getmodule(type(technique)))
    for node in ast.walk(ast.parse(source)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for module in modules:
            if module.startswith(FORBIDDEN_IMPORTS):
                raise CheckFailed(f"imports {module}, which can reach the ground truth")
        if isinstance(node, ast.Attribute) and node.attr in ("truth", "_metric", "__closure__", "__self__"):
            raise CheckFailed(f"reads `.{node.attr}`; techniques never see the truth or the case")


def check_output_index_and_values(technique: Technique) -> None:
    view = _view(technique)
    try:
        validate_scores(_attribute(technique, view), view.components(), technique.name)
    except MibenchError as exc:
        raise CheckFailed(str(exc)) from exc


def check_deterministic(technique: Technique) -> None:
    view = _view(technique)
    first, second = _attribute(technique, view), _attribute(technique, view)
    if not first.sort_index().equals(second.sort_index()):
        diff = (first.sort_index() - second.sort_index()).abs().max()
        raise CheckFailed(f"two runs with the same seed differ (max difference {diff:.3g})")


def check_leaves_weights_unchanged(technique: Technique) -> None:
    import torch

    view = _view(technique)
    before = [p.detach().clone() for p in view.model.parameters()]
    _attribute(technique, view)
    if any(not torch.equal(a, b.detach()) for a, b in zip(before, view.model.parameters())):
        raise CheckFailed("the model's weights changed during attribute()")


def check_time_budget(technique: Technique) -> None:
    """Finishes within PASS_BUDGET forward-pass equivalents on the smallest case."""
    view = _view(technique)
    with PassCounter(view.model, len(view.prompts)) as passes:
        _attribute(technique, view)
    cost = passes.forward_passes + 2 * passes.backward_passes
    if cost > PASS_BUDGET:
        raise CheckFailed(f"used {passes.forward_passes:g} forward + {passes.backward_passes:g} backward "
                          f"passes on {N_PROMPTS} prompts of the smallest case ({cost:g} forward-pass "
                          f"equivalents; budget {PASS_BUDGET:g})")


CHECKS: list[Callable[[Technique], None]] = [
    check_metadata, check_never_sees_truth, check_output_index_and_values, check_deterministic,
    check_leaves_weights_unchanged, check_time_budget,
]


@dataclass
class CheckReport:
    technique: str
    results: list[tuple[str, str, str]] = field(default_factory=list)  # (check, status, message)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for _, st, _ in self.results if st == s) for s in ("passed", "failed", "skipped")}

    @property
    def ok(self) -> bool:
        return self.counts["failed"] == 0


def _resolve(technique: Technique | str) -> Technique:
    if isinstance(technique, Technique):
        return technique
    from mibench.registry import load_technique

    return load_technique(technique)


def check_technique(technique: Technique | str, verbose: bool = False) -> CheckReport:
    """Run every check; load errors count as a failed ``check_loads``."""
    label = technique if isinstance(technique, str) else technique.name
    report = CheckReport(str(label))
    try:
        tech = _resolve(technique)
        report.results.append(("check_loads", "passed", ""))
    except MibenchError as exc:
        report.results.append(("check_loads", "failed", str(exc)))
        tech = None
    for check in CHECKS:
        if tech is None:
            report.results.append((check.__name__, "skipped", "adapter did not load"))
            continue
        try:
            check(tech)
            report.results.append((check.__name__, "passed", ""))
        except CheckSkipped as exc:
            report.results.append((check.__name__, "skipped", str(exc)))
        except CheckFailed as exc:
            report.results.append((check.__name__, "failed", str(exc)))
        except Exception as exc:  # an adapter crash is a failed check, not a crash of the suite
            report.results.append((check.__name__, "failed", f"raised {type(exc).__name__}: {exc}"))
    if verbose:
        for name, status, message in report.results:
            print(f"{status.upper():8s} {name}" + (f": {message}" if message else ""))
        c = report.counts
        print(f"{report.technique}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    return report


def parametrize_with_checks(techniques: list[Technique | str]):
    """A pytest decorator: one test per (technique, check) with readable ids."""
    import pytest

    params, ids = [], []
    for technique in techniques:
        label = technique if isinstance(technique, str) else technique.name
        for check in CHECKS:
            params.append((technique, check))
            ids.append(f"{label}-{check.__name__}")

    def wrap(check: Callable[[Technique], None]) -> Callable[[Technique], None]:
        def resolved(technique):
            try:
                check(_resolve(technique))
            except CheckSkipped as exc:
                pytest.skip(str(exc))
            except CheckFailed as exc:
                pytest.fail(f"{check.__name__}: {exc}")
        resolved.__name__ = check.__name__
        return resolved

    return pytest.mark.parametrize("technique, check", [(t, wrap(c)) for t, c in params], ids=ids)
