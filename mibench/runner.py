"""The (technique × case × seed) grid: build, certify, attribute in a worker, score, record.

The grid is cut into units, one per (case, seed, prompt sample). A unit builds and certifies its
instance once, writes what a CaseView holds as data and runs every technique on it in a worker
process (:mod:`mibench.worker`: the model rebuilt from safetensors, the metric from a MetricSpec,
no case code, imports of the truth refused, a time and a memory limit per run), then scores each
run here, where the truth is. A technique that raises, returns bad scores, hangs, dies or runs out
of memory becomes an ``error`` record and the grid goes on; a case whose certificate fails is
recorded as ``uncertified`` and not scored; a technique whose granularity the case has no truth
for is ``skipped`` with the reason. Units run one after another, in a local process pool
(``jobs``) or as Ray tasks (:mod:`mibench.executors`); every unit computes on one thread, so the
numbers do not depend on which ran it. A rerun keeps every stored record that is still current.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mibench import names
from mibench.api import (DEFAULT_SIZE, Case, Instance, MibenchError, PromptSet, Technique, make_scores,
                         run_label, validate_roles, validate_scores)
from mibench.certificate import Certificate, certify
from mibench.model.ablation import Ablator
from mibench.results import RunRecord, UnusableRecord, load_record, result_path, write_record
from mibench.sandbox import Limits, Sandbox, UnitFiles, shared
from mibench.scoring import score_run

N_TRAIN_PROMPTS = 64


# --- seeds ---------------------------------------------------------------------------------------

def _hashed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def instance_seed(seed: int, salt: str | None = None) -> int:
    """The seed an instance is built from: ``seed`` itself, or with a secret ``salt``
    (``--seed-salt``) a number derived from both, so that nobody without the salt can rebuild the
    instance (a held-out leaderboard)."""
    return seed if salt is None else _hashed("mibench instance", salt, seed)


def run_seed(case: str, seed: int, sample: int) -> int:
    """The seed a technique gets (``view.seed``) for an instance built from ``seed``: derived
    from it, so a technique's randomness is reproducible, but not equal to it."""
    return _hashed("mibench run", case, seed, sample)


# --- one certified (case, seed) ------------------------------------------------------------------

@dataclass
class Prepared:
    """One certified (case, seed): the instance, its prompts, the scorer's ablators, the
    certificate, and the unit as the worker reads it (data only)."""

    case: Case
    instance: Instance
    prompts: PromptSet
    train_prompts: PromptSet
    ablator: Ablator
    counterfactual: Ablator  # for the counterfactual faithfulness score
    certificate: Certificate
    seed: int  # the seed results are filed under (the instance's, unless seeds are private)
    sample: int = 0  # which independent prompt sample of the instance
    seeds_private: bool = False
    optimal: Ablator | None = None  # for faithfulness under optimal ablation, when asked
    files: UnitFiles = field(init=False)

    def __post_init__(self) -> None:
        self.files = UnitFiles(self.instance.model, self.prompts, self.train_prompts, self.case.metric,
                               self.case.name, run_seed(self.case.name, self.instance.seed, self.sample))


def prepare(case: Case, seed: int, instance: Instance | None = None, sample: int = 0,
            size: str = DEFAULT_SIZE, seed_salt: str | None = None,
            faithfulness_optimal: bool = False) -> Prepared:
    """Build (or take) the instance of ``seed`` at ``size`` (from a private seed with
    ``seed_salt``), draw its prompt sample ``sample`` and certify the instance on it. An
    ``instance`` passed in (for example one edited to remove a mechanism) is certified exactly as
    a built one. ``faithfulness_optimal`` also fits every node's optimal constant on the train
    prompts, for the optional ``faithfulness_optimal`` score."""
    instance = instance if instance is not None else case.build(instance_seed(seed, seed_salt), size)
    prompts = case.prompts(case.n_prompts, instance.seed, "test", sample)
    train = case.prompts(N_TRAIN_PROMPTS, instance.seed, "train", sample)
    metric = case.task_metric(prompts)
    ablator = Ablator(instance.model, prompts, metric, seed=instance.seed)
    counterfactual = Ablator(instance.model, prompts, metric, seed=instance.seed, how="corrupted")
    optimal = Ablator(instance.model, prompts, metric, seed=instance.seed, how="optimal",
                      fit_prompts=train) if faithfulness_optimal else None
    return Prepared(case, instance, prompts, train, ablator, counterfactual,
                    certify(case, instance, prompts, ablator), seed, sample, seed_salt is not None,
                    optimal)


