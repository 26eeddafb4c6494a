"""Every protocol knob in one frozen dataclass, the published recipes as presets, and the CLI built from it.

Layering (later wins): preset < ``--config file.json`` < flags. Unknown keys and flags are errors. A field
left at its "unset" value (0, ``()`` or None where documented) is filled from the dataset by
``Config.finalize`` before training, and the finalized config is what gets printed and saved.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import numbers
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from .errors import RD3Error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw", "adam", "sgd"),
    "sched": ("cosine", "step", "multistep", "linear", "constant"),
    "crop": ("rrc", "random_crop", "none"),
    "mix": ("cutmix", "mixup", "none"),
    "loss": ("kl", "soft_ce", "mse_gt", "ce"),
    "ce_target": ("label", "mixed"),
    "device": ("auto", "cpu", "cuda"),
    "aug_backend": ("auto", "torch", "triton"),
    "cuda_graph": ("auto", "on", "off"),
    "cache_mode": ("off", "record", "replay"),
    "loader": ("auto", "pil", "dali", "ffcv"),
    "aug": ("standard", "dsa"),
    "label_source": ("teacher", "set"),
}


# DC/DSA/MTT DiffAugment families (ParamDiffAug); aug.py applies them, a strategy joins them with "_".
DSA_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class Config:
    """One post-evaluation protocol. Field comments are the CLI help (``--field-name``)."""

    preset: str = "rd3"  # the preset these values started from (informational once resolved)
    # --- data -------------------------------------------------------------------------------------
    distilled: str | None = None  # distilled set (ImageFolder, .pt/.npz, images_best.pt folder); run: several, a,b
    dataset: str | None = None  # named real set (README "Datasets"): cifar10 | cifar100 | tiny-imagenet | imagenet | ...
    data_root: str | None = None  # folder holding --dataset as downloaded; None: $RD3FAST_DATA
    val: str | None = None  # real validation ImageFolder (class folders, ImageNet style)
    class_map: str | None = None  # distilled folder: text file, one class folder name per line, in index order
    num_classes: int = 0  # 0: from the data
    image_size: int = 0  # train/eval resolution; 0: the dataset's (distilled images' size for folders)
    load_size: int = 0  # resize distilled images to this square size once at decode; 0: keep native
    val_resize_ratio: float = 0.0  # val: resize shorter side to image_size/ratio, centre crop; 0: dataset's
    val_cache: str = "auto"  # val folder centre crops cached as uint8 .npy: auto (~/.cache/rd3fast) | off | DIR
    loader: str = "auto"  # real-image reader: auto | pil | dali | ffcv (val decode; pretrain --train streaming)
    mean: tuple[float, ...] = ()  # per-channel normalization mean; (): the dataset's
    # grayscale sets (MNIST, Fashion-MNIST, digits, a gray folder): 3 = expanded for 3-channel networks;
    # 1 = kept one channel, MTT's ConvNet (first conv padding 3), as DC/DM/MTT evaluate them
    gray_channels: int = 3
    std: tuple[float, ...] = ()  # per-channel normalization std; (): the dataset's
    # --- models -----------------------------------------------------------------------------------
    student: str = "resnet18"  # student architecture (torchvision/timm name, *-cifar stem, convnet-dN)
    teacher: tuple[str, ...] = ("resnet18",)  # teacher architecture(s); several = hybrid soft labels
    teacher_weights: tuple[str, ...] = ()  # one weights file per teacher (state_dict or checkpoint)
    # normalization each teacher was trained with (plain state_dicts); (): from the weights file, else the run's
    teacher_mean: tuple[float, ...] = ()  # teachers' normalization mean; (): the weights file's, else the run's
    teacher_std: tuple[float, ...] = ()  # teachers' normalization std; (): the weights file's, else the run's
    # --- optimization -----------------------------------------------------------------------------
    epochs: int = 400
    batch_size: int = 50
    drop_last: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    betas: tuple[float, ...] = (0.9, 0.999)  # adam/adamw only
    weight_decay: float = 0.01
    no_decay_bn_bias: bool = False  # SRe2L: BatchNorm weights/biases and all biases get no weight decay
    sched: str = "cosine"
    zeta: float = 1.0  # cosine smoothing: lr0 * 0.5 * (1 + cos(pi * ep / (zeta * epochs)))
    warmup_epochs: int = 0  # linear warmup, stepped per epoch like the schedule
    step_size: int = 30  # sched=step
    milestones: tuple[int, ...] = ()  # sched=multistep
    gamma: float = 0.1  # step/multistep decay factor
    lr_from_set: bool = False  # lr = the set's learned lr (lr_best.pt); `--lr from-set` sets this
    sgd_reset_at_decay: bool = False  # MTT evaluate_synset: a fresh SGD (no momentum) at every lr decay
    ema_decay: float = 0.0  # 0: no EMA of the student weights
    eval_ema: bool = False  # evaluate the EMA weights instead of the raw ones
    # --- augmentation (order: patch shuffle -> crop -> flip -> normalize -> mix) ---------------------
    aug: str = "standard"  # standard: the fields below | dsa: DC/MTT DiffAugment on model-space images, then mix
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"  # aug=dsa: families, one drawn per batch
    zca: bool = False  # ZCA-whiten training and validation images (MTT/DD-Ranking: kornia, eps 0.1); aug=dsa
    zca_eps: float = 0.1  # regularization added to the covariance eigenvalues
    zca_train: str | None = None  # real set the ZCA is fitted on; None: --dataset's training split
    patch_shuffle: int = 1  # RDED ShufflePatches factor; 1: off
    crop: str = "rrc"  # rrc (RandomResizedCrop) | random_crop (CIFAR: pad + crop) | none
    rrc_scale: tuple[float, ...] = (0.08, 1.0)
    rrc_ratio: tuple[float, ...] = (3 / 4, 4 / 3)
    crop_padding: int = 4  # random_crop zero padding
    antialias: bool = True  # antialias when a crop is downscaled (torchvision's tensor default)
    flip_p: float = 0.5
    mix: str = "cutmix"  # one box / one lambda per batch, partner from a random permutation
    cutmix_beta: float = 1.0
    mixup_alpha: float = 0.8
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    # --- loss -------------------------------------------------------------------------------------
    label_source: str = "teacher"  # teacher: soft labels from --teacher | set: the set's own (N, K) float labels
    loss: str = "kl"  # kl | soft_ce | mse_gt | ce (hard labels only: teacher pre-training)
    temperature: float = 20.0
    kl_t2: bool = False  # multiply the KL term by T^2 (Hinton); SRe2L/RDED do not
    ce_weight: float = 0.0  # + ce_weight * CE(student, hard labels); mse_gt's weight; >0 = joint loss
    ce_target: str = "label"  # label: each image's own label (EDC/G-VBSM) | mixed: lam-weighted with partner
    # --- evaluation -------------------------------------------------------------------------------
    eval_every: int = 10  # evaluate every N epochs (and always after the last)
    eval_after: float = 0.0  # only evaluate once this fraction of training is done
    eval_batch_size: int = 500
    # --- runs -------------------------------------------------------------------------------------
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    aug_backend: str = "auto"  # auto: Triton kernels on CUDA, the torch spec elsewhere
    amp: bool = True  # bf16 autocast for the student on CUDA (ignored on CPU)
    cuda_graph: str = "auto"  # capture the whole step as one CUDA graph: auto (CUDA + capturable) | on | off
    parallel_seeds: int = 1  # train up to this many runs (seeds x sets) at once (students batched by vmap)
    compile_teacher: bool = False  # torch.compile the teachers (CUDA)
    cache: str | None = None  # soft-label cache folder (augmentation draws + top-k teacher logits)
    cache_mode: str = "off"  # record: write the cache while training | replay: train from it, no teacher
    cache_topk: int = -1  # logits kept per image + the mean of the rest; 0 = all; -1 = all up to 100 classes, else 5
    cache_bits: int = 16  # stored logits: 16 = fp16; 8 = 8-bit codes between each image's min and max (lossy)
    # --- upstream quirks, each defaults to upstream behaviour in that method's preset ----------------
    rded_extra_forward: bool = False  # RDED validation/main.py: extra no-grad train-mode student forward
    edc_noop_shuffle: bool = False  # EDC: the patch-shuffle list is built but the unshuffled one is used
    teacher_bn_train: bool = False  # SRe2L CIFAR relabel_cifar.py: teacher never put in eval mode
    logit_norm: bool = False  # G-VBSM ImageNet relabel: rescale each teacher's logits by its batch norm

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Seeds are in [0, 2**32): numpy's seeding takes 32 bits, and the loaders' per-epoch seeds
# (seed * 1_000_003 + epoch) must fit torch's 64-bit generator seed.
SEED_LIMIT = 2**32
# Counts and sizes above this are typos, and torch overflows on some of them.
INT_LIMIT = 2**31 - 1
# The lowest value of each integer field (all are counts or sizes; 0 means "unset" where documented).
_INT_AT_LEAST = {1: ("epochs", "batch_size", "patch_shuffle", "eval_every", "eval_batch_size", "step_size",
                     "parallel_seeds"),
                 0: ("num_classes", "image_size", "load_size", "warmup_epochs", "crop_padding"),
                 -1: ("cache_topk",)}


def validate(cfg: Config) -> None:
    """Range and choice checks; the message names the flag and what it expects. Every numeric field has
    one, so a bad value fails here, not as a traceback (or a silent NaN) after training started."""
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise RD3Error(f"{flag(name)}: expected one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    _finite(cfg)
    for lo, names in _INT_AT_LEAST.items():
        for name in names:
            v = getattr(cfg, name)
            if v < lo:
                raise RD3Error(f"{flag(name)}: expected an integer >= {lo}, got {v}")
            if v > INT_LIMIT:
                raise RD3Error(f"{flag(name)}: {v} is too large (at most {INT_LIMIT})")
    for name in ("flip_p", "mix_prob", "eval_after", "ema_decay"):
        _check(cfg, name, lambda v: 0.0 <= v <= 1.0, "a value in [0, 1]")
    for name in ("lr", "temperature", "zeta", "cutmix_beta", "mixup_alpha", "gamma"):
        _check(cfg, name, lambda v: v > 0, "a value > 0")
    for name in ("weight_decay", "ce_weight"):
        _check(cfg, name, lambda v: v >= 0, "a value >= 0")
    _check(cfg, "momentum", lambda v: 0.0 <= v < 1.0, "a value in [0, 1)")
    _check(cfg, "val_resize_ratio", lambda v: 0.0 <= v <= 1.0,
           "a value in (0, 1] (the crop over the resized shorter side), or 0 for the dataset's")
    lo, hi = _pair(cfg.rrc_scale, "rrc_scale")
    if not 0 < lo <= hi <= 1:
        raise RD3Error(f"--rrc-scale: expected 0 < min <= max <= 1, got {lo},{hi}")
    lo, hi = _pair(cfg.rrc_ratio, "rrc_ratio")
    if not 0 < lo <= hi:
        raise RD3Error(f"--rrc-ratio: expected 0 < min <= max, got {lo},{hi}")
    if not all(0.0 <= b < 1.0 for b in _pair(cfg.betas, "betas")):
        raise RD3Error(f"--betas: expected two values in [0, 1), got {','.join(map(str, cfg.betas))}")
    for name in ("mean", "std"):
        if len(getattr(cfg, name)) not in (0, 1, 3):
            raise RD3Error(f"{flag(name)}: expected 1 or 3 comma-separated values (one per channel), got "
                           f"{','.join(map(str, getattr(cfg, name)))}")
    for name in ("std", "teacher_std"):
        if any(s <= 0 for s in getattr(cfg, name)):
            raise RD3Error(f"{flag(name)}: expected values > 0, got {','.join(map(str, getattr(cfg, name)))}")
    _check_seeds(cfg.seeds)
    if any(m < 1 for m in cfg.milestones) or list(cfg.milestones) != sorted(set(cfg.milestones)):
        raise RD3Error(f"--milestones: expected increasing epochs >= 1, got {','.join(map(str, cfg.milestones))}")
    if cfg.loss != "ce" and not cfg.teacher and cfg.label_source != "set":
        raise RD3Error(f"--teacher: loss {cfg.loss!r} needs at least one teacher (or --label-source set)")
    if cfg.aug == "dsa" and (cfg.crop != "none" or cfg.flip_p > 0 or cfg.patch_shuffle > 1):
        raise RD3Error("--aug dsa replaces the crop/flip/PatchShuffle stage: pass --crop none --flip-p 0 "
                       "--patch-shuffle 1 with it, or start from --preset mtt")
    if cfg.zca and cfg.aug != "dsa":
        raise RD3Error("--zca: whitening is applied before augmentation, as MTT/DD-Ranking do, which only the "
                       "DSA pipeline supports: add --aug dsa (and --crop none --flip-p 0), or use --preset mtt")
    unknown = [f for f in cfg.dsa_strategy.split("_") if f not in DSA_FAMILIES] if cfg.dsa_strategy not in ("none", "None") else []
    if unknown:
        raise RD3Error(f"--dsa-strategy: unknown family {unknown[0]!r} in {cfg.dsa_strategy!r}; expected families "
                       f"of {', '.join(DSA_FAMILIES)} joined with '_' (or none)")
    if cfg.zca_eps <= 0:
        raise RD3Error(f"--zca-eps: expected a value > 0, got {cfg.zca_eps}")
    if cfg.cache_mode != "off" and (cfg.aug == "dsa" or cfg.label_source == "set"):
        raise RD3Error("--cache: a soft-label cache stores a teacher's labels of standard-pipeline batches; "
                       "it does not apply with --aug dsa or --label-source set")
    if cfg.teacher_weights and len(cfg.teacher_weights) != len(cfg.teacher):
        raise RD3Error(
            f"--teacher-weights: got {len(cfg.teacher_weights)} file(s) for {len(cfg.teacher)} teacher(s) "
            f"({', '.join(cfg.teacher)}); give one --teacher-weights per --teacher"
        )
    if cfg.gray_channels not in (1, 3):
        raise RD3Error(f"--gray-channels: expected 1 or 3, got {cfg.gray_channels}")
    if cfg.cache_bits not in (8, 16):
        raise RD3Error(f"--cache-bits: expected 8 or 16, got {cfg.cache_bits}")
    if cfg.cache_mode != "off" and not cfg.cache:
        raise RD3Error(f"--cache-mode {cfg.cache_mode}: needs --cache FOLDER")
    if cfg.sched == "multistep" and not cfg.milestones:
        raise RD3Error("--milestones: sched=multistep needs milestones, e.g. --milestones 100,200")


def _check(cfg: Config, name: str, ok: Callable[[float], bool], expected: str) -> None:
    if not ok(getattr(cfg, name)):
        raise RD3Error(f"{flag(name)}: expected {expected}, got {getattr(cfg, name)}")


def _finite(cfg: Config) -> None:
    """No float field may be NaN or inf: a library caller's Config(lr=float('nan')) bypasses ``coerce``."""
    for name in FIELD_NAMES:
        kind, typ = _kind(name)
        v = getattr(cfg, name)
        if typ is float and v is not None and not all(math.isfinite(x) for x in (v if kind == "tuple" else (v,))):
            raise RD3Error(f"{flag(name)}: expected finite numbers, got {v}")


