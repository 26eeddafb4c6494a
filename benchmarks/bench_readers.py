"""Validation-pass throughput of the readers: PIL DataLoader, DALI, FFCV, and the uint8 cache.

    python benchmarks/bench_readers.py --quick                 # CPU, < 60 s: 2,000 96x72 JPEGs -> 64 px
    python benchmarks/bench_readers.py                          # 10,000 500x375 JPEGs -> 224 px crops
    python benchmarks/bench_readers.py --val /data/imagenet/val --image-size 224 --model resnet18
    python benchmarks/bench_readers.py --device cuda --model resnet18     # the GPU machine

Without ``--val`` the data are real: Fashion-MNIST's test images written once into the cache directory as
colour JPEG files at ImageNet's typical 500 x 375 (tinted and upscaled, so decoding costs what a photograph
of that size costs; 96 x 72 with --quick). Each reader does one validation pass: decode, Resize +
CenterCrop, normalize, batches on ``--device`` (``first`` includes building the pipeline / FFCV's JIT /
writing the .beton (``--ffcv-write-mode``, jpg by default, raw with --quick) or the cache; ``steady`` is
a second pass). ``cache`` reads the uint8 centre crops written by the first pass (memory-mapped) and
normalizes them on the device with the spec's formula (``aug.eval_transform``); ``cache-fused`` with the
one multiply-subtract that ``train.evaluate`` and the readers use (``aug.eval_normalize``). With ``--model`` every pass also runs the model (bf16 +
channels_last on CUDA), so the rows compare whole evaluations: re-decoding every time vs evaluating from
the cache. On CUDA it also times ResNet-18 evaluation (``train.evaluate``) from resident uint8 crops.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rd3fast.data import backends, valcache
from rd3fast.data.backends import make_reader
from rd3fast.data.datasets import BUILTIN

FM = BUILTIN["fashion-mnist"]


def _write_one(job: tuple) -> None:
    from PIL import Image

    gray, path, size = job
    g = Image.fromarray(gray).resize(size, Image.Resampling.BICUBIC)
    # a fixed tint, so that the JPEGs carry colour (chroma planes) like photographs do
    rgb = Image.merge("RGB", (g, g.point(lambda v: int(0.75 * v + 50)), g.point(lambda v: 255 - v // 2)))
    rgb.save(path, quality=90)


def sample_folder(n_per_class: int, width: int, height: int) -> Path:
    """Fashion-MNIST test images as colour JPEGs of width x height (ImageNet-like decode work at 500 x 375),
    written once into the cache dir."""
    import multiprocessing as mp

    from rd3fast.data.sets import load_real

    root = valcache.cache_root() / "bench" / f"fmnist_val_{n_per_class}x10_{width}x{height}"
    if not (root / "09").is_dir():
        real = load_real("fashion-mnist", "val")
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        jobs, counts = [], [0] * 10
        for img, y in zip(real.images, real.labels.tolist()):
            if counts[y] < n_per_class:
                (tmp / f"{y:02d}").mkdir(parents=True, exist_ok=True)
                jobs.append((img[0].numpy(), tmp / f"{y:02d}" / f"{counts[y]:05d}.jpg", (width, height)))
                counts[y] += 1
        with mp.get_context("fork").Pool(os.cpu_count()) as pool:
            pool.map(_write_one, jobs, chunksize=64)
        os.replace(tmp, root)
    return root


def run_pass(reader, model, dev: torch.device) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x, y in reader:
            if model is not None:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    model(x)
            n += len(y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def bench_backend(name: str, root: Path, args, model, dev: torch.device, scratch: Path) -> dict:
    t0 = time.perf_counter()
    source, label = root, name
    if name == "ffcv":  # the .beton is written afresh and counted in the first pass
        from rd3fast.data.backends.ffcv import write_beton

        source = write_beton(root, scratch / "val.beton", write_mode=args.ffcv_write_mode, workers=args.workers)
        label = f"ffcv ({args.ffcv_write_mode} .beton)"
    reader = make_reader(name, source, image_size=args.image_size, resize_ratio=args.ratio, mean=FM.mean,
                         std=FM.std, batch_size=args.batch_size, device=dev, workers=args.workers)
    setup = time.perf_counter() - t0
    n, first = run_pass(reader, model, dev)
    n2, steady = run_pass(reader, model, dev)
    return {"reader": label, "images": n, "first_s": setup + first, "steady_s": steady,
            "first_img_s": n / (setup + first), "steady_img_s": n2 / steady}


def bench_cache(root: Path, args, model, dev: torch.device, decoder: str, fused: bool = False) -> dict:
    """fused=False: normalization as the spec writes it (aug.eval_transform); True: the one multiply-subtract
    that ``train.evaluate`` and the readers use (aug.eval_normalize)."""
    from rd3fast.data.pixels import eval_normalize, eval_transform

    cache_dir = valcache.cache_root() / "bench" / "valcache"
    shutil.rmtree(cache_dir, ignore_errors=True)  # the first pass decodes and writes the cache afresh
    t0 = time.perf_counter()
    npy = valcache.build(root, image_size=args.image_size, resize_ratio=args.ratio, decoder=decoder,
                         workers=args.workers, cache_dir=cache_dir, progress=False)
    build_s = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        s = valcache.load(npy)
        x_all, y_all = s.images.to(dev), s.labels.to(dev)  # once per run (train keeps it resident)
        with torch.inference_mode():
            for i in range(0, len(y_all), args.batch_size):
                xb = x_all[i:i + args.batch_size]
                x = eval_normalize(xb, FM.mean, FM.std) if fused else eval_transform(xb, FM.mean, FM.std)
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                if model is not None:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                        model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    n = len(y_all)
    del s, x_all
    shutil.rmtree(cache_dir, ignore_errors=True)  # the benchmark's own entry; rebuilt by every run
    label = f"cache ({decoder} decode once{', fused norm' if fused else ''})"
    return {"reader": label, "images": n, "first_s": build_s + times[0],
            "steady_s": times[1], "first_img_s": n / (build_s + times[0]), "steady_img_s": n / times[1]}


def gpu_eval_throughput(args, dev: torch.device) -> dict:
    """ResNet-18 top-1 evaluation from resident uint8 crops (train.evaluate): img/s after a warm-up pass."""
    from rd3fast.engine.models import build_model
    from rd3fast.engine.train import evaluate

    n, s = args.gpu_eval_images, args.image_size
    images = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, device=dev)  # throughput only
    labels = torch.randint(0, 1000, (n,), device=dev)
    model = build_model("resnet18", 1000, s).to(dev).to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    out = {}
    for bs in (500, 1000):
        evaluate(model, images, labels, FM.mean, FM.std, bs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        evaluate(model, images, labels, FM.mean, FM.std, bs)
        torch.cuda.synchronize()
        out[f"batch_{bs}_img_s"] = n / (time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU, 2,000 images at 64 px, under a minute")
    p.add_argument("--val", default=None, help="validation ImageFolder [Fashion-MNIST test JPEGs]")
    p.add_argument("--per-class", type=int, default=1000, help="Fashion-MNIST images per class")
    p.add_argument("--width", type=int, default=500, help="Fashion-MNIST JPEG width (ImageNet val: ~500)")
    p.add_argument("--height", type=int, default=375, help="Fashion-MNIST JPEG height (ImageNet val: ~375)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--ratio", type=float, default=0.875)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="also run this model on every batch (e.g. resnet18)")
    p.add_argument("--readers", default="pil,dali,ffcv,cache,cache-fused")
    p.add_argument("--ffcv-write-mode", default="jpg", choices=["raw", "jpg"], help="how the .beton stores images")
    p.add_argument("--gpu-eval-images", type=int, default=50_000, help="cuda: ResNet-18 eval throughput set")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.per_class, args.width, args.height, args.image_size, args.ffcv_write_mode = 200, 96, 72, 64, "raw"
    dev = torch.device(args.device)
    root = Path(args.val) if args.val else sample_folder(args.per_class, args.width, args.height)
    model = None
    if args.model:
        from rd3fast.engine.models import build_model

        model = build_model(args.model, 10, args.image_size).to(dev).eval()
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               + (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU used"))
    print(f"# validation pass: {root} -> {args.image_size} px crops (ratio {args.ratio}), batch {args.batch_size}, "
          f"device {dev}, model {args.model or 'none'}\n# machine: {machine}, torch {torch.__version__}")
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="bench_readers_"))
    for name in args.readers.split(","):
        if name in ("cache", "cache-fused"):
            rows.append(bench_cache(root, args, model, dev, "dali" if dev.type == "cuda" and
                                    backends.available("dali") else "pil", fused=name == "cache-fused"))
        elif backends.available(name):
            rows.append(bench_backend(name, root, args, model, dev, scratch))
        else:
            print(f"# {name}: not installed, skipped")
            continue
        r = rows[-1]
        print(f"{r['reader']:<26} {r['images']:>6} img  first {r['first_s']:7.2f}s {r['first_img_s']:9.0f} img/s   "
              f"steady {r['steady_s']:7.2f}s {r['steady_img_s']:9.0f} img/s", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    pil = next((r for r in rows if r["reader"] == "pil"), None)
    for cache in (r for r in rows if r["reader"].startswith("cache")):
        if pil:
            print(f"# {cache['reader']} vs PIL re-decode (steady): {cache['steady_img_s'] / pil['steady_img_s']:.1f}x")
    result = {"machine": machine, "args": vars(args), "rows": rows}
    if dev.type == "cuda":
        result["resnet18_eval"] = gpu_eval_throughput(args, dev)
        print(f"# ResNet-18 eval from resident uint8 crops at {args.image_size} px: "
              + ", ".join(f"{k} {v:.0f}" for k, v in result["resnet18_eval"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
