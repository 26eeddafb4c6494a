"""Where a sweep's run groups execute: in this process, or as Ray tasks over every device of a cluster.

``run_groups(fn, groups, executor)`` calls ``fn(group)`` once per group and returns one ``Outcome`` per
group, in the order of ``groups``:

- ``local`` (the default): one after another in this process, on its one device.
- ``ray``: one Ray task per group. ``address=None`` starts a local Ray sized to this machine (and shuts it
  down afterwards); ``"auto"`` or ``"HOST:PORT"`` joins a running cluster (``ray start`` on a Slurm
  allocation, or any existing cluster). On a cluster with GPUs each task takes one GPU (``num_gpus=1``: one
  group per GPU of every node, Ray sets ``CUDA_VISIBLE_DEVICES`` for it); every task takes
  ``cpus_per_group`` CPUs and runs torch on as many threads (so a CPU-only cluster runs one group per
  ``cpus_per_group`` CPUs). Results are collected as tasks finish, with a progress line each. A group's
  numbers equal the local executor's when torch runs on as many threads in both (CPU float sums depend on
  the thread count: ``tests/test_executors.py`` runs the local side on 1 thread).

A group that raises is an ``Outcome`` with status ``failed`` and the error's message; the other groups go
on (a Python error is never retried: the same input fails the same way). A Ray task whose worker process
*dies* (killed, out of memory, its node lost) is re-run up to ``max_retries`` times, and since ``fn``
resumes a group from its checkpoint (``sweep.run_group``) the re-run loses nothing but the steps since the
last checkpoint. ``KeyboardInterrupt`` and ``errors.Interrupted`` (a stop signal) are not group failures:
they stop the whole call.

Ray is imported only here and only for ``executor="ray"``; it is the optional extra ``rd3fast[ray]``.
Every Ray worker imports ``fn`` and rd3fast from its own Python environment: a local Ray runs this
interpreter (the same virtual environment); on a cluster, every node needs rd3fast installed (on Slurm,
one venv on the shared filesystem does it).
"""
from __future__ import annotations

import os
import re
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence, TextIO

from ..errors import Interrupted, RD3Error

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray: ray is not installed; pip install 'rd3fast[ray]'"


@dataclass(frozen=True)
class Outcome:
    """What became of one group: ``status`` "ok" (``result`` is what ``fn`` returned) or "failed"
    (``error`` is the message: the exception's type and text, or why Ray lost the task)."""

    key: str
    status: str
    error: str | None = None
    result: Any = None
    wall_s: float = field(default=0.0, compare=False)  # time in fn (its last attempt), where it ran
    traceback: str | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_groups(fn: Callable[[Any], Any], groups: Sequence[Any], executor: str = "local",
               address: str | None = None, *, cpus_per_group: int = 1, max_retries: int = 3,
               progress: bool = True, stream: TextIO | None = None) -> list[Outcome]:
    """``fn(group)`` for every group (each has a ``.key``), locally or as Ray tasks; one Outcome per group,
    in the order of ``groups``. See the module docstring."""
    if executor not in EXECUTORS:
        raise RD3Error(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise RD3Error(f"--address {address}: only used with --executor ray")
    if cpus_per_group < 1:
        raise RD3Error(f"cpus_per_group={cpus_per_group}: expected at least 1")
    line = _Lines(len(groups), progress, stream)
    if executor == "local":
        outcomes = []
        for group in groups:
            outcomes.append(_outcome(group.key, _attempt(fn, group)))
            line(outcomes[-1])
        return outcomes
    return _run_ray(fn, groups, address, cpus_per_group, max_retries, progress, line)


def _attempt(fn: Callable[[Any], Any], group: Any) -> tuple[str, str | None, Any, float, str | None]:
    """Run one group where this is called (this process, or a Ray worker): (status, error, result, wall_s,
    traceback). An error is caught here, so both executors word it the same way and Ray never has to pickle
    an exception; a stop (Ctrl-C, SIGTERM) is not a group failure and propagates."""
    t0 = time.perf_counter()
    try:
        result = fn(group)
    except Interrupted:
        raise
    except RD3Error as e:  # bad input: its message says it all
        return "failed", str(e), None, time.perf_counter() - t0, None
    except Exception as e:  # noqa: BLE001 — any error in a group is that group's failure; a bug: keep where
        return "failed", f"{type(e).__name__}: {e}", None, time.perf_counter() - t0, traceback.format_exc()
    return "ok", None, result, time.perf_counter() - t0, None


def _outcome(key: str, attempt: tuple[str, str | None, Any, float, str | None]) -> Outcome:
    status, error, result, wall_s, tb = attempt
    return Outcome(key=key, status=status, error=error, result=result, wall_s=wall_s, traceback=tb)


class _Lines:
    """One line per finished group: ``[3/12] group KEY ok in 1:23`` (or ``failed: message``)."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None) -> None:
        self.total, self.enabled, self.stream, self.done = total, enabled, stream, 0

    def __call__(self, outcome: Outcome, with_traceback: bool = True) -> None:
        """``with_traceback``: under a failure line, where the group's error was raised (a bug, not bad
        input: RD3Error failures have none); off for tasks Ray lost (the raylet has said why)."""
        self.done += 1
        if not self.enabled:
            return
        what = f"ok in {_clock(outcome.wall_s)}" if outcome.ok else f"failed: {outcome.error}"
        if outcome.traceback and with_traceback:
            what += "\n" + outcome.traceback.rstrip()
        print(f"[{self.done}/{self.total}] group {outcome.key} {what}", file=self.stream or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def local_cpus() -> int:
    """CPUs this process may use (its affinity mask, which Slurm and containers restrict), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT address answers a TCP connection: ``ray.init`` would otherwise retry for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": Ray's own lookup, which fails fast
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RD3Error(f"--address {address}: no Ray head answers there ({getattr(e, 'strerror', None) or e}); start "
                       f"one with `ray start --head --port={port}`, or pass --address auto on a node of the cluster"
                       ) from None


