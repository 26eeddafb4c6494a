"""One training step of post-evaluation, end to end, on one card in one run: reference vs rd3fast vs the ceiling.

For each image size (ResNet-18 at 224 px, 1000 classes, IPC 10 = 10k random images; ResNet-18 CIFAR stem
at 32 px, 100 classes, IPC 50 = 5k images) and batch size (50, 100, 256) it measures images/s of:

    ceiling_eager      model-only: teacher forward + student forward/backward + KL + AdamW on one static
                       batch (no data, no augmentation), bf16 autocast, channels_last, eager
    ceiling_graph      the same step captured once as a CUDA graph and replayed (the target's denominator)
    reference_fp32     benchmarks/reference_loop.py: RDED-style PIL + torchvision transforms in DataLoader
    reference_amp      workers, CutMix + teacher on the GPU, eager fp32 / bf16 autocast (no extra forward
                       unless --reference-extra-forward, so the work equals the rd3 preset's and the ceiling's)
    reference_rd3fast_loader   the same script with the drop-in swap (rd3fast ResidentLoader + Relabeler), bf16
    rd3fast_torch      rd3fast.engine.train.train_seeds, rd3/rd3-small preset: torch augmentation, eager step
    rd3fast_kernels    ... Triton augmentation kernels, eager step
    rd3fast_graph      ... kernels + the whole step as one CUDA graph (what `--cuda-graph auto` picks on CUDA)
    rd3fast_seq3       3 seeds one after another, each graphed (aggregate img/s of the 3 runs)
    rd3fast_k3         3 seeds trained at once (train_seeds with 3 seeds: batched students, one teacher pass)
(the seq3/k3 pair runs at 32 px batch 50 only, unless --k-everywhere.)

rd3fast variants go through the public pieces (Config from a preset, an Experiment around an in-memory
ImageSet and a random-init Relabeler, train_seeds): the numbers are of the real loop. Their windows are
the loop's own per-epoch times (each ends in a host sync) after --warmup-epochs; reference windows are
epochs too (DataLoader start-up included); ceiling windows are CUDA-event-timed runs of as many steps as
one epoch has. Every row reports the median window; "x ceiling" divides by ceiling_graph (ceiling_eager
where graphs are unavailable), "x ref" by reference_fp32.

Targets (checked at the end, meaningful on an H100/H200 only): rd3fast_graph >= 0.95 x ceiling_graph at
batch 50, 224 and 32 px; rd3fast_graph >= 4 x the faster reference at 224 px batch 50; rd3fast_k3 >= 1.5 x
rd3fast_seq3 at 32 px batch 50.

    python benchmarks/bench_step.py                       # everything (several minutes on an H200)
    python benchmarks/bench_step.py --batches 50          # the targets only
    python benchmarks/bench_step.py --quick               # CPU smoke run, < 60 s, same JSON schema
Writes <out>/bench_step.json (rewritten after every variant) and <out>/bench_step.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import reference_loop  # noqa: E402

ALL_VARIANTS = ("ceiling_eager", "ceiling_graph", "reference_fp32", "reference_amp", "reference_rd3fast_loader",
                "rd3fast_torch", "rd3fast_kernels", "rd3fast_graph", "rd3fast_seq3", "rd3fast_k3")
K_VARIANTS = ("rd3fast_seq3", "rd3fast_k3")
TEMPERATURE = 20.0


@dataclasses.dataclass
class Setting:
    size: int
    arch: str
    classes: int
    ipc: int
    preset: str


def settings_for(args: argparse.Namespace) -> list[Setting]:
    out = []
    for size in args.sizes:
        if args.quick:
            out.append(Setting(size, "convnet-d3-w32", 10, 8, "rd3-small"))
        elif size >= 128:
            out.append(Setting(size, args.arch_large, args.classes_large, args.ipc_large, "rd3"))
        else:
            out.append(Setting(size, args.arch_small, args.classes_small, args.ipc_small, "rd3-small"))
    return out


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# The model-only ceiling
# ---------------------------------------------------------------------------------------------------
def ceiling(st: Setting, batch: int, device: torch.device, *, graph: bool, steps: int, windows: int,
            warmup_steps: int) -> dict[str, Any]:
    """Teacher + student step on one static batch; eager, or captured once and replayed."""
    from rd3fast.engine.models import build_model

    name = "ceiling_graph" if graph else "ceiling_eager"
    if graph and device.type != "cuda":
        return common.result_row(name, st.size, batch, st.arch, status="skipped", note="CUDA graphs need CUDA")
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(0)
    teacher = build_model(st.arch, st.classes, st.size).to(device, memory_format=fmt).eval().requires_grad_(False)
    student = build_model(st.arch, st.classes, st.size).to(device, memory_format=fmt).train()
    x = torch.randn(batch, 3, st.size, st.size, device=device).contiguous(memory_format=fmt)
    opt_note = "AdamW foreach"
    if graph:
        lr = torch.tensor(1e-3, device=device)
        opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01, capturable=True)
    else:
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda, cache_enabled=not graph)

    def step(zero: bool = True) -> torch.Tensor:
        with torch.no_grad(), autocast():
            t = teacher(x)
        with autocast():
            s = student(x)
        loss = F.kl_div(F.log_softmax(s.float() / TEMPERATURE, 1), F.softmax(t.float() / TEMPERATURE, 1),
                        reduction="batchmean")
        if zero:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if not graph:
        ws = common.time_windows(step, device, warmup_steps=warmup_steps, steps_per_window=steps, windows=windows)
    else:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(3, warmup_steps)):
                step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # backward inside the graph writes fresh .grad on every replay
        with torch.cuda.graph(g):
            step(zero=False)
        ws = common.time_windows(g.replay, device, warmup_steps=3, steps_per_window=steps, windows=windows)
        opt_note = "AdamW capturable"
        del g
    return common.result_row(name, st.size, batch, st.arch, windows_s=ws, images_per_window=steps * batch,
                             note=f"static batch, {'bf16 channels_last' if cuda else 'fp32 (CPU)'}, {opt_note}")


# ---------------------------------------------------------------------------------------------------
# The reference loop (benchmarks/reference_loop.py, in this process)
# ---------------------------------------------------------------------------------------------------
def reference(name: str, st: Setting, batch: int, device: torch.device, data: tuple, args: argparse.Namespace,
              jpeg_root: Path | None) -> dict[str, Any]:
    opts = reference_loop.Options(
        size=st.size, batch_size=batch, classes=st.classes, ipc=st.ipc, arch=st.arch, style="rded",
        extra_forward=args.reference_extra_forward, amp=name != "reference_fp32",
        workers=args.workers, jpeg=args.reference_jpeg and name != "reference_rd3fast_loader",
        rd3fast_loader=name == "reference_rd3fast_loader", epochs=args.ref_epochs,
        warmup_epochs=args.warmup_epochs, steps=args.ref_steps, device=device.type)
    row = reference_loop.run(opts, data[0], data[1], jpeg_root=jpeg_root)
    row["variant"] = name  # (reference_amp_jpeg etc. are reported under the plain names; see note)
    return row


# ---------------------------------------------------------------------------------------------------
# rd3fast through its public pieces
# ---------------------------------------------------------------------------------------------------
RD3_VARIANTS: dict[str, dict[str, Any]] = {
    "rd3fast_torch": dict(aug_backend="torch", cuda_graph="off"),
    "rd3fast_kernels": dict(aug_backend="triton", cuda_graph="off"),
    "rd3fast_graph": dict(aug_backend="triton", cuda_graph="on"),
    "rd3fast_seq3": dict(aug_backend="triton", cuda_graph="on"),
    "rd3fast_k3": dict(aug_backend="triton", cuda_graph="on"),
}


def rd3fast_variant(name: str, st: Setting, batch: int, device: torch.device, data: tuple,
                    args: argparse.Namespace) -> dict[str, Any]:
    from rd3fast.config import IMAGENET_MEAN, IMAGENET_STD, Config, preset
    from rd3fast.data.sets import ImageSet
    from rd3fast.engine import train as T
    from rd3fast.engine.experiment import Experiment
    from rd3fast.engine.models import build_model
    from rd3fast.engine.teacher import Relabeler

    want = dict(RD3_VARIANTS[name])
    if device.type != "cuda":  # what exists off CUDA: the torch spec, eager
        if want["aug_backend"] == "triton":
            want["aug_backend"] = "torch"
            if name in ("rd3fast_kernels", "rd3fast_graph"):
                return common.result_row(name, st.size, batch, st.arch, status="skipped",
                                         note="Triton kernels / CUDA graphs need CUDA")
        want["cuda_graph"] = "off"
    fields = {f.name for f in dataclasses.fields(Config)}
    missing = [k for k in want if k not in fields]
    if missing:
        return common.result_row(name, st.size, batch, st.arch, status="api-missing",
                                 note=f"Config has no {', '.join(missing)}")
    k = args.k if name == "rd3fast_k3" else 1
    seeds = list(range(args.k)) if name in K_VARIANTS else [0]
    if k > 1 and not hasattr(T, "train_seeds"):
        return common.result_row(name, st.size, batch, st.arch, status="api-missing",
                                 note="rd3fast.engine.train has no train_seeds")
    images, labels = data
    epochs = args.warmup_epochs + args.epochs
    cfg = preset(st.preset).replace(
        epochs=epochs, batch_size=batch, image_size=st.size, num_classes=st.classes, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, student=st.arch, teacher=(st.arch,), eval_every=10**6, eval_batch_size=256,
        device=device.type, seeds=tuple(seeds), **want,
        **({"parallel_seeds": k} if "parallel_seeds" in fields else {}))
    teacher = build_model(st.arch, st.classes, st.size).to(device)
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)  # as rd3fast.engine.teacher.load_teachers does
    classes = [str(i) for i in range(st.classes)]
    train_set = ImageSet(images, labels, classes, f"random uint8 {st.size}px")
    val_set = ImageSet(images[:batch], labels[:batch], classes, "random (untimed final eval)")
    exp = Experiment(cfg=cfg, train=train_set, val=val_set, relabeler=Relabeler([teacher], [st.arch]), device=device)

    def run(group: list[int]) -> list[Any]:
        if hasattr(T, "train_seeds"):
            out = T.train_seeds(exp, group, progress=False)
        else:
            out = [T.train(exp, s, progress=False) for s in group]
        return [r[0] if isinstance(r, tuple) else r for r in out]

    groups = [seeds] if k > 1 else [[s] for s in seeds]  # k3: one call; seq3: one call per seed
    t0 = time.perf_counter()
    results = [r for g in groups for r in run(g)]
    wall = time.perf_counter() - t0
    n = len(images)
    # Per-epoch windows of the loop itself. With K seeds at once every RunResult carries the shared epoch
    # time, so the window is the first seed's and the window's images are K epochs' worth.
    runs = [results[0]] if k > 1 else results
    windows = [e["time_s"] for r in runs for e in r.epochs[args.warmup_epochs:]]
    notes = sorted({note for r in results for note in getattr(r, "notes", [])})
    return common.result_row(
        name, st.size, batch, st.arch, windows_s=windows, images_per_window=k * n,
        warmup_windows_s=[e["time_s"] for r in runs for e in r.epochs[:args.warmup_epochs]],
        wall_s=wall, wall_img_per_s=len(seeds) * epochs * n / wall,
        note=f"{st.preset}, aug {cfg.aug_backend}, graph {getattr(cfg, 'cuda_graph', 'n/a')}, seeds {seeds}"
             + (" at once" if k > 1 else "") + (f"; {'; '.join(notes)}" if notes else ""),
        config={kk: getattr(cfg, kk) for kk in ("preset", "aug_backend", "cuda_graph", "parallel_seeds", "amp",
                                                "compile_teacher", "patch_shuffle", "rrc_scale") if kk in fields})


# ---------------------------------------------------------------------------------------------------
# Ratios and targets
# ---------------------------------------------------------------------------------------------------
def add_ratios(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        same = [q for q in rows if q["size"] == r["size"] and q["batch"] == r["batch"] and q.get("img_per_s")]
        ceil = next((q for name in ("ceiling_graph", "ceiling_eager") for q in same if q["variant"] == name), None)
        ref = next((q for q in same if q["variant"] == "reference_fp32"), None)
        rate = r.get("img_per_s")
        r["x_ceiling"] = rate / ceil["img_per_s"] if rate and ceil else None
        r["ceiling_used"] = ceil["variant"] if ceil else None
        r["x_reference"] = rate / ref["img_per_s"] if rate and ref else None


def _rate(rows: list[dict[str, Any]], variant: str, size: int, batch: int) -> float | None:
    return next((r["img_per_s"] for r in rows if r["variant"] == variant and r["size"] == size
                 and r["batch"] == batch and r.get("img_per_s")), None)


def check_targets(rows: list[dict[str, Any]], sizes: list[int], batch: int, on_gpu: bool) -> list[dict[str, Any]]:
    """The issue's targets at the first batch size (50 by default); 'meaningful' only on a GPU."""
    full = "rd3fast_graph" if on_gpu else "rd3fast_torch"
    out = []

    def target(name: str, num: float | None, den: float | None, need: float, what: str) -> None:
        ratio = num / den if num and den else None
        out.append({"target": name, "ratio": ratio, "need": need, "pass": None if ratio is None else ratio >= need,
                    "what": what, "meaningful": on_gpu})

    for size in sizes:
        graph_ceiling = _rate(rows, "ceiling_graph", size, batch)
        ceil = graph_ceiling or _rate(rows, "ceiling_eager", size, batch)
        target(f"full step vs ceiling, {size} px, batch {batch}", _rate(rows, full, size, batch), ceil, 0.95,
               f"{full} / {'ceiling_graph' if graph_ceiling else 'ceiling_eager'}")
    big = max(sizes)
    refs = [v for v in (_rate(rows, "reference_fp32", big, batch), _rate(rows, "reference_amp", big, batch)) if v]
    target(f"full step vs reference, {big} px, batch {batch}", _rate(rows, full, big, batch),
           max(refs) if refs else None, 4.0, f"{full} / max(reference_fp32, reference_amp)")
    small = min(sizes)
    target(f"3 seeds at once vs 3 sequential, {small} px, batch {batch}", _rate(rows, "rd3fast_k3", small, batch),
           _rate(rows, "rd3fast_seq3", small, batch), 1.5, "rd3fast_k3 / rd3fast_seq3 (aggregate img/s)")
    return out


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=ints, default=[224, 32])
    p.add_argument("--batches", type=ints, default=[50, 100, 256])
    p.add_argument("--variants", default=",".join(ALL_VARIANTS), help="comma-separated subset of: "
                   + ", ".join(ALL_VARIANTS))
    p.add_argument("--arch-large", default="resnet18")
    p.add_argument("--arch-small", default="resnet18-cifar")
    p.add_argument("--classes-large", type=int, default=1000)
    p.add_argument("--classes-small", type=int, default=100)
    p.add_argument("--ipc-large", type=int, default=10)
    p.add_argument("--ipc-small", type=int, default=50)
    p.add_argument("--epochs", type=int, default=3, help="measured epochs (windows) per rd3fast/ceiling variant")
    p.add_argument("--ref-epochs", type=int, default=2, help="measured epochs per reference variant")
    p.add_argument("--ref-steps", type=int, default=0, help="cap reference epochs at this many steps (0: whole)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=min(16, common.usable_cores()), help="reference DataLoader workers")
    p.add_argument("--reference-jpeg", action="store_true", help="reference reads a JPEG ImageFolder each epoch")
    p.add_argument("--reference-extra-forward", action="store_true",
                   help="RDED's extra student forward in the reference")
    p.add_argument("--k", type=int, default=3, help="seeds for rd3fast_seq3 / rd3fast_k3")
    p.add_argument("--k-everywhere", action="store_true", help="seq3/k3 at every size and batch (default: smallest "
                   "size, first batch)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="runs/bench", help="folder for bench_step.json and bench_step.png")
    p.add_argument("--quick", action="store_true", help="CPU smoke run (< 60 s): 32 px ConvNet, batch 16")
    a = p.parse_args(argv)
    a.variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in a.variants if v not in ALL_VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected some of {', '.join(ALL_VARIANTS)}")
    if a.quick:
        a.sizes, a.batches, a.device, a.workers = [32], [16], "cpu", 1
        a.epochs, a.ref_epochs, a.warmup_epochs = 2, 2, 1
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.quick:
        common.quick_threads()
    device = common.pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for every variant alike (the reference scripts set it)
    machine = common.machine_info(device)
    print(common.header(machine), flush=True)
    out_dir = Path(args.out)
    json_path, png_path = out_dir / "bench_step.json", out_dir / "bench_step.png"
    rows: list[dict[str, Any]] = []
    settings = {k: v for k, v in vars(args).items()}
    started = time.perf_counter()

    def save(extra: dict[str, Any] | None = None) -> None:
        add_ratios(rows)
        common.write_json(json_path, common.report("bench_step", machine, settings, rows, quick=args.quick,
                                                   elapsed_s=time.perf_counter() - started, **(extra or {})))

    for st in settings_for(args):
        n = st.classes * st.ipc
        data = common.random_images(n, st.size, st.classes, seed=0)
        jpeg_ctx = None
        jpeg_root = None
        if args.reference_jpeg:
            import tempfile
            jpeg_ctx = tempfile.TemporaryDirectory(prefix="rd3_bench_jpeg_")
            jpeg_root = reference_loop.write_jpeg_folder(data[0], data[1], jpeg_ctx.name)
        for bi, batch in enumerate(args.batches):
            steps = math.ceil(n / batch)
            for name in args.variants:
                if name in K_VARIANTS and not args.k_everywhere and (st.size != min(args.sizes) or bi != 0):
                    continue
                t0 = time.perf_counter()
                try:
                    if name.startswith("ceiling"):
                        row = ceiling(st, batch, device, graph=name == "ceiling_graph", steps=steps,
                                      windows=args.epochs, warmup_steps=min(steps, 20))
                    elif name.startswith("reference"):
                        row = reference(name, st, batch, device, data, args, jpeg_root)
                    else:
                        row = rd3fast_variant(name, st, batch, device, data, args)
                except Exception as e:  # noqa: BLE001 - one broken variant must not lose the others
                    traceback.print_exc()
                    row = common.result_row(name, st.size, batch, st.arch, status="error",
                                            note=f"{type(e).__name__}: {e}"[:300])
                row["seconds"] = time.perf_counter() - t0
                row["images"] = n
                rows.append(row)
                rate = row.get("img_per_s")
                print(f"  [{st.size} px, batch {batch}] {name:<25} "
                      f"{f'{rate:>10,.0f} img/s' if rate else row['status']:>16}  ({row['seconds']:.1f} s)",
                      file=sys.stderr, flush=True)
                release()
                save()
        if jpeg_ctx is not None:
            jpeg_ctx.cleanup()

    targets = check_targets(rows, args.sizes, args.batches[0], device.type == "cuda")
    chart = common.bar_chart(rows, png_path, common.header(machine), group_keys=("size",), x_key="batch")
    save({"targets": targets, "chart": str(chart) if chart else None})

    print(common.header(machine))
    print(common.format_table(rows, ["size", "batch", "variant", ("img_per_s", "img/s"), ("x_ceiling", "x ceiling"),
                                     ("x_reference", "x ref"), "status"]))
    print("\nTargets" + ("" if device.type == "cuda" else " (CPU run: not meaningful, shown for the schema)") + ":")
    for t in targets:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL") if t["meaningful"] else "info"
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        print(f"  {verdict:<4}  {t['target']}: {ratio} (need >= {t['need']}; {t['what']})")
    print(f"wrote {json_path}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
