"""The runner: certified (case, seed) units, the production fast path, skips, error runs and
weight restoration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import prepared
from mibench.api import Technique, make_scores
from mibench import worker
from mibench.model import ablation
from mibench.registry import load_case, load_technique
from mibench.runner import RunSpec, run_grid, run_one


def _worker_view(prep, granularity="node"):
    """The view a worker builds for this unit, from its data alone, here in the test's process."""
    return worker.view_of(worker.load_unit(prep.files.folder), granularity)


def test_patching_runs_use_the_trimmed_path(monkeypatch):
    """Exact patching on the view a worker builds unembeds only the positions the metric reads."""
    prep = prepared("induction", 0)
    seen = []
    original = ablation.BaseRun.__init__

    def recording(self, model, tokens, positions=None, read_positions=None):
        seen.append(read_positions)
        original(self, model, tokens, positions, read_positions)

    monkeypatch.setattr(ablation.BaseRun, "__init__", recording)
    load_technique("activation_patching").attribute(_worker_view(prep))
    assert seen == [prep.case.task_metric(prep.prompts).positions]
    assert seen[0] == list(range(11, 20))  # the repeated half, not every position


def test_trimmed_scores_equal_untrimmed(monkeypatch):
    """The trimmed path changes the cost, not the numbers; and the worker's scores are these."""
    prep = prepared("ioi", 0)
    trimmed = load_technique("activation_patching").attribute(_worker_view(prep))
    assert trimmed.to_dict() == run_one(load_technique("activation_patching"), prep).scores
    original = ablation.BaseRun.__init__
    monkeypatch.setattr(ablation.BaseRun, "__init__",
                        lambda self, model, tokens, positions=None, read_positions=None:
                        original(self, model, tokens, positions, None))
    full = load_technique("activation_patching").attribute(_worker_view(prep))
    assert trimmed.sub(full).abs().max() < 1e-5


def test_granularity_without_truth_is_skipped_with_the_reason():
    prep = prepared("induction", 0)
    record = run_one(load_technique("linear_probe"), prep, "site")
    assert record.status == "skipped"
    assert "no ground truth at 'site'" in record.error and "node, edge, layer" in record.error


def test_a_technique_that_changes_weights_is_an_error_and_the_model_is_untouched(fixture_technique):
    prep = prepared("induction", 0)
    before = [p.detach().clone() for p in prep.instance.model.parameters()]
    record = run_one(load_technique(fixture_technique("mutates_weights")), prep)
    assert record.status == "error" and "changed the model's weights" in record.error
    assert all(torch.equal(a, b) for a, b in zip(before, prep.instance.model.parameters()))


def test_grid_writes_each_record_and_counts_applicable_runs(tmp_path):
    """A grid of one technique at two granularities on two cases: the extra granularity runs only
    where the case has truth for it, and every record is written."""
    specs = [RunSpec(load_technique("random"), "node"),
             RunSpec(load_technique("random"), "site", asked=False)]
    cases = [load_case("induction"), load_case("trap_decodable_unused")]
    records = run_grid(specs, cases, [0], tmp_path, progress=False)
    labels = sorted((r.technique, r.case) for r in records)
    assert labels == [("random", "induction"), ("random", "trap_decodable_unused"),
                      ("random@site", "trap_decodable_unused")]
    assert all(r.status == "ok" for r in records)
    assert len(list(tmp_path.glob("*/*/small/seed0.json"))) == 3


@pytest.mark.parametrize("case_name", ["trap_and_gate", "trap_suppression"])
def test_truth_in_circuit_yaml_is_scored(case_name):
    """Granularities follow from the truth: trap cases' edge and layer truth is scored."""
    case = load_case(case_name)
    assert case.granularities == tuple(case.build(0).truth.granularities())
    record = run_one(load_technique("attribution_patching"), prepared(case_name, 0), "edge")
    assert record.status == "ok" and record.metrics["auroc"] is not None


@pytest.mark.parametrize("case_name", ["ioi", "copy_suppression", "planted_trigger", "trap_suppression"])
def test_any_number_of_prompt_samples_fit_one_instance(case_name):
    """Prompt samples 1-3 of seed 0 are new prompts, and the seed-0 model still does the task on
    them (before, prompts drawn with another seed used other vocabulary roles: accuracy 0.02-0.86)."""
    case = load_case(case_name)
    instance = case.build(0)
    first = case.prompts(case.n_prompts, 0, "test")
    for sample in (1, 2, 3):
        prompts = case.prompts(case.n_prompts, 0, "test", sample)
        assert not torch.equal(prompts.clean, first.clean)
        with torch.no_grad():
            logits = instance.model(prompts.clean)
        assert case.task_metric(prompts).accuracy(logits) >= 0.9, sample


def test_sample_zero_is_the_stream_the_main_tables_always_used():
    from mibench.api import prompt_rng

    assert prompt_rng(3, "test").integers(1 << 30) == np.random.default_rng([3, 1, 1]).integers(1 << 30)
    draws = {int(prompt_rng(3, split, sample).integers(1 << 30))
             for split in ("train", "test") for sample in range(4)}
    assert len(draws) == 8


def test_grid_over_prompt_samples_writes_one_file_each(tmp_path):
    from mibench.report.summary import prompt_variation

    records = run_grid([RunSpec(load_technique("activation_patching"), "node")], [load_case("ioi")],
                       [0], tmp_path, progress=False, samples=[0, 1, 2])
    assert [r.prompt_sample for r in records] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.glob("*/*/small/*.json")) == \
        ["seed0-prompts1.json", "seed0-prompts2.json", "seed0.json"]
    spread = prompt_variation(records)["activation_patching"]
    aurocs = [r.metrics["auroc"] for r in records]
    assert spread["n"] == 1 and spread["mean"] == pytest.approx(float(np.std(aurocs, ddof=1)))


def _grid(tmp_path, **kwargs):
    """dla and random on induction seeds 0-1; returns the records and which of them were kept."""
    kept = []
    specs = [RunSpec(load_technique("dla"), "node"), RunSpec(load_technique("random"), "node")]
    records = run_grid(specs, [load_case("induction")], [0, 1], tmp_path, progress=False,
                       on_record=lambda record, was_kept: kept.append(was_kept), **kwargs)
    return records, kept


def test_an_interrupted_grid_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    """Interrupted after two runs, the grid keeps them; the rerun computes only the other two and
    keeps the finished files untouched. Stale, error and --force runs are recomputed."""
    import mibench.runner as runner
    from mibench.results import load_record, write_record

    finished = []
    real_write = runner.write_record

    def interrupting_write(root, record):
        if len(finished) == 2:
            raise KeyboardInterrupt
        finished.append(real_write(root, record))
        return finished[-1]

    monkeypatch.setattr(runner, "write_record", interrupting_write)
    with pytest.raises(KeyboardInterrupt):
        _grid(tmp_path)
    monkeypatch.setattr(runner, "write_record", real_write)
    stamps = {path: path.stat().st_mtime_ns for path in finished}

    records, kept = _grid(tmp_path)
    assert kept == [True, True, False, False]
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps
    assert [load_record(p).scores for p in finished] == [r.scores for r in records[:2]]

    # a stale technique version and an error record are recomputed, the rest kept
    stale, failed = load_record(finished[0]), load_record(finished[1])
    stale.technique_version = "0"
    failed.status, failed.error = "error", "RuntimeError: boom"
    write_record(tmp_path, stale)
    write_record(tmp_path, failed)
    assert _grid(tmp_path)[1] == [False, False, True, True]
    assert _grid(tmp_path, force=True)[1] == [False] * 4
