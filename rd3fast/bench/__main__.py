"""``python -m rd3fast.bench``: a benchmark sweep that survives faults, then its leaderboard.

    python -m rd3fast.bench SWEEP.toml [--root ROOT] [--executor local|ray] [--address auto|HOST:PORT]
        [--retry-failed] [--restart] [--parallel-seeds K] [--checkpoint-every N] [--no-progress] [--dry-run]
    python -m rd3fast.bench report ROOT
    python -m rd3fast.bench [--root ROOT]      # the embedded default sweep on Fashion-MNIST

The resolved runs and the estimated cost are printed before anything starts; ROOT/plan.json and every
run's ROOT/runs/<id>/run.json are written before training; each group of runs (K at once) is trained by
``group.run_group`` through ``executors.run_groups`` (in this process, or as Ray tasks); the leaderboard
is printed and written to ROOT/leaderboard.{md,csv,png,html}. Rerunning never retrains a finished run, resumes
an interrupted group from its checkpoint, and retries failed runs only with ``--retry-failed``. A group
checkpoint that cannot be read is set aside and its group starts over (``group``); ``--restart`` discards the
checkpoints of the groups it trains on purpose (finished runs are still never retrained).

Exit status: 0 when every run finished, 3 when some failed (one line each on stderr), 2 for bad input,
128 + signal when interrupted (SIGINT/SIGTERM/SIGUSR1 checkpoint the running group first, local executor).
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Sequence

from ..cliargs import ArgumentParser, integer
from ..engine.checkpoint import StopRequest
from ..errors import RD3Error, cli, print_error
from ..lock import OutputLock
from ..outputs import check_output_dir
from . import executors
from .default_sweep import (
    DEFAULT_DATASET,
    DEFAULT_EPOCHS,
    DEFAULT_EVAL_EVERY,
    DEFAULT_IPC,
    DEFAULT_SETS,
    DEFAULT_STUDENT,
    default_inputs,
)
from .estimate import plan_summary
from .group import discard_checkpoint, run_group
from .plan import Group, Plan, build_plan, distinct
from .render import format_leaderboard, write_report
from .store import read_result, status, to_train, write_plan
from .sweepfile import Sweep, load_sweep

EXIT_FAILED_RUN = 3  # as rd3fast.run: some run is not a result (recorded as failed)
DEFAULT_ROOT = Path("runs/bench-default")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m rd3fast.bench",
        description="Run a benchmark sweep (sets x protocols x students x grid x seeds) and print its "
                    "leaderboard; `python -m rd3fast.bench report ROOT` only reports. With no sweep file: the "
                    "embedded default sweep on Fashion-MNIST.")
    p.add_argument("sweep", nargs="?", default=None, help="sweep TOML file (README: Benchmark sweeps)")
    p.add_argument("--root", default=None, help="results folder [the sweep's root; default sweep: "
                                                f"{DEFAULT_ROOT}]")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one group after another in this process; ray: one Ray task per group [local]")
    p.add_argument("--address", default=None, help="ray: auto or HOST:PORT of a running cluster [start a "
                                                   "local Ray]")
    p.add_argument("--retry-failed", action="store_true", help="train failed runs again")
    p.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of the groups it trains and start them over (finished runs are "
                        "kept, never retrained; default: resume each interrupted group from its checkpoint)")
    p.add_argument("--parallel-seeds", type=integer(1), default=None, metavar="K",
                   help="runs trained at once per group [the sweep's parallel_seeds, else 1]")
    p.add_argument("--checkpoint-every", type=integer(0), default=0, metavar="EPOCHS",
                   help="checkpoint every N epochs; 0: automatically (< 1%% of training time) [0]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-group lines")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and the estimated cost, train nothing (the default sweep still makes its "
                        "teacher and sets: the plan identifies runs by them)")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m rd3fast.bench report",
                       description="Print a sweep ROOT's leaderboard and write leaderboard.md/.csv/.png/.html into "
                                   "it (also while the sweep is running: unfinished runs are marked).")
    p.add_argument("root", help="the sweep's results folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        args = build_report_parser().parse_args(argv[1:])
        return cli(lambda: report(Path(args.root)))
    args = build_parser().parse_args(argv)
    return cli(lambda: _run(args))


def report(root: Path) -> int:
    """Print the leaderboard and write its files; reading only, so it never waits for a running sweep."""

    print(format_leaderboard(root))
    paths = write_report(root)
    print("report: " + "  ".join(str(p) for p in paths.values()))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.address is not None and args.executor != "ray":
        raise RD3Error("--address: only used with --executor ray")
    if args.sweep is None:
        return _default(args)
    sw = load_sweep(args.sweep)
    if args.root is None and sw.root is None:
        raise RD3Error(f"no results folder: pass --root ROOT or write root = \"...\" in {sw.path}")
    root = check_output_dir(args.root or sw.root, "--root").absolute()  # Ray workers start elsewhere
    if args.dry_run:
        _plan(sw, root, args)
        return 0
    with OutputLock.folder(root, "--root"):  # one sweep driver per ROOT (a report may read it any time)
        return _sweep(sw, root, args)


def _plan(sw: Sweep, root: Path, args: argparse.Namespace) -> Plan:
    """The plan, printed with its status and estimated cost before anything starts."""
    plan = build_plan(sw, args.parallel_seeds, progress=not args.no_progress)
    print(plan_summary(plan, root, args.retry_failed), flush=True)
    return plan


def _sweep(sw: Sweep, root: Path, args: argparse.Namespace) -> int:
    """Plan, print, write the plan, train what is left, report; the exit status (0, or 3 with failures)."""
    plan = _plan(sw, root, args)
    write_plan(root, plan)
    todo = {g.key: len(to_train(root, g.runs, args.retry_failed)) for g in plan.groups}
    groups = [g for g in plan.groups if todo[g.key]]
    if args.restart:  # here, not in run_group: a Ray task re-run after its worker died must resume, not restart
        discarded = sum(discard_checkpoint(root, g) for g in groups)
        print(f"\n--restart: discarded {discarded} group checkpoint(s); their runs start over", flush=True)
    if groups:
        print(f"\ntraining {sum(todo.values())} runs in {len(groups)} groups ({args.executor} executor)", flush=True)
        outcomes = _execute(groups, root, args)
    else:
        failed = sum(status(root, r.id) == "failed" for r in distinct(plan.runs))
        print("\nnothing to train: every run is finished"
              + (f" or failed ({failed} failed; --retry-failed trains them again)" if failed else ""), flush=True)
        outcomes = []
    print()
    report(root)
    lost = [f"group {o.key} failed: {o.error}; its runs stay pending (rerun to retry)" for o in outcomes if not o.ok]
    failed = lost + failed_runs(root, plan)
    for line in failed:  # not results: said on stderr, recorded in ROOT, and a non-zero exit
        print_error(line)
    return EXIT_FAILED_RUN if failed else 0


def _execute(groups: list[Group], root: Path, args: argparse.Namespace) -> list[Any]:
    """Every group through the executor. Locally, a stop signal checkpoints the running group and
    ``Interrupted`` ends the command (128 + signal); on Ray, the driver's Ctrl-C cancels the tasks and a
    rerun resumes their groups from their checkpoints."""

    fn = functools.partial(run_group, str(root), progress=not args.no_progress,
                           retry_failed=args.retry_failed, checkpoint_every=args.checkpoint_every)
    if args.executor == "local":
        with StopRequest() as stop:
            return executors.run_groups(functools.partial(fn, stop=stop), groups, "local",
                                        progress=not args.no_progress)
    return executors.run_groups(fn, groups, "ray", args.address, progress=not args.no_progress)


def failed_runs(root: Path, plan: Plan) -> list[str]:
    """One line per failed run of the plan: which run, and its recorded message."""
    lines = []
    for r in distinct(plan.runs):
        rec = read_result(root, r.id)
        if rec is not None and rec["status"] == "failed":
            grid = "".join(f", {k}={v}" for k, v in r.grid.items())
            lines.append(f"run {r.id} ({r.set.name} / {r.label} ({r.preset}) / {r.student}{grid} / seed "
                         f"{r.seed}) failed: {rec['error']}")
    return lines


def _default(args: argparse.Namespace) -> int:
    """Pre-train the teacher and distill the sets unless ROOT has them, write the sweep, run it."""
    root = check_output_dir(args.root or DEFAULT_ROOT, "--root").absolute()
    print(f"rd3fast bench: the default sweep: {DEFAULT_DATASET}, IPC {DEFAULT_IPC} "
          f"({', '.join(DEFAULT_SETS.values())}), student {DEFAULT_STUDENT}, 3 seeds, under rd3-small and each "
          f"method's own protocol, with DD-Ranking's scores (LRS, ARS).\nNOTE: epochs shortened to "
          f"{DEFAULT_EPOCHS} (the protocols use 300-400) and evaluations to every {DEFAULT_EVAL_EVERY} epochs; "
          f"everything else is the presets'. Inputs and results in {root}/", flush=True)
    with OutputLock.folder(root, "--root"):
        sw = load_sweep(default_inputs(root, progress=not args.no_progress))
        if args.dry_run:
            _plan(sw, root, args)
            return 0
        return _sweep(sw, root, args)


if __name__ == "__main__":
    sys.exit(main())
