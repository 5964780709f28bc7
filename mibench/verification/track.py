"""The verification track: every verifier on every claim of every (case, seed), and its error rates.

Each (case, seed) is prepared and certified once (:func:`mibench.runner.prepare`); its claims
(:mod:`mibench.verification.claims`) are built from the truth here, and each verifier sees only a
:class:`~mibench.api.CaseView` (run seed as ``mibench run`` gives techniques) and the claim's nodes.
One JSON record per (verifier, case, seed), with the same provenance as a run record, holds every
verdict and the status of the claim it judged, at
``{results}/verification/{verifier}/{case}/{size}/seed{seed}.json`` (a layout the run-record
loader does not read). An uncertified instance is recorded as such and not judged.

Error rates, over every (case, seed, claim) of a verifier: false acceptance = accepted wrong claims
/ wrong claims, false rejection = rejected true claims / true claims, each with its Wilson 95%
interval, overall and by claim type (where a type's claims are all wrong or all true, so each type
has one of the two rates). Verifiers run in this process, not in the runner's sandboxed worker:
they are the suite's own code.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mibench import __version__, names
from mibench.api import DEFAULT_SIZE, Case, CaseView, MibenchError
from mibench.files import write_atomically
from mibench.results import _clean, _utc_now, provenance
from mibench.verification.claims import CLAIM_TYPES, build_claims

SCHEMA_VERSION = 1
FOLDER = "verification"
Z95 = 1.959963984540054


@dataclass
class VerificationRecord:
    """Every verdict of one verifier on the claims of one (case, seed)."""

    verifier: str
    case: str
    seed: int
    size: str
    status: str  # ok, error or uncertified
    verifier_version: str = ""
    case_version: str = ""
    case_tier: str = ""
    truth_hash: str = ""
    n_prompts: int = 0
    shape: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    runtime_s: float = 0.0  # the verifier's own time over all claims
    certifying_s: float = 0.0  # building and certifying the instance, once for every verifier
    # one per claim: label, kind, role, nodes, correct, accept, statistic, p_value, detail, runtime_s
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    mibench_version: str = __version__
    mibench_commit: str | None = field(default_factory=lambda: provenance().mibench_commit)
    python_version: str = field(default_factory=lambda: provenance().python_version)
    torch_version: str | None = field(default_factory=lambda: provenance().torch_version)
    transformer_lens_version: str | None = field(default_factory=lambda: provenance().transformer_lens_version)
    machine: str = field(default_factory=lambda: provenance().machine)
    created_utc: str = field(default_factory=_utc_now)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _clean(asdict(self))


def record_path(root: str | Path, verifier: str, case: str, seed: int, size: str) -> Path:
    return Path(root) / FOLDER / verifier / case / size / f"seed{seed}.json"


def write_record(root: str | Path, record: VerificationRecord) -> Path:
    text = json.dumps(record.to_json(), indent=1, sort_keys=True)
    return write_atomically(record_path(root, record.verifier, record.case, record.seed, record.size), text + "\n")


def load_records(root: str | Path) -> list[VerificationRecord]:
    """Every verification record under ``root``; a file that is not one of this schema is an error
    naming it (the track's files are written only by :func:`run_track`)."""
    records = []
    for path in sorted((Path(root) / FOLDER).glob("*/*/*/seed*.json")):
        try:
            data = json.loads(path.read_text())
            if data.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            records.append(VerificationRecord(**data))
        except (OSError, ValueError, TypeError) as exc:
            raise MibenchError(f"verification record {str(path)!r} is unusable: {exc}; rerun "
                               f"`mibench verify-claims`") from None
    return records


# --- running -------------------------------------------------------------------------------------

def verify_instance(verifiers: list, case: Case, seed: int, size: str = DEFAULT_SIZE) -> list[VerificationRecord]:
    """Prepare (case, seed) once and run every verifier on every claim of it."""
    from mibench.runner import prepare, run_seed

    started = time.perf_counter()
    prep = prepare(case, seed, size=size)
    certifying_s = time.perf_counter() - started
    instance = prep.instance
    shape = names.Shape.of(instance.model)
    common = dict(case=case.name, seed=seed, size=size, case_version=str(case.version), case_tier=case.tier,
                  truth_hash=instance.truth.digest(), n_prompts=len(prep.prompts),
                  shape=dataclasses.asdict(shape), certifying_s=certifying_s)
    if not prep.certificate.passed:
        return [VerificationRecord(verifier=v.name, verifier_version=str(v.version), status="uncertified",
                                   error=f"certificate failed, not judged: {prep.certificate.reason()}",
                                   **common) for v in verifiers]
    view = CaseView.of(case, instance.model, prep.prompts, prep.train_prompts, "node",
                       run_seed(case.name, instance.seed, prep.sample))
    claims = build_claims(instance.truth, shape, instance.seed)
    records = []
    for verifier in verifiers:
        record = VerificationRecord(verifier=verifier.name, verifier_version=str(verifier.version),
                                    status="ok", **common)
        try:
            for labelled in claims:
                start = time.perf_counter()
                verdict = verifier.verify(view, labelled.claim)
                spent = time.perf_counter() - start
                record.runtime_s += spent
                record.verdicts.append({
                    "label": labelled.label, "kind": labelled.kind, "role": labelled.role,
                    "nodes": sorted(labelled.claim.nodes), "correct": labelled.correct,
                    "accept": bool(verdict.accept), "statistic": float(verdict.statistic),
                    "p_value": None if verdict.p_value is None else float(verdict.p_value),
                    "detail": verdict.detail, "runtime_s": spent})
        except Exception as exc:  # a broken verifier is an error record; the track goes on
            record.status, record.error = "error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            record.verdicts = []
        records.append(record)
    return records


def _verify_named(verifier_names: tuple[str, ...], case_name: str, seed: int, size: str) -> list[VerificationRecord]:
    """:func:`verify_instance` from names, on one thread: what a pool process runs."""
    from mibench.registry import load_case
    from mibench.runner import _one_thread
    from mibench.verification import load_verifiers

    with _one_thread():
        return verify_instance(load_verifiers(",".join(verifier_names)), load_case(case_name), seed, size)


def run_track(verifiers: list, cases: list[Case], seeds: Iterable[int], results_dir: str | Path | None,
              size: str = DEFAULT_SIZE, jobs: int = 1,
              on_instance: Callable[[Case, int, list[VerificationRecord]], None] | None = None
              ) -> list[VerificationRecord]:
    """Every verifier on every claim of every (case, seed), each (case, seed) on one thread (so
    figures do not depend on the machine's cores), ``jobs`` of them at once in a process pool (1: in
    this process, where verifiers given as instances need not be discoverable). Each instance's
    records are written as soon as it is done; returns them in (case, seed) order."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from mibench.runner import _one_thread

    for case in cases:  # before any work, so a wrong size loses nothing
        case.check_size(size)
    units = [(case, seed) for case in cases for seed in seeds]
    done: dict[tuple[str, int], list[VerificationRecord]] = {}

    def finished(case: Case, seed: int, records: list[VerificationRecord]) -> None:
        if results_dir is not None:
            for record in records:
                write_record(results_dir, record)
        if on_instance is not None:
            on_instance(case, seed, records)
        done[case.name, seed] = records

    if jobs <= 1:
        with _one_thread():
            for case, seed in units:
                finished(case, seed, verify_instance(verifiers, case, seed, size))
    else:
        names_ = tuple(v.name for v in verifiers)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_verify_named, names_, case.name, seed, size): (case, seed)
                       for case, seed in units}
            for future in as_completed(futures):
                finished(*futures[future], future.result())
    return [r for case, seed in units for r in done[case.name, seed]]


# --- error rates ---------------------------------------------------------------------------------

def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion k/n ((nan, nan) when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p, z2 = k / n, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """``k`` errors among ``n`` claims, with the Wilson 95% interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)


