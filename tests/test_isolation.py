"""Runs in workers: the truth out of reach, failures contained, limits enforced, private seeds,
and the same numbers whichever executor ran the grid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import prepared
from mibench import worker
from mibench.registry import load_case, load_technique
from mibench.runner import Execution, RunSpec, instance_seed, run_grid, run_seed
from mibench.sandbox import Limits, Sandbox


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "mibench.cli.main", *args], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def test_broken_adapters_become_error_runs_and_the_grid_finishes(tmp_path, fixture_technique):
    """One that hangs, one that exits its process, one that allocates without bound and one that
    raises: each is an error run naming what happened; dla, after them, runs and is written."""
    broken = ("hangs", "exits", "allocates", "raises")
    code, out, err = _cli("run", "--technique", ",".join([fixture_technique(n) for n in broken] + ["dla"]),
                          "--case", "induction", "--seeds", "0", "--size", "small", "--json",
                          "--timeout", "5", "--memory-limit", "1", "--results", str(tmp_path))
    assert code == 1, err  # some runs errored
    runs = {r["technique"]: r for r in map(json.loads, out.splitlines())}
    assert "exceeded the time limit of 5 s" in runs["fixture_hangs"]["error"]
    assert "exited with code 3 before returning scores" in runs["fixture_exits"]["error"]
    assert "ran out of memory" in runs["fixture_allocates"]["error"] and "1 GiB" in runs["fixture_allocates"]["error"]
    assert "this adapter always fails" in runs["fixture_raises"]["error"]
    assert runs["dla"]["status"] == "ok"
    assert json.loads((tmp_path / "dla" / "induction" / "small" / "seed0.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("fixture, why", [
    ("truth_by_closure", "no case reachable from the view's metric"),
    ("truth_by_import", "ground_truth is out of a technique's reach"),
    ("truth_by_search", "no Truth in this process (truth-bearing modules loaded: none)"),
])
def test_adapters_reaching_for_the_truth_get_none(fixture, why, fixture_technique):
    record = run_grid([RunSpec(load_technique(fixture_technique(fixture)), "node")],
                      [load_case("induction")], [0], None, progress=False)[0]
    assert record.status == "error" and why in record.error and not record.metrics


def test_the_worker_refuses_every_truth_bearing_module_and_allows_the_contracts():
    for module in ("ground_truth", "ground_truth.ioi.case", "mibench.scoring", "mibench.certificate",
                   "mibench.runner", "mibench.models.planted", "mibench.circuit", "mibench.sandbox"):
        assert worker.refused(module), module
    for module in ("mibench", "mibench.api", "mibench.names", "mibench.model.ablation", "torch",
                   "mibench.registry"):
        assert not worker.refused(module), module


def test_what_the_worker_receives_names_no_seed():
    """The unit's files hold weights, prompts, the metric, the case's name and a run seed derived
    from the instance's seed; its seed itself appears nowhere."""
    prep = prepared("induction", 3)
    view = json.loads((prep.files.folder / "view.json").read_text())
    assert set(view) == {"prompts", "train_prompts", "metric", "case_name", "run_seed"}
    assert view["run_seed"] == run_seed("induction", 3, 0) != 3
    assert worker.view_of(worker.load_unit(prep.files.folder), "node").seed == view["run_seed"]


def test_private_seeds_build_other_instances_and_are_recorded_without_the_salt(tmp_path, monkeypatch,
                                                                                fixture_technique):
    spec = RunSpec(load_technique("dla"), "node")
    public = run_grid([spec], [load_case("induction")], [0], None, progress=False)[0]
    salted = run_grid([spec], [load_case("induction")], [0], tmp_path, progress=False,
                      execution=Execution(seed_salt="s3cret"))[0]
    again = run_grid([spec], [load_case("induction")], [0], None, progress=False, force=True,
                     execution=Execution(seed_salt="s3cret"))[0]
    assert salted.seeds_private and not public.seeds_private and salted.seed == 0
    assert instance_seed(0, "s3cret") != 0 and salted.truth_hash != public.truth_hash
    assert again.scores == salted.scores
    assert "s3cret" not in (tmp_path / "dla" / "induction" / "small" / "seed0.json").read_text()
    # the worker's environment never holds the salt
    monkeypatch.setenv("MIBENCH_SEED_SALT", "s3cret")
    sandbox = Sandbox()
    try:
        outcome = sandbox.run(prepared("induction", 0).files, fixture_technique("env_probe"), "node")
    finally:
        sandbox.close()
    assert outcome["status"] == "ok", outcome


def _grid(execution):
    specs = [RunSpec(load_technique(n), "node") for n in ("random", "resample_ablation", "dla")]
    records = run_grid(specs, [load_case("induction"), load_case("trap_backup")], [0, 1], None,
                       progress=False, execution=execution)
    return [(r.technique, r.case, r.seed, r.status, r.scores, r.metrics) for r in records]


def test_a_parallel_grid_gives_the_numbers_of_a_serial_one():
    assert _grid(Execution(jobs=2)) == _grid(Execution(jobs=1))


def test_ray_tasks_give_the_numbers_of_the_local_pool():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert _grid(Execution(executor="ray")) == _grid(Execution(jobs=2))
    finally:
        ray.shutdown()


def _descendants(root: int) -> set[int]:
    """Every live process under ``root`` (from /proc), workers in their own sessions included."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_parallel_grid_exits_at_once_keeps_its_results_and_leaves_no_process(
        tmp_path, fixture_technique, how):
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (to the driver alone) while two
    units hang in their workers: exit 130 within seconds, saying that written results are kept
    (test_runner checks that they are), and no pool process, worker or run left behind."""
    log = tmp_path / "stderr"
    driver = subprocess.Popen(
        [sys.executable, "-m", "mibench.cli.main", "run", "--technique", f"dla,{fixture_technique('hangs')}",
         "--case", "induction", "--seeds", "0,1", "--size", "small", "--jobs", "2",
         "--results", str(tmp_path / "results")],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=log.open("w"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    deadline = time.monotonic() + 120
    while len(_descendants(driver.pid)) < 6:  # 2 pool processes, their 2 workers, 2 hanging runs
        assert driver.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    time.sleep(1)
    processes = _descendants(driver.pid)
    if how == "ctrl-c":
        os.killpg(driver.pid, signal.SIGINT)
    else:
        driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=30) == 130, log.read_text()
    assert "interrupted; results already written are kept" in log.read_text()
    time.sleep(2)
    alive = {p for p in processes if Path(f"/proc/{p}").exists()}
    assert not alive, f"left running: {alive}"
