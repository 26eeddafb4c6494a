"""ImageNet at full scale on this machine: listing, validation decode, held-out carving, time to the first step.

    python benchmarks/bench_imagenet_scale.py                                   # 1000 x 1281 train, 50k val
    python benchmarks/bench_imagenet_scale.py --classes 20 --train-per-class 30 --val-images 400 \\
        --heldout 40 --work /tmp/rd3-scale-smoke                                # smoke run, seconds
    python benchmarks/bench_imagenet_scale.py --build-only                     # only build (or check) the tree

The data are an ImageNet-shaped synthetic tree built once under ``--work`` (``WORK/imagenet``, reused while
``WORK/tree.json`` records the same parameters): ``train/<wnid>/<wnid>_<i>.JPEG`` (``--classes`` wnids
``n%08d``, ``--train-per-class`` files each) and a flat ``val/ILSVRC2012_val_%08d.JPEG`` (``--val-images``)
labelled by Kaggle's ``LOC_val_solution.csv`` (shuffled rows). Every file is a HARD LINK into a small pool of
distinct JPEGs (``WORK/pool``: 64 for train, 200 for val; more if a pool file would get more than 50,000
links, ext4's limit is 65,000): a listing sees 1.28 M real directory entries while the tree costs a few
directory blocks. The pool JPEGs have ImageNet's sizes (mostly 500x375, 375x500, 500x333, 333x500, some up
to 1000 px on the long side, quality 90) and smooth random content (low-frequency noise plus grain, about
80 KB at 500 x 375), so decoding one costs what decoding a photograph of that size costs.

Each stage runs in a fresh subprocess (this script with ``--child STAGE``) with ``RD3FAST_CACHE=WORK/cache``,
so its memory is its own. ``RSS after imports`` is the child's RSS once torch and rd3fast are imported;
``peak RSS`` its VmHWM over the stage (reset after the imports through ``/proc/self/clear_refs``; stage 4
is the whole process); ``peak anon`` / ``peak file`` the largest RssAnon / RssFile sampled every 50 ms (a
memory-mapped cache being written shows up as file pages, reclaimable, not as anonymous memory); the decode
``worker`` row the largest forked worker's ``ru_maxrss`` (pages shared with the parent included).

1. listing of the train split (``datasets.list_files("imagenet", "train", DIR)``): first with an empty
   listing cache, then again with the cache warm. The OS's dentry/inode cache is warm in both (the tree was
   just built or used); a cold disk or a network file system makes the first listing slower.
2. validation decode into the cache (``valcache.load_real("imagenet", "val", image_size=224,
   resize_ratio=0.875)``) with an empty val cache: wall time, img/s, memory; then the second call
   (memory-mapped, no decode) in another process.
3. held-out carving (``sets.heldout_split("imagenet", --heldout, seed=0, image_size=224)``): lists train
   (listing cache warm from stage 1), draws ``--heldout / --classes`` per class, decodes only those.
4. time to the first training step of an ``rd3`` run on a 1000-class 224 px distilled set (RDED layout, one
   image per class, ``WORK/distilled-c1000``) with a random-weights ResNet-18 teacher
   (``WORK/teacher-resnet18-c1000.pth``): process start -> imports -> ``prepare(cfg)`` (val from the warm
   cache) -> ``build_engine`` -> one ``step_runner(eng)(*inputs)`` on the first batch of epoch 0, on the CPU;
   ``process_age()`` at its end (a second step is timed after it, for scale). Needs ``--classes 1000``
   (``experiment.prepare`` checks the distilled set's class count against ImageNet's 1000); skipped otherwise.

The validation cache entry is 50,000 x 3 x 224 x 224 bytes (7.5 GB) at full size; it is removed at the end
unless ``--keep-cache``. Markdown table on stdout, JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(HERE))

TREE_VERSION = 1  # bump when the tree's layout or the pool's content changes
MARKER = "tree.json"
TRAIN_POOL, VAL_POOL = 64, 200
MAX_LINKS = 50_000  # per pool file; ext4 refuses more than 65,000 links to one inode
IMAGENET_CLASSES = 1000
IMAGE_SIZE, RATIO = 224, 0.875
RACY_S = 2.5  # listing_cache re-lists class folders modified within 2 s of a listing: let a new tree settle
CHILD_TAG = "@@bench-child "
# (width, height, weight): ImageNet's common shapes; "wide"/"tall"/"large"/"small" are drawn below.
SHAPES = [(500, 375, 0.38), (375, 500, 0.10), (500, 333, 0.17), (333, 500, 0.05), (500, 500, 0.05),
          ("wide", 0, 0.08), ("tall", 0, 0.04), ("large", 0, 0.08), ("small", 0, 0.05)]


# ---------------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------------
def _shape(rng: random.Random) -> tuple[int, int]:
    kind = rng.choices([s[:2] for s in SHAPES], weights=[s[2] for s in SHAPES])[0]
    if isinstance(kind[0], int):
        return kind
    if kind[0] == "wide":
        return 500, rng.randint(280, 470)
    if kind[0] == "tall":
        return rng.randint(280, 470), 500
    if kind[0] == "large":  # up to ~1000 px on the long side, 4:3 or 3:2, either way round
        long = rng.randint(640, 1000)
        short = int(long / rng.choice((4 / 3, 3 / 2)))
        return (long, short) if rng.random() < 0.75 else (short, long)
    long = rng.randint(200, 400)
    return long, int(long * 0.75)


def _photo(w: int, h: int, seed: int) -> Any:
    """A PIL RGB image w x h of smooth random content: two octaves of bicubically upsampled noise plus a little
    grain, scaled with the image's area, so that a quality-90 JPEG is ~80 KB at 500 x 375."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    s = math.sqrt(w * h / (500 * 375))
    cell = max(4, int(16 * s))
    gw, gh = max(2, w // cell), max(2, h // cell)

    def octave(cw: int, ch: int) -> np.ndarray:
        grid = (rng.random((ch, cw, 3)) * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), np.float32)

    x = 0.7 * octave(gw, gh) + 0.3 * octave(gw * 4, gh * 4) + rng.normal(0.0, 8.0 / s, (h, w, 3))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _write_pool(folder: Path, n: int, seed: int) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = _shape(rng)
        path = folder / f"{i:05d}.JPEG"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            _photo(w, h, seed * 100_003 + i).save(tmp, "JPEG", quality=90)
            os.replace(tmp, path)
        out.append({"file": path.name, "width": w, "height": h, "bytes": path.stat().st_size})
    return out


