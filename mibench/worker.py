"""The worker: the process in which techniques run, with nothing of the truth in reach.

``python -m mibench.worker`` answers requests, one JSON object per line on stdin, with one JSON
line each on its original stdout (a technique's own prints go to stderr):

* ``{"op": "load", "dir": D}`` loads a (case, seed) unit from data written by
  :class:`mibench.sandbox.UnitFiles`: ``D/model.safetensors`` (the weights), ``D/prompts.safetensors``
  (the test and train prompt sets) and ``D/view.json`` (the prompt sets' layout, the metric as a
  :class:`~mibench.api.MetricSpec`, the case's name and the run seed, which does not name the
  instance's seed);
* ``{"op": "run", "technique": REF, "granularity": G, "timeout_s": T, "memory_bytes": M, "out": F}``
  forks a child that builds the :class:`~mibench.api.CaseView`, runs the technique (``REF``: a
  registered name or an adapter file) and writes its scores or its error to ``F``; the answer is
  the outcome: ``{"status": "ok" | "error", ...}``.

Why a fork per run: importing torch and TransformerLens costs seconds, a fork milliseconds; a
technique that hangs, exits, crashes or allocates without bound takes down only its child, and no
technique can touch the model or the modules the next one gets. The server does its torch work on
one thread, so a child never inherits an OpenMP pool (which does not survive a fork), and every
run computes the same numbers whichever machine or pool ran it.

Nothing in this process came from a case's code: the model is rebuilt from its weights and the
metric from data. The worker refuses to import ``ground_truth`` and every mibench module except the
contracts (``mibench.api``, ``mibench.names``), the model-access layer (``mibench.model``) and what
loads a technique (``mibench.registry``, ``mibench.files``): an adapter's attempt raises ImportError
naming the module, and its run becomes an error run that says so.
"""
from __future__ import annotations

