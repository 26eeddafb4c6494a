"""``python -m rd3fast.run``: evaluate a distilled set under a protocol; with no arguments, the demo.

    python -m rd3fast.run --preset rd3 --distilled syn/ --val imagenet/val \\
        --teacher resnet18 --teacher-weights r18.pt --seeds 0,1,2 --out runs/mine

Per run it prints the resolved config, shows progress, and writes <out>/results.json (config, metrics at
every evaluation, per-epoch loss and time, mean +- std over seeds, versions, device, git sha) and
<out>/curves.png, then prints a table. Bad input exits with status 2 and one message, writing nothing.

Several distilled sets of one size (methods at one IPC) go in one call, ``--distilled a/,b/``: each gets
<out>/<name>/, and with ``--parallel-seeds`` their runs train side by side, sharing each teacher pass.
The evaluation itself is ``rd3fast.evaluate`` (``evaluate_sets``); this module parses and prints.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from . import config as config_mod
from .cliargs import ArgumentParser, integer
from .config import PRESETS, add_config_flags, config_from_args
from .engine.checkpoint import StopRequest
from .errors import RD3Error, cli, print_error
from .evaluate import evaluate_sets, failed_runs, table_row
from .outputs import check_folder_name, check_output_dir
from .results import format_table

EXIT_FAILED_RUN = 3  # a run stopped being a result (non-finite loss): recorded as failed, exit 3


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m rd3fast.run",
        description="Post-evaluate a distilled dataset under the RD3 protocol or a published recipe. "
                    "With no arguments: the embedded demo on scikit-learn's digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="protocol to start from [rd3]")
    p.add_argument("--config", default=None, help="JSON file of config keys (or a results.json to rerun)")
    p.add_argument("--out", default=None, help="output folder [runs/<set>-<preset>-<time>]")
    p.add_argument("--name", default="", help="name of the set in tables, one per set when --distilled lists "
                                              "several (comma-separated) [folder name]")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-evaluation lines")
    p.add_argument("--restart", action="store_true",
                   help="discard the results and checkpoints already in --out and start over (default: keep "
                        "finished seeds, resume an interrupted one, refuse results of another config)")
    p.add_argument("--checkpoint-every", type=integer(0), default=0, metavar="EPOCHS",
                   help="checkpoint every N epochs (and on SIGINT/SIGTERM/SIGUSR1); 0: automatically, keeping "
                        "the cost under 1%% of training time")
    p.add_argument("--demo", action="store_true", help="run the embedded demo (same as no arguments)")
    add_config_flags(p)
    return p


def list_presets() -> str:
    keys = ["batch_size", "epochs", "loss", "temperature", "optimizer", "zeta", "crop", "rrc_scale",
            "patch_shuffle", "mix", "teacher"]
    lines = ["| preset | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name in PRESETS:
        c = config_mod.preset(name)
        vals = [",".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in (getattr(c, k) for k in keys)]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # unknown flags: one line, exit 2 (cliargs.ArgumentParser)
    return cli(lambda: _run(args, argv))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.list_presets:
        print(list_presets())
        return 0
    protocol_given = any(k in config_mod.FIELD_NAMES and k != "preset" for k in vars(args)) or args.config or args.preset
    if args.demo or not protocol_given:
        from .demo import run_demo

        out = check_output_dir(args.out or "runs/demo", "--out")
        run_demo(out=out, progress=not args.no_progress)
        return 0
    cfg = config_from_args(args)
    paths = [p for p in (cfg.distilled or "").split(",") if p] or [None]
    names = _set_names(paths, args.name)
    stamp = f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if len(paths) == 1:
        outs = {names[0]: Path(args.out or f"runs/{names[0]}-{stamp}")}
    else:  # one folder per set under --out
        root = Path(args.out or f"runs/{len(paths)}sets-{stamp}")
        outs = {n: root / n for n in names}
    for out in outs.values():  # before the data is even read: results are written only after training
        check_output_dir(out, "--out")
    with StopRequest() as stop:  # SIGINT/SIGTERM/SIGUSR1: checkpoint, one line, exit 128 + signal
        records = evaluate_sets(cfg, dict(zip(names, paths)), outs, progress=not args.no_progress,
                                restart=args.restart, checkpoint_every=args.checkpoint_every, stop=stop)
    rows = [table_row(r) for r in records if r["summary"] is not None]
    if rows:
        print()
        print(format_table(rows))
    for name, out in outs.items():
        print(f"results: {out / 'results.json'}  curves: {out / 'curves.png'}")
    failed = failed_runs(records)
    for line in failed:  # not a result: said on stderr, recorded in results.json, and a non-zero exit
        print_error(line)
    return EXIT_FAILED_RUN if failed else 0


def _set_names(paths: list[str | None], given: str) -> list[str]:
    """Table names: --name (one per set, comma-separated) or the folder names, made unique. A name is also a
    folder under --out (and part of the default --out), so it must be a plain folder name."""
    if given:
        names = [n for n in given.split(",") if n]
        for n in names:
            check_folder_name(n, "--name")
    else:  # abspath: `.` and `a/..` name the folder they mean, not "" or ".."
        names = [(Path(os.path.abspath(p)).name or "set") if p else "set" for p in paths]
    if len(names) != len(paths):
        raise RD3Error(f"--name: {len(names)} name(s) for {len(paths)} distilled set(s); give one per set, "
                       "comma-separated")
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return unique


if __name__ == "__main__":
    sys.exit(main())
