"""The plain RDED-style evaluation loop on a real distilled ImageFolder: the honest CPU baseline of issue 9.

What a user runs today (LINs-lab/RDED ``validation/main.py``), with the pieces of ``reference_loop.py``
(ShufflePatches, the transform, InMemoryImages, the models, get_parameters, CutMix, ``train_epoch``) on
real data instead of random images. Nothing here imports rd3fast, so it is the baseline rd3fast's CLI is
compared against (``bench_cpu.py``).

    data       the distilled ImageFolder (class subfolders, sorted; images sorted by name) read once into
               PIL RGB images in RAM (RDED's ImageFolder(mem=True)); the validation set likewise
               (Fashion-MNIST's t10k idx files, or scikit-learn digits with rd3fast's split and 16 px resize)
    transform  per image in DataLoader workers (re-forked every epoch, as upstream): ToTensor ->
               ShufflePatches(factor) -> RandomResizedCrop(size, scale=(1/factor, 1), antialias=True) ->
               RandomHorizontalFlip -> Normalize(mean, std)
    step       ``reference_loop.train_epoch``: CutMix in place on the batch, teacher under no_grad, the extra
               no-grad train-mode student forward (``--no-extra-forward`` drops it), KL(batchmean) at T,
               AdamW (get_parameters: no decay on biases/norms), ``loss.item()`` every step
    schedule   LambdaLR 0.5 (1 + cos(pi ep / (zeta E))), stepped per epoch (RDED: zeta 2)
    eval       after the epochs ``--eval-every``/``--eval-after`` select (upstream: every 10th once 80 % is
               done) and always after the last: ToTensor + Normalize in a DataLoader, batch 500

    python benchmarks/plain_loop.py --dataset fashion-mnist --distilled syn/ --teacher-weights t.pt \\
        --teacher convnet-d3-w32 --student convnet-d3-w32 --batch-size 100 --epochs 40 --eval-every 40

It ends with one line ``RESULT {json}``: first_step_s (seconds from process start, interpreter start-up
and imports included, to the first training step), epoch_times_s (training only, evaluation excluded),
images_per_epoch, top1 (last evaluation), evals, wall_s (process age at the end).
"""
from __future__ import annotations

import os
import time


def _age_from_proc() -> float | None:
    """Seconds since this process started, from /proc (Linux: start time in clock ticks after boot);
    the same computation as rd3fast/host.py ``process_age``, copied so that nothing of rd3fast is imported."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_IMPORTED = time.perf_counter()  # before the heavy imports, so they count as start-up
_AGE_AT_IMPORT = _age_from_proc()


def process_age() -> float:
    """Seconds since this process started; where /proc is missing, since this module was loaded."""
    return (_AGE_AT_IMPORT or 0.0) + time.perf_counter() - _IMPORTED


import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_loop as ref  # noqa: E402  (benchmarks/reference_loop.py: no rd3fast)

IMAGENET_MEAN, IMAGENET_STD = ref.MEAN, ref.STD
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
STATE_KEYS = ("state_dict", "model", "model_state_dict", "net", "student")
PREFIXES = ("module.", "_orig_mod.", "model.")


# ---------------------------------------------------------------------------------------------------
# Data: PIL images in RAM
# ---------------------------------------------------------------------------------------------------
def read_image_folder(root: str | Path) -> tuple[list[Image.Image], list[int], list[str]]:
    """An ImageFolder as RGB PIL images: class folders sorted by name, their images sorted by name."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SystemExit(f"{root}: no class folders (expected an ImageFolder)")
    images, targets = [], []
    for c, name in enumerate(classes):
        for f in sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTS):
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
            targets.append(c)
    return images, targets, classes


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped or plain)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
        data = f.read()
    if struct.unpack(">I", data[:4])[0] != 0x800 + ndim:
        raise SystemExit(f"{path}: not an idx file of bytes with {ndim} dimension(s)")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"fashion-mnist: {folder} has no {stem}(.gz)")


def fashion_mnist_val() -> tuple[np.ndarray, np.ndarray]:
    """The 10k test images, uint8 (N, 28, 28) gray, and labels."""
    folder = Path(os.environ.get("RD3FAST_FASHION_MNIST") or FASHION_MNIST_DIR)
    images = read_idx(_idx_file(folder, "t10k-images-idx3-ubyte"), 3)
    labels = read_idx(_idx_file(folder, "t10k-labels-idx1-ubyte"), 1)
    return images, labels.astype(np.int64)


def digits_val(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits' held-out 30 % (the split rd3fast uses), uint8 0..255 resized 8 -> ``size`` with
    torch bilinear + antialias, rounded and clamped (as rd3fast.data.sets does)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, val = train_test_split(np.arange(len(d.target)), test_size=0.3, random_state=0, stratify=d.target)
    index = np.sort(val)
    pixels = np.rint(d.images[index] * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(pixels)[:, None]
    if size != x.shape[-1]:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[:, 0].numpy(), d.target[index].astype(np.int64)


def gray_to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a, "L").convert("RGB") for a in images]


