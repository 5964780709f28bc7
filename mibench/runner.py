"""The (technique × case × seed) grid: build, certify, attribute, score, record.

Each (case, seed) is built and certified once; every technique then gets the model (reset to its
planted weights afterwards) and a CaseView (never the truth). A technique that raises or returns
bad scores becomes an ``error`` record and the grid goes on; a case whose certificate fails is
recorded as ``uncertified`` and not scored; a technique whose granularity the case has no truth for
is ``skipped`` with the reason. A rerun keeps every stored record that is still current.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from mibench import names
from mibench.api import (DEFAULT_SIZE, Case, CaseView, Instance, MibenchError, PromptSet, Technique,
                         run_label, validate_scores)
from mibench.certificate import Certificate, certify
from mibench.model import bridge
from mibench.model.ablation import Ablator
from mibench.model.passes import PassCounter
from mibench.results import RunRecord, UnusableRecord, load_record, result_path, write_record
from mibench.scoring import score_run

N_TRAIN_PROMPTS = 64


@dataclass
class Prepared:
    """One certified (case, seed): the instance, its prompts, the scorer's ablator, the certificate."""

    case: Case
    instance: Instance
    prompts: PromptSet
    train_prompts: PromptSet
    ablator: Ablator
    counterfactual: Ablator  # for the counterfactual faithfulness score
    certificate: Certificate
    weights: list[torch.Tensor]  # the planted weights, to check and restore after each technique
    sample: int = 0  # which independent prompt sample of the instance


def prepare(case: Case, seed: int, instance: Instance | None = None, sample: int = 0,
            size: str = DEFAULT_SIZE) -> Prepared:
    """Build (or take) the instance of ``seed`` at ``size``, draw its prompt sample ``sample`` and
    certify the instance on it. An ``instance`` passed in (for example one edited to remove a
    mechanism) is certified exactly as a built one."""
    instance = instance if instance is not None else case.build(seed, size)
    prompts = case.prompts(case.n_prompts, seed, "test", sample)
    train = case.prompts(N_TRAIN_PROMPTS, seed, "train", sample)
    metric = case.task_metric(prompts)
    ablator = Ablator(instance.model, prompts, metric, seed=seed)
    counterfactual = Ablator(instance.model, prompts, metric, seed=seed, how="corrupted")
    weights = [p.detach().clone() for p in instance.model.parameters()]
    return Prepared(case, instance, prompts, train, ablator, counterfactual,
                    certify(case, instance, prompts, ablator), weights, sample)


