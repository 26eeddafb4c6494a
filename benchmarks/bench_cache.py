"""Soft-label cache: size vs accuracy (issue 10). Each compression recorded once, replayed over several seeds.

The workload: Fashion-MNIST, a random real IPC 10 set (``python -m rd3fast.distill --method random``), a
ConvNet-D3-w32 teacher pre-trained for a few epochs (``python -m rd3fast.pretrain``), ConvNet-D3-w32
students under ``--preset rd3-small`` (KL at T=20, CutMix, AdamW, batch 50) with the dataset's mean/std,
300 epochs, one evaluation at the end (``--eval-every`` = epochs) on the 10k test images. Every run is a
``python -m rd3fast.run`` process; the teacher and the set are made once under ``--work`` and reused.

Variants:

    on-the-fly    no cache: the teacher relabels every batch (seeds 0, 1, 2)
    same-stream   on-the-fly too, but every seed trains on the recording seed's augmentation draws (its
                  own initialization): what replay seed s would be with the teacher's exact labels
    all-fp16      every logit, fp16: the default at <= 100 classes (--cache-topk -1 resolves to 0)
    top5-fp16     top 5 logits + the mean of the rest, fp16 (the default above 100 classes)
    top1-fp16     top 1 logit + the mean of the rest, fp16
    all-8bit      every logit as an 8-bit code between the image's fp16 min and max
    top5-8bit     top 5 + the mean of the rest, 8-bit codes

A cache variant records once (``--cache-mode record``, seed 0: the recording run trains exactly as the
on-the-fly seed 0 does, which the table checks) and replays the recorded stream for every seed
(``--cache-mode replay``, no teacher: the seeds differ only in the students' initialization). Reported per
variant: the cache's bytes per image per epoch on disk (cache folder / (images x epochs), npz headers
included) and of its arrays alone (what a large set pays per image), that size against FKD/SRe2L-style
storage (full fp16 logits + 4 crop coordinates + flip: ``SoftLabelCache.fkd_bytes``), last top-1 mean ±
std over the seeds, its difference to on-the-fly's mean, and the paired difference (replay seed s minus
same-stream seed s: the same batches and the same initialization, so only the stored labels differ;
mean ± std over the seeds). The replays of one cache share one stream of batches, so their mean carries
that stream's luck; the paired difference does not. Every replay's results must name the compression it
replayed (a row is an error otherwise), and whether each recording run has the top-1 of on-the-fly (and
same-stream) seed 0 is reported: on the CPU it does; GPU runs need not be bitwise deterministic.

    python benchmarks/bench_cache.py --threads 1             # the table in benchmarks/RESULTS.md (~10 min)
    python benchmarks/bench_cache.py --seeds 0,1,2,3,4 --epochs 100
    python benchmarks/bench_cache.py --quick --work /tmp/w --out /tmp/bench_cache.json   # CI smoke run

``--quick`` runs digits (scikit-learn's 8x8 digits at 16 px) with a 1-epoch teacher, ConvNet-D3-w16
students, 2 epochs, seeds 0 and 1, four variants, one thread per process; its numbers mean nothing.
Same-stream runs go through this script (``--stream-seed S -- <rd3fast.run flags>``: rd3fast.run with
every loader seeded S). ``--threads`` sets OMP_NUM_THREADS for every run: results differ in the last bits
between thread counts (and after 600 steps by a few hundredths of a point), so compare runs of one setting.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import bench_cpu  # noqa: E402  (prepare: teacher + set with the CLIs; run_timed: one subprocess)
import common  # noqa: E402  (machine header, tables, JSON)

from rd3fast.engine.soft_labels import SoftLabelCache, describe_compression

SAME_STREAM = "same-stream"  # on-the-fly on the recording seed's augmentation draws: replay's exact reference
VARIANTS: dict[str, tuple[int, int] | None] = {  # name: (--cache-topk, --cache-bits); None: no cache
    "on-the-fly": None,
    SAME_STREAM: None,
    "all-fp16": (-1, 16),
    "top5-fp16": (5, 16),
    "top1-fp16": (1, 16),
    "all-8bit": (-1, 8),
    "top5-8bit": (5, 8),
}


@dataclass(frozen=True)
class Setup:
    dataset: str = "fashion-mnist"
    teacher: str = "convnet-d3-w32"
    teacher_epochs: int = 5
    teacher_batch: int = 0  # 0: the pretrain preset's
    student: str = "convnet-d3-w32"
    ipc: int = 10
    preset: str = "rd3-small"
    epochs: int = 300
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = tuple(VARIANTS)


QUICK = dict(dataset="digits", teacher_epochs=1, teacher_batch=64, student="convnet-d3-w16", epochs=2, seeds=(0, 1),
             variants=("on-the-fly", SAME_STREAM, "all-fp16", "top5-8bit"))


def run_cli(s: Setup, teacher: Path, distilled: Path, out: Path, seeds: tuple[int, ...], parallel: int,
            device: str, log: Path, env: dict[str, str], cache: Path | None = None, mode: str = "",
            topk: int = -1, bits: int = 16, stream_seed: int | None = None) -> dict[str, Any]:
    """One ``python -m rd3fast.run`` process (with ``stream_seed``: every loader seeded so); its results.json
    and wall time."""
    run = (["-m", "rd3fast.run"] if stream_seed is None
           else [str(Path(__file__).resolve()), "--stream-seed", str(stream_seed), "--"])
    cmd = [sys.executable, *run, "--preset", s.preset, "--dataset", s.dataset, "--distilled",
           str(distilled), "--teacher", s.teacher, "--student", s.student, "--epochs", str(s.epochs),
           "--eval-every", str(s.epochs), "--device", device, "--seeds", ",".join(map(str, seeds)),
           "--out", str(out), "--no-progress"]
    if mode != "replay":  # a replay runs no teacher: it gets none
        cmd += ["--teacher-weights", str(teacher)]
    if parallel > 1:
        cmd += ["--parallel-seeds", str(min(parallel, len(seeds)))]
    if cache is not None:
        cmd += ["--cache", str(cache), "--cache-mode", mode]
        if mode == "record":
            cmd += ["--cache-topk", str(topk), "--cache-bits", str(bits)]
    t = bench_cpu.run_timed(cmd, log, env)
    res = json.loads((out / "results.json").read_text())
    group = min(parallel, len(seeds)) if parallel > 1 else 1  # runs trained at once share one time
    train_time = sum(r["train_time_s"] for r in res["runs"][::group])
    return {"cmd": cmd[1:], "wall_s": t["wall_s"], "train_time_s": train_time,
            "images": res["train_images"],
            "runs": [{"seed": r["seed"], "top1": r["last_top1"], "notes": r.get("notes", [])} for r in res["runs"]]}


def cache_sizes(folder: Path) -> dict[str, Any]:
    """The recorded cache: on-disk bytes (every file), array bytes, FKD-style bytes, per image per epoch."""
    c = SoftLabelCache(folder, "replay")
    epochs, images = len(c.meta["epochs"]), c.meta["num_images"]
    payload = 0
    for f in sorted(folder.glob("epoch_*.npz")):
        with np.load(f, allow_pickle=False) as z:
            payload += sum(z[k].nbytes for k in z.files)
    per = images * epochs
    disk = c.size_bytes()
    return {"topk": c.meta["topk"], "bits": c.meta.get("bits", 16),
            "compression": describe_compression(c.meta["topk"], c.meta.get("bits", 16)),
            "cache_bytes": disk, "payload_bytes": payload, "fkd_bytes": c.fkd_bytes(), "recorded_epochs": epochs,
            "bytes_per_img_epoch": disk / per, "payload_per_img_epoch": payload / per,
            "fkd_per_img_epoch": c.fkd_bytes() / per, "disk_vs_fkd": disk / c.fkd_bytes(),
            "payload_vs_fkd": payload / c.fkd_bytes()}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def measure(s: Setup, teacher: Path, distilled: Path, work_out: Path, parallel: int, device: str,
            env: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every variant's processes; returns (rows, raw process records)."""
    logs = work_out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows, procs = [], []
    ref: dict[str, dict[int, float]] = {}  # on-the-fly and same-stream top-1 per seed
    for name in s.variants:
        spec = VARIANTS[name]
        row: dict[str, Any] = {"variant": name}
        if spec is None:
            stream = s.seeds[0] if name == SAME_STREAM else None
            p = run_cli(s, teacher, distilled, work_out / name, s.seeds, parallel, device, logs / f"{name}.log", env,
                        stream_seed=stream)
            procs.append({"variant": name, "kind": name, **p})
            ref[name] = {r["seed"]: r["top1"] for r in p["runs"]}
            row.update(compression="none (teacher every step)" + (f", seed {stream}'s draws" if name == SAME_STREAM
                                                                 else ""), process=p)
            runs = p["runs"]
        else:
            topk, bits = spec
            folder = work_out / f"cache-{name}"
            rec = run_cli(s, teacher, distilled, work_out / f"{name}-record", (s.seeds[0],), 1, device,
                          logs / f"{name}-record.log", env, cache=folder, mode="record", topk=topk, bits=bits)
            rep = run_cli(s, teacher, distilled, work_out / f"{name}-replay", s.seeds, parallel, device,
                          logs / f"{name}-replay.log", env, cache=folder, mode="replay")
            procs += [{"variant": name, "kind": "record", **rec}, {"variant": name, "kind": "replay", **rep}]
            sizes = cache_sizes(folder)
            named = all(any("replayed: " + sizes["compression"] in n for n in r["notes"]) for r in rep["runs"])
            row.update(sizes, record_top1=rec["runs"][0]["top1"], record_seed=rec["runs"][0]["seed"],
                       notes_name_compression=named, process=rep, record_wall_s=rec["wall_s"])
            runs = rep["runs"]
            if not named:
                row["status_note"] = "a replay's results do not name its compression"
        top1 = [r["top1"] for r in runs]
        row["top1"] = top1
        row["top1_mean"], row["top1_std"] = mean_std(top1)
        rows.append(row)
        print(f"  {name:<11} top-1 {' / '.join(f'{t:.2f}' for t in top1)}"
              + (f"   {row['bytes_per_img_epoch']:.1f} B/img/epoch on disk ({row['payload_per_img_epoch']:.1f} "
                 f"in arrays), record {row['record_top1']:.2f}" if spec else ""), flush=True)
    otf, same = ref.get("on-the-fly"), ref.get(SAME_STREAM)
    base = mean_std(list(otf.values()))[0] if otf else math.nan
    for row in rows:
        row["diff_vs_otf"] = row["top1_mean"] - base if otf and row["variant"] != "on-the-fly" else math.nan
        if VARIANTS[row["variant"]] is not None:
            replayed = dict(zip(s.seeds, row["top1"]))
            # replay seed s - same-stream seed s; without same-stream runs only the recording seed is paired
            pair = same or {row["record_seed"]: row["record_top1"]}
            diffs = [replayed[k] - pair[k] for k in s.seeds if k in pair]
            row["paired_diffs"] = diffs
            row["paired_diff_mean"], row["paired_diff_std"] = mean_std(diffs)
            row["record_equals_otf_seed0"] = all(r[row["record_seed"]] == row["record_top1"] for r in (otf, same) if r
                                                 ) if (otf or same) else None
    return rows, procs


