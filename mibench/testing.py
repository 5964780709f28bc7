"""``check_technique``: the conformance suite every adapter must pass (after scikit-learn's
``check_estimator``). Flat ``check_<property>`` functions, each returning ``None`` on success or
raising ``CheckFailed`` / ``CheckSkipped``; a report with one line per check and the counts.
Every check that runs the adapter runs it as the runner does: in a worker (:mod:`mibench.worker`)
with the runner's limits, at every granularity it declares, on a case with heads and MLPs.

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
from mibench.api import MibenchError, Technique, make_scores, validate_scores
from mibench.sandbox import Limits

#: The runner's per-run limits, unless ``mibench check-technique --timeout / --memory-limit``.
LIMITS = Limits()

#: The time budget, in forward-pass equivalents over the prompt set (a backward pass counts as
#: two): measured by the pass counter, so it means the same on every machine and no check
#: depends on wall-clock time. Work outside the model (fitting a probe, say) is not counted.
PASS_BUDGET = 500.0
N_PROMPTS = 16


class CheckFailed(Exception):
    pass


class CheckSkipped(Exception):
    pass


@lru_cache(maxsize=8)
def _check_unit(granularity: str):
    """The unit a check runs on: the smallest case the suite builds (by parameters) with truth at
    ``granularity`` whose model has every component kind (heads and MLPs, so neurons too), with its
    components.

    Granularities are read from each case class itself rather than from the listing cache."""
    from mibench.registry import case_entries, load_case
    from mibench.runner import run_seed
    from mibench.sandbox import UnitFiles

    candidates = []
    for name, entry in sorted(case_entries().items()):
        if entry.meta["tier"] == "literature":  # needs weights the user brings
            continue
        case = load_case(name)
        if granularity in case.granularities:
            model = case.build(0).model
            if names.Shape.of(model).d_mlp:
                candidates.append((sum(p.numel() for p in model.parameters()), name, case, model))
    if not candidates:
        raise CheckSkipped(f"no case with MLPs has ground truth at {granularity!r} granularity")
    _, _, case, model = min(candidates, key=lambda c: c[:2])
    prompts, train = case.prompts(N_PROMPTS, 0, "test"), case.prompts(N_PROMPTS, 0, "train")
    files = UnitFiles(model, prompts, train, case.metric, case.name, run_seed(case.name, 0, 0))
    return files, names.components(names.Shape.of(model), granularity, prompts.labels)


def _run(technique: Technique, granularity: str | None = None) -> tuple[dict, list[str]]:
    """One run in a worker, with the runner's limits: (outcome, the components it must score)."""
    from mibench.runner import technique_ref
    from mibench.sandbox import shared

    granularity = granularity or technique.granularity
    files, components = _check_unit(granularity)
    return shared().run(files, technique_ref(technique), granularity, LIMITS), components


def _scores(technique: Technique, granularity: str | None = None):
    """The checked scores of one run in a worker; a run that failed fails the check with its error."""
    outcome, components = _run(technique, granularity)
    if outcome["status"] != "ok":
        raise CheckFailed(f"at {granularity or technique.granularity!r}: {outcome['error']}")
    try:
        return validate_scores(make_scores(outcome["scores"]), components, technique.name), outcome
    except MibenchError as exc:
        raise CheckFailed(str(exc)) from exc


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
    """The adapter's file imports nothing the worker refuses (the truth-bearing modules): said
    here, before any run; at run time the worker refuses the import however it is spelled."""
    from mibench.worker import refused

    source = inspect.getsource(inspect.getmodule(type(technique)))
    for node in ast.walk(ast.parse(source)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for module in modules:
            if refused(module):
                raise CheckFailed(f"imports {module}, which can reach the ground truth; the worker "
                                  f"refuses it")


def check_output_index_and_values(technique: Technique) -> None:
    """In a worker, under the runner's limits, at every granularity the adapter declares: finite
    scores for exactly the components of a case that has heads, MLPs and neurons."""
    for granularity in technique.supported_granularities():
        _scores(technique, granularity)


def check_deterministic(technique: Technique) -> None:
    first, second = _scores(technique)[0], _scores(technique)[0]
    if not first.sort_index().equals(second.sort_index()):
        diff = (first.sort_index() - second.sort_index()).abs().max()
        raise CheckFailed(f"two runs with the same seed differ (max difference {diff:.3g})")


def check_leaves_weights_unchanged(technique: Technique) -> None:
    outcome, _ = _run(technique)
    if outcome["status"] != "ok" and "changed the model's weights" in outcome["error"]:
        raise CheckFailed("the model's weights changed during attribute()")


def check_time_budget(technique: Technique) -> None:
    """Finishes within PASS_BUDGET forward-pass equivalents on the check's case."""
    _, outcome = _scores(technique)
    forward, backward = outcome["forward_passes"], outcome["backward_passes"]
    cost = forward + 2 * backward
    if cost > PASS_BUDGET:
        raise CheckFailed(f"used {forward:g} forward + {backward:g} backward passes on {N_PROMPTS} "
                          f"prompts ({cost:g} forward-pass equivalents; budget {PASS_BUDGET:g})")


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
