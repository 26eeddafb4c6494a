"""SRe2L's "recover" step, and CDA's curriculum version of it: images synthesized from a BatchNorm teacher.

SRe2L (Yin, Xing, Shen, NeurIPS 2023; github.com/VILA-Lab/SRe2L, ``SRe2L/recover/data_synthesis.py`` for
ImageNet, ``SRe2L/*small_dataset/recover_cifar.py`` and ``recover_tiny.py`` for CIFAR / Tiny-ImageNet)
optimizes images, starting from Gaussian noise in the teacher's normalized input space, so that the frozen
teacher (eval mode) classifies them as their target class while the statistics of each BatchNorm layer's
input over the batch match that layer's running statistics. CDA (Yin & Shen, TMLR 2024; ``CDA/recover_cda_
in1k.py``, ``recover_cda_tiny.py``) is the same loop with a curriculum on the RandomResizedCrop scale: the
minimum crop scale starts at 1 (whole image, "easy") and falls to 0.08 ("hard") over the first
``milestone`` fraction of the iterations (``crop_min_scale``). Here CDA is ``Recipe(curriculum=...)`` on
the one code path.

One optimization batch, per iteration t of T (upstream ``get_images``):

    lr_t = lr * (1 + cos(pi * t / T)) / 2                       (utils.py lr_cosine_policy, warmup 0)
    view = RandomResizedCrop(size, scale=(s_min(t), 1)) -> RandomHorizontalFlip -> roll by
           (randint(0, jitter), randint(0, jitter)) pixels       (one draw for the whole batch, as
                                                                  torchvision transforms on a 4-D tensor)
    loss = CE(teacher(view), targets)
           + r_bn * sum_l w_l (||var_l - running_var_l||_2 + ||mean_l - running_mean_l||_2)
           with w_0 = first_bn_multiplier, w_l = 1 after         (utils.py BNFeatureHook: biased variance
                                                                  over (N, H, W) of the BN layer's input)
    Adam(betas (0.5, 0.9), eps 1e-8) step on the images, then clamp them to the normalized image of [0, 1]
    (utils.py clip); the last iterate is kept ("using multicrop, save the last one").

Batches: upstream's loop is ``for ipc_id: for each chunk of batch_size classes: optimize one image per
class``, so a batch holds one IPC index of up to ``batch_size`` classes (the BN statistics are taken over
those images). Followed exactly when ``batch_size <= num_classes``. With fewer classes than ``batch_size``
(a 10-class set under the default 100) one batch holds ``batch_size // num_classes`` whole IPC rows: all
classes for several IPC indices, so every batch is still class-balanced, and a 10-class IPC-10 set is one
batch of 100 images instead of ten batches of 10 (pass ``--batch-size`` = the class count for upstream's
one-row batches).

Defaults (``Recipe``), each from the upstream files named next to it. The argparse defaults are used; the
published runs change some (``SRe2L/recover/recover.sh``: --lr 0.25 --r-bn 0.01 --iteration 4000;
``recover_cifar.sh``: --lr 0.25 --r-bn 0.01 --iteration 1000; ``CDA/README.md``: in1k --lr 0.25 --r-bn 0.01
--iteration 4000, tiny --lr 0.4 --r-bn 0.05 --iteration 4000).

Upstream choices and deliberate differences:
- Crop by image size: CIFAR-size images (<= 32 px) get no RandomResizedCrop/flip in SRe2L (recover_cifar.py
  rolls only; README_CIFAR.md: "we discard the Multi-crop Optimization ... due to the small resolution"),
  larger ones get RRC(scale (0.08, 1)) + flip (data_synthesis.py, recover_tiny.py). CDA always crops: its
  curriculum is on the crop (recover_cda_tiny.py crops 64 px images too). ``Recipe.crop`` overrides.
- The roll offset is drawn in [0, jitter] (data_synthesis.py, recover_cifar.py, CDA); recover_tiny.py alone
  draws [-jitter, jitter]. The roll is circular, as torch.roll.
- The crop is resized by bilinear interpolation without antialiasing: what torchvision 0.14 (the version
  CDA/README.md lists) does on tensors; newer torchvision antialiases by default.
- data_synthesis.py's image priors (--tv-l2 1e-4, --l2-scale 1e-5 by argparse) are left out: recover.sh
  sets both to 0 and the CIFAR, Tiny and CDA scripts have neither.
- Images are written as uint8 by rounding (upstream truncates with ``astype(np.uint8)``), as PNG (not JPEG).
- All randomness (noise, crop boxes, flips, rolls, real-image picks) comes from one generator seeded with
  ``seed``, so a run is reproducible on the CPU (GPU convolutions may add nondeterminism of their own).
- Grayscale sets (1 channel) are optimized as one channel and repeated to the teacher's 3 input channels
  (through each channel's mean/std), so the output stays grayscale like the real set.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.sets import ImageSet
from ..engine.aug import sample_rrc_boxes
from ..engine.teacher import Relabeler
from ..errors import RD3Error
from ..progress import bar

ADAM_BETAS = (0.5, 0.9)  # every recover script: optim.Adam([inputs], lr, betas=[0.5, 0.9], eps=1e-8)
ADAM_EPS = 1e-8
LR_WARMUP = 0  # every recover script: lr_cosine_policy(args.lr, 0, iterations)  "0 - do not use warmup"
CROP_SCALE_END = 0.08  # CDA/recover_cda_in1k.py min_crop after the curriculum (torchvision's RRC default)
CROP_SCALE_MAX = 1.0  # CDA/recover_cda_in1k.py max_crop, and where the curriculum starts
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default ratio (no script changes it)
FLIP_P = 0.5  # transforms.RandomHorizontalFlip() default
CURRICULA = ("step", "linear", "cosine")  # CDA --easy2hard-mode choices
CROPS = ("auto", "rrc", "none")
INITS = ("noise", "real")
SMALL_CROP_MAX_SIZE = 32  # recover_cifar.py (32 px) crops nothing; recover_tiny.py (64 px) does
SMALL_JITTER_MAX_SIZE = 64  # jitter 4 at 32 and 64 px (recover_cifar.py, recover_tiny.py), 32 at 224 px


@dataclass(frozen=True)
class Recipe:
    """The knobs of one recover run; the defaults are upstream's (file of each in the comment)."""

    # --iteration default of SRe2L/recover/data_synthesis.py, *small_dataset/recover_cifar.py, recover_tiny.py
    # and CDA/recover_cda_*.py (the .sh / README runs use 4000 on ImageNet and Tiny, 1000 on CIFAR).
    iterations: int = 1000
    lr: float = 0.1  # --lr default of the same files (recover.sh and recover_cifar.sh run 0.25)
    r_bn: float = 0.05  # --r-bn default of the same files (recover.sh and recover_cifar.sh run 0.01)
    first_bn_multiplier: float = 10.0  # --first-bn-multiplier default of the same files
    batch_size: int = 100  # --batch-size default of the same files (images optimized together)
    # None: 32 above 64 px (data_synthesis.py, recover_cda_in1k.py: 224 px), else 4 (recover_cifar.py,
    # recover_tiny.py, recover_cda_tiny.py: 32 and 64 px).
    jitter: int | None = None
    # "auto": SRe2L crops (RRC + flip) above 32 px only (recover_cifar.py has no crop, recover_tiny.py and
    # data_synthesis.py do); CDA always crops. "rrc" / "none" force it.
    crop: str = "auto"
    # CDA's --easy2hard-mode (recover_cda_in1k.py: step | linear | cosine, default cosine); None = SRe2L's
    # fixed scale (0.08, 1).
    curriculum: str | None = None
    # CDA's --milestone: the fraction of the iterations the curriculum spans. 1 as in every CDA/README.md
    # run; the argparse default 0 would switch the curriculum off (CDA would equal SRe2L).
    milestone: float = 1.0
    init: str = "noise"  # every upstream script starts from torch.randn; "real": a real image of the class

    def check(self) -> None:
        """RD3Error naming the flag of the first out-of-range knob."""
        bad = [(self.iterations < 0, "--iterations", "an integer >= 0", self.iterations),
               (not (self.lr > 0 and math.isfinite(self.lr)), "--lr", "a finite number > 0", self.lr),
               (not (self.r_bn >= 0 and math.isfinite(self.r_bn)), "--r-bn", "a finite number >= 0", self.r_bn),
               (not (self.first_bn_multiplier >= 0 and math.isfinite(self.first_bn_multiplier)),
                "--first-bn-multiplier", "a finite number >= 0", self.first_bn_multiplier),
               (self.batch_size < 1, "--batch-size", "an integer >= 1", self.batch_size),
               (self.jitter is not None and self.jitter < 0, "--jitter", "an integer >= 0", self.jitter),
               (self.crop not in CROPS, "--crop", " | ".join(CROPS), self.crop),
               (self.curriculum is not None and self.curriculum not in CURRICULA, "--easy2hard-mode",
                " | ".join(CURRICULA), self.curriculum),
               (not 0 <= self.milestone <= 1, "--milestone", "a number in [0, 1] (CDA asserts it)", self.milestone),
               (self.init not in INITS, "--init", " | ".join(INITS), self.init)]
        for is_bad, flag, expected, value in bad:
            if is_bad:
                raise RD3Error(f"{flag}: expected {expected}, got {value!r}")
        if self.curriculum is not None and self.crop == "none":
            raise RD3Error("--crop none: CDA's curriculum is on the RandomResizedCrop scale; it needs the crop")

    def jitter_for(self, size: int) -> int:
        return self.jitter if self.jitter is not None else (4 if size <= SMALL_JITTER_MAX_SIZE else 32)

    def crops_at(self, size: int) -> bool:
        if self.crop != "auto":
            return self.crop == "rrc"
        return self.curriculum is not None or size > SMALL_CROP_MAX_SIZE


