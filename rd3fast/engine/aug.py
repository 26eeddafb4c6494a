"""Augmentation: all randomness in ``sample_params``, and the plain-torch ops that apply it.

This module is the specification. The Triton kernels in ``rd3fast.kernels`` read the same ``AugParams``
and must reproduce ``augment`` (exactly for index-moving ops, within a stated tolerance for resampling).

Order per batch (RDED's recipe, which RD3 uses for every method):
    uint8 images -> PatchShuffle -> crop (RandomResizedCrop | pad+RandomCrop | none) + bilinear resize
    -> horizontal flip -> normalize -> CutMix / Mixup (one box / one lambda per batch) -> dtype, layout

Upstream semantics mirrored here:
- RandomResizedCrop sampling is torchvision's ``RandomResizedCrop.get_params``: area scale ~ U(scale),
  log aspect ratio ~ U(log ratio), w = round(sqrt(area*r)), h = round(sqrt(area/r)), 10 tries, then the
  centre-crop fallback clamped to the ratio range. Vectorized over the batch (same distribution, not the
  same random stream as torchvision).
- Resizing is torch's bilinear interpolation (align_corners=False); with ``antialias=True`` it is torch's
  antialiased bilinear (PIL's triangle filter), which is what torchvision uses on tensors. Both are written
  as per-sample separable weight matrices, so crop + resize + zero padding is one batched matmul pair.
- PatchShuffle is RDED's ShufflePatches (LINs-lab/RDED): the image is cut into ``factor`` column strips of
  width W // factor (the remainder is dropped), the strips are permuted, then the same is done to rows.
- CutMix is SRe2L/RDED's ``rand_bbox``: lam ~ Beta(beta, beta), cut = sqrt(1 - lam), box centre uniform,
  sides int(size * cut) clipped to the image, lam recomputed from the clipped area. Mixup: lam ~ Beta(a, a).

DSA mode (``AugSpec.aug == "dsa"``): DC/DSA/MTT's differentiable Siamese augmentation as their evaluation
runs it (MTT ``utils.py``: ``evaluate_synset`` -> ``epoch(aug=True)`` -> ``DiffAugment(img, strategy,
param=ParamDiffAug())``; DD-Ranking ``ddranking/aug/dsa.py``: ``DSA``), on model-space images:
    images (uint8 -> normalize; float: used as they are, e.g. ZCA-whitened) -> one DSA family -> CutMix / Mixup
No PatchShuffle, crop, resize or flip of the standard path; the images keep their own size (= ``size``).
- ``aug_mode 'S'`` with seed -1: ONE family per batch, drawn uniformly from the strategy's ``_``-separated
  names (``torch.randint(0, len(families), (1,))``; a repeated name counts twice; ``none`` = identity); every
  parameter of that family is then drawn per sample (seed -1 is ``batchmode``/``siamese`` False).
- ``ParamDiffAug`` values: scale 1.2, rotate 15 degrees, crop pad 0.125, cutout 0.5, flip 0.5,
  brightness 1.0, saturation 2.0, contrast 0.5.
- color = ``rand_brightness`` -> ``rand_saturation`` -> ``rand_contrast``: x + (b - 0.5) * 1.0; then
  (x - mean_c) * (s * 2.0) + mean_c with the mean over channels; then (x - mean) * (c + 0.5) + mean with the
  per-sample mean over C, H, W; b, s, c ~ U(0, 1).
- scale (``rand_scale``): sx, sy ~ U(1/1.2, 1.2), theta = [[sx, 0, 0], [0, sy, 0]]; rotate (``rand_rotate``):
  t ~ U(-15, 15) degrees, theta = [[cos t, -sin t, 0], [sin t, cos t, 0]]; both resample with
  ``F.affine_grid`` / ``F.grid_sample`` (align_corners=True, bilinear, zero padding).
- flip (``rand_flip``): mirror along W where u < 0.5.
- crop (``rand_crop``): shifts t2 ~ U{-s2..s2}, t3 ~ U{-s3..s3} with s = int(size * 0.125 + 0.5) (``x`` is
  dim 2, ``y`` dim 3); output (i, j) reads the 1-pixel zero-padded image at clamp(i + t2 + 1, 0, H + 1),
  clamp(j + t3 + 1, 0, W + 1): a translation with zeros coming in.
- cutout (``rand_cutout``): side k = int(size * 0.5 + 0.5) per axis, centre o ~ U{0 .. size - 1 + (1 - k % 2)},
  zeroed rows clamp(o - k // 2 + [0, k), 0, size - 1) (likewise columns), applied as x * mask.
The draws come from the step's CPU generator (same distributions, not upstream's random stream).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DSA_FAMILIES, Config
from ..data.pixels import normalize
from .transfer import to_device


@dataclass(frozen=True)
class AugSpec:
    """The augmentation part of a Config, resolved to pixels."""

    size: int  # output side (square)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_shuffle: int = 1
    crop: str = "rrc"
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = 0
    antialias: bool = True
    flip_p: float = 0.5
    mix: str = "none"
    cutmix_beta: float = 1.0
    mixup_alpha: float = 0.8
    mix_prob: float = 1.0
    aug: str = "standard"  # standard: the pipeline above | dsa: DC/MTT DiffAugment, then mix
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"

    def __post_init__(self) -> None:
        if self.aug not in ("standard", "dsa"):
            raise ValueError(f"aug: expected standard or dsa, got {self.aug!r}")
        dsa_families(self.dsa_strategy)  # raises on an unknown family

    @classmethod
    def from_config(cls, cfg: Config, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> "AugSpec":
        # EDC builds a shuffled patch list and then uses the unshuffled one: the shuffle is a no-op there.
        factor = 1 if cfg.edc_noop_shuffle else cfg.patch_shuffle
        return cls(size=size, mean=tuple(mean), std=tuple(std), patch_shuffle=factor, crop=cfg.crop,
                   rrc_scale=tuple(cfg.rrc_scale), rrc_ratio=tuple(cfg.rrc_ratio), crop_padding=cfg.crop_padding,
                   antialias=cfg.antialias, flip_p=cfg.flip_p, mix=cfg.mix, cutmix_beta=cfg.cutmix_beta,
                   mixup_alpha=cfg.mixup_alpha, mix_prob=cfg.mix_prob, aug=cfg.aug, dsa_strategy=cfg.dsa_strategy)

    def shuffled_size(self, h: int, w: int) -> tuple[int, int]:
        """Image size after PatchShuffle (the remainder strips are dropped)."""
        f = self.patch_shuffle
        return (h // f * f, w // f * f) if f > 1 else (h, w)


# DC/DSA/MTT ParamDiffAug (aug_mode 'S'), the values their evaluation uses.
DSA_SCALE = 1.2  # ratio_scale: sx, sy ~ U(1 / 1.2, 1.2)
DSA_ROTATE = 15.0  # ratio_rotate: degrees
DSA_CROP_PAD = 0.125  # ratio_crop_pad: shift up to int(size * 0.125 + 0.5) pixels
DSA_CUTOUT = 0.5  # ratio_cutout: side int(size * 0.5 + 0.5)
DSA_FLIP_P = 0.5  # prob_flip
DSA_BRIGHTNESS = 1.0
DSA_SATURATION = 2.0
DSA_CONTRAST = 0.5


def dsa_families(strategy: str) -> tuple[str, ...]:
    """The families of a DSA strategy ("color_crop_..."), in order, repeats kept; () for ``none``
    (upstream's DiffAugment returns the batch unchanged). ValueError naming an unknown family."""
    if strategy in ("none", "None"):
        return ()
    families = tuple(strategy.split("_"))
    for name in families:
        if name not in DSA_FAMILIES:
            raise ValueError(f"DSA strategy {strategy!r}: unknown family {name!r} (known: {', '.join(DSA_FAMILIES)}; "
                             f"join them with '_', or 'none')")
    return families


@dataclass
class AugParams:
    """Everything random about one batch. Kernels and the torch ops read these; neither draws numbers.

    Boxes are in the coordinates of the PatchShuffled image; ``top``/``left`` may be negative for
    pad+RandomCrop (pixels outside the image read as 0).
    """

    boxes: torch.Tensor  # int32 (B, 4): top, left, height, width of each sample's crop
    flip: torch.Tensor  # bool (B,)
    row_perm: torch.Tensor | None  # int64 (B, f): PatchShuffle row-strip order, None when factor 1
    col_perm: torch.Tensor | None  # int64 (B, f): column-strip order
    partner: torch.Tensor  # int64 (B,): mixing partner of each sample (a permutation)
    mix_box: torch.Tensor  # int32 (4,): y1, y2, x1, x2 of the CutMix box (empty when not CutMix)
    lam: torch.Tensor  # float32 (): weight of the sample's own label (1.0 when not mixed)
    mix: str  # the spec's mode; a batch skipped by mix_prob keeps it, with an empty box / lam 1
    # DSA mode (spec.aug "dsa"): the family drawn for this batch and its per-sample draws; only that
    # family's tensors are set. "" when not DSA ("none" for the identity strategy).
    dsa_op: str = ""
    dsa_scale: torch.Tensor | None = None  # float32 (B, 2): sx, sy
    dsa_theta: torch.Tensor | None = None  # float32 (B,): rotation, radians
    dsa_flip: torch.Tensor | None = None  # bool (B,): mirror along W
    dsa_color: torch.Tensor | None = None  # float32 (B, 3): U(0, 1) draws of brightness, saturation, contrast
    dsa_shift: torch.Tensor | None = None  # int64 (B, 2): crop translation along dim 2, dim 3
    dsa_cutout: torch.Tensor | None = None  # int64 (B, 2): cutout centre along dim 2, dim 3

    def tensors(self) -> dict[str, torch.Tensor | None]:
        """Every tensor field by name (None where unset): all fields but ``mix`` and ``dsa_op``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NON_TENSOR}

    def to(self, device: torch.device | str) -> "AugParams":
        return self.to_with(device)[0]

    def to_with(self, device: torch.device | str, *extra: torch.Tensor) -> tuple["AugParams", list[torch.Tensor]]:
        """These params and ``extra`` tensors (e.g. the batch indices) on ``device``, in one host copy."""
        fields = self.tensors()
        moved = to_device([*fields.values(), *extra], device)
        return AugParams(mix=self.mix, dsa_op=self.dsa_op, **dict(zip(fields, moved))), moved[len(fields):]


_NON_TENSOR = ("mix", "dsa_op")


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------
def sample_params(spec: AugSpec, batch: int, height: int, width: int, gen: torch.Generator) -> AugParams:
    """Draw one batch's parameters from ``gen`` (a CPU generator), for source images of height x width.

    Standard mode: PatchShuffle, crop box, flip, then the mixing draws. DSA mode: identity standard fields
    (no draws), the DSA family and its per-sample draws (``sample_dsa``), then the same mixing draws."""
    if spec.aug == "dsa":
        return _sample_dsa_params(spec, batch, height, width, gen)
    f = spec.patch_shuffle
    h, w = spec.shuffled_size(height, width)
    row_perm = col_perm = None
    if f > 1:
        col_perm = torch.argsort(torch.rand(batch, f, generator=gen), dim=1)
        row_perm = torch.argsort(torch.rand(batch, f, generator=gen), dim=1)
    if spec.crop == "rrc":
        boxes = sample_rrc_boxes(batch, h, w, spec.rrc_scale, spec.rrc_ratio, gen)
    elif spec.crop == "random_crop":
        boxes = sample_random_crop_boxes(batch, h, w, spec.size, spec.crop_padding, gen)
    else:
        boxes = torch.tensor([0, 0, h, w], dtype=torch.int32).repeat(batch, 1)
    flip = torch.rand(batch, generator=gen) < spec.flip_p
    partner, mix_box, lam = _sample_mix(spec, batch, spec.size, spec.size, gen)
    return AugParams(boxes=boxes, flip=flip, row_perm=row_perm, col_perm=col_perm, partner=partner,
                     mix_box=mix_box, lam=lam, mix=spec.mix)


def _sample_mix(spec: AugSpec, batch: int, height: int, width: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixing draws (partner permutation, CutMix box / Mixup lambda) on an output of height x width."""
    partner = torch.randperm(batch, generator=gen)
    mix_box = torch.zeros(4, dtype=torch.int32)
    lam = 1.0
    # The mode stays the spec's for every batch (a static graph); a batch that mix_prob skips gets
    # identity parameters (empty box, lam 1), which both mixing ops turn into an exact no-op.
    if spec.mix != "none" and float(torch.rand((), generator=gen)) < spec.mix_prob:
        # numpy's Beta sampler, seeded from the torch generator so that one seed drives everything.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
        if spec.mix == "cutmix":
            lam_draw = float(rng.beta(spec.cutmix_beta, spec.cutmix_beta))
            mix_box, lam = cutmix_box(height, width, lam_draw, gen)
        else:
            lam = float(rng.beta(spec.mixup_alpha, spec.mixup_alpha))
    return partner, mix_box, torch.tensor(lam, dtype=torch.float32)


def _sample_dsa_params(spec: AugSpec, batch: int, height: int, width: int, gen: torch.Generator) -> AugParams:
    if (height, width) != (spec.size, spec.size):
        raise ValueError(f"aug dsa works on the images' own size: got {height}x{width} images for size {spec.size}")
    dsa = sample_dsa(dsa_families(spec.dsa_strategy), batch, height, width, gen)
    partner, mix_box, lam = _sample_mix(spec, batch, height, width, gen)
    return AugParams(boxes=torch.tensor([0, 0, height, width], dtype=torch.int32).repeat(batch, 1),
                     flip=torch.zeros(batch, dtype=torch.bool), row_perm=None, col_perm=None, partner=partner,
                     mix_box=mix_box, lam=lam, mix=spec.mix, **dsa)


def sample_dsa(families: tuple[str, ...], batch: int, height: int, width: int,
               gen: torch.Generator) -> dict[str, object]:
    """DiffAugment's draws (aug_mode 'S', seed -1) for one batch, as AugParams fields: the family, uniform
    over ``families``, then that family's per-sample parameters in upstream's order of draws."""
    if not families:
        return {"dsa_op": "none"}
    op = families[int(torch.randint(0, len(families), (1,), generator=gen))]
    if op == "scale":  # rand_scale: sx then sy
        lo = 1.0 / DSA_SCALE
        sx = torch.rand(batch, generator=gen) * (DSA_SCALE - lo) + lo
        sy = torch.rand(batch, generator=gen) * (DSA_SCALE - lo) + lo
        return {"dsa_op": op, "dsa_scale": torch.stack([sx, sy], dim=1)}
    if op == "rotate":  # rand_rotate: the same expression, evaluated in float32
        theta = (torch.rand(batch, generator=gen) - 0.5) * 2 * DSA_ROTATE / 180 * float(np.pi)
        return {"dsa_op": op, "dsa_theta": theta}
    if op == "flip":
        return {"dsa_op": op, "dsa_flip": torch.rand(batch, generator=gen) < DSA_FLIP_P}
    if op == "color":  # brightness, saturation, contrast: one U(0, 1) each, in that order
        draws = [torch.rand(batch, generator=gen) for _ in range(3)]
        return {"dsa_op": op, "dsa_color": torch.stack(draws, dim=1)}
    if op == "crop":  # translation_x (dim 2) then translation_y (dim 3)
        s2, s3 = int(height * DSA_CROP_PAD + 0.5), int(width * DSA_CROP_PAD + 0.5)
        t2 = torch.randint(-s2, s2 + 1, (batch,), generator=gen)
        t3 = torch.randint(-s3, s3 + 1, (batch,), generator=gen)
        return {"dsa_op": op, "dsa_shift": torch.stack([t2, t3], dim=1)}
    # cutout: offset_x (dim 2) then offset_y (dim 3)
    k2, k3 = dsa_cutout_size(height, width)
    o2 = torch.randint(0, height + (1 - k2 % 2), (batch,), generator=gen)
    o3 = torch.randint(0, width + (1 - k3 % 2), (batch,), generator=gen)
    return {"dsa_op": op, "dsa_cutout": torch.stack([o2, o3], dim=1)}


def dsa_cutout_size(height: int, width: int) -> tuple[int, int]:
    """rand_cutout's side along dim 2 and dim 3."""
    return int(height * DSA_CUTOUT + 0.5), int(width * DSA_CUTOUT + 0.5)


def sample_rrc_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                     ratio: tuple[float, float], gen: torch.Generator, tries: int = 10) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params for a whole batch: int32 (B, 4) top, left, h, w."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(batch, tries, generator=gen, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(batch, tries, generator=gen, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect)).long()  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)  # index of the first valid try (0 when none is valid)
    rows = torch.arange(batch)
    h, w, found = h[rows, first], w[rows, first], ok.any(dim=1)
    # Centre-crop fallback, clamped to the ratio range (torchvision's code path after 10 failures).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    u = torch.rand(batch, 2, generator=gen, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).long(), torch.full_like(h, (height - fh) // 2))
    left = torch.where(found, (u[:, 1] * (width - w + 1)).long(), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).int()