def _check_seeds(seeds: tuple[int, ...]) -> None:
    if not seeds:
        raise RD3Error("--seeds: expected at least one seed, e.g. --seeds 0,1,2")
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if bad:
        raise RD3Error(f"--seeds: expected integers in [0, 2**32), got {bad[0]}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:  # the same seed twice is the same run twice: one result counted double in mean +- std
        raise RD3Error(f"--seeds: seed {twice[0]} is given more than once; each seed is one run")


def _pair(v: tuple, name: str) -> tuple:
    if len(v) != 2:
        raise RD3Error(f"{flag(name)}: expected two comma-separated values, got {','.join(map(str, v))}")
    return v


# ---------------------------------------------------------------------------------------------------
# Presets. Each is a set of overrides of the field defaults above, naming the upstream file it mirrors.
# Values were read from the upstream code; see ../shared/PROTOCOL.md and README "Presets".
# ---------------------------------------------------------------------------------------------------
# Shared pieces. rand_bbox/CutMix (beta 1, every batch) and Mixup (alpha 0.8) are the same code in every
# upstream repo; the optimizer is AdamW 1e-3 wd 0.01, betas (0.9, 0.999), unless a preset says otherwise.
_ADAMW = dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999))
_CUTMIX = dict(mix="cutmix", cutmix_beta=1.0, mix_prob=1.0)
_KL20 = dict(loss="kl", temperature=20.0, kl_t2=False)
# LINs-lab/RDED validation/main.py: ToTensor -> ShufflePatches(factor) -> RandomResizedCrop(size,
# scale=(1/factor, 1), antialias=True) -> flip -> Normalize; eval only when epoch % 10 == 9 and
# epoch > 0.8 * E, best reported (eval_every 10 after 80 % reproduces epochs 249, 259, ..., 299).
# MTT's evaluate_synset (the `mtt` and `datm` presets below). Grayscale sets keep one channel, as MTT's
# utils.py get_dataset (channel = 1 for MNIST / FashionMNIST) and networks.py ConvNet take them.
_MTT_EVAL = dict(student="convnet-d3", teacher=(), label_source="set", lr_from_set=True, loss="ce", optimizer="sgd",
                 momentum=0.9, weight_decay=5e-4, lr=0.01, sched="multistep", milestones=(502,), gamma=0.1,
                 sgd_reset_at_decay=True, epochs=1001, batch_size=256, aug="dsa", crop="none", flip_p=0.0,
                 patch_shuffle=1, mix="none", eval_every=1001, amp=False, gray_channels=1)
