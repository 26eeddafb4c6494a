"""``python -m rd3fast.run``: evaluate a distilled set under a protocol; with no arguments, the demo.

    python -m rd3fast.run --preset rd3 --distilled syn/ --val imagenet/val \\
        --teacher resnet18 --teacher-weights r18.pt --seeds 0,1,2 --out runs/mine

Per run it prints the resolved config, shows progress, and writes <out>/results.json (config, metrics at
every evaluation, per-epoch loss and time, mean +- std over seeds, versions, device, git sha) and
<out>/curves.png, then prints a table. Bad input exits with status 2 and one message, writing nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import config as config_mod
from .config import PRESETS, Config, add_config_flags, config_from_args, describe
from .errors import cli
from .results import aggregate, environment, format_table, plot_curves, write_json


def evaluate_distilled(cfg: Config, out: str | Path | None, name: str = "", progress: bool = True,
                       verbose: bool = True) -> dict[str, Any]:
    """Train cfg.seeds students on cfg.distilled, write <out>/results.json + curves.png, return the record."""
    from .experiment import prepare
    from .train import train_seeds

    exp = prepare(cfg)  # every bad input is reported here, before anything is written
    cfg = exp.cfg
    name = name or Path(cfg.distilled or "set").name
    if verbose:
        print(f"\n== {name} under '{cfg.preset}' on {exp.device} ==\n{describe(cfg)}", flush=True)
    record: dict[str, Any] = {"schema": 1, "name": name, "config": cfg.to_dict(),
                              "environment": environment(exp.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "train_images": len(exp.train.images), "val_images": len(exp.val.images),
                              "runs": []}
    seeds = list(cfg.seeds)
    for at in range(0, len(seeds), cfg.parallel_seeds):  # parallel_seeds students trained at once
        group = seeds[at:at + cfg.parallel_seeds]
        for result, _ in train_seeds(exp, group, progress=progress,
                                     desc=f"{name} {cfg.preset} seed {','.join(map(str, group))}"):
            record["runs"].append(result.summary())
        record["summary"] = aggregate(record["runs"])
        if out is not None:  # after every group: an interrupted run keeps the finished seeds
            write_json(Path(out) / "results.json", record)
    if out is not None:
        plot_curves([record], Path(out) / "curves.png")
    return record


def table_row(record: dict[str, Any]) -> dict[str, Any]:
    cfg = record["config"]
    return {"name": record["name"], "preset": cfg["preset"], "student": cfg["student"],
            "seeds": len(record["runs"]), "summary": record["summary"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rd3fast.run",
        description="Post-evaluate a distilled dataset under the RD3 protocol or a published recipe. "
                    "With no arguments: the embedded demo on scikit-learn's digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="protocol to start from [rd3]")
    p.add_argument("--config", default=None, help="JSON file of config keys (or a results.json to rerun)")
    p.add_argument("--out", default=None, help="output folder [runs/<set>-<preset>-<time>]")
    p.add_argument("--name", default="", help="name of the set in tables [folder name]")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    args = parser.parse_args(argv)  # unknown flags: argparse prints the flag and exits 2
    return cli(lambda: _run(args, argv))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.list_presets:
        print(list_presets())
        return 0
    protocol_given = any(k in config_mod.FIELD_NAMES and k != "preset" for k in vars(args)) or args.config or args.preset
    if args.demo or not protocol_given:
        from .demo import run_demo

        run_demo(out=Path(args.out or "runs/demo"), progress=not args.no_progress)
        return 0
    cfg = config_from_args(args)
    name = args.name or Path(cfg.distilled or "set").name
    out = Path(args.out or f"runs/{name}-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    record = evaluate_distilled(cfg, out, name=name, progress=not args.no_progress)
    print()
    print(format_table([table_row(record)]))
    print(f"\nresults: {out / 'results.json'}  curves: {out / 'curves.png'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