@dataclass(frozen=True)
class ErrorRates:
    """One verifier's false-acceptance and false-rejection rates, overall and by claim type
    (``by_type[kind]`` counts the errors on that type: acceptances of a wrong type, rejections of
    the true circuit)."""

    verifier: str
    far: Rate
    frr: Rate
    by_type: dict[str, Rate]
    instances: int  # (case, seed) judged
    unjudged: int  # records not ok (uncertified or error)


def error_rates(records: list[VerificationRecord]) -> dict[str, ErrorRates]:
    """Every verifier's :class:`ErrorRates` over its ``ok`` records."""
    out = {}
    for verifier in sorted({r.verifier for r in records}):
        mine = [r for r in records if r.verifier == verifier]
        verdicts = [v for r in mine if r.status == "ok" for v in r.verdicts]
        wrong = [v for v in verdicts if not v["correct"]]
        true = [v for v in verdicts if v["correct"]]
        by_type = {}
        for kind in CLAIM_TYPES:
            of_kind = [v for v in verdicts if v["kind"] == kind]
            if of_kind:
                errors = sum(v["accept"] != v["correct"] for v in of_kind)
                by_type[kind] = Rate(errors, len(of_kind))
        out[verifier] = ErrorRates(verifier, Rate(sum(v["accept"] for v in wrong), len(wrong)),
                                   Rate(sum(not v["accept"] for v in true), len(true)), by_type,
                                   sum(r.status == "ok" for r in mine), sum(r.status != "ok" for r in mine))
    return out