def tree_params(args: argparse.Namespace) -> dict[str, Any]:
    total = args.classes * args.train_per_class
    return {"version": TREE_VERSION, "classes": args.classes, "train_per_class": args.train_per_class,
            "val_images": args.val_images, "train_pool": max(TRAIN_POOL, math.ceil(total / MAX_LINKS)),
            "val_pool": max(VAL_POOL, math.ceil(args.val_images / MAX_LINKS))}


def build_tree(work: Path, params: dict[str, Any]) -> dict[str, Any]:
    """``work/imagenet`` with the layout above, reused when ``work/tree.json`` records the same parameters.
    Returns the marker (with this call's build time, 0 when reused)."""
    data, marker = work / "imagenet", work / MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("params") == params and data.is_dir():
            return {**saved, "built_now": False}
        print(f"# {marker}: another tree (or a partial one); rebuilding {data}", flush=True)
        marker.unlink()
        shutil.rmtree(data, ignore_errors=True)
    elif data.exists():
        raise SystemExit(f"{data} exists but {marker} does not: not a tree this script built; pick another --work")
    t0 = time.perf_counter()
    tmp = work / "imagenet.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    pool_t0 = time.perf_counter()
    train_pool = _write_pool(work / "pool" / "train", params["train_pool"], seed=1)
    val_pool = _write_pool(work / "pool" / "val", params["val_pool"], seed=2)
    pool_s = time.perf_counter() - pool_t0
    k, per = params["classes"], params["train_per_class"]
    wnids = [f"n{c:08d}" for c in range(k)]
    link_t0 = time.perf_counter()
    train_src = [str(work / "pool" / "train" / p["file"]) for p in train_pool]
    n = 0
    for c, wnid in enumerate(wnids):
        folder = tmp / "train" / wnid
        folder.mkdir(parents=True)
        base = str(folder) + os.sep + wnid + "_"
        for i in range(per):
            os.link(train_src[n % len(train_src)], f"{base}{i}.JPEG")
            n += 1
    val = tmp / "val"
    val.mkdir(parents=True)
    val_src = [str(work / "pool" / "val" / p["file"]) for p in val_pool]
    rng = random.Random(3)
    m = params["val_images"]
    labels = [j % k for j in range(m)]
    rng.shuffle(labels)  # m / k per class, in no order
    rows = []
    for j in range(m):
        name = f"ILSVRC2012_val_{j + 1:08d}"
        os.link(val_src[j % len(val_src)], str(val / name) + ".JPEG")
        boxes = ""
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            x0, y0 = rng.randint(0, 250), rng.randint(0, 180)
            boxes += f"{wnids[labels[j]]} {x0} {y0} {x0 + rng.randint(50, 240)} {y0 + rng.randint(50, 190)} "
        rows.append((name, boxes))
    rng.shuffle(rows)  # Kaggle's rows are in no particular order
    with open(tmp / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        writer.writerows(rows)
    link_s = time.perf_counter() - link_t0
    os.replace(tmp, data)
    pool_bytes = sum(p["bytes"] for p in train_pool + val_pool)
    record = {"params": params, "built_at": time.time(), "build_s": time.perf_counter() - t0, "pool_s": pool_s,
              "links_s": link_s, "links": n + m, "pool_bytes": pool_bytes,
              "val_pool_kb": sorted(p["bytes"] // 1000 for p in val_pool),
              "val_pool_shapes": [[p["width"], p["height"]] for p in val_pool]}
    marker.write_text(json.dumps(record, indent=1))
    return {**record, "built_now": True}


def du_bytes(*paths: Path) -> int:
    """Disk blocks used under ``paths``, each inode counted once (hard links), as ``du`` counts them."""
    seen, total = set(), 0
    for path in paths:
        if not path.exists():
            continue
        total += os.lstat(path).st_blocks * 512
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                st = os.lstat(os.path.join(top, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def disk_mb(work: Path) -> dict[str, float]:
    """The tree's own blocks (directories, CSV: its files are links into the pool), the pool's, the caches'."""
    tree, pool, cache = work / "imagenet", work / "pool", work / "cache"
    pool_b = du_bytes(pool)
    return {"tree": (du_bytes(pool, tree) - pool_b) / 1e6, "pool": pool_b / 1e6, "cache": du_bytes(cache) / 1e6}


# ---------------------------------------------------------------------------------------------------
# Children: one stage each, measured from inside
# ---------------------------------------------------------------------------------------------------
class MemorySampler:
    """Largest RssAnon / RssFile of this process, read from /proc/self/status every ``every`` seconds."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak = every, {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, int]:
        out = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS"):
                        out[key] = int(rest.split()[0]) * 1024
        except OSError:
            pass
        for key in self.peak:
            self.peak[key] = max(self.peak[key], out.get(key, 0))
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def reset_peak_rss() -> dict[str, float]:
    """Reset this process's peak RSS (VmHWM, which ``ru_maxrss`` reads) to its current RSS, so that the peak
    read later is the stage's, not the imports' (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``). Returns
    the RSS now (the baseline: the interpreter, torch and rd3fast imported) and whether the reset worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        ok = True
    except OSError:
        ok = False
    now = MemorySampler().sample()
    return {"baseline_rss_mib": now.get("VmRSS", 0) / 2 ** 20, "peak_reset": ok}


def _memory(sampler: MemorySampler) -> dict[str, float]:
    mib = 2 ** 20
    now = sampler.sample()
    return {"peak_rss_mib": now.get("VmHWM", 0) / mib,  # since reset_peak_rss where it worked
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "peak_anon_mib": sampler.peak["RssAnon"] / mib, "peak_file_mib": sampler.peak["RssFile"] / mib,
            # forked decode workers: their RSS counts the pages they share with this process
            "workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def child(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    data = str(Path(args.work) / "imagenet")
    if stage == "first-step":
        return child_first_step(args, data)
    t0 = time.perf_counter()
    from rd3fast.data import valcache
    from rd3fast.data.datasets import list_files
    from rd3fast.data.sets import heldout_split
    out: dict[str, Any] = {"imports_s": time.perf_counter() - t0, **reset_peak_rss()}
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        if stage == "listing":
            listing = list_files("imagenet", "train", data)
            out.update(files=len(listing.files), classes=len(listing.classes))
        elif stage == "val":
            s = valcache.load_real("imagenet", "val", image_size=IMAGE_SIZE, resize_ratio=RATIO, data_root=data,
                                   progress=False)
            out.update(images=len(s.labels), classes=s.num_classes, shape=list(s.images.shape))
        elif stage == "heldout":
            s = heldout_split("imagenet", args.heldout, seed=0, image_size=IMAGE_SIZE, data_root=data,
                              progress=False)
            out.update(images=len(s.labels), classes=s.num_classes, shape=list(s.images.shape))
        else:
            raise SystemExit(f"unknown --child stage {stage!r}")
        out["seconds"] = time.perf_counter() - t0
    out.update(_memory(mem))
    return out


def child_first_step(args: argparse.Namespace, data: str) -> dict[str, Any]:
    """Start -> imports -> prepare -> build_engine -> the first step, as ``python -m rd3fast.run`` goes."""
    from rd3fast.config import resolve
    from rd3fast.engine.experiment import prepare
    from rd3fast.engine.train import build_engine, step_runner
    from rd3fast.host import process_age, tune_allocator

    ages = {"imports": process_age()}
    baseline = MemorySampler().sample().get("VmRSS", 0) / 2 ** 20  # no reset: the whole process is the stage
    tune_allocator()  # as every CLI entry point does (errors.cli)
    with MemorySampler() as mem:
        work = Path(args.work)
        cfg = resolve("rd3", overrides=dict(
            dataset="imagenet", data_root=data, distilled=str(work / f"distilled-c{args.classes}"),
            teacher=("resnet18",), teacher_weights=(str(work / f"teacher-resnet18-c{args.classes}.pth"),),
            student="resnet18", seeds=(0,), device="cpu", epochs=1))
        exp = prepare(cfg, progress=False)
        ages["prepare"] = process_age()
        eng = build_engine(exp, [0])
        run_step = step_runner(eng)
        ages["build_engine"] = process_age()
        inputs = next(iter(eng.source.epoch(0)))
        loss = float(run_step(*inputs).sum())
        ages["first_step"] = process_age()
        t0 = time.perf_counter()  # a second step, for scale: what the first one's warm-up costs
        float(run_step(*next(iter(eng.source.epoch(1)))).sum())
        second = time.perf_counter() - t0
    out = {"process_age_s": ages["first_step"], "imports_s": ages["imports"],
           "prepare_s": ages["prepare"] - ages["imports"], "build_engine_s": ages["build_engine"] - ages["prepare"],
           "first_step_s": ages["first_step"] - ages["build_engine"], "second_step_s": second, "loss": loss,
           "train_images": len(exp.train.images), "val_images": len(exp.val.images), "batch": exp.cfg.batch_size,
           "eager_reason": eng.no_graph, "torch_threads": __import__("torch").get_num_threads(),
           "baseline_rss_mib": baseline}
    out.update(_memory(mem))
    return out


def run_child(stage: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--work", str(args.work),
           "--classes", str(args.classes), "--heldout", str(args.heldout)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        return {"status": "error", "returncode": proc.returncode, "wall_s": wall, "error": "\n".join(tail)}
    return {"status": "ok", "wall_s": wall, **json.loads(lines[-1][len(CHILD_TAG):])}


# ---------------------------------------------------------------------------------------------------
# Stage 4's inputs
# ---------------------------------------------------------------------------------------------------
def make_first_step_inputs(work: Path, classes: int) -> dict[str, Any]:
    """The distilled set (one 224 px PNG per class, RDED layout) and a random-weights ResNet-18 teacher."""
    import torch

    import common
    from rd3fast.config import IMAGENET_MEAN, IMAGENET_STD
    from rd3fast.data.sets import ImageSet, write_image_folder
    from rd3fast.engine.models import build_model, save_weights

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    distilled = work / f"distilled-c{classes}"
    if not distilled.is_dir():  # written atomically: a folder there is complete
        images, labels = common.random_images(classes, IMAGE_SIZE, classes, seed=0)
        write_image_folder(ImageSet(images, labels, [f"{c:05d}" for c in range(classes)], "synthetic"), distilled)
        out["distilled_written"] = True
    weights = work / f"teacher-resnet18-c{classes}.pth"
    if not weights.is_file():
        torch.manual_seed(0)
        model = build_model("resnet18", classes, IMAGE_SIZE)
        save_weights(weights, model, "resnet18", num_classes=classes, image_size=IMAGE_SIZE,
                     mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), note="random weights (benchmark)")
        out["teacher_written"] = True
    out["seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def rows_from(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(stage: str, value: Any, unit: str) -> None:
        rows.append({"stage": stage, "value": value, "unit": unit})

    def memory(label: str, r: dict[str, Any], workers: bool = False) -> None:
        add(f"{label}: RSS after imports / peak RSS", f"{r.get('baseline_rss_mib', 0):,.0f} / "
            f"{r.get('peak_rss_mib', 0):,.0f}", "MiB")
        add(f"{label}: peak anon / file RSS", f"{r.get('peak_anon_mib', 0):,.0f} / {r.get('peak_file_mib', 0):,.0f}",
            "MiB")
        if workers:
            add(f"{label}: largest decode worker RSS (shared pages included)", r.get("workers_peak_rss_mib"), "MiB")

    def failed(label: str, r: dict[str, Any]) -> bool:
        if r.get("status") == "ok":
            return False
        add(label, r.get("status", "error") if r.get("status") != "error" else "error (see JSON)",
            r.get("reason", "")[:60])
        return True

    tree = results["tree"]
    add("tree", f"{'built' if tree['built_now'] else 'reused'}: {args.classes} x {args.train_per_class} train, "
        f"{args.val_images} val", "files")
    if tree["built_now"]:
        add("tree build (pool JPEGs + links)", tree["build_s"], "s")
    first, second = results["listing_first"], results["listing_second"]
    if not failed("train listing, first", first):
        add(f"train listing, first (empty cache), {first['files']:,} files", first["seconds"], "s")
        memory("train listing, first", first)
    if not failed("train listing, second", second):
        add("train listing, second (warm cache)", second["seconds"], "s")
        memory("train listing, second", second)
    v1, v2 = results["val_first"], results["val_second"]
    if not failed("val decode into the cache", v1):
        add(f"val decode into the cache, {v1['images']:,} images", v1["seconds"], "s")
        add("val decode into the cache", v1["images"] / v1["seconds"], "img/s")
        memory("val decode", v1, workers=True)
        if args.val_images != 50_000:
            add("val decode, 50,000 images at this rate (estimate)", 50_000 * v1["seconds"] / v1["images"], "s")
    if not failed("val second call", v2):
        add("val second call (memory-mapped)", v2["seconds"], "s")
        memory("val second call", v2)
    h = results["heldout"]
    if not failed("held-out carving", h):
        add(f"held-out carving, {h['images']:,} images ({h['images'] // max(1, h['classes'])}/class)",
            h["seconds"], "s")
        add("held-out carving", h["images"] / h["seconds"], "img/s")
        memory("held-out carving", h, workers=True)
    f = results["first_step"]
    if f.get("status") == "skipped":
        add("first step of an rd3 run", "skipped", f.get("reason", ""))
    elif not failed("first step of an rd3 run", f):
        add("first step: process start -> end of first step", f["process_age_s"], "s")
        add("first step: start + imports", f["imports_s"], "s")
        add("first step: prepare (set, teacher, val from cache)", f["prepare_s"], "s")
        add("first step: build_engine", f["build_engine_s"], "s")
        add(f"first step: one step (batch {f['batch']}, resnet18 -> resnet18)", f["first_step_s"], "s")
        add("first step: a second step, for scale (not in the total)", f["second_step_s"], "s")
        memory("first step", f)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/rd3-imagenet-scale", help="where the tree, caches and inputs live")
    p.add_argument("--classes", type=int, default=IMAGENET_CLASSES)
    p.add_argument("--train-per-class", type=int, default=1281)
    p.add_argument("--val-images", type=int, default=50_000)
    p.add_argument("--heldout", type=int, default=10_000, help="held-out split size (a multiple of --classes)")
    p.add_argument("--skip-first-step", action="store_true", help="skip stage 4 (time to the first step)")
    p.add_argument("--build-only", action="store_true", help="build (or check) the tree, then stop")
    p.add_argument("--keep-cache", action="store_true", help="keep WORK/cache (the val entry: 7.5 GB at full size)")
    p.add_argument("--out", default=str(HERE / "results" / "imagenet_scale.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = child(args.child, args)
        print(CHILD_TAG + json.dumps(result), flush=True)
        return 0
    if args.classes < 1 or args.train_per_class < 1 or args.val_images < args.classes:
        p.error("--classes, --train-per-class >= 1 and --val-images >= --classes")
    if args.heldout <= 0 or args.heldout % args.classes or args.heldout // args.classes > args.train_per_class:
        p.error(f"--heldout must be a positive multiple of --classes ({args.classes}) with at most "
                f"--train-per-class ({args.train_per_class}) per class")
    work = Path(args.work).resolve()
    args.work = str(work)
    work.mkdir(parents=True, exist_ok=True)

    import common

    machine = common.machine_info("cpu")
    machine["ram_gib"] = ram_gib()
    head = f"{common.header(machine)} | RAM {machine['ram_gib']} GiB"
    print(f"# ImageNet-scale I/O: {args.classes} classes x {args.train_per_class} train, {args.val_images} val, "
          f"held-out {args.heldout}, work {work}\n# {head}", flush=True)

    params = tree_params(args)
    tree = build_tree(work, params)
    if tree["built_now"]:
        kb = tree["val_pool_kb"]
        print(f"# tree built in {tree['build_s']:.1f} s ({tree['pool_s']:.1f} s pool JPEGs, {tree['links_s']:.1f} s "
              f"for {tree['links']:,} links); pool {tree['pool_bytes'] / 1e6:.1f} MB, val pool JPEGs "
              f"{kb[0]}-{kb[-1]} KB (median {kb[len(kb) // 2]})", flush=True)
    if args.build_only:
        d = disk_mb(work)
        print(f"# disk: tree {d['tree']:.1f} MB (directories + CSV; its files are links), pool {d['pool']:.1f} MB")
        return 0
    settle = RACY_S - (time.time() - tree["built_at"])
    if settle > 0:
        time.sleep(settle)

    cache = work / "cache"
    env = {**os.environ, "RD3FAST_CACHE": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    results: dict[str, Any] = {"tree": tree}

    def stage(name: str, key: str, clear: str | None = None) -> dict[str, Any]:
        if clear:
            shutil.rmtree(cache / clear, ignore_errors=True)
        print(f"# {name} ...", flush=True)
        r = results[key] = run_child(name, args, env)
        if r["status"] != "ok":
            print(f"# {name} failed:\n{r.get('error')}", flush=True)
        return r

    stage("listing", "listing_first", clear="listings")
    stage("listing", "listing_second")
    stage("val", "val_first", clear="val")
    stage("val", "val_second")
    stage("heldout", "heldout")
    if args.skip_first_step:
        results["first_step"] = {"status": "skipped", "reason": "--skip-first-step"}
    elif args.classes != IMAGENET_CLASSES:
        results["first_step"] = {"status": "skipped", "reason": f"needs --classes {IMAGENET_CLASSES}"}
    elif results["val_second"].get("status") != "ok":
        results["first_step"] = {"status": "skipped", "reason": "no validation cache (stage 2 failed)"}
    else:
        print("# first step: writing the distilled set and the teacher (once) ...", flush=True)
        results["first_step_inputs"] = make_first_step_inputs(work, args.classes)
        stage("first-step", "first_step")
    results["disk_mb"] = disk_mb(work)
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)

    rows = rows_from(results, args)
    print(f"\n{head}\n")
    print(common.format_table(rows, ["stage", "value", "unit"]))
    d = results["disk_mb"]
    print(f"\n# disk under {work}: tree {d['tree']:.1f} MB (directories + CSV), pool {d['pool']:.1f} MB, "
          f"cache {d['cache']:.1f} MB ({'kept' if args.keep_cache else 'removed'})")
    settings = {k: v for k, v in vars(args).items() if k != "child"}
    settings.update(image_size=IMAGE_SIZE, resize_ratio=RATIO, tree=params)
    out = common.write_json(args.out, common.report("imagenet_scale", machine, settings, rows, quick=False,
                                                    stages=results))
    print(f"# JSON: {out}")
    errors = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "error"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
