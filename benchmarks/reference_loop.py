"""The post-evaluation loop as users run it today (RDED / SRe2L style), timed: the baseline rd3fast is measured against.

Written from reading LINs-lab/RDED ``validation/main.py`` + ``validation/utils.py`` (and VILA-Lab/SRe2L
``SRe2L/validate/train_FKD.py``), not copied. This path imports nothing from rd3fast.

    data       images as PIL in RAM (RDED's ImageFolder(mem=True)), or ``--jpeg``: a temporary JPEG
               ImageFolder decoded every epoch; random uint8 images, no downloads
    transform  in DataLoader workers (torchvision, per image, CPU):
                 rded:  ToTensor -> ShufflePatches(factor) -> RandomResizedCrop(size, scale=(1/factor, 1),
                        antialias=True) -> RandomHorizontalFlip -> Normalize(ImageNet)
                 sre2l: RandomResizedCrop(size, scale=(0.08, 1)) on PIL -> RandomHorizontalFlip -> ToTensor
                        -> Normalize
    per step   on the GPU: CutMix (one rand_bbox box per batch, beta 1, pasted in place from a random
               permutation); RDED's extra no-grad train-mode student forward (``--extra-forward``, on by
               default for rded); teacher(mix_images) under no_grad; KLDivLoss(batchmean)(log_softmax(s/T),
               softmax(t/T)), T=20; AdamW(1e-3, wd 0.01, no decay on BN/bias); ``loss.item()`` every step
               (upstream's AverageMeter); LambdaLR cosine stepped per epoch; DataLoader workers re-forked
               every epoch (upstream does not keep them).
    precision  eager fp32 (upstream), or ``--amp``: bf16 autocast for the teacher and student forwards.

Timing: one window per epoch (DataLoader start-up included, as users pay it), ``--warmup-epochs`` first,
median of ``--epochs`` measured windows; ``--steps N`` caps an epoch at N steps.

Drop-in rd3fast (``--rd3fast-loader``): the same loop with the DataLoader and the teacher call swapped for
rd3fast's GPU-resident loader (augmentation + CutMix on the device) and its relabeler. In a user's script
the whole change is (``images_uint8``: the distilled set as uint8 N x 3 x H x W, e.g.
``rd3fast.data.sets.load_distilled(root).images``, or ``torch.stack([pil_to_tensor(im) for im in pil_images])``)::

    -    loader = DataLoader(dataset, batch_size=50, shuffle=True, num_workers=16, pin_memory=True)
    +    from rd3fast import AugSpec, Relabeler, ResidentLoader
    +    spec = AugSpec(size=224, mean=MEAN, std=STD, patch_shuffle=2, rrc_scale=(0.5, 1.0), mix="cutmix")
    +    loader = ResidentLoader(images_uint8, labels, spec, batch_size=50, device="cuda")
    +    relabel = Relabeler([teacher])
         for epoch in range(epochs):
    -        for images, labels in loader:
    -            images, labels = images.cuda(), labels.cuda()
    -            with torch.no_grad():
    -                mix_images = cutmix(images)
    -                soft = teacher(mix_images)
    +        for batch in loader:
    +            mix_images, labels = batch.x, batch.y
    +            soft = relabel(mix_images)
                 ...  # student forward, loss, backward, step: unchanged

(``Relabeler`` runs the teacher in eval mode under inference_mode, bf16 autocast on CUDA, and returns
float32 logits; ``batch.x`` is normalized, PatchShuffled, cropped, flipped and CutMixed; ``batch.lam`` and
``batch.y_partner`` give the mixed hard target if the loss needs one.) ``train_epoch`` below holds both
versions side by side.

    python benchmarks/reference_loop.py --size 224 --batch-size 50 --workers 16 [--amp] [--jpeg]
    python benchmarks/reference_loop.py --size 224 --batch-size 50 --rd3fast-loader
    python benchmarks/reference_loop.py --quick          # CPU smoke run, < 60 s
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: timing, tables, JSON; no rd3fast)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------
# Transforms (run in DataLoader workers)
# ---------------------------------------------------------------------------------------------------
class ShufflePatches(nn.Module):
    """RDED's ShufflePatches as a torchvision-style transform on a C x H x W tensor (after ToTensor).

    The width is cut into ``factor`` strips of W // factor columns (remainder columns are dropped, as
    upstream's loop does), the strips are put in a random order (Python's ``random``, seeded per
    DataLoader worker) and concatenated; then the same is done to the rows. factor 1 is a copy.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def _shuffle_last_axis(self, img: torch.Tensor) -> torch.Tensor:
        t = img.shape[-1] // self.factor
        strips = [img[..., k * t:(k + 1) * t] for k in range(self.factor)]
        random.shuffle(strips)
        return torch.cat(strips, -1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = self._shuffle_last_axis(img)  # column strips
        return self._shuffle_last_axis(img.transpose(-1, -2)).transpose(-1, -2)  # row strips

    def __repr__(self) -> str:
        return f"{type(self).__name__}(factor={self.factor})"


def build_transform(style: str, size: int, factor: int) -> transforms.Compose:
    normalize = transforms.Normalize(mean=MEAN, std=STD)
    if style == "rded":
        return transforms.Compose([
            transforms.ToTensor(),
            ShufflePatches(factor),
            transforms.RandomResizedCrop(size, scale=(1 / factor, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            normalize,
        ])
    return transforms.Compose([  # sre2l: the crop on the PIL image
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])


class InMemoryImages(torch.utils.data.Dataset):
    """RDED's ImageFolder(mem=True): decoded PIL images kept in RAM, the transform applied per access."""

    def __init__(self, images: list[Image.Image], targets: list[int], transform: Any) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.targets[i]


def to_pil(images_u8: torch.Tensor) -> list[Image.Image]:
    hwc = images_u8.permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(a, "RGB") for a in hwc]


def write_jpeg_folder(images_u8: torch.Tensor, labels: torch.Tensor, root: str | Path, quality: int = 90) -> Path:
    """RDED's layout: root/00000/xxx.jpg, one folder per class."""
    root = Path(root)
    for i, (img, y) in enumerate(zip(to_pil(images_u8), labels.tolist())):
        d = root / f"{y:05d}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:06d}.jpg", quality=quality)
    return root


# ---------------------------------------------------------------------------------------------------
# Models (torchvision; the CIFAR stem and the literature's ConvNet written here, no rd3fast)
# ---------------------------------------------------------------------------------------------------
class ConvNet(nn.Module):
    """conv3x3(width) -> instance norm (GroupNorm, one group per channel) -> ReLU -> avgpool 2, x depth; linear."""

    def __init__(self, num_classes: int, size: int, depth: int = 3, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            c, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(name: str, num_classes: int, size: int) -> nn.Module:
    """resnet18 (any torchvision name), resnet18-cifar (RDED's ResNet18_modified: 3x3 conv1, no max-pool),
    convnet-dN-wW."""
    m = re.fullmatch(r"convnet(?:-d(\d+))?(?:-w(\d+))?", name)
    if m:
        return ConvNet(num_classes, size, int(m.group(1) or 3), int(m.group(2) or 128))
    if name.endswith(("-cifar", "_modified")):
        model = torchvision.models.get_model(re.sub(r"(-cifar|_modified)$", "", name), weights=None,
                                             num_classes=num_classes)
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def get_parameters(model: nn.Module) -> list[dict[str, Any]]:
    """RDED/SRe2L: weight decay only on weight tensors with more than one dimension."""
    decay = [p for n, p in model.named_parameters() if "weight" in n and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if not ("weight" in n and p.ndim > 1)]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------
# The step pieces that run on the GPU
# ---------------------------------------------------------------------------------------------------
def cutmix(images: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """In place: one rand_bbox box per batch (lam ~ Beta(beta, beta), sides int(side * sqrt(1 - lam)),
    centre uniform, clipped), filled from a random permutation of the batch. numpy draws, like upstream."""
    b, _, h, w = images.shape
    partner = torch.randperm(b, device=images.device)
    cut = math.sqrt(1.0 - np.random.beta(beta, beta))
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = np.random.randint(h), np.random.randint(w)
    y1, y2 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x1, x2 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    images[:, :, y1:y2, x1:x2] = images[partner, :, y1:y2, x1:x2]
    return images


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    k = min(max(topk), logits.shape[1])
    pred = logits.topk(k, 1).indices
    hit = pred == target[:, None]
    return [hit[:, :min(t, k)].any(1).float().mean() * 100 for t in topk]


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
@dataclass
class Options:
    size: int = 224
    batch_size: int = 50
    classes: int = 1000
    ipc: int = 10  # images per class (random uint8)
    arch: str = "resnet18"  # student
    teacher_arch: str = ""  # "": same as the student
    style: str = "rded"  # rded | sre2l
    factor: int = 0  # ShufflePatches factor; 0: 2 at >= 128 px, else 1 (RDED's ImageNet / CIFAR scripts)
    extra_forward: bool | None = None  # RDED's extra no-grad student forward; None: on for rded
    amp: bool = False  # bf16 autocast for teacher and student forwards (CUDA)
    workers: int = 4
    jpeg: bool = False  # JPEG ImageFolder decoded each epoch instead of PIL images in RAM
    rd3fast_loader: bool = False  # the drop-in swap
    epochs: int = 2  # measured epochs
    warmup_epochs: int = 1
    steps: int = 0  # cap on steps per epoch; 0: whole epochs
    temperature: float = 20.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    cutmix_beta: float = 1.0
    seed: int = 0
    device: str = "auto"

    def resolved(self) -> "Options":
        o = Options(**asdict(self))
        o.teacher_arch = o.teacher_arch or o.arch
        o.factor = o.factor or (2 if o.size >= 128 else 1)
        if o.style == "sre2l":
            o.factor = 1
        if o.extra_forward is None:
            o.extra_forward = o.style == "rded"
        return o

    @property
    def variant(self) -> str:
        if self.rd3fast_loader:
            return "reference_rd3fast_loader"
        return "reference_" + ("amp" if self.amp else "fp32") + ("_jpeg" if self.jpeg else "")


def train_epoch(opts: Options, loader: Any, teacher: nn.Module, relabel: Any, student: nn.Module,
                optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """One epoch of the RDED/SRe2L step; returns the number of images trained on."""
    kl = nn.KLDivLoss(reduction="batchmean")
    T = opts.temperature

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if opts.amp and device.type == "cuda" \
            else contextlib.nullcontext()

    teacher.eval()
    student.train()
    seen, loss_sum = 0, 0.0
    for step, item in enumerate(loader):
        if opts.steps and step >= opts.steps:
            break
        if opts.rd3fast_loader:  # drop-in: batch augmented + CutMixed on the GPU, relabeled by rd3fast
            mix_images, labels = item.x, item.y
            soft = relabel(mix_images)
        else:  # reference: worker-augmented CPU batch; CutMix and the teacher on the GPU
            images, labels = item
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.no_grad(), autocast():
                mix_images = cutmix(images, opts.cutmix_beta)
                soft = teacher(mix_images)
        with torch.no_grad(), autocast():
            if opts.extra_forward:  # RDED: a train-mode student forward (BN statistics update), no grad
                pred_label = student(mix_images)
            soft_mix_label = F.softmax(soft.float() / T, dim=1)
        optimizer.zero_grad()
        with autocast():
            pred_mix_label = student(mix_images)
        loss = kl(F.log_softmax(pred_mix_label.float() / T, dim=1), soft_mix_label)
        loss.backward()
        optimizer.step()
        n = mix_images.shape[0]
        loss_sum += loss.item() * n  # upstream's AverageMeter: one host sync per step
        if opts.extra_forward:
            prec1, prec5 = accuracy(pred_label.float(), labels)
            prec1.item(), prec5.item()
        seen += n
    return seen


def run(opts: Options, images_u8: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        jpeg_root: str | Path | None = None) -> dict[str, Any]:
    """Train ``warmup_epochs + epochs`` epochs; one result row (benchmarks/common.py) with the epoch windows."""
    opts = opts.resolved()
    device = common.pick_device(opts.device)
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    if images_u8 is None or labels is None:
        images_u8, labels = common.random_images(opts.classes * opts.ipc, opts.size, opts.classes, opts.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # upstream sets it

    teacher = build_model(opts.teacher_arch, opts.classes, opts.size).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad = False
    student = build_model(opts.arch, opts.classes, opts.size).to(device).train()
    optimizer = torch.optim.AdamW(get_parameters(student), lr=opts.lr, betas=(0.9, 0.999),
                                  weight_decay=opts.weight_decay)
    total = opts.warmup_epochs + opts.epochs
    zeta = 2.0 if opts.style == "rded" else 1.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda ep: 0.5 * (1.0 + math.cos(math.pi * ep / (zeta * total))) if ep <= total else 0.0)

    relabel = None
    with tempfile.TemporaryDirectory(prefix="rd3_ref_jpeg_") as tmp:
        if opts.rd3fast_loader:
            from rd3fast import AugSpec, Relabeler, ResidentLoader
            rrc = (1 / opts.factor, 1.0) if opts.style == "rded" else (0.08, 1.0)
            spec = AugSpec(size=opts.size, mean=MEAN, std=STD, patch_shuffle=opts.factor, rrc_scale=rrc,
                           mix="cutmix", cutmix_beta=opts.cutmix_beta)
            loader = ResidentLoader(images_u8, labels, spec, batch_size=opts.batch_size, seed=opts.seed,
                                    device=device)
            relabel = Relabeler([teacher])
        else:
            transform = build_transform(opts.style, opts.size, opts.factor)
            if opts.jpeg:
                root = jpeg_root or write_jpeg_folder(images_u8, labels, tmp)
                dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
            else:
                dataset = InMemoryImages(to_pil(images_u8), labels.tolist(), transform)
            torch.multiprocessing.set_sharing_strategy("file_system")  # as upstream
            loader = torch.utils.data.DataLoader(dataset, batch_size=opts.batch_size, shuffle=True,
                                                 num_workers=opts.workers, pin_memory=device.type == "cuda")

        windows, images = [], []
        for epoch in range(total):
            with common.Window(device) as w:
                seen = train_epoch(opts, loader, teacher, relabel, student, optimizer, device)
            scheduler.step()
            windows.append(w.seconds)
            images.append(seen)
    measured = windows[opts.warmup_epochs:]
    if opts.rd3fast_loader:
        note = "rd3fast ResidentLoader + Relabeler swapped in"
    else:
        note = f"{opts.style}, {'JPEG decoded each epoch' if opts.jpeg else 'PIL in RAM'}, workers {opts.workers}"
    note += (", extra forward" if opts.extra_forward else "") + (", bf16 autocast" if opts.amp else ", fp32")
    return common.result_row(
        opts.variant, opts.size, opts.batch_size, opts.arch, windows_s=measured,
        images_per_window=images[-1], warmup_windows_s=windows[:opts.warmup_epochs], note=note,
        options=asdict(opts))


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
QUICK = dict(size=32, batch_size=16, classes=10, ipc=8, arch="convnet-d3-w32", workers=1, epochs=2,
             warmup_epochs=1, steps=0, device="cpu")


def parse(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    d = Options()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--classes", type=int, default=d.classes)
    p.add_argument("--ipc", type=int, default=d.ipc, help="random images per class")
    p.add_argument("--arch", default=d.arch, help="student: resnet18 | resnet18-cifar | convnet-d3[-wW] | torchvision")
    p.add_argument("--teacher-arch", default=d.teacher_arch, help="default: the student's")
    p.add_argument("--style", choices=("rded", "sre2l"), default=d.style)
    p.add_argument("--factor", type=int, default=d.factor, help="ShufflePatches factor (0: 2 at >=128 px, else 1)")
    p.add_argument("--extra-forward", action=argparse.BooleanOptionalAction, default=None,
                   help="RDED's extra no-grad student forward (default: on for --style rded)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast forwards (CUDA)")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--jpeg", action="store_true", help="JPEG ImageFolder decoded each epoch (temporary folder)")
    p.add_argument("--rd3fast-loader", action="store_true", help="swap in rd3fast's ResidentLoader + Relabeler")
    p.add_argument("--epochs", type=int, default=d.epochs, help="measured epochs")
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    p.add_argument("--steps", type=int, default=d.steps, help="cap steps per epoch (0: whole epochs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="runs/bench/reference_loop.json", help="JSON file to write")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny ConvNet, 32 px, batch 16, 1 worker")
    a = p.parse_args(argv)
    values = {k: v for k, v in vars(a).items() if k in Options.__dataclass_fields__}
    if a.quick:
        values.update(QUICK)
    return Options(**values), a


def main(argv: list[str] | None = None) -> int:
    opts, args = parse(argv)
    if args.quick:
        common.quick_threads()
    machine = common.machine_info(common.pick_device(opts.device))
    row = run(opts)
    print(common.header(machine))
    print(common.format_table([row], ["variant", "size", "batch", "arch", ("img_per_s", "img/s"), "note"]))
    out = common.write_json(args.out, common.report("reference_loop", machine, asdict(opts.resolved()), [row],
                                                    quick=args.quick))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