def crop_min_scale(iteration: int, iterations: int, curriculum: str | None, milestone: float = 1.0) -> float:
    """The RandomResizedCrop min scale at ``iteration`` (0-based) of ``iterations``: CDA's easy-to-hard
    curriculum (CDA/recover_cda_in1k.py get_images). Before ``milestone * iterations``: "step" keeps 1 (whole
    image), "linear" falls from 1 towards 0.08 as 0.08 + 0.92 (1 - t / span), "cosine" as 0.08 + 0.92 (1 +
    cos(pi t / span)) / 2; from there on, and always without a curriculum (SRe2L), 0.08."""
    span = milestone * iterations
    if curriculum is None or iteration >= span:
        return CROP_SCALE_END
    if curriculum == "step":
        return CROP_SCALE_MAX
    done = iteration / span
    fall = 1 - done if curriculum == "linear" else (1 + math.cos(math.pi * done)) / 2
    return CROP_SCALE_END + (CROP_SCALE_MAX - CROP_SCALE_END) * fall


def cosine_lr(base_lr: float, iteration: int, iterations: int, warmup: int = LR_WARMUP) -> float:
    """utils.py lr_cosine_policy(base_lr, warmup, iterations) at ``iteration``, set before that step."""
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / (iterations - warmup))) * base_lr


