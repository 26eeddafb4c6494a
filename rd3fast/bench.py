"""``python -m rd3fast.bench``: a benchmark sweep that survives faults, then its leaderboard.

    python -m rd3fast.bench SWEEP.toml [--root ROOT] [--executor local|ray] [--address auto|HOST:PORT]
        [--retry-failed] [--parallel-seeds K] [--checkpoint-every N] [--no-progress] [--dry-run]
    python -m rd3fast.bench report ROOT
    python -m rd3fast.bench [--root ROOT]      # the embedded default sweep on Fashion-MNIST

The resolved runs and the estimated cost are printed before anything starts; ROOT/plan.json and every
run's ROOT/runs/<id>/run.json are written before training; each group of runs (K at once) is trained by
``sweep.run_group`` through ``executors.run_groups`` (in this process, or as Ray tasks); the leaderboard
is printed and written to ROOT/leaderboard.{md,csv,png}. Rerunning never retrains a finished run, resumes
an interrupted group from its checkpoint, and retries failed runs only with ``--retry-failed``.

Exit status: 0 when every run finished, 3 when some failed (one line each on stderr), 2 for bad input,
128 + signal when interrupted (SIGINT/SIGTERM/SIGUSR1 checkpoint the running group first, local executor).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import sweep
from .checkpoint import StopRequest
from .cliargs import ArgumentParser, integer
from .errors import RD3Error, cli, print_error
from .lock import OutputLock
from .outputs import check_output_dir

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
                       description="Print a sweep ROOT's leaderboard and write leaderboard.md/.csv/.png into it "
                                   "(also while the sweep is running: unfinished runs are marked).")
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
    from . import leaderboard

    print(leaderboard.format_leaderboard(root))
    paths = leaderboard.write_report(root)
    print("report: " + "  ".join(str(p) for p in paths.values()))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.address is not None and args.executor != "ray":
        raise RD3Error("--address: only used with --executor ray")
    if args.sweep is None:
        return _default(args)
    sw = sweep.load_sweep(args.sweep)
    if args.root is None and sw.root is None:
        raise RD3Error(f"no results folder: pass --root ROOT or write root = \"...\" in {sw.path}")
    root = check_output_dir(args.root or sw.root, "--root").absolute()  # Ray workers start elsewhere
    if args.dry_run:
        _plan(sw, root, args)
        return 0
    with OutputLock.folder(root, "--root"):  # one sweep driver per ROOT (a report may read it any time)
        return _sweep(sw, root, args)


def _plan(sw: sweep.Sweep, root: Path, args: argparse.Namespace) -> sweep.Plan:
    """The plan, printed with its status and estimated cost before anything starts."""
    plan = sweep.build_plan(sw, args.parallel_seeds)
    print(sweep.plan_summary(plan, root, args.retry_failed), flush=True)
    return plan


def _sweep(sw: sweep.Sweep, root: Path, args: argparse.Namespace) -> int:
    """Plan, print, write the plan, train what is left, report; the exit status (0, or 3 with failures)."""
    plan = _plan(sw, root, args)
    sweep.write_plan(root, plan)
    todo = {g.key: len(sweep.to_train(root, g.runs, args.retry_failed)) for g in plan.groups}
    groups = [g for g in plan.groups if todo[g.key]]
    if groups:
        print(f"\ntraining {sum(todo.values())} runs in {len(groups)} groups ({args.executor} executor)", flush=True)
        outcomes = _execute(groups, root, args)
    else:
        failed = sum(sweep.status(root, r.id) == "failed" for r in sweep.distinct(plan.runs))
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


def _execute(groups: list[sweep.Group], root: Path, args: argparse.Namespace) -> list[Any]:
    """Every group through the executor. Locally, a stop signal checkpoints the running group and
    ``Interrupted`` ends the command (128 + signal); on Ray, the driver's Ctrl-C cancels the tasks and a
    rerun resumes their groups from their checkpoints."""
    from . import executors

    fn = functools.partial(sweep.run_group, str(root), progress=not args.no_progress,
                           retry_failed=args.retry_failed, checkpoint_every=args.checkpoint_every)
    if args.executor == "local":
        with StopRequest() as stop:
            return executors.run_groups(functools.partial(fn, stop=stop), groups, "local",
                                        progress=not args.no_progress)
    return executors.run_groups(fn, groups, "ray", args.address, progress=not args.no_progress)


def failed_runs(root: Path, plan: sweep.Plan) -> list[str]:
    """One line per failed run of the plan: which run, and its recorded message."""
    lines = []
    for r in sweep.distinct(plan.runs):
        rec = sweep.read_result(root, r.id)
        if rec is not None and rec["status"] == "failed":
            grid = "".join(f", {k}={v}" for k, v in r.grid.items())
            lines.append(f"run {r.id} ({r.set.name} / {r.protocol} ({r.preset}) / {r.student}{grid} / seed "
                         f"{r.seed}) failed: {rec['error']}")
    return lines


# ---------------------------------------------------------------------------------------------------
# The embedded default sweep
# ---------------------------------------------------------------------------------------------------
DEFAULT_DATASET = "fashion-mnist"
DEFAULT_TEACHER = "convnet-d3-w32"
DEFAULT_TEACHER_EPOCHS = 1  # one pass over the 60,000 training images: 83 % test top-1, a usable teacher
DEFAULT_STUDENT = "convnet-d3-w16"
DEFAULT_EPOCHS = 50  # the protocols use 300-400: shortened so that the sweep fits 15 minutes on 2 CPU cores
DEFAULT_EVAL_EVERY = 25  # each evaluation reads the 10,000 test images; the presets' every 10 would double the cost
DEFAULT_K = 3  # the 3 seeds of a set at once: one teacher pass per step for all three
DEFAULT_IPC = 10
DEFAULT_SETS = {f"random-real-ipc{DEFAULT_IPC}": "random-real", f"rded-ipc{DEFAULT_IPC}": "rded"}
DEFAULT_TOML = """\
# The embedded default sweep of `python -m rd3fast.bench`, written by it; rerun it as
#   python -m rd3fast.bench {toml}
# Epochs are shortened to {epochs} (the protocols use 300-400), evaluations to every {eval_every}, so that
# it all fits 15 minutes on 2 CPU cores.
root = "."
dataset = "{dataset}"
seeds = [0, 1, 2]
students = ["{student}"]
epochs = {epochs}
eval_every = {eval_every}
parallel_seeds = {k}