def technique_ref(technique: Technique) -> str:
    """How a worker loads ``technique`` again: its registered name when that name is this very
    class, else the file that defines it."""
    from mibench.registry import technique_entries

    cls = type(technique)
    entry = technique_entries().get(cls.name)
    path = str(Path(inspect.getfile(cls)).resolve())
    if entry is not None and entry.meta.get("class") == cls.__qualname__ and \
            (entry.source == path or not entry.source.endswith(".py")):
        return cls.name
    return path


def run_one(technique: Technique, prep: Prepared, granularity: str | None = None, *,
            limits: Limits = Limits(), sandbox: Sandbox | None = None,
            ref: str | None = None) -> RunRecord:
    """One (technique, case, seed) at one granularity (default: the technique's main one): the
    technique runs in ``sandbox``'s worker (this process's own by default), its scores are
    checked and scored here."""
    case, instance = prep.case, prep.instance
    granularity = granularity or technique.granularity
    record = RunRecord(
        technique=run_label(technique.name, granularity, technique.granularity), case=case.name,
        seed=prep.seed, granularity=granularity, status="ok",
        technique_version=str(technique.version), case_version=str(case.version), case_tier=case.tier,
        truth_hash=instance.truth.digest(), n_prompts=len(prep.prompts),
        n_train_prompts=len(prep.train_prompts), prompt_sample=prep.sample, size=instance.size,
        seeds_private=prep.seeds_private, certificate=prep.certificate.to_json(),
        shape=dataclasses.asdict(names.Shape.of(instance.model)))
    if granularity not in instance.truth.granularities():
        record.status = "skipped"
        record.error = (f"case {case.name!r} has no ground truth at {granularity!r} "
                        f"granularity (it has {', '.join(instance.truth.granularities())})")
        return record
    if not prep.certificate.passed:
        record.status = "uncertified"
        record.error = f"certificate failed, not scored: {prep.certificate.reason()}"
        return record

    sandbox = sandbox or shared()
    outcome = sandbox.run(prep.files, ref or technique_ref(technique), granularity, limits)
    record.runtime_s = outcome.get("runtime_s", 0.0)
    record.forward_passes = outcome.get("forward_passes", 0.0)
    record.backward_passes = outcome.get("backward_passes", 0.0)
    try:
        if outcome["status"] != "ok":
            raise MibenchError(outcome["error"])
        # checked again here: the worker's answer is the adapter's word, not the suite's
        components = names.components(names.Shape.of(instance.model), granularity, prep.prompts.labels)
        scores = validate_scores(make_scores(outcome["scores"]), components, technique.name)
        roles = validate_roles(outcome.get("roles"), components, technique.name)
    except MibenchError as exc:
        record.status, record.error = "error", str(exc)
        return record
    record.scores = {k: float(v) for k, v in scores.items()}
    record.truth_labels = instance.truth.labels(granularity)
    node_level = granularity == "node"
    record.metrics = score_run(scores, instance.truth, granularity, technique.signed,
                               prep.ablator if node_level else None, trap=case.tier == "trap",
                               counterfactual=prep.counterfactual if node_level else None,
                               optimal=prep.optimal if node_level else None,
                               roles=roles)
    return record


