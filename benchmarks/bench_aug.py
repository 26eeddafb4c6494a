"""Augmentation throughput: the fused Triton kernel vs the torch spec (eager, torch.compile) vs a PIL pipeline.

For each output size (32, 64, 224 px; the resident set is stored at that size) and batch (50, 256), with
the default training augmentation (RandomResizedCrop(0.08, 1) antialiased, flip, CutMix, normalize), it
measures images/s and GB/s of:

    fused_bf16 / fused_fp32   rd3fast.kernels.fused_augment: resident uint8 set + indices + AugParams ->
                              finished batch, bf16 (training dtype) or fp32 output, one kernel launch
    torch_eager               rd3fast.engine.aug.augment(images[idx], ...) on the same device (the spec), bf16 out
    torch_compile             the same function under torch.compile (compile time excluded)
    pil_dataloader            PIL images in RAM -> RandomResizedCrop + RandomHorizontalFlip + ToTensor +
                              Normalize in DataLoader workers, batch to the device, CutMix there (the RDED way)

GPU rows are CUDA-event windows of several calls after warm-up (median window); AugParams are drawn on the
host and moved to the device before timing (the loader overlaps that with the previous step). GB/s counts
the output bytes plus the source bytes of the batch's images (B x C x S x S uint8), i.e. the least traffic
an implementation must move; it is a rate, not a measured DRAM figure.

Targets (meaningful on an H100/H200): fused at 224 px batch 256 >= 2.5M img/s and >= 5x torch_compile.

    python benchmarks/bench_aug.py                  # full run on the GPU (about 2 minutes)
    python benchmarks/bench_aug.py --sweep          # also try kernel tile shapes / warps, report the best
    python benchmarks/bench_aug.py --quick          # CPU smoke run (< 60 s): torch spec + PIL at tiny sizes,
                                                    # one small Triton-interpreter call to prove the kernel runs
Writes --out (default benchmarks/results/bench_aug.json), schema of benchmarks/common.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():  # the kernels run on CPU tensors only under the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import common  # noqa: E402

import rd3fast  # noqa: E402
from rd3fast.engine import aug  # noqa: E402
from rd3fast.engine.aug import AugSpec  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
COMPILED: dict[int, Callable] = {}


def import_kernels():
    """rd3fast.kernels, also from a plain checkout run with PYTHONPATH=. (kernels/ is then not installed)."""
    try:
        import rd3fast.kernels as k
    except ImportError:
        rd3fast.__path__.append(str(ROOT))  # rd3fast.kernels -> ./kernels
        import rd3fast.kernels as k
    return k


def spec_for(size: int) -> AugSpec:
    return AugSpec(size=size, mean=MEAN, std=STD, crop="rrc", rrc_scale=(0.08, 1.0), antialias=True, flip_p=0.5,
                   mix="cutmix", mix_prob=1.0)


def draws(spec: AugSpec, n_img: int, batch: int, count: int, device: torch.device, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        idx = torch.randint(0, n_img, (batch,), generator=g)
        out.append((idx.to(device), aug.sample_params(spec, batch, spec.size, spec.size, g).to(device)))
    return out


def moved_bytes(batch: int, size: int, out_bytes: int) -> int:
    return batch * 3 * size * size * (1 + out_bytes)


def gpu_rows(kernels, images: torch.Tensor, spec: AugSpec, batch: int, args, device) -> list[dict[str, Any]]:
    rows = []
    size = spec.size
    pool = draws(spec, len(images), batch, 8, device)
    calls = max(1, min(50, int(2_000_000 // (batch * size * size)) or 1))  # calls per timed window

    def run(name: str, fn: Callable, out_bytes: int, note: str = "", **extra) -> None:
        it = iter(range(10**9))

        def step():
            i, p = pool[next(it) % len(pool)]
            fn(i, p)
        try:
            windows = common.time_windows(step, device, warmup_steps=args.warmup, steps_per_window=calls,
                                          windows=args.windows)
            row = common.result_row(name, size, batch, "-", windows_s=windows, images_per_window=calls * batch,
                                    note=note, **extra)
            row["gb_per_s"] = (row["img_per_s"] or 0) * moved_bytes(1, size, out_bytes) / 1e9
        except Exception as e:  # noqa: BLE001 - report and go on
            traceback.print_exc()
            row = common.result_row(name, size, batch, "-", status="error", note=f"{type(e).__name__}: {e}"[:300])
        rows.append(row)
        print(f"  {name:15s} {size:4d}px b{batch:<4d} {row['img_per_s'] or float('nan'):>14,.0f} img/s", flush=True)

    if kernels is not None:
        run("fused_bf16", lambda i, p: kernels.fused_augment(images, i, p, spec, dtype=torch.bfloat16), 2)
        run("fused_fp32", lambda i, p: kernels.fused_augment(images, i, p, spec, dtype=torch.float32), 4)
        if args.sweep and size == max(args.sizes):
            best = None
            for by, bx, nw in [(16, 32, 4), (32, 32, 2), (32, 32, 4), (32, 32, 8), (64, 32, 4), (32, 64, 4),
                               (16, 64, 4), (8, 64, 2)]:
                before = len(rows)
                run(f"fused_bf16_{by}x{bx}w{nw}", lambda i, p: kernels.fused_augment(
                    images, i, p, spec, dtype=torch.bfloat16, block=(by, bx), num_warps=nw), 2, sweep=True)
                r = rows[before]
                if r["img_per_s"] and (best is None or r["img_per_s"] > best[1]):
                    best = (f"{by}x{bx}w{nw}", r["img_per_s"])
            if best:
                rows[0]["note"] = f"sweep best {best[0]}: {best[1]:,.0f} img/s"
    run("torch_eager", lambda i, p: aug.augment(images[i], p, spec, dtype=torch.bfloat16), 2)
    if not args.no_compile:
        compiled = COMPILED.setdefault(size, torch.compile(aug.augment, dynamic=True))  # one per size
        t0 = time.perf_counter()
        try:
            i, p = pool[0]
            compiled(images[i], p, spec, dtype=torch.bfloat16)
            common.sync(device)
            note = f"compile {time.perf_counter() - t0:.0f} s (excluded)"
        except Exception as e:  # noqa: BLE001
            note = f"compile failed: {type(e).__name__}: {e}"[:300]
        if note.startswith("compile failed"):
            rows.append(common.result_row("torch_compile", size, batch, "-", status="error", note=note))
        else:
            run("torch_compile", lambda i, p: compiled(images[i], p, spec, dtype=torch.bfloat16), 2, note=note)
    return rows


class PILSet(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, size: int) -> None:
        import torchvision.transforms as T
        from PIL import Image

        self.pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
        self.tf = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), T.RandomHorizontalFlip(),
                             T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.pil)

    def __getitem__(self, i: int):
        return self.tf(self.pil[i]), i


def pil_row(images_cpu: torch.Tensor, spec: AugSpec, batch: int, args, device) -> dict[str, Any]:
    size = spec.size
    try:
        ds = PILSet(images_cpu, size)
        dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
        g = torch.Generator().manual_seed(1)
        windows = []
        n_batches = max(1, min(len(dl), args.pil_batches))
        for w in range(args.windows_pil + 1):  # the first pass (worker start-up) is warm-up
            done = 0
            with common.Window(device) as win:
                for x, _ in dl:
                    x = x.to(device, non_blocking=True)
                    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
                    box, _ = aug.cutmix_box(size, size, lam, g)
                    p = aug.AugParams(boxes=None, flip=None, row_perm=None, col_perm=None,
                                      partner=torch.randperm(batch, generator=g).to(device), mix_box=box.to(device),
                                      lam=torch.tensor(lam), mix="cutmix")
                    aug.mix(x, p)
                    done += 1
                    if done >= n_batches:
                        break
            if w:
                windows.append(win.seconds)
        del dl
        row = common.result_row("pil_dataloader", size, batch, "-", windows_s=windows,
                                images_per_window=n_batches * batch, note=f"{args.workers} workers")
        row["gb_per_s"] = (row["img_per_s"] or 0) * moved_bytes(1, size, 4) / 1e9
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        row = common.result_row("pil_dataloader", size, batch, "-", status="error", note=f"{type(e).__name__}: {e}")
    print(f"  {'pil_dataloader':15s} {size:4d}px b{batch:<4d} {row['img_per_s'] or float('nan'):>14,.0f} img/s",
          flush=True)
    return row


def interpreter_proof(kernels) -> dict[str, Any]:
    """One tiny fused call under the Triton interpreter, checked against the spec (CPU --quick only)."""
    spec = AugSpec(size=12, mean=MEAN, std=STD, crop="rrc", mix="cutmix", mix_prob=1.0, patch_shuffle=2)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    idx = torch.tensor([3, 0, 2])
    p = aug.sample_params(spec, 3, 16, 16, g)
    t0 = time.perf_counter()
    out = kernels.fused_augment(images, idx, p, spec)
    dt = time.perf_counter() - t0
    err = float((out - aug.augment(images[idx], p, spec)).abs().max())
    print(f"  interpreter: fused_augment 3x3x12x12 in {dt:.2f} s, max |kernel - spec| = {err:.2e}")
    return common.result_row("fused_interpreter", 12, 3, "-", windows_s=[dt], images_per_window=3,
                             status="ok" if err < 1e-4 else "error", note=f"max abs err vs spec {err:.2e}")


def parse(argv):
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=ints, default=[32, 64, 224])
    p.add_argument("--batches", type=ints, default=[50, 256])
    p.add_argument("--images", type=int, default=2048, help="resident set size (images at the output size)")
    p.add_argument("--pil-images", type=int, default=1024, help="PIL images in RAM for the DataLoader pipeline")
    p.add_argument("--pil-batches", type=int, default=12, help="batches per PIL window")
    p.add_argument("--windows", type=int, default=15, help="timed windows per GPU variant (median reported)")
    p.add_argument("--windows-pil", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=min(16, common.usable_cores()))
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-pil", action="store_true", help="skip the PIL DataLoader pipeline")
    p.add_argument("--sweep", action="store_true", help="also time other kernel tile shapes / warp counts (at the "
                   "largest size)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_aug.json"))
    p.add_argument("--quick", action="store_true", help="CPU smoke run (< 60 s)")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.batches, a.images, a.pil_images, a.pil_batches = [32], [50], 256, 200, 2
        a.windows, a.windows_pil, a.warmup, a.no_compile = 3, 1, 1, True
        a.workers = min(a.workers, 2)
    return a


def main(argv=None) -> int:
    args = parse(argv)
    device = common.pick_device("cpu" if args.quick and not torch.cuda.is_available() else args.device)
    if args.quick:
        common.quick_threads()
    machine = common.machine_info(device)
    print(common.header(machine), flush=True)
    try:
        kernels = import_kernels()
        kernel_note = "interpreter" if kernels.interpreted() else "compiled"
    except Exception as e:  # noqa: BLE001
        kernels, kernel_note = None, f"rd3fast.kernels unavailable: {type(e).__name__}: {e}"
        print(kernel_note)
    rows: list[dict[str, Any]] = []
    on_gpu = device.type == "cuda"
    for size in args.sizes:
        images_cpu, _ = common.random_images(max(args.images, args.pil_images), size, 10)
        images = images_cpu[:args.images].to(device)
        for batch in args.batches:
            spec = spec_for(size)
            if on_gpu:
                rows += gpu_rows(kernels if kernels is not None and not kernels.interpreted() else None, images,
                                 spec, batch, args, device)
            else:  # CPU: the kernels only run under the (slow) interpreter -- time the spec and PIL only
                rows += gpu_rows(None, images, spec, batch, args, device)
            if not args.no_pil:
                rows.append(pil_row(images_cpu[:args.pil_images], spec, batch, args, device))
        del images
        if on_gpu:
            torch.cuda.empty_cache()
    if not on_gpu and kernels is not None:
        rows.append(interpreter_proof(kernels))

    # ratios and targets
    targets = {}
    for r in rows:
        base = [q for q in rows if q["size"] == r["size"] and q["batch"] == r["batch"]]
        comp = next((q["img_per_s"] for q in base if q["variant"] == "torch_compile" and q["img_per_s"]), None)
        eager = next((q["img_per_s"] for q in base if q["variant"] == "torch_eager" and q["img_per_s"]), None)
        pil = next((q["img_per_s"] for q in base if q["variant"] == "pil_dataloader" and q["img_per_s"]), None)
        if r["img_per_s"]:
            r["x_compile"] = r["img_per_s"] / comp if comp else None
            r["x_eager"] = r["img_per_s"] / eager if eager else None
            r["x_pil"] = r["img_per_s"] / pil if pil else None
    f224 = next((r for r in rows if r["variant"] == "fused_bf16" and r["size"] == 224 and r["batch"] == 256), None)
    if on_gpu and f224 and f224["img_per_s"]:
        targets = {"fused_224_b256_img_per_s": f224["img_per_s"], "target_img_per_s": 2.5e6,
                   "meets_img_per_s": f224["img_per_s"] >= 2.5e6, "x_compile": f224.get("x_compile"),
                   "meets_x_compile": (f224.get("x_compile") or 0) >= 5.0}
    shown = [r for r in rows if not r.get("sweep")]
    print()
    print(common.header(machine))
    print(common.format_table(shown, ["variant", "size", "batch", ("img_per_s", "img/s"), ("gb_per_s", "GB/s"),
                                      ("x_compile", "x compile"), ("x_eager", "x eager"), ("x_pil", "x PIL"),
                                      "status", "note"]))
    if args.sweep:
        print(common.format_table([r for r in rows if r.get("sweep")], ["variant", "size", "batch",
                                                                        ("img_per_s", "img/s")]))
    if targets:
        print(f"target: fused 224 px batch 256 = {targets['fused_224_b256_img_per_s']:,.0f} img/s "
              f"({'meets' if targets['meets_img_per_s'] else 'misses'} 2.5M), "
              f"{targets['x_compile'] or float('nan'):.1f}x torch.compile "
              f"({'meets' if targets['meets_x_compile'] else 'misses'} 5x)")
    settings = {k: v for k, v in vars(args).items()}
    settings["kernels"] = kernel_note
    path = common.write_json(args.out, common.report("bench_aug", machine, settings, rows, args.quick,
                                                     targets=targets))
    print(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
