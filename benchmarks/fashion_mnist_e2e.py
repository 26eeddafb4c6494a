"""Fashion-MNIST end to end: pre-train a teacher on the 60k training images, distill IPC 10 and 50, evaluate.

    python benchmarks/fashion_mnist_e2e.py --quick --out runs/fmnist_e2e_quick    # 2 CPU cores: ~20 min
    python benchmarks/fashion_mnist_e2e.py --out runs/fmnist_e2e                  # full (meant for a GPU)

1. teacher: ``rd3fast.pretrain.pretrain`` with the ``pretrain`` preset (SGD, cosine, random crop + flip) on
   Debian's Fashion-MNIST training split (/usr/share/datasets/fashion-mnist), tested on the 10k test split;
2. distill IPC 10 and 50 twice: ``distill.random_real`` (DD-Ranking's random-real baseline) and
   ``distill.rded_select`` (RDED's teacher-scored selection, factor 1 at 28 px), written as ImageFolders;
3. evaluate each set with ``evaluate.evaluate_distilled`` under ``rd3-small`` and the upstream presets
   (``rded-small``; full mode adds ``sre2l-cifar``), soft labels from the teacher, several seeds;
4. print and write a Markdown table (``<out>/summary.md``) and ``<out>/summary.json`` with the machine.

Every protocol runs with Fashion-MNIST's mean/std (the teacher's normalization; the presets' ImageNet/CIFAR
values would feed the teacher inputs it was not trained on), as the embedded demo does. ``--quick``
shortens: ConvNet-D3 (width 32) teacher for 3 epochs, ConvNet-D3 (width 16) students trained on 20,000
images each (``--image-budget``: 200 epochs at IPC 10, 40 at IPC 50), 2 seeds, 100 RDED candidates per class; the full mode is the presets' epochs with ResNet-18 (CIFAR stem)
teacher (30 epochs) and students, 3 seeds. The shortened values are printed and recorded.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rd3fast.config import resolve  # noqa: E402
from rd3fast.data import BUILTIN, load_real  # noqa: E402
from rd3fast.distill import random_real, rded_select, write_image_folder  # noqa: E402
from rd3fast.evaluate import evaluate_distilled, table_row  # noqa: E402
from rd3fast.experiment import pick_device  # noqa: E402
from rd3fast.pretrain import pretrain  # noqa: E402
from rd3fast.results import format_table, write_json  # noqa: E402
from rd3fast.teacher import load_teachers  # noqa: E402

QUICK = dict(teacher="convnet-d3-w32", teacher_epochs=3, student="convnet-d3-w16", epochs=0, image_budget=20_000,
             seeds="0,1", candidates=100, protocols="rd3-small,rded-small")
FULL = dict(teacher="resnet18-cifar", teacher_epochs=30, student="resnet18-cifar", epochs=0, image_budget=0,
            seeds="0,1,2", candidates=300, protocols="rd3-small,rded-small,sre2l-cifar")


def machine(dev: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized run (see the docstring)")
    p.add_argument("--out", default="runs/fmnist_e2e")
    p.add_argument("--teacher", default=None, help="teacher architecture")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--student", default=None)
    p.add_argument("--epochs", type=int, default=None, help="student epochs (0: each preset's or the budget's)")
    p.add_argument("--image-budget", type=int, default=None,
                   help="student epochs = budget / set size (0: off); --epochs wins when given")
    p.add_argument("--seeds", default=None)
    p.add_argument("--ipc", default="10,50")
    p.add_argument("--candidates", type=int, default=None, help="RDED real candidates per class")
    p.add_argument("--protocols", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    opt = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    seeds = tuple(int(s) for s in str(opt["seeds"]).split(","))
    ipcs = [int(i) for i in args.ipc.split(",")]
    protocols = opt["protocols"].split(",")
    dev = pick_device(args.device)
    info = BUILTIN["fashion-mnist"]
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    stamp = lambda: f"[{time.perf_counter() - t0:7.1f}s]"  # noqa: E731
    print(f"Fashion-MNIST e2e ({'quick' if args.quick else 'full'}) on {machine(dev)}\n  {opt}", flush=True)

    teacher_file = out / "teacher.pt"
    common = dict(dataset="fashion-mnist", device=args.device, mean=info.mean, std=info.std)
    tcfg = resolve("pretrain", overrides=dict(student=opt["teacher"], epochs=opt["teacher_epochs"], **common))
    tsum = pretrain(tcfg, teacher_file, progress=args.progress, verbose=False)
    print(f"{stamp()} teacher {opt['teacher']} ({opt['teacher_epochs']} epochs on 60k): test top-1 "
          f"{tsum['last_top1']:.2f}% ({tsum['images_per_s']:.0f} img/s)", flush=True)

    real = load_real("fashion-mnist", "train")
    teacher = load_teachers([opt["teacher"]], [teacher_file], real.num_classes, info.image_size, dev)
    sets = {}
    for ipc in ipcs:
        sets[f"random-ipc{ipc}"] = random_real(real, ipc, seed=0)
        sets[f"rded-ipc{ipc}"] = rded_select(real, teacher, ipc, info.mean, info.std, factor=1,
                                             candidates=max(opt["candidates"], ipc), num_crop=5, device=dev,
                                             progress=False)
    for name, images in sets.items():
        write_image_folder(images, out / "sets" / name)
    print(f"{stamp()} distilled: {', '.join(sets)}", flush=True)

    records = []
    for protocol in protocols:
        for name in sets:
            over = dict(distilled=str(out / "sets" / name), teacher=(opt["teacher"],),
                        teacher_weights=(str(teacher_file),), student=opt["student"], seeds=seeds, **common)
            if opt["epochs"]:
                over["epochs"] = opt["epochs"]
            elif opt["image_budget"]:
                over["epochs"] = max(1, round(opt["image_budget"] / len(sets[name].labels)))
            cfg = resolve(protocol, overrides=over)
            rec = evaluate_distilled(cfg, out / "runs" / f"{name}-{protocol}", name=name, progress=args.progress,
                                     verbose=False)
            records.append(rec)
            s = rec["summary"]["last_top1"]
            print(f"{stamp()} {name:<14} {protocol:<12} top-1 {s['mean']:6.2f} ± {s['std']:.2f} "
                  f"({cfg.epochs} epochs, {len(seeds)} seeds)", flush=True)

    by = {(r["name"], r["config"]["preset"]): r["summary"]["last_top1"] for r in records}
    lines = [f"teacher `{opt['teacher']}` ({opt['teacher_epochs']} epochs, 60k train images): "
             f"**{tsum['last_top1']:.2f}%** test top-1", "",
             "| IPC | set | " + " | ".join(f"`{pr}`" for pr in protocols) + " |",
             "|---|---|" + "---|" * len(protocols)]
    for ipc in ipcs:
        for method in ("random", "rded"):
            cells = [f"{by[(f'{method}-ipc{ipc}', pr)]['mean']:.2f} ± {by[(f'{method}-ipc{ipc}', pr)]['std']:.2f}"
                     for pr in protocols]
            lines.append(f"| {ipc} | {method} | " + " | ".join(cells) + " |")
        iors = [f"{by[(f'rded-ipc{ipc}', pr)]['mean'] - by[(f'random-ipc{ipc}', pr)]['mean']:+.2f}"
                for pr in protocols]
        lines.append(f"| {ipc} | IOR (rded − random) | " + " | ".join(iors) + " |")
    wall = time.perf_counter() - t0
    epochs_note = (f"{opt['epochs']} student epochs (shortened; the presets use 300-400)" if opt["epochs"] else
                   f"student epochs = {opt['image_budget']} images / set size ("
                   + ", ".join(f"IPC {i}: {round(opt['image_budget'] / (10 * i))}" for i in ipcs)
                   + "; shortened, the presets use 300-400)"
                   if opt["image_budget"] else "the presets' epochs")
    lines += ["", f"student `{opt['student']}`, {epochs_note}, seeds {','.join(map(str, seeds))}, "
              f"RDED {opt['candidates']} candidates/class x 5 crops, factor 1; Fashion-MNIST mean/std everywhere; "
              f"last-epoch top-1 on the 10k test images (mean ± std over seeds); wall time {wall / 60:.1f} min on "
              f"{machine(dev)}."]
    md = "\n".join(lines)
    print("\n" + format_table([table_row(r) for r in records], title="Fashion-MNIST e2e") + "\n\n" + md)
    (out / "summary.md").write_text(md + "\n")
    write_json(out / "summary.json", {"options": opt, "machine": machine(dev), "teacher": tsum, "wall_s": wall,
                                      "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