def to_result_rows(s: Setup, rows: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        p = r["process"]
        k = len(p["runs"])
        ok = r.get("notes_name_compression", True)
        extra = {key: v for key, v in r.items() if key not in ("variant", "process")}
        out.append(common.result_row(r["variant"], size, 50, s.student, windows_s=[p["train_time_s"]],
                                     images_per_window=p["images"] * s.epochs * k, status="ok" if ok else "error",
                                     note=r.get("status_note", r["compression"]), seeds=list(s.seeds),
                                     epochs=s.epochs, wall_s=p["wall_s"], **extra))
    return out


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def markdown(s: Setup, rows: list[dict[str, Any]], machine: dict[str, Any], cmd: str, teacher_top1: str) -> str:
    seeds = ",".join(map(str, s.seeds))
    lines = [f"`{cmd}`", "", common.header(machine), "",
             f"{s.dataset}, random real IPC {s.ipc}, teacher `{s.teacher}` ({s.teacher_epochs} epochs{teacher_top1}), "
             f"students `{s.student}`, `--preset {s.preset}`, {s.epochs} epochs, last top-1 (%) over seeds "
             f"{seeds}; caches recorded with seed {s.seeds[0]}, replayed for every seed.", "",
             "| variant | stored logits | B/img/epoch on disk (arrays) | vs FKD-style on disk (arrays) "
             "| top-1 mean ± std | per seed | Δ vs on-the-fly | Δ paired (vs same-stream) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = " / ".join(f"{t:.2f}" for t in r["top1"])
        if VARIANTS[r["variant"]] is None:
            what = "teacher every step" + (f", seed {s.seeds[0]}'s draws" if r["variant"] == SAME_STREAM else "")
            lines.append(f"| {r['variant']} | {what} | – | – | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} "
                         f"| {per_seed} | {_f(r['diff_vs_otf'], '+.2f')} | – |")
            continue
        paired = (f"{r['paired_diff_mean']:+.2f} ± {r['paired_diff_std']:.2f}" if len(r["paired_diffs"]) > 1
                  else f"{r['paired_diff_mean']:+.2f} (seed {r['record_seed']})")
        lines.append(f"| {r['variant']} | {r['compression']} | {_f(r['bytes_per_img_epoch'], '.1f')} "
                     f"({_f(r['payload_per_img_epoch'], '.1f')}) | {_f(r['disk_vs_fkd'])}× "
                     f"({_f(r['payload_vs_fkd'])}×) "
                     f"| {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | {per_seed} | {_f(r['diff_vs_otf'], '+.2f')} "
                     f"| {paired} |")
    cached = [r for r in rows if VARIANTS[r["variant"]] is not None]
    if cached:
        fkd = cached[0]["fkd_per_img_epoch"]
        same = [r["record_equals_otf_seed0"] for r in cached]
        equal = ("not checked (no on-the-fly run)" if None in same else "all" if all(same)
                 else f"{sum(same)} of {len(same)}")
        named = "yes" if all(r["notes_name_compression"] for r in cached) else "NO"
        lines += ["", f"FKD-style storage: {fkd:.0f} B/img/epoch (fp16 logits of every class + 4 crop coordinates "
                  f"+ flip). Recording runs with the same top-1 as on-the-fly and same-stream seed {s.seeds[0]}: "
                  f"{equal}; every "
                  f"replay's results name its compression: {named}."]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bench_cache/work", help="prepared teacher and set (reused)")
    p.add_argument("--out", default="runs/bench_cache/bench_cache.json", help="JSON to write (and .md beside it)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="teacher pre-training epochs [5]")
    p.add_argument("--student", default=None, help="student architecture [convnet-d3-w32]")
    p.add_argument("--epochs", type=int, default=None, help="student epochs [300]")
    p.add_argument("--seeds", default=None, help="comma-separated student seeds [0,1,2]")
    p.add_argument("--variants", default=None, help=f"comma-separated, from: {', '.join(VARIANTS)} [all]")
    p.add_argument("--parallel-seeds", type=int, default=0,
                   help="seeds trained at once per process (0: all of them on CUDA, 1 on the CPU, where K at once "
                        "is no faster than one by one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS for every run (0: as the environment says; --quick: 1). Results depend "
                        "on it in the last bits, so compare only runs made with one setting")
    p.add_argument("--quick", action="store_true", help="CI smoke run (see the docstring)")
    a = p.parse_args(argv)
    s = Setup(**QUICK) if a.quick else Setup()
    over: dict[str, Any] = {}
    if a.teacher_epochs is not None:
        over["teacher_epochs"] = a.teacher_epochs
    if a.student:
        over["student"] = a.student
    if a.epochs is not None:
        over["epochs"] = a.epochs
    if a.seeds:
        over["seeds"] = tuple(int(x) for x in a.seeds.split(",") if x)
    if a.variants:
        over["variants"] = tuple(v for v in a.variants.split(",") if v)
    s = replace(s, **over)
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown or not s.variants:
        p.error(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    if s.epochs < 1 or s.teacher_epochs < 1 or not s.seeds:
        p.error("--epochs and --teacher-epochs must be >= 1 and --seeds non-empty")
    a.setup = s
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    s: Setup = args.setup
    dev = common.pick_device(args.device)
    machine = common.machine_info(dev)
    parallel = args.parallel_seeds or (len(s.seeds) if dev.type == "cuda" else 1)
    env = dict(os.environ)  # the same environment for every run
    threads = args.threads or (1 if args.quick else 0)
    if threads:  # on a small shared CPU two OpenMP threads on two busy cores spin (common.quick_threads)
        env["OMP_NUM_THREADS"] = str(threads)
    work = Path(args.work).resolve()
    out_json = Path(args.out)
    runs_dir = out_json.parent / (out_json.stem + "_runs")
    shutil.rmtree(runs_dir, ignore_errors=True)  # caches are recorded into new folders
    runs_dir.mkdir(parents=True)
    if threads:
        machine["torch_threads"] = threads  # what the runs use (this process only reads their results)
    print(common.header(machine), flush=True)
    w = bench_cpu.Workload(s.dataset, s.dataset, s.teacher, s.teacher_epochs, s.teacher_batch, s.student, s.ipc,
                           50, s.epochs, s.epochs, 1.0)
    teacher, distilled = bench_cpu.prepare([w], work, env)[s.dataset]
    teacher_top1 = _teacher_top1(work, teacher)
    print(f"{s.dataset} IPC {s.ipc}: {', '.join(s.variants)}; {s.epochs} epochs, seeds {s.seeds}, student "
          f"{s.student}, teacher {s.teacher} ({s.teacher_epochs} epochs), {parallel} seed(s) per process", flush=True)
    t0 = time.perf_counter()
    rows, procs = measure(s, teacher, distilled, runs_dir.resolve(), parallel, dev.type, env)
    wall = time.perf_counter() - t0
    size = bench_cpu._image_size(distilled) or 0
    results = to_result_rows(s, rows, size)
    cmd = ("python benchmarks/bench_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    md = markdown(s, rows, machine, cmd, teacher_top1)
    print("\n" + md + f"\n\n{wall / 60:.1f} min for the variants (preparation not included)")
    if args.quick:
        print("(--quick: a smoke run; these numbers mean nothing)")
    settings = {**asdict(s), "parallel_seeds": parallel, "device": dev.type, "work": str(work),
                "omp_num_threads": env.get("OMP_NUM_THREADS"),
                "teacher_weights": str(teacher), "distilled": str(distilled), "teacher_top1": teacher_top1.strip(", ")}
    report = common.report("bench_cache", machine, settings, results, quick=args.quick, processes=procs,
                           bench_wall_s=wall)
    path = common.write_json(out_json, report)
    path.with_suffix(".md").write_text(md + f"\n\nwall time {wall / 60:.1f} min (variants only)\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _teacher_top1(work: Path, teacher: Path) -> str:
    """The teacher's test top-1 from its pre-training log, when the log is there."""
    log = work / f"{teacher.name}.log"
    if log.is_file():
        for line in reversed(log.read_text().splitlines()):
            if "top-1" in line and "%" in line:
                return ", test top-1 " + line.split("top-1", 1)[1].split("%")[0].strip(" :") + " %"
    return ""


def run_on_stream(argv: list[str]) -> int:
    """``--stream-seed S -- <rd3fast.run flags>``: rd3fast.run with every run's loader seeded S (each student
    still initialized from its own seed): on-the-fly training on the batches a cache recorded with seed S
    holds. Only for this benchmark's same-stream reference."""
    import rd3fast.engine.train as train
    from rd3fast.engine.loader import ResidentLoader
    from rd3fast.run import main as run_main

    seed, rest = int(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:]

    def loader(*a: Any, **kw: Any) -> ResidentLoader:
        kw["seed"] = seed
        return ResidentLoader(*a, **kw)

    train.ResidentLoader = loader  # resident_source() builds its loaders through this name
    return run_main(rest)


if __name__ == "__main__":
    sys.exit(run_on_stream(sys.argv[1:]) if sys.argv[1:2] == ["--stream-seed"] else main())