[[teachers]]
arch = "{teacher}"
weights = "teacher.pt"
{sets}
[protocols.rd3-small]

[protocols.own]
small = true
"""


def _default(args: argparse.Namespace) -> int:
    """Pre-train the teacher and distill the sets unless ROOT has them, write the sweep, run it."""
    root = check_output_dir(args.root or DEFAULT_ROOT, "--root").absolute()
    print(f"rd3fast bench: the default sweep: {DEFAULT_DATASET}, IPC {DEFAULT_IPC} "
          f"({', '.join(DEFAULT_SETS.values())}), student {DEFAULT_STUDENT}, 3 seeds, under rd3-small and each "
          f"method's own protocol.\nNOTE: epochs shortened to {DEFAULT_EPOCHS} (the protocols use 300-400) and "
          f"evaluations to every {DEFAULT_EVAL_EVERY} epochs; everything else is the presets'. Inputs and results "
          f"in {root}/", flush=True)
    with OutputLock.folder(root, "--root"):
        sw = sweep.load_sweep(default_inputs(root, progress=not args.no_progress))
        if args.dry_run:
            _plan(sw, root, args)
            return 0
        return _sweep(sw, root, args)


def default_inputs(root: Path, progress: bool = True) -> Path:
    """ROOT/teacher.pt, ROOT/syn/<set>/ and ROOT/bench.toml, each made only when missing (the weights and
    the folders are written atomically, so what exists is complete)."""
    t0 = time.perf_counter()
    teacher = root / "teacher.pt"
    if not teacher.is_file():
        _pretrain_teacher(teacher, progress)
        print(f"[{time.perf_counter() - t0:5.1f}s] teacher {DEFAULT_TEACHER} pre-trained -> {teacher}", flush=True)
    missing = [name for name in DEFAULT_SETS if not (root / "syn" / name).is_dir()]
    if missing:
        _distill(root, teacher, missing)
        print(f"[{time.perf_counter() - t0:5.1f}s] distilled IPC {DEFAULT_IPC}: {', '.join(missing)}", flush=True)
    toml = root / "bench.toml"
    sets = "".join(f'\n[[sets]]\nname = "{name}"\npath = "syn/{name}"\nmethod = "{method}"\nipc = {DEFAULT_IPC}\n'
                   for name, method in DEFAULT_SETS.items())
    text = DEFAULT_TOML.format(toml=toml, epochs=DEFAULT_EPOCHS, eval_every=DEFAULT_EVAL_EVERY, dataset=DEFAULT_DATASET,
                               student=DEFAULT_STUDENT, k=DEFAULT_K, teacher=DEFAULT_TEACHER, sets=sets)
    sweep.write_text_if_changed(toml, text)
    return toml


def _pretrain_teacher(out: Path, progress: bool) -> None:
    from .config import resolve
    from .pretrain import pretrain

    cfg = resolve("pretrain", overrides=dict(student=DEFAULT_TEACHER, dataset=DEFAULT_DATASET,
                                             epochs=DEFAULT_TEACHER_EPOCHS, eval_every=DEFAULT_TEACHER_EPOCHS))
    pretrain(cfg, out, progress=progress, verbose=False)


def _distill(root: Path, teacher: Path, names: list[str]) -> None:
    """The default sets (rd3fast.distill's functions): a random real subset and RDED's selection."""
    from .data import BUILTIN, load_real
    from .distill import random_real, rded_select, write_image_folder
    from .experiment import pick_device
    from .teacher import load_teachers

    info, real = BUILTIN[DEFAULT_DATASET], load_real(DEFAULT_DATASET, "train")
    device = pick_device("auto")
    for name in names:
        if DEFAULT_SETS[name] == "random-real":
            images = random_real(real, DEFAULT_IPC, seed=0)
        else:
            relabel = load_teachers([DEFAULT_TEACHER], [teacher], real.num_classes, info.image_size, device)
            images = rded_select(real, relabel, DEFAULT_IPC, info.mean, info.std, factor=1, device=device,
                                 progress=False)
        write_image_folder(images, root / "syn" / name)


if __name__ == "__main__":
    sys.exit(main())
