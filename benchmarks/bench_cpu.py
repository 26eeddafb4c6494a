"""CPU end to end (issue 9): ``python -m rd3fast.run`` against the plain RDED-style loop, whole processes.

Each workload is one distilled set, one teacher and one student, run through both programs as
subprocesses with the same environment, ``--repeats`` times, alternating (plain, rd3fast, plain, ...):

    fashion-mnist  a random real IPC 50 set (500 images, ``python -m rd3fast.distill --method random``),
                   ConvNet-D3-w32 teacher (``python -m rd3fast.pretrain``, a few epochs: its quality does
                   not matter for speed) and student, ``--preset rded-small --batch-size 100``, 40 epochs,
                   evaluated once at the end on the 10k test images; ImageNet mean/std (the preset's)
    digits         the embedded demo's: ConvNet-D3-w32 teacher pre-trained 20 epochs (batch 64) on
                   scikit-learn digits, a random real IPC 10 set, ConvNet-D3-w16 student, rded-small
                   with the demo's 200 epochs and digits mean/std, evaluated as the preset says (every 10
                   epochs once 80 % is done)

The variants: ``rd3fast`` is the CLI (``--seeds 0 --device cpu``, results.json read back); ``plain`` is
``benchmarks/plain_loop.py`` (PIL images in RAM, torchvision transforms in 2 DataLoader workers, CutMix,
teacher, the extra no-grad student forward, KL at T=20, AdamW with get_parameters; no rd3fast import).
Per run: wall time around the subprocess, its user and system CPU (``RUSAGE_CHILDREN`` deltas, workers
included), the seconds from process start to the first training step, the step rate (images per epoch /
median epoch time, the first epoch left out), and the last top-1. Reported: medians per variant and

    step        rd3fast img/s / plain img/s          target >= 1.0 (goal 1.3)
    startup     rd3fast first step - plain's (s)     target <= +1 s
    whole run   plain wall / rd3fast wall            target >= 1.0

The teacher and the set are prepared once under ``--work`` with the CLIs and reused (the file names say
the teacher's epochs). ``--quick`` is the CI smoke run: digits only, a 1-epoch teacher, 2 student epochs,
1 repeat (its ratios mean nothing).

    python benchmarks/bench_cpu.py                              # both workloads, 3 repeats each
    python benchmarks/bench_cpu.py --workloads fashion-mnist --repeats 1
    python benchmarks/bench_cpu.py --quick --work /tmp/w --out /tmp/bench_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: machine header, tables, JSON)

ROOT = Path(__file__).resolve().parents[1]
PLAIN = Path(__file__).resolve().parent / "plain_loop.py"
VARIANTS = ("plain", "rd3fast")
TARGETS = {  # name: (threshold, goal, higher is better)
    "step img/s, rd3fast / plain": (1.0, 1.3, True),
    "startup to first step, rd3fast - plain (s)": (1.0, None, False),
    "whole run, plain wall / rd3fast wall": (1.0, None, True),
}


@dataclass(frozen=True)
class Workload:
    name: str
    dataset: str
    teacher: str
    teacher_epochs: int
    teacher_batch: int  # 0: the pretrain preset's
    student: str
    ipc: int
    batch_size: int
    epochs: int
    eval_every: int
    eval_after: float  # rded-small's 0.8; passed to the plain loop (the CLI has it from the preset)
    mean: str = ""  # "": the preset's (ImageNet) in both
    std: str = ""


WORKLOADS = {
    "fashion-mnist": Workload("fashion-mnist", "fashion-mnist", "convnet-d3-w32", 2, 0, "convnet-d3-w32", 50, 100,
                              40, 40, 0.8),
    "digits": Workload("digits", "digits", "convnet-d3-w32", 20, 64, "convnet-d3-w16", 10, 100, 200, 10, 0.8,
                       mean="0.3056", std="0.3188"),  # rd3fast/demo.py: digits mean/std, 200 epochs
}
QUICK = dict(teacher_epochs=1, epochs=2)


# ---------------------------------------------------------------------------------------------------
# Subprocesses
# ---------------------------------------------------------------------------------------------------
def run_timed(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` in the repository root, output to ``log``; wall, user and system CPU seconds (children
    of the child, e.g. DataLoader workers, included once they are reaped)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime}


def prepare(workloads: list[Workload], work: Path, env: dict[str, str]) -> dict[str, tuple[Path, Path]]:
    """Each workload's teacher weights and random real set, made with the CLIs unless already there; the
    missing ones are made concurrently (preparation is not measured)."""
    work.mkdir(parents=True, exist_ok=True)
    py, jobs, done, out = sys.executable, [], [], {}
    for w in workloads:
        teacher = work / f"{w.dataset}_{w.teacher}_e{w.teacher_epochs}.pt"
        distilled = work / f"{w.dataset}_random_ipc{w.ipc}"
        out[w.name] = (teacher, distilled)
        if not teacher.is_file() and all(teacher != j[2] for j in jobs):
            cmd = [py, "-m", "rd3fast.pretrain", "--dataset", w.dataset, "--arch", w.teacher, "--epochs",
                   str(w.teacher_epochs), "--device", "cpu", "--out", str(teacher), "--no-progress"]
            if w.teacher_batch:
                cmd += ["--batch-size", str(w.teacher_batch)]
            jobs.append((cmd, work / f"{teacher.name}.log", teacher, None))
        if not (distilled.is_dir() and any(distilled.iterdir())) and all(distilled != j[2] for j in jobs):
            tmp = work / f"{distilled.name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [py, "-m", "rd3fast.distill", "--method", "random", "--dataset", w.dataset, "--ipc", str(w.ipc),
                   "--out", str(tmp), "--no-progress"]
            jobs.append((cmd, work / f"{distilled.name}.log", distilled, tmp))
    t0 = time.perf_counter()
    for cmd, log, _, _ in jobs:
        print(f"preparing: {' '.join(cmd[1:])}", flush=True)
        with open(log, "w") as f:
            done.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
    for proc, (cmd, log, target, tmp) in zip(done, jobs):
        if proc.wait() != 0:
            raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n--- {log} (tail) ---\n"
                             + log.read_text()[-4000:])
        if tmp is not None:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)  # whole or absent: an interrupted write is redone next time
    if jobs:
        print(f"  prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def commands(w: Workload, teacher: Path, distilled: Path, out: Path, workers: int) -> dict[str, list[str]]:
    py = sys.executable
    shared = ["--dataset", w.dataset, "--distilled", str(distilled), "--teacher", w.teacher, "--teacher-weights",
              str(teacher), "--student", w.student, "--batch-size", str(w.batch_size), "--epochs", str(w.epochs),
              "--eval-every", str(w.eval_every), "--device", "cpu"]
    norm = (["--mean", w.mean] if w.mean else []) + (["--std", w.std] if w.std else [])
    rd3 = [py, "-m", "rd3fast.run", "--preset", "rded-small", *shared, *norm, "--seeds", "0", "--out", str(out),
           "--no-progress"]
    plain = [py, str(PLAIN), *shared, *norm, "--eval-after", str(w.eval_after), "--seed", "0",
             "--workers", str(workers), "--factor", "1", "--zeta", "2", "--temperature", "20", "--lr", "0.001",
             "--weight-decay", "0.01"]
    return {"plain": plain, "rd3fast": rd3}


def steady_rate(images: float, epoch_times: list[float]) -> float:
    """Images per second of the median epoch, the first (start-up) epoch left out when there are more."""
    steady = epoch_times[1:] if len(epoch_times) > 1 else epoch_times
    m = common.median(steady)
    return images / m if m and m > 0 else math.nan


def read_plain(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"{log}: the plain loop printed no RESULT line")
    r = json.loads(lines[-1][len("RESULT "):])
    return {"first_step_s": r["first_step_s"], "epoch_times_s": r["epoch_times_s"],
            "images_per_epoch": r["images_per_epoch"], "top1": r["top1"]}


def read_rd3fast(out: Path) -> dict[str, Any]:
    d = json.loads((out / "results.json").read_text())
    run = d["runs"][0]
    return {"first_step_s": run.get("first_step_s"), "epoch_times_s": [e["time_s"] for e in run["epochs"]],
            "images_per_epoch": d["train_images"], "top1": run["last_top1"], "notes": run.get("notes", [])}


def measure(w: Workload, teacher: Path, distilled: Path, repeats: int, workers: int, env: dict[str, str],
            logs: Path) -> list[dict[str, Any]]:
    runs = []
    for rep in range(repeats):
        for variant in VARIANTS:  # alternating: plain, rd3fast, plain, rd3fast, ...
            with tempfile.TemporaryDirectory(prefix="rd3_bench_cpu_") as tmp:
                out = Path(tmp) / "run"
                cmd = commands(w, teacher, distilled, out, workers)[variant]
                log = logs / f"{w.name}-{variant}-{rep}.log"
                t = run_timed(cmd, log, env)
                r = read_plain(log) if variant == "plain" else read_rd3fast(out)
            r.update(t, workload=w.name, variant=variant, repeat=rep,
                     img_per_s=steady_rate(r["images_per_epoch"], r["epoch_times_s"]))
            runs.append(r)
            print(f"  {w.name:<13} {variant:<7} #{rep}: wall {t['wall_s']:6.1f} s  cpu {t['user_s']:6.1f}+"
                  f"{t['sys_s']:.1f} s  first step {_num(r['first_step_s'])} s  {_num(r['img_per_s'])} img/s  "
                  f"top-1 {_num(r['top1'])}", flush=True)
    return runs


def _num(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------
def summarize(w: Workload, runs: list[dict[str, Any]], size: int | None) -> list[dict[str, Any]]:
    rows = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        med = {k: common.median(r[k] for r in mine if r[k] is not None)
               for k in ("wall_s", "user_s", "sys_s", "first_step_s", "img_per_s", "top1")}
        steady = [t for r in mine for t in (r["epoch_times_s"][1:] or r["epoch_times_s"])]
        note = ("rd3fast.run --preset rded-small" if variant == "rd3fast" else
                "plain_loop.py: PIL in RAM, torchvision in DataLoader workers")
        row = common.result_row(variant, size or 0, w.batch_size, w.student, windows_s=steady,
                                images_per_window=mine[0]["images_per_epoch"], note=note, workload=w.name,
                                repeats=len(mine), epochs=w.epochs, **med, cpu_s=med["user_s"] + med["sys_s"])
        row["img_per_s"] = med["img_per_s"]  # median over runs of each run's median steady epoch
        rows.append(row)
    return rows


def targets(workload: str, rows: list[dict[str, Any]], meaningful: bool) -> list[dict[str, Any]]:
    by = {r["variant"]: r for r in rows if r["workload"] == workload}
    p, f = by["plain"], by["rd3fast"]
    values = {
        "step img/s, rd3fast / plain": _ratio(f["img_per_s"], p["img_per_s"]),
        "startup to first step, rd3fast - plain (s)": f["first_step_s"] - p["first_step_s"],
        "whole run, plain wall / rd3fast wall": _ratio(p["wall_s"], f["wall_s"]),
    }
    out = []
    for name, (threshold, goal, higher) in TARGETS.items():
        v = values[name]
        ok = not math.isnan(v) and (v >= threshold if higher else v <= threshold)
        want = (">= " if higher else "<= +") + f"{threshold:g}" + (f" (goal {goal:g})" if goal else "")
        out.append({"workload": workload, "target": name, "value": v, "wanted": want, "threshold": threshold,
                    "goal": goal, "status": "PASS" if ok else "FAIL",
                    "goal_met": (not math.isnan(v) and v >= goal) if goal else None, "meaningful": meaningful})
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if a and b and not (math.isnan(a) or math.isnan(b)) else math.nan


def markdown(rows: list[dict[str, Any]], tgts: list[dict[str, Any]], machine: dict[str, Any], cmd: str) -> str:
    lines = [f"`{cmd}`", "", common.header(machine), "",
             "| workload | variant | runs | wall s | CPU user+sys s | first step s | step img/s | top-1 % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['variant']} | {r['repeats']} | {_num(r['wall_s'])} | "
                     f"{_num(r['user_s'])}+{_num(r['sys_s'])} | {_num(r['first_step_s'])} | "
                     f"{_num(r['img_per_s'])} | {_num(r['top1'])} |")
    lines += ["", "| workload | target | value | wanted | |", "|---|---|---|---|---|"]
    for t in tgts:
        lines.append(f"| {t['workload']} | {t['target']} | {t['value']:+.2f} | {t['wanted']} | {t['status']} |"
                     if "(s)" in t["target"] else
                     f"| {t['workload']} | {t['target']} | {_num(t['value'])}x | {t['wanted']} | {t['status']} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="fashion-mnist,digits", help="comma-separated: fashion-mnist, digits")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating")
    p.add_argument("--workers", type=int, default=2, help="the plain loop's DataLoader workers")
    p.add_argument("--work", default="runs/bench_cpu/work", help="prepared teachers and sets (reused)")
    p.add_argument("--out", default="runs/bench_cpu/bench_cpu.json", help="JSON file to write (and .md beside it)")
    p.add_argument("--epochs", type=int, default=0, help="student epochs (0: each workload's)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: digits, 1-epoch teacher, 2 epochs, 1 repeat")
    a = p.parse_args(argv)
    if a.quick:
        if a.workloads == p.get_default("workloads"):
            a.workloads = "digits"
        if a.repeats == p.get_default("repeats"):
            a.repeats = 1
    names = [n for n in a.workloads.split(",") if n]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        p.error(f"--workloads: unknown {unknown}; expected some of {', '.join(WORKLOADS)}")
    if a.repeats < 1:
        p.error("--repeats: expected >= 1")
    a.workload_list = names
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    machine = common.machine_info("cpu")
    env = dict(os.environ)  # the same environment for every run of both variants
    work = Path(args.work).resolve()  # the CLIs run in the repository root
    out_json = Path(args.out)
    logs = out_json.parent / (out_json.stem + "_logs")
    logs.mkdir(parents=True, exist_ok=True)
    workloads = []
    for name in args.workload_list:
        w = WORKLOADS[name]
        if args.quick:
            w = replace(w, **QUICK)
        if args.epochs:
            w = replace(w, epochs=args.epochs)
        workloads.append(w)
    print(common.header(machine), flush=True)
    prepared = prepare(workloads, work, env)
    t0 = time.perf_counter()
    all_runs, rows, tgts = [], [], []
    for w in workloads:
        teacher, distilled = prepared[w.name]
        print(f"{w.name}: {args.repeats} x (plain, rd3fast), {w.epochs} epochs, batch {w.batch_size}, "
              f"student {w.student}, teacher {w.teacher} ({w.teacher_epochs} epochs)", flush=True)
        runs = measure(w, teacher, distilled, args.repeats, args.workers, env, logs)
        all_runs += runs
        size = _image_size(distilled)
        rows += summarize(w, runs, size)
        tgts += targets(w.name, rows, meaningful=not args.quick)
    cmd = "python benchmarks/bench_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(common.header(machine))
    print(common.format_table(rows, ["workload", "variant", "repeats", ("wall_s", "wall s"), ("user_s", "user s"),
                                     ("sys_s", "sys s"), ("first_step_s", "first step s"),
                                     ("img_per_s", "step img/s"), ("top1", "top-1")]))
    print()
    print(common.format_table(tgts, ["workload", "target", "value", "wanted", "status"]))
    if args.quick:
        print("(--quick: a smoke run; these ratios mean nothing)")
    settings = {"workloads": [asdict(w) for w in workloads], "repeats": args.repeats, "workers": args.workers,
                "work": str(work), "python": sys.executable, "order": "alternating " + ", ".join(VARIANTS),
                "commands": {w.name: commands(w, *prepared[w.name], Path("OUT"), args.workers) for w in workloads}}
    report = common.report("bench_cpu", machine, settings, rows, quick=args.quick, targets=tgts, runs=all_runs,
                           bench_wall_s=time.perf_counter() - t0)
    path = common.write_json(out_json, report)
    md = path.with_suffix(".md")
    md.write_text(markdown(rows, tgts, machine, cmd.strip()) + "\n")
    print(f"wrote {path} and {md}")
    return 0


def _image_size(folder: Path) -> int | None:
    from PIL import Image

    for cls in sorted(folder.iterdir()):
        for f in sorted(cls.iterdir()):
            with Image.open(f) as im:
                return im.size[0]
    return None


if __name__ == "__main__":
    sys.exit(main())
