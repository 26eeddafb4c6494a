"""Helpers shared by the benchmark scripts: machine header, timing, tables, JSON, bar charts.

Timing rules (DESIGN.md): warm up first, then several measured windows; report the median window.
On CUDA a window is bracketed by CUDA events after a ``torch.cuda.synchronize()``, so it measures the
GPU work the window queued, not only how fast Python queued it. On CPU it is ``time.perf_counter``.
Compare ratios measured in one run on one card, never absolute numbers across machines.

Every benchmark JSON has the same top level::

    {"schema": 1, "benchmark": NAME, "quick": bool, "machine": machine_info(), "settings": {...},
     "results": [row, ...], ...}

and each row is ``result_row(...)``: variant, size, batch, arch, img_per_s (median window), windows_s,
images_per_window, status ("ok" | "skipped" | "error" | "api-missing"), note, and any extra keys.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

SCHEMA = 1
ROW_KEYS = ("variant", "size", "batch", "arch", "img_per_s", "windows_s", "images_per_window", "status", "note")


# ---------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def git_sha(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where the numbers came from: device, CPU, cores, library versions."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info: dict[str, Any] = {
        "device": device.type,
        "gpu": None,
        "gpu_memory_gib": None,
        "cpu": cpu_model(),
        "cpu_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_sha": git_sha(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def header(info: dict[str, Any]) -> str:
    """One line naming the machine, printed above every table."""
    where = f"GPU {info['gpu']} ({info['gpu_memory_gib']} GiB)" if info.get("gpu") else "CPU only"
    return (f"{where} | CPU {info['cpu']} x {info['cpu_cores']} cores | torch {info['torch']} "
            f"(CUDA {info['cuda']}) | torchvision {info.get('torchvision')} | python {info['python']} "
            f"| torch threads {info.get('torch_threads')} | git {info.get('git_sha')}")


def quick_threads() -> None:
    """--quick runs on small shared CPUs: one intra-op thread (two OpenMP threads on two busy cores spin and
    run tiny convolutions ~30x slower than one)."""
    torch.set_num_threads(1)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return torch.device(requested)


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Window:
    """``with Window(device) as w: ...`` then ``w.seconds``: CUDA events on GPU (after a sync), else wall time."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds = math.nan

    def __enter__(self) -> "Window":
        sync(self.device)
        if self.device.type == "cuda":
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def time_windows(step: Callable[[], Any], device: torch.device | str, *, warmup_steps: int, steps_per_window: int,
                 windows: int) -> list[float]:
    """Run ``step`` warmup_steps times, then ``windows`` timed windows of ``steps_per_window`` steps each."""
    for _ in range(warmup_steps):
        step()
    out = []
    for _ in range(windows):
        with Window(device) as w:
            for _ in range(steps_per_window):
                step()
        out.append(w.seconds)
    return out


def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def img_per_s(images_per_window: float, windows_s: Sequence[float]) -> float:
    """Throughput of the median window."""
    m = median(windows_s)
    return images_per_window / m if m and m > 0 else math.nan


# ---------------------------------------------------------------------------------------------------
# Rows, tables, JSON, charts
# ---------------------------------------------------------------------------------------------------
def result_row(variant: str, size: int, batch: int, arch: str, *, windows_s: Sequence[float] = (),
               images_per_window: float = 0, status: str = "ok", note: str = "", **extra: Any) -> dict[str, Any]:
    windows = [float(w) for w in windows_s]
    rate = img_per_s(images_per_window, windows) if status == "ok" and windows else None
    row = {"variant": variant, "size": size, "batch": batch, "arch": arch,
           "img_per_s": None if rate is None or math.isnan(rate) else rate, "windows_s": windows,
           "images_per_window": images_per_window, "status": status, "note": note}
    row.update(extra)
    return row


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str | tuple[str, str]]) -> str:
    """Markdown table; a column is a key or (key, title)."""
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    cells = [[_cell(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max([len(t)] + [len(c[i]) for c in cells]) for i, (_, t) in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line([t for _, t in cols]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (torch.device, Path)):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: dict[str, Any]) -> Path:
    """Atomic write (tmp + rename); NaN becomes null so the file is strict JSON."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, p)
    return p


def report(benchmark: str, machine: dict[str, Any], settings: dict[str, Any], results: list[dict[str, Any]],
           quick: bool, **extra: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "benchmark": benchmark, "quick": quick, "machine": machine, "settings": settings,
            "results": results, **extra}


def bar_chart(rows: Sequence[dict[str, Any]], path: str | Path, title: str, group_keys: Sequence[str] = ("size",),
              x_key: str = "batch", label_key: str = "variant", ratio_key: str | None = "x_ceiling") -> Path | None:
    """One panel per value of group_keys, bars of img/s per x_key, one colour per variant, ``ratio_key``
    written above each bar; None without matplotlib or without any measured row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import textwrap

    ok = [r for r in rows if r.get("img_per_s")]
    if not ok:
        return None
    groups = sorted({tuple(r[k] for k in group_keys) for r in ok}, reverse=True)
    labels = list(dict.fromkeys(r[label_key] for r in ok))
    colours = {lab: plt.get_cmap("tab20")(j % 20) for j, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, len(groups), figsize=(max(10.0, 6.5 * len(groups)), 5.8), squeeze=False)
    for ax, g in zip(axes[0], groups):
        sub = [r for r in ok if tuple(r[k] for k in group_keys) == g]
        xs = sorted({r[x_key] for r in sub})
        width = 0.85 / len(labels)
        for j, lab in enumerate(labels):
            for i, x in enumerate(xs):
                hit = [r for r in sub if r[label_key] == lab and r[x_key] == x]
                if not hit:
                    continue
                rate = hit[0]["img_per_s"]
                ax.bar(i + j * width, rate, width, color=colours[lab])
                ratio = hit[0].get(ratio_key) if ratio_key else None
                if ratio:
                    ax.text(i + j * width, rate, f"{ratio:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks([i + 0.425 - width / 2 for i in range(len(xs))], [f"{x_key} {x}" for x in xs])
        ax.set_ylabel("images / s")
        ax.set_title(", ".join(f"{k} {v}" for k, v in zip(group_keys, g))
                     + (f" (numbers: {ratio_key})" if ratio_key else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[lab]) for lab in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(labels) / 4), 1, 1))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


# ---------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------
def random_images(n: int, size: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, size, size) random images with some spatial structure (low-frequency noise upsampled,
    plus grain), so JPEG files of them are natural-image sized; labels cycle through the classes (IPC-style)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    low = max(2, size // 8)
    for i in range(0, n, 256):  # chunks keep the float intermediate small at 224 px
        k = min(256, n - i)
        base = torch.rand(k, 3, low, low, generator=g) * 255
        up = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
        up += torch.randn(k, 3, size, size, generator=g) * 12
        out[i:i + k] = up.round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.arange(n, dtype=torch.int64) % classes
    return out, labels