import gc
import importlib.abc
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: mibench modules a technique may import; every other one (scoring, certificate, runner, the
#: planted models, the cases' circuit files) and all of ``ground_truth`` are refused.
ALLOWED_MODULES = ("mibench", "mibench.api", "mibench.names", "mibench.files", "mibench.registry",
                   "mibench.worker")
ALLOWED_PACKAGES = ("mibench.model",)
#: Libraries imported once, before any fork, so that a run does not pay for them.
PRELOAD = ("numpy", "pandas", "torch", "transformer_lens.model_bridge", "mibench.api",
           "mibench.registry", "mibench.model.ablation", "mibench.model.bridge", "mibench.model.checkpoint",
           "mibench.model.gradients", "mibench.model.noising", "mibench.model.passes",
           "mibench.model.paths", "mibench.model.readout", "mibench.model.statistics",
           "mibench.model.weights")
OPTIONAL_PRELOAD = ("captum.attr", "sklearn.linear_model", "transformer_lens.head_detector")


def refused(module: str) -> bool:
    """Whether a technique may not import ``module``."""
    top = module.partition(".")[0]
    if top == "ground_truth":
        return True
    if top != "mibench":
        return False
    return module not in ALLOWED_MODULES and not any(
        module == package or module.startswith(package + ".") for package in ALLOWED_PACKAGES)


class RefuseTruth(importlib.abc.MetaPathFinder):
    """Refuses every import of a module that holds or reaches the truth (see :func:`refused`)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ARG002 - the finder protocol
        if refused(name):
            raise ImportError(f"{name} is out of a technique's reach: a technique runs in a worker "
                              f"that sees only its CaseView (model, prompts, metric), never a case's "
                              f"code or truth")
        return None


def install_refusal() -> None:
    """Refuse truth-bearing imports from now on; fail loudly if one was already imported."""
    loaded = sorted(m for m in sys.modules if refused(m))
    if loaded:
        raise RuntimeError(f"the worker already holds {', '.join(loaded)}; it must start clean")
    sys.meta_path.insert(0, RefuseTruth())


# --- the unit: what a CaseView holds, rebuilt from data -------------------------------------------

@dataclass
class Unit:
    model: Any
    prompts: Any
    train_prompts: Any
    metric: Any  # MetricSpec
    case_name: str
    run_seed: int


def load_unit(folder: str | Path) -> Unit:
    from safetensors.torch import load_file

    from mibench.api import MetricSpec, PromptSet
    from mibench.model.checkpoint import load_model

    folder = Path(folder)
    view = json.loads((folder / "view.json").read_text())
    tensors = load_file(folder / "prompts.safetensors")
    return Unit(load_model(folder),
                PromptSet.from_tensors(tensors, "test", view["prompts"]),
                PromptSet.from_tensors(tensors, "train", view["train_prompts"]),
                MetricSpec.from_json(view["metric"]), view["case_name"], int(view["run_seed"]))


def view_of(unit: Unit, granularity: str):
    """The CaseView a technique gets: built from the unit's data alone."""
    from mibench.api import CaseView

    return CaseView(unit.model, unit.prompts, unit.train_prompts, unit.metric, granularity,
                    unit.run_seed, unit.case_name)


# --- one run, in a forked child ---------------------------------------------------------------------

def _vm_size() -> int:
    """This process's virtual memory in bytes (the address-space limit counts from here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _limit_memory(memory_bytes: int | None) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no multi-GB core file
    if memory_bytes:
        limit = _vm_size() + int(memory_bytes)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _error_text(exc: BaseException, memory_bytes: int | None) -> str:
    """``Type: message (at file:line)``, the line being the deepest frame in the adapter's code
    or a library; out-of-memory errors say which limit they hit."""
    from mibench.api import MibenchError

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
        limit = f" of {memory_bytes / 2**30:g} GiB" if memory_bytes else ""
        return (f"ran out of memory: it exceeded the run's memory limit{limit} ({text.splitlines()[0]}); "
                f"raise it with --memory-limit GIB")
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    if where and not isinstance(exc, MibenchError):
        text += f" (at {Path(where.filename).name}:{where.lineno})"
    return text


def run_technique(unit: Unit, technique_ref: str, granularity: str,
                  memory_bytes: int | None = None) -> dict[str, Any]:
    """Build the view, run the technique, check its scores and the weights: the child's work."""
    import torch

    from mibench.api import MibenchError, validate_roles, validate_scores
    from mibench.model.passes import PassCounter
    from mibench.registry import load_technique

    start = time.perf_counter()
    try:
        _limit_memory(memory_bytes)
        technique = load_technique(technique_ref)
        view = view_of(unit, granularity)
        weights = [p.detach().clone() for p in unit.model.parameters()]
        torch.manual_seed(unit.run_seed)
        start = time.perf_counter()
        with PassCounter(unit.model, len(unit.prompts)) as passes:
            raw = technique.attribute(view)
        runtime = time.perf_counter() - start
        scores = validate_scores(raw, view.components(), technique.name)
        roles = validate_roles(raw.attrs.get("roles"), scores.index, technique.name)
        if any(not torch.equal(p, w) for p, w in zip(unit.model.parameters(), weights)):
            raise MibenchError(f"technique {technique.name!r} changed the model's weights; adapters "
                               f"must leave the model as they found it")
    except BaseException as exc:  # anything the adapter does wrong is data for its record
        return {"status": "error", "error": _error_text(exc, memory_bytes),
                "runtime_s": round(time.perf_counter() - start, 4)}
    return {"status": "ok", "scores": {k: float(v) for k, v in scores.items()},
            "runtime_s": round(runtime, 4), "forward_passes": round(passes.forward_passes, 3),
            "backward_passes": round(passes.backward_passes, 3),
            **({} if roles is None else {"roles": roles})}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _wait(pid: int, timeout_s: float | None) -> tuple[int | None, str | None]:
    """Wait for the child: (its wait status, None), or (None, why it was stopped)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pause = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, None
        if deadline is not None and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, f"exceeded the time limit of {timeout_s:g} s and was stopped (--timeout)"
        if os.getppid() != _PARENT:  # the process that asked is gone (killed): nobody will read
            os.kill(pid, signal.SIGKILL)  # the answer, so stop the run and this worker now
            os.waitpid(pid, 0)
            os._exit(1)
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def run_forked(unit: Unit, request: dict[str, Any]) -> dict[str, Any]:
    """Run one technique in a forked child under the request's limits; never raises for what the
    child does."""
    from mibench.files import write_atomically

    out = Path(request["out"])
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            outcome = run_technique(unit, request["technique"], request["granularity"],
                                    request.get("memory_bytes"))
            write_atomically(out, json.dumps(outcome))
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    status, stopped = _wait(pid, request.get("timeout_s"))
    elapsed = round(time.perf_counter() - started, 4)
    if stopped:
        return {"status": "error", "error": stopped, "runtime_s": elapsed}
    if os.WIFEXITED(status) and out.is_file():
        return json.loads(out.read_text())
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = (" (the system's out-of-memory killer sends it; lower the run's memory or "
               "--memory-limit)" if sig == signal.SIGKILL else "")
        return {"status": "error", "runtime_s": elapsed,
                "error": f"the worker died from {_signal_name(sig)} before returning scores{why}"}
    return {"status": "error", "runtime_s": elapsed,
            "error": f"the worker exited with code {os.WEXITSTATUS(status)} before returning scores "
                     f"(os._exit, sys.exit or a crash in native code)"}


# --- the server ------------------------------------------------------------------------------------

def serve(requests, answers) -> None:
    unit = None
    for line in requests:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                unit = load_unit(request["dir"])
                # what is loaded now stays: the collector leaves it alone, so a child does not
                # copy every page of it (copy-on-write) when its first collection walks the heap
                gc.freeze()
                answer: dict[str, Any] = {"status": "ok"}
            elif request["op"] == "run":
                if unit is None:
                    raise RuntimeError("no unit loaded")
                answer = run_forked(unit, request)
            else:
                raise RuntimeError(f"unknown op {request['op']!r}")
        except Exception as exc:  # the suite's own failure (a corrupt unit file): the parent raises it
            answer = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


#: the process this worker serves; a run's wait loop ends the worker when it is gone
_PARENT = os.getppid()


def main() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a technique's prints go to stderr, never into the answers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    install_refusal()
    import importlib

    import torch

    torch.set_num_threads(1)
    for module in PRELOAD:
        importlib.import_module(module)
    for module in OPTIONAL_PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    answers.write(json.dumps({"status": "ready"}) + "\n")
    answers.flush()
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