# ---------------------------------------------------------------------------------------------------
# Teacher weights (an rd3fast weights file, a checkpoint or a plain state_dict)
# ---------------------------------------------------------------------------------------------------
def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                meta = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    state = {}
    for k, v in obj.items():
        for prefix in PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state, meta


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
class FirstBatchClock:
    """Iterates the DataLoader unchanged; notes the process age when the first batch arrives."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.first_step_s: float | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for item in self.loader:
            if self.first_step_s is None:
                self.first_step_s = process_age()
            yield item


def should_eval(epoch: int, epochs: int, every: int, after: float) -> bool:
    done = epoch + 1
    return done == epochs or (done % every == 0 and done > after * epochs)


@torch.no_grad()
def validate(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    model.eval()
    hits1 = hits5 = n = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        top1, top5 = ref.accuracy(model(images), labels)
        hits1 += float(top1) * len(labels) / 100
        hits5 += float(top5) * len(labels) / 100
        n += len(labels)
    model.train()
    return {"top1": 100.0 * hits1 / n, "top5": 100.0 * hits5 / n}


def _floats(s: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in s.split(","))
    return v * 3 if len(v) == 1 else v


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--distilled", required=True, help="distilled ImageFolder (class subfolders of images)")
    p.add_argument("--dataset", required=True, choices=("fashion-mnist", "digits"), help="validation set")
    p.add_argument("--teacher-weights", required=True, help="weights file (rd3fast's, a checkpoint or a state_dict)")
    p.add_argument("--teacher", default="", help="teacher architecture [the weights file's 'arch']")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--size", type=int, default=0, help="training/eval resolution [the distilled images' size]")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-after", type=float, default=0.0, help="evaluate only once this fraction is done")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-extra-forward", action="store_true", help="drop RDED's extra no-grad student forward")
    p.add_argument("--factor", type=int, default=1, help="ShufflePatches factor (RDED: 2 on ImageNet, 1 on small sets)")
    p.add_argument("--zeta", type=float, default=2.0, help="cosine smoothing (RDED: 2)")
    p.add_argument("--temperature", type=float, default=20.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--mean", type=_floats, default=IMAGENET_MEAN, help="one or three values, comma-separated")
    p.add_argument("--std", type=_floats, default=IMAGENET_STD)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    images, targets, classes = read_image_folder(args.distilled)
    size = args.size or images[0].size[0]
    if args.dataset == "fashion-mnist":
        val_u8, val_labels = fashion_mnist_val()
    else:
        val_u8, val_labels = digits_val(size)
    val_images = gray_to_pil(val_u8)
    if val_images[0].size != (size, size):  # upstream's val transform starts with Resize + CenterCrop
        val_tf = [transforms.Resize(size, antialias=True), transforms.CenterCrop(size)]
    else:
        val_tf = []
    normalize = transforms.Normalize(mean=args.mean, std=args.std)
    train_tf = transforms.Compose([
        transforms.ToTensor(),
        ref.ShufflePatches(args.factor),
        transforms.RandomResizedCrop(size, scale=(1 / args.factor, 1.0), antialias=True),
        transforms.RandomHorizontalFlip(),
        normalize,
    ])
    torch.multiprocessing.set_sharing_strategy("file_system")  # as upstream
    pin = device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(ref.InMemoryImages(images, targets, train_tf),
                                               batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                               pin_memory=pin, drop_last=False)
    val_loader = torch.utils.data.DataLoader(
        ref.InMemoryImages(val_images, val_labels.tolist(), transforms.Compose([*val_tf, transforms.ToTensor(),
                                                                                normalize])),
        batch_size=args.eval_batch_size, shuffle=False, num_workers=args.workers, pin_memory=pin)

    state, meta = read_weights(args.teacher_weights)
    teacher_arch = args.teacher or meta.get("arch")
    if not teacher_arch:
        raise SystemExit("--teacher: the weights file names no architecture; pass --teacher ARCH")
    teacher = ref.build_model(teacher_arch, len(classes), size)
    teacher.load_state_dict(state)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad = False
    student = ref.build_model(args.student, len(classes), size).to(device).train()
    optimizer = torch.optim.AdamW(ref.get_parameters(student), lr=args.lr, betas=(0.9, 0.999),
                                  weight_decay=args.weight_decay)
    epochs, zeta = args.epochs, args.zeta
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda ep: 0.5 * (1.0 + math.cos(math.pi * ep / (zeta * epochs))) if ep <= epochs else 0.0)
    opts = ref.Options(batch_size=args.batch_size, arch=args.student, teacher_arch=teacher_arch,
                       extra_forward=not args.no_extra_forward, amp=False, workers=args.workers, steps=0,
                       temperature=args.temperature, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                       device=device.type)

    clock = FirstBatchClock(train_loader)
    epoch_times, evals, images_per_epoch = [], [], 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        images_per_epoch = ref.train_epoch(opts, clock, teacher, None, student, optimizer, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_times.append(time.perf_counter() - t0)
        if should_eval(epoch, epochs, args.eval_every, args.eval_after):
            evals.append({"epoch": epoch + 1, **validate(student, val_loader, device)})
        scheduler.step()
    result = {"first_step_s": clock.first_step_s, "epoch_times_s": epoch_times, "images_per_epoch": images_per_epoch,
              "top1": evals[-1]["top1"] if evals else None, "evals": evals, "wall_s": process_age(),
              "teacher": teacher_arch, "student": args.student, "size": size, "workers": args.workers,
              "device": device.type, "torch_threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