def _ray_task(fn: Callable[[Any], Any], group: Any) -> tuple[str, str | None, Any, float, str | None]:
    """The body of a Ray task: the process-wide CPU settings an rd3fast command makes, torch threads =
    the CPUs Ray gave the task (a reused worker keeps the thread count of the task it was started for),
    then the group."""
    import ray
    import torch

    from ..host import tune_allocator

    tune_allocator()
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, cpus))
    return _attempt(fn, group)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _ray_error(e: Exception, max_retries: int) -> str:
    """One line for a task Ray could not complete. A ``RayTaskError`` got past ``_attempt``: the task could
    not load ``fn`` or its group (a module missing in the worker's environment), or a stop signal ended it;
    its last line is the Python error. Any other ``RayError``: the task was lost (its worker died on every
    attempt, its node went away, it was cancelled)."""
    from ray.exceptions import RayTaskError

    lines = [s.strip() for s in _ANSI.sub("", str(e)).splitlines()]
    lines = [s for s in lines if s and not set(s) <= set("^~ ")]  # drop traceback underlines
    if isinstance(e, RayTaskError):
        last = lines[-1] if lines else type(e).__name__
        hint = (" (Ray workers import the group function from their own Python environment: install rd3fast "
                "there)") if "No module named" in last else ""
        return f"ray: {last}{hint}"
    return f"ray: {type(e).__name__} (after {max_retries} retries)" + (f": {lines[0]}" if lines else "")


def _run_ray(fn: Callable[[Any], Any], groups: Sequence[Any], address: str | None, cpus_per_group: int,
             max_retries: int, progress: bool, line: _Lines) -> list[Outcome]:
    # Ray merges worker lines that differ only in numbers ("[repeated 2x across cluster]"): the progress
    # lines of different runs. Read once, when ray is first imported; a user's own setting wins.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError:
        raise RD3Error(RAY_MISSING) from None
    if not groups:
        return []
    started = False
    if not ray.is_initialized():
        if address is not None:
            _check_reachable(address)
        try:
            if address is None:  # "local": a new instance here even if RAY_ADDRESS points elsewhere
                ray.init(address="local", num_cpus=local_cpus(), include_dashboard=False,
                         log_to_driver=progress)
            else:
                ray.init(address=address, log_to_driver=progress)
        except (ConnectionError, ValueError) as e:
            raise RD3Error(f"--address {address}: cannot reach a Ray cluster ({e})") from None
        started = True
    refs: dict[Any, int] = {}
    try:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(num_cpus=cpus_per_group, num_gpus=1 if gpus else 0, max_retries=max_retries,
                          retry_exceptions=False)(_ray_task)
        fn_ref = ray.put(fn)  # one copy of fn (a partial holding the sweep's paths) for every task
        refs = {task.options(name=f"rd3fast-group-{g.key}").remote(fn_ref, g): i for i, g in enumerate(groups)}
        outcomes: list[Outcome | None] = [None] * len(groups)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = refs.pop(ready[0])
            key = groups[i].key
            try:
                outcomes[i] = _outcome(key, ray.get(ready[0]))
                line(outcomes[i])
            except RayError as e:
                outcomes[i] = Outcome(key=key, status="failed", error=_ray_error(e, max_retries),
                                      traceback=_ANSI.sub("", str(e)))
                line(outcomes[i], with_traceback=False)
        return [o for o in outcomes if o is not None]
    finally:
        for ref in refs:  # stopped early (Ctrl-C): leave no task of ours running; their groups resume on a rerun
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