def run_one(technique: Technique, prep: Prepared, granularity: str | None = None) -> RunRecord:
    """One (technique, case, seed) at one granularity (default: the technique's main one)."""
    case, instance = prep.case, prep.instance
    granularity = granularity or technique.granularity
    record = RunRecord(
        technique=run_label(technique.name, granularity, technique.granularity), case=case.name,
        seed=instance.seed, granularity=granularity, status="ok",
        technique_version=str(technique.version), case_version=str(case.version), case_tier=case.tier,
        truth_hash=instance.truth.digest(), n_prompts=len(prep.prompts),
        n_train_prompts=len(prep.train_prompts), prompt_sample=prep.sample, size=instance.size,
        certificate=prep.certificate.to_json(),
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

    model = instance.model
    view = CaseView.of(case, model, prep.prompts, prep.train_prompts, granularity, instance.seed)
    torch.manual_seed(instance.seed)
    start = time.perf_counter()
    try:
        with PassCounter(model, len(prep.prompts)) as passes:
            raw = technique.attribute(view)
        record.runtime_s = round(time.perf_counter() - start, 4)
        record.forward_passes = round(passes.forward_passes, 3)
        record.backward_passes = round(passes.backward_passes, 3)
        changed = bridge.reset(model, prep.weights)
        scores = validate_scores(raw, view.components(), technique.name)
        if changed:
            raise MibenchError(f"technique {technique.name!r} changed the model's weights; "
                               f"adapters must leave the model as they found it")
    except Exception as exc:  # recorded as data so the rest of the grid finishes
        bridge.reset(model, prep.weights)
        record.runtime_s = round(time.perf_counter() - start, 4)
        record.status = "error"
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        loc = f" (at {Path(where.filename).name}:{where.lineno})" if where and not isinstance(exc, MibenchError) else ""
        record.error = f"{type(exc).__name__}: {exc}{loc}"
        return record

    record.scores = {k: float(v) for k, v in scores.items()}
    record.truth_labels = instance.truth.labels(granularity)
    node_level = granularity == "node"
    record.metrics = score_run(scores, instance.truth, granularity, technique.signed,
                               prep.ablator if node_level else None, trap=case.tier == "trap",
                               counterfactual=prep.counterfactual if node_level else None)
    return record


def current_record(results_dir: str | Path, label: str, technique: Technique, case: Case,
                   instance: Instance, sample: int) -> RunRecord | None:
    """The stored record of this run if it is complete and current: readable, of this schema, not
    an error, and scored by the same technique and case versions against the same truth. A
    rerun keeps such records instead of recomputing them (``--force`` recomputes)."""
    path = result_path(results_dir, label, case.name, instance.seed, sample, instance.size)
    if not path.is_file():
        return None
    try:
        record = load_record(path)
    except UnusableRecord:
        return None
    current = (record.status != "error" and record.technique_version == str(technique.version)
               and record.case_version == str(case.version)
               and record.truth_hash == instance.truth.digest())
    return record if current else None


@dataclass(frozen=True)
class RunSpec:
    """One technique at one granularity. ``asked`` is False for the extra granularities of a
    technique requested by name alone: those are run only on cases that have truth for them,
    while the main (or an explicitly asked) granularity is recorded as skipped, with the reason."""

    technique: Technique
    granularity: str
    asked: bool = True

    def applies_to(self, case: Case) -> bool:
        return self.asked or self.granularity in case.granularities

    @property
    def label(self) -> str:
        return run_label(self.technique.name, self.granularity, self.technique.granularity)


def run_grid(specs: list[RunSpec], cases: list[Case], seeds: Iterable[int],
             results_dir: str | Path | None, progress: bool = True,
             on_record: Callable[[RunRecord, bool], None] | None = None,
             samples: Iterable[int] = (0,), size: str = DEFAULT_SIZE, force: bool = False,
             log: Callable[[str], None] | None = None) -> list[RunRecord]:
    """Run every spec on every case (at ``size``), seed and prompt sample, writing each record as
    soon as it exists (so an interrupted grid keeps what it finished). Each seed's instance is built
    once and certified on each of its prompt samples. A run whose result file in ``results_dir``
    is complete and current (:func:`current_record`) is kept, not rerun, unless ``force``; an
    instance whose runs are all current is not even certified. ``on_record(record, kept)`` sees
    every record, ``kept`` telling a stored one from a fresh one; ``log`` (for output that is not
    a terminal, where the bar does not draw) gets one line per finished (case, seed, sample)."""
    from tqdm import tqdm

    seeds, samples = list(seeds), list(samples)
    for case in cases:  # before any run, so a wrong size loses nothing
        case.check_size(size)
    records: list[RunRecord] = []
    total = sum(spec.applies_to(case) for spec in specs for case in cases) * len(seeds) * len(samples)
    started = time.perf_counter()
    with tqdm(total=total, disable=not progress, unit="run", dynamic_ncols=True) as bar:
        for case in cases:
            applicable = [s for s in specs if s.applies_to(case)]
            for seed in seeds:
                instance = case.build(seed, size)
                for sample in samples:
                    unit = f"{case.name} seed {seed}" + (f" prompts {sample}" if sample else "")
                    kept = {} if force or results_dir is None else {
                        spec: record for spec in applicable
                        if (record := current_record(results_dir, spec.label, spec.technique, case,
                                                     instance, sample)) is not None}
                    prep, unit_start, certifying_s = None, time.perf_counter(), 0.0
                    for spec in applicable:
                        record = kept.get(spec)
                        if record is None:
                            if prep is None:
                                bar.set_description(f"{unit}: certifying")
                                prep = prepare(case, seed, instance, sample)
                                certifying_s = time.perf_counter() - unit_start
                            bar.set_description(f"{unit}: {spec.technique.name}@{spec.granularity}")
                            record = run_one(spec.technique, prep, spec.granularity)
                            if results_dir is not None:
                                write_record(results_dir, record)
                        records.append(record)
                        if on_record:
                            on_record(record, spec in kept)
                        bar.update(1)
                    if log:
                        log(_unit_line(unit, records[len(records) - len(applicable):], len(kept),
                                       certifying_s, time.perf_counter() - unit_start,
                                       len(records), total, time.perf_counter() - started))
    return records


def _unit_line(unit: str, records: list[RunRecord], n_kept: int, certifying_s: float, unit_s: float,
               done: int, total: int, elapsed_s: float) -> str:
    """``[runs done/total] unit: statuses, kept, certifying and technique time, elapsed``."""
    statuses = Counter(record.status for record in records)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    kept = f" ({n_kept} kept as current)" if n_kept else ""
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (f"[{done}/{total} runs] {unit}: {counts}{kept}; certifying {certifying_s:.1f} s, "
            f"techniques {unit_s - certifying_s:.1f} s; elapsed {minutes}:{seconds:02d}")
