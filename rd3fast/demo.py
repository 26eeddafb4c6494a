"""The embedded demo (``python -m rd3fast.run`` with no arguments), on scikit-learn's digits.

1. pre-train a ConvNet teacher on the real training split (the "squeeze" phase);
2. distill IPC 10 twice: a random real subset (DD-Ranking's baseline) and RDED's selection;
3. evaluate both sets under the RD3 protocol (small-set variant) and under RDED's own protocol, 3 seeds;
4. print the table and IOR (RDED minus random under the same protocol), write JSON + PNG.

The protocols are the presets with the epochs shortened so that it all runs in about a minute on two
CPU cores; everything else (augmentation, loss, optimizer, schedule shape) is the preset's.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .config import resolve
from .data.datasets import BUILTIN
from .data.sets import load_real, write_image_folder
from .engine.experiment import pick_device
from .engine.pretraining import pretrain
from .engine.teacher import load_teachers
from .errors import RD3Error
from .evaluate import evaluate_distilled, failed_runs, table_row
from .methods.coreset import random_real
from .methods.rded import rded_select
from .results import format_table, plot_curves, write_json

DEMO_EPOCHS = 200  # the presets say 300-400; shortened for the demo (said in its output)
TEACHER = "convnet-d3-w32"
STUDENT = "convnet-d3-w16"
IPC = 10
PROTOCOLS = ("rd3-small", "rded-small")


def run_demo(out: Path = Path("runs/demo"), progress: bool = True, epochs: int = DEMO_EPOCHS,
             seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    t0 = time.perf_counter()
    print(f"rd3fast demo: scikit-learn digits, IPC {IPC}, student {STUDENT}, seeds {seeds}.\n"
          f"NOTE: epochs shortened to {epochs} for the demo (the protocols use 300-400); "
          f"other settings are the presets'.", flush=True)
    if out.exists():
        shutil.rmtree(out)
    info = BUILTIN["digits"]
    teacher_file = out / "teacher.pt"
    common = dict(dataset="digits", device="cpu")
    teacher_cfg = resolve("pretrain", overrides=dict(student=TEACHER, epochs=20, batch_size=64, **common))
    acc = pretrain(teacher_cfg, teacher_file, progress=progress, verbose=False)
    print(f"[{time.perf_counter() - t0:5.1f}s] teacher {TEACHER}: val top-1 {acc['last_top1']:.1f}%", flush=True)

    real = load_real("digits", "train")
    teacher = load_teachers([TEACHER], [teacher_file], real.num_classes, info.image_size, pick_device("cpu"))
    sets = {
        "random-real": random_real(real, IPC, seed=0),
        "rded-select": rded_select(real, teacher, IPC, info.mean, info.std, factor=1, candidates=60,
                                   num_crop=5, progress=False),
    }
    for name, images in sets.items():
        write_image_folder(images, out / name)
    print(f"[{time.perf_counter() - t0:5.1f}s] distilled {IPC} img/class: {', '.join(sets)}", flush=True)

    records = []
    for protocol in PROTOCOLS:
        for name in sets:
            cfg = resolve(protocol, overrides=dict(
                distilled=str(out / name), teacher=(TEACHER,), teacher_weights=(str(teacher_file),),
                student=STUDENT, epochs=epochs, seeds=seeds, mean=info.mean, std=info.std, **common))
            rec = evaluate_distilled(cfg, out / f"{name}-{protocol}", name=name, progress=progress, verbose=False)
            records.append(rec)
            if rec["summary"] is None:  # every seed's loss went non-finite: not a number to print
                raise RD3Error("demo: " + "; ".join(failed_runs([rec])))
            s = rec["summary"]["last_top1"]
            print(f"[{time.perf_counter() - t0:5.1f}s] {name} under {protocol}: top-1 {s['mean']:.2f} ± "
                  f"{s['std']:.2f}", flush=True)

    print()
    print(format_table([table_row(r) for r in records], title=f"digits IPC {IPC}, {epochs} epochs (demo)"))
    by = {(r["name"], r["config"]["preset"]): r["summary"]["last_top1"]["mean"] for r in records}
    for protocol in PROTOCOLS:
        ior = by[("rded-select", protocol)] - by[("random-real", protocol)]
        print(f"IOR under {protocol}: {ior:+.2f} points (RDED selection minus random real)")
    summary = {"teacher_top1": acc["last_top1"], "records": records, "wall_s": time.perf_counter() - t0}
    write_json(out / "demo.json", summary)
    plot_curves(records, out / "curves.png")
    print(f"\nwall time {summary['wall_s']:.1f}s; results in {out}/ (demo.json, curves.png)")
    return summary
