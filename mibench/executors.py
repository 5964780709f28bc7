"""Where units run: in this process, in a local process pool, or as tasks on a Ray cluster.

Each yields ``(index, UnitResult)`` as units finish, whatever the order; the runner writes and
reports them. A unit is plain data and computes on one thread (:func:`mibench.runner.run_unit`),
so every executor gives the same numbers.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

from mibench.api import MibenchError

if TYPE_CHECKING:  # pragma: no cover
    from mibench.runner import Execution, UnitResult, UnitTask

EXECUTORS = ("local", "ray")


def default_jobs() -> int:
    """One unit per core this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def run_units(tasks: list["UnitTask"], execution: "Execution") -> Iterator[tuple[int, "UnitResult"]]:
    if execution.executor == "ray":
        yield from _ray(tasks, execution.address)
    elif execution.executor == "local":
        yield from _local(tasks, execution.jobs)
    else:
        raise MibenchError(f"unknown executor {execution.executor!r}; use one of {', '.join(EXECUTORS)}")


def _local(tasks: list["UnitTask"], jobs: int) -> Iterator[tuple[int, "UnitResult"]]:
    from mibench.runner import run_unit

    if jobs <= 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            yield index, run_unit(task)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: a forked copy of this process would inherit its threads and open files
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    pending = {pool.submit(run_unit, task): index for index, task in enumerate(tasks)}
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield pending.pop(future), future.result()
    finally:
        if pending:  # interrupted (Ctrl-C, SIGTERM) or a unit failed: stop the units still running
            pool.shutdown(wait=False, cancel_futures=True)
            for process in multiprocessing.active_children():  # the pool's; their workers follow
                process.terminate()
        pool.shutdown(wait=True)


def _die_with_parent(parent: int) -> None:
    """In a pool process: ask the kernel for SIGTERM when the process that started the pool ends
    (Linux), so a driver that is killed leaves no pool process, and no worker, behind."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed driver may leave its pool running
        return
    if os.getppid() != parent:  # the driver ended before the request took effect
        os._exit(1)


def _ray(tasks: list["UnitTask"], address: str | None) -> Iterator[tuple[int, "UnitResult"]]:
    try:
        import ray
    except ImportError:
        raise MibenchError('--executor ray needs Ray: pip install "mibench[ray]"') from None
    from mibench.runner import run_unit

    if not ray.is_initialized():
        # no address: a local cluster for this run (ray.init's own default); else join that one
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    remote = ray.remote(num_cpus=1)(run_unit)
    pending = {remote.remote(task): index for index, task in enumerate(tasks)}
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                yield pending.pop(ref), ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