# --- units -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """One technique at one granularity. ``asked`` is False for the extra granularities of a
    technique requested by name alone: those are run only on cases that have truth for them,
    while the main (or an explicitly asked) granularity is recorded as skipped, with the reason.
    ``ref`` is how a worker loads the technique (a registered name or a file; by default found
    from the technique, see :func:`technique_ref`)."""

    technique: Technique
    granularity: str
    asked: bool = True
    ref: str | None = None

    def applies_to(self, case: Case) -> bool:
        return self.asked or self.granularity in case.granularities

    @property
    def label(self) -> str:
        return run_label(self.technique.name, self.granularity, self.technique.granularity)


@dataclass(frozen=True)
class UnitTask:
    """One (case, seed, prompt sample) and the runs to do on it; plain data, so that a process
    pool or a Ray cluster can run it. ``stored_truth`` maps the label of each run with a stored,
    otherwise current record to that record's truth hash: the run is kept if the instance's truth
    still has that hash."""

    case: Case
    seed: int
    sample: int
    size: str
    runs: tuple[tuple[str, str, str], ...]  # (technique ref, granularity, label)
    stored_truth: tuple[tuple[str, str], ...] = ()
    limits: Limits = Limits()
    seed_salt: str | None = None
    faithfulness_optimal: bool = False


@dataclass
class UnitResult:
    records: list[RunRecord]  # the fresh ones, in the task's order
    kept: set[str]  # labels of the runs whose stored record is current
    certifying_s: float
    techniques_s: float


@contextmanager
def _one_thread() -> Iterator[None]:
    """Compute on one thread, so that results do not depend on how many units run at once
    (a parallel reduction's order depends on the thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_unit(task: UnitTask) -> UnitResult:
    """Build the unit's instance, keep the runs whose stored record is current, certify once and
    run the rest (each technique in this process's worker)."""
    from mibench.registry import load_technique

    started = time.perf_counter()
    with _one_thread():
        instance = task.case.build(instance_seed(task.seed, task.seed_salt), task.size)
        digest = instance.truth.digest()
        kept = {label for label, stored in task.stored_truth if stored == digest}
        to_run = [run for run in task.runs if run[2] not in kept]
        records, certifying_s = [], 0.0
        if to_run:
            prep = prepare(task.case, task.seed, instance, task.sample, seed_salt=task.seed_salt,
                           faithfulness_optimal=task.faithfulness_optimal)
            certifying_s = time.perf_counter() - started
            techniques = {ref: load_technique(ref) for ref, _, _ in to_run}
            records = [run_one(techniques[ref], prep, granularity, limits=task.limits, ref=ref)
                       for ref, granularity, _ in to_run]
            for record in records:
                record.certifying_s = certifying_s
    return UnitResult(records, kept, certifying_s, time.perf_counter() - started - certifying_s)


def _stored_truth(path: Path, spec: RunSpec, case: Case, private: bool,
                  faithfulness_optimal: bool = False) -> str | None:
    """The truth hash of the stored record at ``path`` if it is complete and otherwise current:
    readable, of this schema, not an error, by the same technique and case versions, with seeds
    as private as asked, and with the optional scores asked for. The unit then keeps it if the
    instance's truth still has this hash."""
    if not path.is_file():
        return None
    try:
        record = load_record(path)
    except UnusableRecord:
        return None
    current = (record.status != "error" and record.technique_version == str(spec.technique.version)
               and record.case_version == str(case.version) and record.seeds_private == private
               and not (faithfulness_optimal and record.status == "ok" and record.granularity == "node"
                        and record.metrics.get("faithfulness_optimal") is None))
    return record.truth_hash if current else None


# --- the grid --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Execution:
    """How units run: ``jobs`` at once in a local process pool (1: in this process), or as Ray
    tasks (``executor="ray"``, on the cluster at ``address``; none starts a local one); the
    per-run ``limits``; ``seed_salt`` for private seeds; ``faithfulness_optimal`` to also score
    faithfulness under optimal ablation."""

    jobs: int = 1
    executor: str = "local"
    address: str | None = None
    limits: Limits = Limits()
    seed_salt: str | None = None
    faithfulness_optimal: bool = False


def run_grid(specs: list[RunSpec], cases: list[Case], seeds: Iterable[int],
             results_dir: str | Path | None, progress: bool = True,
             on_record: Callable[[RunRecord, bool], None] | None = None,
             samples: Iterable[int] = (0,), size: str = DEFAULT_SIZE, force: bool = False,
             log: Callable[[str], None] | None = None,
             execution: Execution = Execution()) -> list[RunRecord]:
    """Run every spec on every case (at ``size``), seed and prompt sample, writing each unit's
    records as soon as it finishes (so an interrupted grid keeps what it finished). A run whose
    result file in ``results_dir`` is complete and current is kept, not rerun, unless ``force``.
    ``on_record(record, kept)`` sees every record in grid order, ``kept`` telling a stored one from
    a fresh one; ``log`` (for output that is not a terminal, where the bar does not draw) gets
    one line per finished (case, seed, sample). Returns the records in grid order."""
    from tqdm import tqdm

    from mibench.executors import run_units

    seeds, samples = list(seeds), list(samples)
    for case in cases:  # before any run, so a wrong size loses nothing
        case.check_size(size)
    private = execution.seed_salt is not None
    tasks, stored, refs = [], [], {}
    for case in cases:
        applicable = [s for s in specs if s.applies_to(case)]
        for seed in seeds:
            for sample in samples:
                paths = {spec.label: result_path(results_dir, spec.label, case.name, seed, sample, size)
                         for spec in applicable} if results_dir is not None and not force else {}
                digests = {spec.label: _stored_truth(paths[spec.label], spec, case, private,
                                                     execution.faithfulness_optimal)
                           for spec in applicable if spec.label in paths}
                stored.append(paths)
                tasks.append(UnitTask(
                    case, seed, sample, size,
                    tuple((spec.ref or refs.setdefault(spec, technique_ref(spec.technique)),
                           spec.granularity, spec.label) for spec in applicable),
                    tuple((label, digest) for label, digest in digests.items() if digest),
                    execution.limits, execution.seed_salt, execution.faithfulness_optimal))
    total = sum(len(t.runs) for t in tasks)
    started = time.perf_counter()
    in_order: list[list[tuple[RunRecord, bool]] | None] = [None] * len(tasks)
    emitted, done = 0, 0
    with tqdm(total=total, disable=not progress, unit="run", dynamic_ncols=True) as bar:
        bar.set_description(f"{len(tasks)} units on {execution.jobs} job(s)")
        for index, result in run_units(tasks, execution):
            task = tasks[index]
            fresh = iter(result.records)
            unit_records = []
            for _, _, label in task.runs:
                if label in result.kept:
                    unit_records.append((load_record(stored[index][label]), True))
                else:
                    record = next(fresh)
                    if results_dir is not None:
                        write_record(results_dir, record)
                    unit_records.append((record, False))
            in_order[index] = unit_records
            done += len(unit_records)
            unit = f"{task.case.name} seed {task.seed}" + (f" prompts {task.sample}" if task.sample else "")
            # the units run in other processes: the bar shows the phases of the last one finished
            bar.set_postfix_str(f"last: {unit}, building + certifying {result.certifying_s:.1f} s, "
                                f"techniques {result.techniques_s:.1f} s", refresh=False)
            bar.update(len(unit_records))
            if log:
                log(_unit_line(unit, [r for r, _ in unit_records], len(result.kept), result.certifying_s,
                               result.techniques_s, done, total, time.perf_counter() - started))
            while emitted < len(tasks) and in_order[emitted] is not None:  # grid order, whatever finished first
                for record, kept in in_order[emitted]:
                    if on_record:
                        on_record(record, kept)
                emitted += 1
    return [record for unit in in_order for record, _ in unit]


def _unit_line(unit: str, records: list[RunRecord], n_kept: int, certifying_s: float,
               techniques_s: float, done: int, total: int, elapsed_s: float) -> str:
    """``[runs done/total] unit: statuses, kept, certifying and technique time, elapsed``."""
    statuses = Counter(record.status for record in records)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    kept = f" ({n_kept} kept as current)" if n_kept else ""
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (f"[{done}/{total} runs] {unit}: {counts}{kept}; certifying {certifying_s:.1f} s, "
            f"techniques {techniques_s:.1f} s; elapsed {minutes}:{seconds:02d}")
