"""What a run leaves behind: one results JSON, a printed table, and a PNG of the curves.

The JSON holds the resolved config, every evaluation of every seed, per-epoch loss and wall time,
mean +- std over seeds, library versions, the device and the git sha, written atomically.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

from .atomic import atomic_write
from .version import __version__

SCHEMA_VERSION = 1


def environment(device: torch.device | None = None) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": _version("torchvision"), "rd3fast": __version__,
           "platform": platform.platform(), "git_sha": git_sha(), "timm": _version("timm")}
    if device is not None and device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
    else:
        env["device"] = f"cpu ({os.cpu_count()} cores)"
    return env


def _version(package: str) -> str | None:
    """An installed package's version from its metadata: importing torchvision or timm to ask would cost
    seconds of start-up."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = list(values)
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("last_top1", "best_top1", "last_top5", "best_top5", "images_per_s"):
        m, s = mean_std([r[key] for r in runs])
        out[key] = {"mean": m, "std": s}
    return out


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic: a reader never sees half a file, an interrupted run leaves the previous one intact.

    Strict JSON: ``NaN``/``Infinity`` are not JSON, and other readers (jq, JavaScript, Go) reject the file.
    A run whose loss diverged is recorded by its caller as failed, so a non-finite number reaching here is a
    bug upstream: ValueError naming where it is, nothing written."""
    try:
        text = json.dumps(obj, indent=1, default=str, allow_nan=False)
    except ValueError:
        where = first_non_finite(obj)
        if where is None:
            raise
        raise ValueError(f"{path}: {where} is not a finite number; results are strict JSON, nothing "
                         "written (a failed run must be recorded as failed)") from None
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def first_non_finite(obj: Any, where: str = "") -> str | None:
    """The path (``runs[0].epochs[3].loss = nan``) of the first NaN/inf float in a JSON-like object."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where or 'the value'} = {obj}"
    if isinstance(obj, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return None
    return next((found for w, v in items if (found := first_non_finite(v, w)) is not None), None)


def format_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """rows: {'name', 'preset', 'student', 'seeds', 'summary' (from aggregate)} -> a Markdown table."""
    head = "| set | protocol | student | seeds | top-1 last | top-1 best | top-5 last | img/s |"
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * 8]
    for r in rows:
        s = r["summary"]
        fmt = lambda k: f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['preset']} | {r['student']} | {r['seeds']} | {fmt('last_top1')} | "
                     f"{fmt('best_top1')} | {fmt('last_top5')} | {s['images_per_s']['mean']:.0f} |")
    return "\n".join(lines)


def plot_curves(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Top-1 and training loss vs epoch: one colour per (set, protocol), seeds faint, their mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for i, res in enumerate(results):
        colour, label = f"C{i % 10}", f"{res['name']} / {res['config']['preset']}"
        runs = res["runs"]
        for run in runs:
            ax_acc.plot([e["epoch"] for e in run["evals"]], [e["top1"] for e in run["evals"]], color=colour,
                        alpha=0.3, lw=0.8)
            ax_loss.plot([e["epoch"] for e in run["epochs"]], [e["loss"] for e in run["epochs"]], color=colour,
                         alpha=0.15, lw=0.6)
        epochs = [e["epoch"] for e in runs[0]["evals"]]
        mean = np.mean([[e["top1"] for e in r["evals"]] for r in runs], axis=0)
        ax_acc.plot(epochs, mean, color=colour, marker="o", ms=3, lw=1.8, label=f"{label} (n={len(runs)})")
        loss = np.mean([[e["loss"] for e in r["epochs"]] for r in runs], axis=0)
        window = max(1, len(loss) // 25)  # moving average: per-epoch losses of small sets are noisy
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(np.arange(len(smooth)) + (window + 1) / 2, smooth, color=colour, lw=1.8, label=label)
    ax_acc.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation accuracy (mean of seeds bold)")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss (smoothed mean)", yscale="log")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def save_figure(fig: Any, path: str | Path, dpi: int) -> None:
    """Write a matplotlib figure as PNG through the atomic writer (a failed save, e.g. a full disk, leaves no
    truncated file), and close it either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)  # format: the temporary name does not end in .png
    finally:
        plt.close(fig)