# ---------------------------------------------------------------------------------------------------
# The BatchNorm statistics loss
# ---------------------------------------------------------------------------------------------------
class BNMatch:
    """Forward hooks on every BatchNorm2d of ``model`` (with running statistics). After a forward,
    ``loss(first_multiplier)`` is SRe2L's R_BN of that batch: sum over layers of (||var - running_var||_2 +
    ||mean - running_mean||_2), the first layer's term times ``first_multiplier`` (utils.py BNFeatureHook).
    Use as a context manager: the hooks are removed on exit."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        # BatchNorm2d only, as upstream's hook loop; timm's BatchNormAct2d is a subclass.
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None]
        if not self.layers:
            raise RD3Error(f"teacher {arch} has no BatchNorm layer: SRe2L/CDA recover matches BatchNorm running "
                           "statistics; use a BatchNorm teacher such as convnet-d3-bn or resnet18-cifar")
        self.terms: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "BNMatch":
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, i: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].float()
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            self.terms[i] = (torch.linalg.vector_norm(module.running_var - var)
                             + torch.linalg.vector_norm(module.running_mean - mean))
        return hook

    def loss(self, first_multiplier: float) -> torch.Tensor:
        if any(t is None for t in self.terms):
            raise RuntimeError("BNMatch.loss before a forward pass through the model")
        return sum(t * (first_multiplier if i == 0 else 1.0) for i, t in enumerate(self.terms))


# ---------------------------------------------------------------------------------------------------
# Normalized image space
# ---------------------------------------------------------------------------------------------------
class Space:
    """The space the images are optimized in: the teacher's normalized input, with the data's channel count.
    Grayscale images are one channel there (normalized with the teacher's first channel) and fed to the
    teacher repeated to 3 channels, each through its own mean/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device) -> None:
        m3, s3 = _three(mean, "mean"), _three(std, "std")
        if not all(s > 0 for s in s3):
            raise RD3Error(f"--std: expected values > 0, got {list(std)}")
        self.channels = channels
        m = torch.tensor(m3[:channels], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(s3[:channels], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.mean, self.std = m, s
        self.lo, self.hi = -m / s, (1 - m) / s  # utils.py clip: pixels in [0, 1]
        tm = torch.tensor(m3, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        ts = torch.tensor(s3, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # x_teacher = (p - tm) / ts with p = x * s + m: a per-channel multiply-add (identity for 3 channels).
        self.scale, self.shift = s / ts, (m - tm) / ts
        self.identity = channels == 3 or (torch.allclose(self.scale, torch.ones_like(self.scale))
                                          and torch.allclose(self.shift, torch.zeros_like(self.shift)))

    def to_teacher(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 3:
            return x
        x = x.expand(-1, 3, -1, -1)
        return x if self.identity else torch.addcmul(self.shift, x, self.scale)

    def from_uint8(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.mean.device, torch.float32) / 255.0 - self.mean) / self.std

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def _three(values: Sequence[float], what: str) -> list[float]:
    v = [float(x) for x in values]
    if len(v) == 1:
        return v * 3
    if len(v) != 3:
        raise RD3Error(f"--{what}: expected 1 or 3 values, got {len(v)}")
    return v


@torch.no_grad()
def bn_loss(teacher: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
            first_bn_multiplier: float = Recipe.first_bn_multiplier, arch: str = "") -> float:
    """R_BN of uint8 ``images`` (N, C, H, W) as one batch under the teacher (eval mode), unaugmented."""
    model = _single_model(teacher)
    dev = next(model.parameters()).device
    space = Space(mean, std, images.shape[1], dev)
    with _frozen(model), BNMatch(model, arch or type(model).__name__) as match:
        model(space.to_teacher(space.from_uint8(images)))
        return float(match.loss(first_bn_multiplier))


# ---------------------------------------------------------------------------------------------------
# The recover loop
# ---------------------------------------------------------------------------------------------------
def recover(teacher: nn.Module, real: ImageSet, ipc: int, mean: Sequence[float], std: Sequence[float], *,
            recipe: Recipe = Recipe(), seed: int = 0, device: torch.device | str = "cpu", progress: bool = True,
            arch: str = "") -> ImageSet:
    """``ipc`` synthesized uint8 images per class of ``real`` (which gives the classes, the image size and
    channels, and with ``init="real"`` the starting images), class-major. ``teacher``: a BatchNorm model
    (or a one-teacher Relabeler) taking 3-channel inputs normalized with ``mean``/``std``; ``arch`` names it
    in errors. See the module docstring for the loop, the batches and the defaults."""
    recipe.check()
    if ipc < 1:
        raise RD3Error(f"--ipc: expected an integer >= 1, got {ipc}")
    model = _single_model(teacher)
    match = BNMatch(model, arch or type(model).__name__)  # the no-BatchNorm error comes before any work
    dev = torch.device(device)
    model.to(dev)
    _, channels, height, width = real.images.shape
    k = real.num_classes
    space = Space(mean, std, channels, dev)
    gen = torch.Generator().manual_seed(seed)
    x0 = _initial(real, ipc, recipe.init, gen, space)  # (ipc * k, C, H, W) on the CPU, IPC-major
    targets = torch.arange(k).repeat(ipc)
    batches = batch_slices(k, ipc, recipe.batch_size)
    clock = _Clock(len(batches) * recipe.iterations, progress, f"{'cda' if recipe.curriculum else 'sre2l'} "
                   f"recover: {len(batches)} batch(es) x {recipe.iterations} iterations on {dev.type}")
    out = torch.empty(ipc * k, channels, height, width, dtype=torch.uint8)
    with _frozen(model), match:
        for sl in batches:
            x = x0[sl].to(dev).requires_grad_(True)
            _optimize(model, match, x, targets[sl].to(dev), recipe, space, gen, clock.tick)
            if not bool(torch.isfinite(x).all()):  # one check per batch; clamping keeps a NaN a NaN
                raise RD3Error(f"recover: the images of batch {sl.start // len(x) + 1} became NaN/inf (a diverging "
                               f"--lr {recipe.lr} or --r-bn {recipe.r_bn}, or a teacher with non-finite weights); "
                               "nothing written")
            out[sl] = space.to_uint8(x.detach()).cpu()
    clock.close()
    order = torch.arange(ipc * k).view(ipc, k).t().reshape(-1)  # IPC-major -> class-major
    name = f"{'cda' if recipe.curriculum else 'sre2l'}-ipc{ipc}"
    return ImageSet(out[order].contiguous(), targets[order].clone(), list(real.classes), name)


def batch_slices(num_classes: int, ipc: int, batch_size: int) -> list[slice]:
    """Slices of the IPC-major list (index = ipc_id * num_classes + class): upstream's chunks of
    ``batch_size`` classes of one IPC index, or ``batch_size // num_classes`` whole IPC rows per batch
    when all classes fit (the module docstring says why)."""
    if batch_size < num_classes:
        return [slice(i * num_classes + lo, i * num_classes + min(lo + batch_size, num_classes))
                for i in range(ipc) for lo in range(0, num_classes, batch_size)]
    rows = batch_size // num_classes
    return [slice(r * num_classes, min(r + rows, ipc) * num_classes) for r in range(0, ipc, rows)]


def _initial(real: ImageSet, ipc: int, init: str, gen: torch.Generator, space: Space) -> torch.Tensor:
    """Starting images in the normalized space, IPC-major: N(0, 1) noise (upstream's torch.randn), or
    ``ipc`` distinct real images per class drawn with the generator."""
    k = real.num_classes
    _, c, h, w = real.images.shape
    if init == "noise":
        return torch.randn(ipc * k, c, h, w, generator=gen)
    picks = []
    for cls in range(k):
        members = torch.nonzero(real.labels == cls).flatten()
        if len(members) < ipc:
            raise RD3Error(f"--init real with --ipc {ipc}: class {real.classes[cls]!r} of {real.source} has only "
                           f"{len(members)} images")
        picks.append(members[torch.randperm(len(members), generator=gen)[:ipc]])
    index = torch.stack(picks, dim=1).reshape(-1)  # (ipc, k) -> IPC-major
    return space.from_uint8(real.images[index]).cpu()


def _optimize(model: nn.Module, match: BNMatch, x: torch.Tensor, targets: torch.Tensor, recipe: Recipe,
              space: Space, gen: torch.Generator, tick: Callable[[], None]) -> None:
    """Upstream's get_images inner loop on one batch; ``x`` (normalized, requires grad) is updated in place."""
    size = x.shape[-1]
    jitter, crop = recipe.jitter_for(size), recipe.crops_at(size)
    opt = torch.optim.Adam([x], lr=recipe.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    for t in range(recipe.iterations):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(recipe.lr, t, recipe.iterations)
        scale = crop_min_scale(t, recipe.iterations, recipe.curriculum, recipe.milestone) if crop else None
        view = jittered(x, scale, jitter, gen)
        opt.zero_grad(set_to_none=True)
        logits = model(space.to_teacher(view))
        loss = F.cross_entropy(logits, targets) + recipe.r_bn * match.loss(recipe.first_bn_multiplier)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(space.lo, space.hi)  # utils.py clip, after every step
        tick()


def jittered(x: torch.Tensor, min_scale: float | None, jitter: int, gen: torch.Generator) -> torch.Tensor:
    """One augmented view of the whole batch (one random draw shared by all images, as torchvision
    transforms applied to a 4-D tensor): RandomResizedCrop(size, scale=(min_scale, 1)) + horizontal flip
    when ``min_scale`` is given, then a circular roll by (randint(0, jitter), randint(0, jitter))."""
    _, _, h, w = x.shape
    if min_scale is not None:
        top, left, ch, cw = sample_rrc_boxes(1, h, w, (min_scale, CROP_SCALE_MAX), CROP_RATIO, gen)[0].tolist()
        # Bilinear without antialiasing: torchvision 0.14's tensor resize (see the module docstring).
        x = F.interpolate(x[:, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                          align_corners=False, antialias=False)
        if float(torch.rand((), generator=gen)) < FLIP_P:
            x = x.flip(-1)
    dy, dx = torch.randint(0, jitter + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3)) if (dy or dx) else x


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def _single_model(teacher: nn.Module) -> nn.Module:
    """The model to differentiate through: a Relabeler runs its teachers under inference_mode, so recover
    takes its one teacher out (the Relabeler must feed it unconverted inputs)."""
    if not isinstance(teacher, Relabeler):
        return teacher
    if len(teacher.teachers) != 1:
        raise RD3Error(f"recover uses one teacher (as SRe2L/CDA); got {len(teacher.teachers)}: "
                       f"{', '.join(teacher.names)}")
    if teacher.convert[0]:
        raise RD3Error("recover: pass the teacher's own mean/std instead of an input conversion")
    return teacher.teachers[0]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on its running statistics, which are the targets) and no parameter gradients,
    restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        model.train(was_training)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


class _Clock:
    """Steps through the progress bar, and once, after a few timed iterations, prints the estimated total
    time (upstream's defaults can take long on a CPU); both silent with progress off."""

    PROBE = 5  # iterations timed after the first (which pays one-off set-up costs)

    def __init__(self, total: int, progress: bool, what: str) -> None:
        self.total, self.progress, self.what = total, progress, what
        self._ticks = iter(bar(range(total), total=total, desc="recover", unit="it", enabled=progress))
        self.done, self._t1 = 0, 0.0

    def tick(self) -> None:
        next(self._ticks, None)
        self.done += 1
        if self.done == 1:
            self._t1 = time.perf_counter()
        elif self.done == 1 + self.PROBE and self.progress:
            per = (time.perf_counter() - self._t1) / self.PROBE
            _say(f"{self.what}: about {_duration(per * self.total)}")

    def close(self) -> None:
        for _ in self._ticks:  # exhausting a tqdm iterator closes its bar
            pass


def _say(line: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)  # does not break a bar that is being drawn
    except ImportError:
        print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
