"""``python -m rd3fast.run``: evaluate a distilled set under a protocol; with no arguments, the demo.

    python -m rd3fast.run --preset rd3 --distilled syn/ --val imagenet/val \\
        --teacher resnet18 --teacher-weights r18.pt --seeds 0,1,2 --out runs/mine

Per run it prints the resolved config, shows progress, and writes <out>/results.json (config, metrics at
every evaluation, per-epoch loss and time, mean +- std over seeds, versions, device, git sha) and
<out>/curves.png, then prints a table. Bad input exits with status 2 and one message, writing nothing.

Several distilled sets of one size (methods at one IPC) go in one call, ``--distilled a/,b/``: each gets
<out>/<name>/, and with ``--parallel-seeds`` their runs train side by side, sharing each teacher pass.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import config as config_mod
from .config import PRESETS, Config, add_config_flags, config_from_args, describe
from .errors import RD3Error, cli
from .results import aggregate, environment, format_table, plot_curves, write_json


def evaluate_distilled(cfg: Config, out: str | Path | None, name: str = "", progress: bool = True,
                       verbose: bool = True) -> dict[str, Any]:
    """Train cfg.seeds students on cfg.distilled, write <out>/results.json + curves.png, return the record."""
    name = name or Path(cfg.distilled or "set").name
    [record] = evaluate_sets(cfg, {name: cfg.distilled}, None if out is None else {name: Path(out)},
                             progress=progress, verbose=verbose)
    return record


def evaluate_sets(cfg: Config, sets: dict[str, str | None], outs: dict[str, Path] | None = None,
                  progress: bool = True, verbose: bool = True) -> list[dict[str, Any]]:
    """Evaluate several distilled sets of one size under one protocol (cfg.distilled is ignored): every
    (set, seed) run, cfg.parallel_seeds of them at a time side by side, sharing the teacher pass. Writes
    outs[name]/results.json (after every group of runs) and curves.png; returns one record per set."""
    from .experiment import load_more_sets, prepare
    from .train import check_side_by_side, train_seeds

    names, paths = list(sets), list(sets.values())
    # Every bad input (any of the sets included) is reported here, before anything is written.
    exp = prepare(cfg.replace(distilled=paths[0]))
    data = dict(zip(names, [exp.train, *load_more_sets(exp, paths[1:])]))
    runs = [(name, seed) for name in names for seed in exp.cfg.seeds]
    step = exp.cfg.parallel_seeds  # runs trained at once
    groups = [runs[at:at + step] for at in range(0, len(runs), step)]
    for group in groups:
        check_side_by_side([data[n] for n, _ in group])
    records = {}
    for name, path in zip(names, paths):
        set_cfg = exp.cfg.replace(distilled=path)
        if verbose:
            print(f"\n== {name} under '{set_cfg.preset}' on {exp.device} ==\n{describe(set_cfg)}", flush=True)
        records[name] = {"schema": 1, "name": name, "config": set_cfg.to_dict(),
                         "environment": environment(exp.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "train_images": len(data[name].images), "val_images": len(exp.val.images), "runs": []}
    for group in groups:
        label = ", ".join(f"{n} seed {s}" for n, s in group) if len(names) > 1 else \
            f"{names[0]} seed {','.join(str(s) for _, s in group)}"
        results = train_seeds(exp, [s for _, s in group], progress=progress, desc=f"{exp.cfg.preset}: {label}",
                              sets=[data[n] for n, _ in group])
        for (name, _), (result, _) in zip(group, results):
            records[name]["runs"].append(result.summary())
        for name in dict.fromkeys(n for n, _ in group):
            records[name]["summary"] = aggregate(records[name]["runs"])
            if outs is not None:  # after every group: an interrupted run keeps the finished seeds
                write_json(outs[name] / "results.json", records[name])
    if outs is not None:
        for name, record in records.items():
            plot_curves([record], outs[name] / "curves.png")
    return list(records.values())


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
    p.add_argument("--name", default="", help="name of the set in tables, one per set when --distilled lists "
                                              "several (comma-separated) [folder name]")
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
    paths = [p for p in (cfg.distilled or "").split(",") if p] or [None]
    names = _set_names(paths, args.name)
    stamp = f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if len(paths) == 1:
        outs = {names[0]: Path(args.out or f"runs/{names[0]}-{stamp}")}
    else:  # one folder per set under --out
        root = Path(args.out or f"runs/{len(paths)}sets-{stamp}")
        outs = {n: root / n for n in names}
    records = evaluate_sets(cfg, dict(zip(names, paths)), outs, progress=not args.no_progress)
    print()
    print(format_table([table_row(r) for r in records]))
    for name, out in outs.items():
        print(f"results: {out / 'results.json'}  curves: {out / 'curves.png'}")
    return 0


def _set_names(paths: list[str | None], given: str) -> list[str]:
    """Table names: --name (one per set, comma-separated) or the folder names, made unique."""
    names = [n for n in given.split(",") if n] if given else [Path(p or "set").name for p in paths]
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
