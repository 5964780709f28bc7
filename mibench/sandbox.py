"""The parent's side of the worker (:mod:`mibench.worker`): writing a unit as data, running one
technique under the run limits, restarting a worker that died.

A :class:`Sandbox` owns one worker process. It is started once per process that runs units and
reused (starting one imports torch: seconds); every run is a fresh fork inside it, so reuse shares
nothing between techniques.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mibench.api import MibenchError

#: Per-run limits when nothing else is asked (``mibench run --timeout / --memory-limit``). The
#: slowest technique at the leaderboard's size takes under two minutes.
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MEMORY_GB = 8.0
#: Environment variables a worker never inherits: they could name the private seeds.
SECRET_ENV = ("MIBENCH_SEED_SALT",)


@dataclass(frozen=True)
class Limits:
    """What one run may use: wall-clock seconds and memory (GiB) beyond the worker's own; None
    means no limit."""

    timeout_s: float | None = DEFAULT_TIMEOUT_S
    memory_gb: float | None = DEFAULT_MEMORY_GB

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gb is None else int(self.memory_gb * 2**30)


class UnitFiles:
    """What a CaseView holds, written as data in a temporary folder (removed with this object):
    the weights and prompts as safetensors (never pickle), the metric as a MetricSpec, the case's
    name and the run seed. Nothing here names the instance's seed or holds its truth."""

    def __init__(self, model, prompts, train_prompts, metric, case_name: str, run_seed: int) -> None:
        from safetensors.torch import save_file

        from mibench.model.checkpoint import save_model

        self.folder = Path(tempfile.mkdtemp(prefix="mibench-unit-"))
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        save_model(model, self.folder)
        test, test_layout = prompts.to_tensors("test")
        train, train_layout = train_prompts.to_tensors("train")
        save_file({**test, **train}, str(self.folder / "prompts.safetensors"))
        (self.folder / "view.json").write_text(json.dumps({
            "prompts": test_layout, "train_prompts": train_layout, "metric": metric.to_json(),
            "case_name": case_name, "run_seed": run_seed}))


class Sandbox:
    """One worker process, running techniques on one unit at a time (loaded when a run names a
    unit other than the last one's)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._unit: Path | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="mibench-runs-"))

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        # its own session: Ctrl-C reaches the parent, which then stops the worker and its child
        self._process = subprocess.Popen([sys.executable, "-m", "mibench.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, env=env,
                                         start_new_session=True)
        ready = self._answer()
        if ready.get("status") != "ready":
            raise MibenchError(f"the technique worker did not start: {ready.get('error', ready)}")
        if self._unit is not None:
            self._load(self._unit)

    def _answer(self) -> dict[str, Any]:
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            return {"status": "died", "error": f"the worker process exited (code {code})"}
        return json.loads(line)

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._process is None or self._process.poll() is not None:
            self._start()
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            return {"status": "died", "error": "the worker process had exited"}
        return self._answer()

    def _load(self, folder: Path) -> None:
        answer = self._request({"op": "load", "dir": str(folder)})
        if answer["status"] != "ok":
            raise RuntimeError(f"the worker could not load the unit in {folder}: {answer['error']}")

    def run(self, unit: UnitFiles, technique_ref: str, granularity: str,
            limits: Limits = Limits()) -> dict[str, Any]:
        """The outcome of one run on ``unit``: ``status`` ``ok`` (with ``scores``, ``runtime_s``,
        passes) or ``error`` (with ``error``). A worker that died is restarted for the next run."""
        if self._unit != unit.folder:
            self._unit = None  # a restarted worker must not reload the previous unit
            self._load(unit.folder)
            self._unit = unit.folder
        answer = self._request({"op": "run", "technique": technique_ref, "granularity": granularity,
                                "timeout_s": limits.timeout_s, "memory_bytes": limits.memory_bytes,
                                "out": str(self._scratch / "outcome.json")})
        if answer["status"] == "died":
            self._process = None
            return {"status": "error", "error": f"{answer['error']} during the run; it is restarted "
                                                f"for the next one"}
        if answer["status"] == "failed":
            raise RuntimeError(f"the worker failed: {answer['error']}")
        return answer

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait()
        self._process = None
        shutil.rmtree(self._scratch, ignore_errors=True)


_shared: Sandbox | None = None


def shared() -> Sandbox:
    """This process's sandbox, started on first use and stopped when the process exits."""
    global _shared
    if _shared is None:
        _shared = Sandbox()
        atexit.register(_shared.close)
    return _shared