def sample_random_crop_boxes(batch: int, height: int, width: int, size: int, padding: int,
                             gen: torch.Generator) -> torch.Tensor:
    """torchvision RandomCrop(size, padding): zero-pad, then a uniform size x size window."""
    hp, wp = height + 2 * padding, width + 2 * padding
    if hp < size or wp < size:
        raise ValueError(f"random_crop: padded image {hp}x{wp} is smaller than the crop {size}")
    top = torch.randint(0, hp - size + 1, (batch,), generator=gen) - padding
    left = torch.randint(0, wp - size + 1, (batch,), generator=gen) - padding
    return torch.stack([top, left, torch.full_like(top, size), torch.full_like(top, size)], dim=1).int()


def cutmix_box(height: int, width: int, lam: float, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """SRe2L/RDED rand_bbox on an output of height x width; returns (y1, y2, x1, x2) and the area lambda."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (), generator=gen))
    cx = int(torch.randint(0, width, (), generator=gen))
    y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    lam_area = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    return torch.tensor([y1, y2, x1, x2], dtype=torch.int32), lam_area


# ---------------------------------------------------------------------------------------------------
# The torch ops (the specification)
# ---------------------------------------------------------------------------------------------------
def strip_index(perm: torch.Tensor, size: int) -> torch.Tensor:
    """Source index of every output column (or row) after a strip permutation: int64 (B, f * (size // f))."""
    b, f = perm.shape
    t = size // f
    within = torch.arange(t, device=perm.device)
    return (perm[:, :, None] * t + within).reshape(b, f * t)


def patch_shuffle(x: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor) -> torch.Tensor:
    """RDED ShufflePatches on a batch (B, C, H, W): columns then rows, the remainder dropped."""
    b, c, h, w = x.shape
    cols = strip_index(col_perm, w)  # (B, W')
    rows = strip_index(row_perm, h)  # (B, H')
    x = torch.gather(x, 3, cols[:, None, None, :].expand(b, c, h, cols.shape[1]))
    return torch.gather(x, 2, rows[:, None, :, None].expand(b, c, rows.shape[1], cols.shape[1]))


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                     antialias: bool) -> torch.Tensor:
    """Per-sample 1-D interpolation matrices (B, out_size, in_size) for cropping [start, start+length)
    of an axis of ``in_size`` pixels and resizing it to ``out_size``; pixels outside the axis read as 0.
    ``length`` is at most max(in_size, out_size).

    The weights are torch's (aten/src/ATen/native/UpSample.h): bilinear with align_corners=False, or
    with ``antialias`` the separable triangle filter of ``_upsample_bilinear2d_aa`` (support scaled by
    the downscale factor, weights renormalized), computed relative to the crop.
    """
    start = start.to(torch.int64)
    length = length.to(torch.int64)
    b, dev = start.shape[0], start.device
    scale = length.to(torch.float32) / out_size  # (B,)
    o = torch.arange(out_size, device=dev, dtype=torch.float32)
    if antialias:
        support = torch.where(scale >= 1.0, scale, torch.ones_like(scale))  # interp_size / 2 == 1
        invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
        center = scale[:, None] * (o + 0.5)  # (B, out)
        # C's int() truncates toward zero; the arguments are >= -0.5 so trunc == "ceil for negatives".
        xmin = torch.clamp(torch.trunc(center - support[:, None] + 0.5), min=0).long()
        xmax = torch.minimum(torch.trunc(center + support[:, None] + 0.5).long(), length[:, None])
        # A static tap count from the largest scale a box can have (boxes are at most max(axis, out)
        # long: RRC boxes lie inside the axis, pad+crop boxes are out_size long): no host sync, so the
        # op can be captured in a CUDA graph. Surplus taps get weight 0.
        taps = int(math.ceil(max(in_size, out_size) / out_size)) * 2 + 1
        j = torch.arange(taps, device=dev)
        pos = xmin[:, :, None] + j  # (B, out, taps) index within the crop
        dist = (pos.to(torch.float32) - center[:, :, None] + 0.5) * invscale[:, None, None]
        wts = torch.clamp(1.0 - dist.abs(), min=0.0) * (pos < xmax[:, :, None])
        wts = wts / wts.sum(-1, keepdim=True)
    else:
        src = torch.clamp((o + 0.5) * scale[:, None] - 0.5, min=0.0)
        i0 = torch.minimum(src.floor().long(), length[:, None] - 1)
        frac = torch.clamp(src - i0, 0.0, 1.0)
        i1 = i0 + (i0 < length[:, None] - 1).long()
        pos = torch.stack([i0, i1], -1)
        wts = torch.stack([1.0 - frac, frac], -1)
    src_index = pos + start[:, None, None]  # position in the image axis
    inside = (src_index >= 0) & (src_index < in_size)
    wts = wts * inside
    mat = torch.zeros(b, out_size, in_size + 1, device=dev, dtype=torch.float32)
    # Out-of-image taps go to a spare column that is cut off (they multiply zero padding).
    mat.scatter_add_(2, torch.where(inside, src_index, in_size), wts)
    return mat[:, :, :in_size]


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Crop each sample's box and resize it to size x size (float32 out): Wy @ x @ Wx^T per sample."""
    _, _, h, w = x.shape
    boxes = boxes.to(x.device)
    wy = resample_weights(boxes[:, 0], boxes[:, 2], h, size, antialias)  # (B, S, H)
    wx = resample_weights(boxes[:, 1], boxes[:, 3], w, size, antialias)  # (B, S, W)
    x = x.to(torch.float32)
    return torch.matmul(torch.matmul(wy[:, None], x), wx[:, None].transpose(-1, -2))


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def mix(x: torch.Tensor, params: AugParams) -> torch.Tensor:
    """CutMix: pixels in the box come from the partner (one box per batch). Mixup: lam*x + (1-lam)*partner.

    Written with tensor masks rather than slicing so that it needs no host sync (CUDA-graph safe).
    """
    partner = params.partner.to(x.device)
    if params.mix == "cutmix":
        box = params.mix_box.to(x.device)
        rows = torch.arange(x.shape[-2], device=x.device)
        cols = torch.arange(x.shape[-1], device=x.device)
        inside = ((rows >= box[0]) & (rows < box[1]))[:, None] & ((cols >= box[2]) & (cols < box[3]))[None, :]
        return torch.where(inside, x[partner], x)
    if params.mix == "mixup":
        lam = params.lam.to(x.device)
        return lam * x + (1.0 - lam) * x[partner]
    return x


# --- DSA (DC/DSA/MTT DiffAugment, aug_mode 'S') -------------------------------------------------------
def dsa_color(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """rand_brightness -> rand_saturation -> rand_contrast with the (B, 3) U(0, 1) draws."""
    draws = draws.to(device=x.device, dtype=x.dtype)
    b, s, c = (draws[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = x + (b - 0.5) * DSA_BRIGHTNESS
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (s * DSA_SATURATION) + m
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (c + DSA_CONTRAST) + m


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def dsa_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """rand_scale: theta [[sx, 0, 0], [0, sy, 0]] per sample."""
    scale = scale.to(device=x.device, dtype=torch.float32)
    zero = torch.zeros_like(scale[:, 0])
    theta = torch.stack([torch.stack([scale[:, 0], zero, zero], 1), torch.stack([zero, scale[:, 1], zero], 1)], 1)
    return _affine(x, theta)


def dsa_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """rand_rotate: theta [[cos t, sin(-t), 0], [sin t, cos t, 0]] per sample."""
    t = angle.to(device=x.device, dtype=torch.float32)
    cos, sin, zero = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    theta = torch.stack([torch.stack([cos, torch.sin(-t), zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


def dsa_crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """rand_crop: out[i, j] = zero-padded x at clamp(i + t2 + 1, 0, H + 1), clamp(j + t3 + 1, 0, W + 1)."""
    b, c, h, w = x.shape
    shift = shift.to(device=x.device, dtype=torch.int64)
    rows = (torch.arange(h, device=x.device) + shift[:, :1] + 1).clamp(0, h + 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) + shift[:, 1:] + 1).clamp(0, w + 1)  # (B, W)
    xp = F.pad(x, [1, 1, 1, 1])
    xp = torch.gather(xp, 2, rows[:, None, :, None].expand(b, c, h, w + 2))
    return torch.gather(xp, 3, cols[:, None, None, :].expand(b, c, h, w))


def dsa_cutout(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """rand_cutout: zero rows clamp(o2 - k2 // 2 + [0, k2), 0, H - 1) x columns likewise, as x * mask.
    Clamping is monotone, so the zeroed rows are exactly the range between the clamped end points."""
    b, c, h, w = x.shape
    k2, k3 = dsa_cutout_size(h, w)
    centre = centre.to(device=x.device, dtype=torch.int64)
    lo2 = (centre[:, :1] - k2 // 2).clamp(0, h - 1)
    hi2 = (centre[:, :1] - k2 // 2 + k2 - 1).clamp(0, h - 1)
    lo3 = (centre[:, 1:] - k3 // 2).clamp(0, w - 1)
    hi3 = (centre[:, 1:] - k3 // 2 + k3 - 1).clamp(0, w - 1)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    cut = ((rows >= lo2) & (rows <= hi2))[:, :, None] & ((cols >= lo3) & (cols <= hi3))[:, None, :]  # (B, H, W)
    if k2 <= 0 or k3 <= 0:
        cut = torch.zeros_like(cut)
    mask = 1 - cut.to(x.dtype)
    return x * mask.unsqueeze(1)


def dsa(x: torch.Tensor, params: AugParams) -> torch.Tensor:
    """The batch's DSA family (``params.dsa_op``) on float (B, C, H, W) model-space images; same shape."""
    op = params.dsa_op
    if op in ("", "none"):
        return x
    if op == "color":
        return dsa_color(x, params.dsa_color)
    if op == "crop":
        return dsa_crop(x, params.dsa_shift)
    if op == "cutout":
        return dsa_cutout(x, params.dsa_cutout)
    if op == "flip":
        return torch.where(params.dsa_flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    if op == "scale":
        return dsa_scale(x, params.dsa_scale)
    if op == "rotate":
        return dsa_rotate(x, params.dsa_theta)
    raise ValueError(f"unknown DSA family {op!r} (known: {', '.join(DSA_FAMILIES)})")


def augment(images: torch.Tensor, params: AugParams, spec: AugSpec, dtype: torch.dtype = torch.float32,
            channels_last: bool = False) -> torch.Tensor:
    """The whole pipeline on a uint8 batch (B, C, H, W) already gathered from the resident set.

    DSA mode: uint8 images are normalized first; float images are taken as model-space values (already
    normalized, maybe ZCA-whitened). Then the DSA family, then CutMix / Mixup."""
    if spec.aug == "dsa":
        if images.is_floating_point():
            x = images.to(torch.float32)
        else:
            x = normalize(images.to(torch.float32), spec.mean, spec.std)
        x = mix(dsa(x, params), params).to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    x = images
    if params.row_perm is not None:
        x = patch_shuffle(x, params.row_perm.to(x.device), params.col_perm.to(x.device))
    x = resized_crop(x, params.boxes, spec.size, spec.antialias)
    x = hflip(x, params.flip)
    x = normalize(x, spec.mean, spec.std)
    x = mix(x, params).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