_RDED_AUG = dict(patch_shuffle=2, crop="rrc", rrc_scale=(0.5, 1.0), antialias=True, **_CUTMIX)

PRESETS: dict[str, dict[str, Any]] = {
    # RD3 (arXiv 2509.19743) rectified protocol: RDED's augmentation for every method, KL at T=20 on
    # on-the-fly soft labels of one ResNet-18 teacher, AdamW 1e-3 wd 0.01, batch 50, 400 epochs, zeta 1.
    "rd3": dict(**_RDED_AUG, **_KL20, **_ADAMW, batch_size=50, epochs=400, sched="cosine", zeta=1.0),
    # RD3 on small sets (CIFAR / Tiny-ImageNet / the built-in sets): PatchShuffle factor 1, so RDED's
    # RandomResizedCrop scale is (1/1, 1): a full-image resize, then flip + CutMix.
    "rd3-small": dict(**{**_RDED_AUG, "patch_shuffle": 1, "rrc_scale": (1.0, 1.0)}, **_KL20, **_ADAMW,
                      batch_size=50, epochs=400, sched="cosine", zeta=1.0),
    # VILA-Lab/SRe2L SRe2L/validate/train_FKD.py + train_FKD.sh: KLDivLoss(batchmean) at T=20, no T^2;
    # AdamW with get_parameters() (no decay on biases and BatchNorm); LambdaLR cosine stepped per epoch
    # (zeta 1); 300 epochs, batch 1024; PIL RandomResizedCrop(224, (0.08, 1)) + flip; CutMix every batch;
    # evaluation every 10 epochs and at the last, best tracked.
    "sre2l": dict(crop="rrc", rrc_scale=(0.08, 1.0), **_CUTMIX, **_KL20, **_ADAMW, no_decay_bn_bias=True,
                  sched="cosine", zeta=1.0, epochs=300, batch_size=1024, eval_every=10),
    # VILA-Lab/SRe2L SRe2L/*small_dataset/relabel_cifar.py + relabel_cifar.sh (CIFAR-100): RandomCrop(32,
    # pad 4) + flip, Mixup 0.8 every batch, KL at T=30 (hard-coded), AdamW on all parameters,
    # CosineAnnealingLR(T_max=E) (= zeta 1), 400 epochs, batch 128, CIFAR mean/std; the teacher is never
    # put in eval mode (teacher_bn_train); the last accuracy is reported.
    "sre2l-cifar": dict(crop="random_crop", crop_padding=4, mix="mixup", mixup_alpha=0.8, loss="kl",
                        temperature=30.0, **_ADAMW, sched="cosine", zeta=1.0, epochs=400, batch_size=128,
                        eval_every=10, teacher_bn_train=True,
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)),
    # VILA-Lab/SRe2L CDA/README.md: "we follow SRe2L relabeling" (no CDA post-eval script ships); batch
    # 128 from the CDA paper's appendix (not in code), otherwise SRe2L's train_FKD.py recipe.
    "cda": dict(crop="rrc", rrc_scale=(0.08, 1.0), **_CUTMIX, **_KL20, **_ADAMW, no_decay_bn_bias=True,
                sched="cosine", zeta=1.0, epochs=300, batch_size=128, eval_every=10),
    # LINs-lab/RDED validation/main.py + argument.py + scripts/imagenet-1k_*.sh: ShufflePatches(2) +
    # RRC(0.5, 1) + flip + CutMix, KL at T=20, AdamW (get_parameters: no decay on BN/bias), cosine with
    # zeta 2 (lr ends at half), 300 epochs, batch 100 at ImageNet-1K IPC10 (200 at IPC50), the extra
    # no-grad train-mode student forward, ImageNet normalization, best of the late evaluations.
    "rded": dict(**_RDED_AUG, **_KL20, **_ADAMW, no_decay_bn_bias=True, sched="cosine", zeta=2.0, epochs=300,
                 batch_size=100, eval_every=10, eval_after=0.8, rded_extra_forward=True),
    # RDED on CIFAR-10/100 and Tiny-ImageNet (scripts/cifar*.sh, tiny*.sh): factor 1, so no shuffle and
    # RRC scale (1, 1); ImageNet mean/std even there (validation/main.py); batch 50 for CIFAR-10 IPC10,
    # 100 for CIFAR-100 IPC10 and Tiny.
    "rded-small": dict(**{**_RDED_AUG, "patch_shuffle": 1, "rrc_scale": (1.0, 1.0)}, **_KL20, **_ADAMW,
                       no_decay_bn_bias=True, sched="cosine", zeta=2.0, epochs=300, batch_size=100,
                       eval_every=10, eval_after=0.8, rded_extra_forward=True,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # shaoshitong/EDC Branch_full_ImageNet_1k/train/train_FKD_parallel.py + train.sh: mean logits of
    # ResNet-18, MobileNet-V2, ShuffleNet-V2 0.5, AlexNet; loss mse_gt = MSE(logits) + 0.025 CE on each
    # image's own label; AdamW (get_parameters); cosine with st=2 (zeta 2); 300 epochs, batch 100;
    # ShufflePatchesWithIndex(2) that is a no-op (relabel/utils_fkd.py) + RRC(0.5, 1) antialiased + flip
    # + CutMix; EMA 0.99 of the parameters, evaluated (with the live BatchNorm statistics).
    "edc": dict(**_RDED_AUG, edc_noop_shuffle=True, loss="mse_gt", ce_weight=0.025,
                ce_target="label", **_ADAMW, no_decay_bn_bias=True, sched="cosine", zeta=2.0, epochs=300,
                batch_size=100, ema_decay=0.99, eval_ema=True,
                teacher=("resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "alexnet")),
    # shaoshitong/G_VBSM_Dataset_Condensation (ImageNet-1K train_FKD_parallel.py, relabel): mean of
    # ResNet-18, MobileNet-V2, EfficientNet-B0, ShuffleNet-V2 0.5 logits, each first rescaled by its
    # batch Frobenius norm (logit_norm); mse_gt with CE weight 0.1; PIL RRC(0.08, 1) + flip + CutMix;
    # AdamW (get_parameters); cosine zeta 1; 300 epochs, batch 1024; no EMA.
    "gvbsm": dict(crop="rrc", rrc_scale=(0.08, 1.0), **_CUTMIX, loss="mse_gt", ce_weight=0.1, ce_target="label",
                  **_ADAMW, no_decay_bn_bias=True, sched="cosine", zeta=1.0, epochs=300, batch_size=1024,
                  eval_every=10, logit_norm=True,
                  teacher=("resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5")),
    # he-y/soft-label-pruning-for-dataset-distillation relabel_and_validate/
    # train_FKD_label_pruning_batch.py + cfg/reproduce/LPLD_in1k.yaml: one ResNet-18 teacher, KL at T=20
    # without T^2, AdamW (get_parameters), cosine zeta 1, 300 epochs, batch 128, PIL RRC(0.08, 1) + flip
    # + CutMix, evaluation every 10 epochs. (Its 40x label pruning is about stored labels: see the cache.)
    "lpld": dict(crop="rrc", rrc_scale=(0.08, 1.0), **_CUTMIX, **_KL20, **_ADAMW, no_decay_bn_bias=True,
                 sched="cosine", zeta=1.0, epochs=300, batch_size=128, eval_every=10),
    # GeorgeCazenavette/mtt-distillation utils.py evaluate_synset + epoch, distill.py defaults: ConvNet-D3 width 128 with instance norm; SGD momentum 0.9, wd 5e-4, lr = the set's learned
    # lr (args.lr_net = syn_lr); `for ep in range(Epoch + 1)` trains 1001 epochs, and after epoch
    # Epoch // 2 + 1 = 501 the lr drops 10x with a freshly built SGD (momentum buffers gone:
    # sgd_reset_at_decay); batch_train 256; DSA 'color_crop_cutout_flip_scale_rotate' (ParamDiffAug,
    # one family per batch); test accuracy once, after the last epoch; plain CE on hard labels. Sets
    # distilled with ZCA (MTT's CIFAR runs) need --zca. Soft labels (TESLA) train on the set's labels.
    # (DD-Ranking's configs/Demo_LRS_Hard_Label.yaml differs: step 500 of 1000 epochs, batch 128, lr 0.01.)
    "mtt": dict(_MTT_EVAL),
    # NUS-HPC-AI-Lab/DATM distill/evaluation.py + configs/*/ConvIN/IPC*.yaml: MTT's evaluate_synset with
    # the learned soft labels as targets, SoftCrossEntropy = -sum softmax(label) * log_softmax(out) / B
    # (loss ce on float set labels), batch_train 128 in every config, zca True for CIFAR.
    "datm": dict(_MTT_EVAL, batch_size=128),
    # Teacher pre-training ("squeeze") on the real training set: hard labels, SGD, random crop + flip.
    "pretrain": dict(loss="ce", teacher=(), crop="random_crop", crop_padding=2, flip_p=0.5, mix="none",
                     optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, sched="cosine", zeta=1.0,
                     epochs=30, batch_size=128, eval_every=5),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise RD3Error(f"--preset: unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return Config(preset=name, **PRESETS[name])


# ---------------------------------------------------------------------------------------------------
# Parsing: values from JSON files and from flags go through the same coercion.
# ---------------------------------------------------------------------------------------------------
_HINTS = typing.get_type_hints(Config)
FIELD_NAMES = tuple(f.name for f in fields(Config))


@functools.lru_cache(maxsize=None)  # a field's kind never changes; every Config built checks every field
def _kind(name: str) -> tuple[str, type]:
    """('scalar'|'tuple'|'optional', element type) for a field."""
    hint = _HINTS[name]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return "tuple", args[0]
    if args and type(None) in args:
        return "optional", next(a for a in args if a is not type(None))
    return "scalar", hint


def _scalar(typ: type, raw: Any, label: str) -> Any:
    # Flags give strings; JSON gives typed values, and a value of the wrong JSON type is an error rather than
    # converted: true for an epoch count is not 1, 1.5 or 1e30 for a seed is not an integer, 5 for a path is
    # no path. Floats must be finite: inf passes every range check without an upper bound, NaN every check
    # written as a negation, and either poisons the training silently.
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(raw, bool):
            raise ValueError
        if typ is int:
            if isinstance(raw, numbers.Integral):
                return int(raw)
            if not isinstance(raw, str):
                raise ValueError
            return int(raw.strip())
        if typ is not float:
            if not isinstance(raw, str):
                raise ValueError
            return raw
        value = _float(raw)
    except (ValueError, TypeError, ZeroDivisionError):
        raise RD3Error(f"{label}: expected {typ.__name__}, got {raw!r}") from None
    if not math.isfinite(value):
        raise RD3Error(f"{label}: expected a finite number, got {raw!r}")
    return value


def _float(raw: Any) -> float:
    if isinstance(raw, str) and "/" in raw:  # "3/4" is how ratios are written in papers
        num, den = raw.split("/", 1)
        return float(num) / float(den)
    if not isinstance(raw, (str, numbers.Real)):
        raise TypeError
    return float(raw)


def coerce(name: str, raw: Any, label: str | None = None) -> Any:
    """Turn a JSON value or a flag string into the field's type (tuples from lists or 'a,b,c'). ``label``
    names the value in errors (default: its flag)."""
    if name not in _HINTS:
        raise RD3Error(f"unknown config key {name!r}; see `python -m rd3fast.run --help`")
    label = label or flag(name)
    kind, typ = _kind(name)
    if kind == "tuple":
        if isinstance(raw, (list, tuple)):
            items = list(raw)
        elif isinstance(raw, str):
            items = [s for s in raw.split(",") if s.strip() != ""]
        else:  # one JSON value ("seeds": 3): checked as what it is, not as its str()
            items = [raw]
        return tuple(_scalar(typ, x.strip() if isinstance(x, str) else x, label) for x in items)
    if kind == "optional":
        return None if raw is None or raw == "" else _scalar(typ, raw, label)
    return _scalar(typ, raw, label)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Keys of a JSON config file (or a results JSON's "config"); unknown keys are errors."""
    p = Path(path)
    if p.is_dir():
        raise RD3Error(f"--config: {p} is a folder; expected a JSON file")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise RD3Error(f"--config: file {p} does not exist") from None
    except OSError as e:
        raise RD3Error(f"--config: cannot read {p} ({e.strerror or type(e).__name__})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RD3Error(f"--config: {p} is not valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise RD3Error(f"--config: {p} must hold a JSON object of config keys")
    out = {}
    for k, v in _lr_from_set(data).items():
        key = k.replace("-", "_")
        if key not in _HINTS:
            raise RD3Error(f"--config: unknown key {k!r} in {p}")
        out[key] = coerce(key, v, label=f"--config {p}: key {k!r}")
    return out


def _lr_from_set(values: dict[str, Any]) -> dict[str, Any]:
    """`--lr from-set` (or "lr": "from-set"): MTT-style sets ship their learned lr (lr_best.pt), which
    replaces cfg.lr when the set is read; the flag becomes lr_from_set."""
    if "lr" not in values:
        return values
    lr = values["lr"]
    if isinstance(lr, str) and lr.strip() == "from-set":
        return {**{k: v for k, v in values.items() if k != "lr"}, "lr_from_set": True}
    # A number given for lr is the lr to train with, also under a preset that takes it from the set (mtt).
    return {"lr_from_set": False, **values}


def resolve(preset_name: str | None = None, config_file: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> Config:
    """preset < config file < overrides (already-typed or raw strings)."""
    file_values = load_config_file(config_file) if config_file else {}
    overrides = {k: coerce(k, v) for k, v in _lr_from_set(overrides or {}).items()}
    name = preset_name or overrides.get("preset") or file_values.get("preset") or "rd3"
    base = preset(name)
    values = {**base.to_dict(), **file_values, **overrides, "preset": name}
    return Config(**{k: coerce(k, v) for k, v in values.items()})


# ---------------------------------------------------------------------------------------------------
# The CLI: one flag per field. Flags default to "not given" so that layering can tell them apart.
# ---------------------------------------------------------------------------------------------------
_REPEATABLE = ("teacher", "teacher_weights")
_HELP = {}  # field -> the comment on its line, collected once from this file's source


def _field_help() -> dict[str, str]:
    if not _HELP:
        src = Path(__file__).read_text().split("class Config", 1)[1].split("def __post_init__", 1)[0]
        for line in src.splitlines():
            s = line.strip()
            if ":" in s and not s.startswith("#"):
                name = s.split(":", 1)[0]
                if name in _HINTS:
                    _HELP[name] = s.split("#", 1)[1].strip() if "#" in s else ""
    return _HELP


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    helps, defaults = _field_help(), Config()
    group = parser.add_argument_group("protocol (every Config field; preset < --config < flags)")
    for f in fields(Config):
        if f.name in ("preset",):
            continue
        kind, typ = _kind(f.name)
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{helps.get(f.name, '')} [rd3: {shown}]".strip()
        if f.name in CHOICES:
            text = f"{{{','.join(CHOICES[f.name])}}} " + text
        if kind == "scalar" and typ is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        elif f.name in _REPEATABLE:
            group.add_argument(flag(f.name), dest=f.name, action="append", default=argparse.SUPPRESS,
                               help=text + " (repeatable or comma-separated)")
        else:
            group.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS, help=text)


def config_from_args(args: argparse.Namespace) -> Config:
    given = {k: v for k, v in vars(args).items() if k in _HINTS and k != "preset"}
    for k in _REPEATABLE:
        if k in given:
            given[k] = [s for item in given[k] for s in item.split(",") if s]
    return resolve(getattr(args, "preset", None), getattr(args, "config", None), given)


def describe(cfg: Config) -> str:
    """The resolved config as aligned `key = value` lines (printed before every run)."""
    width = max(map(len, FIELD_NAMES))
    return "\n".join(f"  {k:<{width}} = {v}" for k, v in cfg.to_dict().items())


def lr_factor(cfg: Config, epoch: int) -> float:
    """LR multiplier for an epoch (the schedule is stepped per epoch, as upstream does)."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    if cfg.sched == "cosine":
        # SRe2L/RDED: LambdaLR(0.5 * (1 + cos(pi * ep / epochs / zeta))); zeta 1 ends at 0, zeta 2 at 1/2.
        return 0.5 * (1.0 + math.cos(math.pi * epoch / (cfg.zeta * cfg.epochs)))
    if cfg.sched == "linear":
        return 1.0 - epoch / cfg.epochs
    if cfg.sched == "step":
        return cfg.gamma ** (epoch // cfg.step_size)
    if cfg.sched == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0
