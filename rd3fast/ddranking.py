"""DD-Ranking's ``compute_metrics`` (NUS-HPC-AI-Lab/DD-Ranking, ``ddranking/metrics``) on rd3fast's engine.

A DD-Ranking script moves over by its import line (``from rd3fast.ddranking import LabelRobustScoreSoft``);
teachers are read from its layout ``teacher_dir/<dataset>/<model>/ckpt_best.pt`` or given as
``teacher_weights``. Each call writes a sweep (README "Benchmark sweeps") into its root and runs it: the
distilled set and a random-real set of the same IPC under one protocol built from DD-Ranking's arguments,
plus the runs ``[scores]`` adds (hard labels, no augmentation, real data), one seed per ``num_eval`` round.
Run ids cover everything that decides a number, so a rerun trains nothing it has. An argument rd3fast
cannot honour, an unknown keyword, dataset or model is one RD3Error naming it, before anything is written.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .atomic import atomic_write
from .bench.board import Board, load
from .bench.executors import run_groups
from .bench.group import run_group
from .bench.plan import build_plan, distinct
from .bench.scores import Estimate, estimate, per_seed_scores, real_cell, row_scores, settings
from .bench.stats import seeds_of
from .bench.store import read_result, to_train, write_plan, write_text_if_changed
from .bench.sweepfile import NAUG, load_sweep
from .config import IMAGENET_MEAN, IMAGENET_STD
from .data.datasets import BUILTIN
from .data.pixels import normalize, resize_uint8
from .data.sets import load_real, train_subset, write_image_folder
from .data.zca import fit_pixels
from .engine import aug as dsa
from .engine.models import build_model
from .engine.teacher import load_teachers
from .errors import RD3Error
from .lock import OutputLock
from .methods.coreset import random_real

LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)  # DD-Ranking's lr_list, searched when syn_lr is None
PROTOCOL = "ddranking"  # the sweep's one protocol
_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
# DD-Ranking's dataset names -> rd3fast's, with the mean/std its input tensors are normalized with
# (ddranking/utils/data.py get_dataset; CIFAR-100 too gets CIFAR-10's there).
DATASETS = {"CIFAR10": ("cifar10", *_CIFAR), "CIFAR100": ("cifar100", *_CIFAR),
            "TinyImageNet": ("tiny-imagenet", IMAGENET_MEAN, IMAGENET_STD),
            "ImageNet1K": ("imagenet", IMAGENET_MEAN, IMAGENET_STD)}
REAL_ACC = {"ImageNet1K-ResNet-18-BN": 56.5, "TinyImageNet-ResNet-18-BN": 46.4}  # its REAL_DATA_ACC_CACHE
_SGD = dict(optimizer="sgd", sched="step", weight_decay=5e-4, momentum=0.9, lr=0.01, gamma=0.1)
REAL_TRAINING = {  # its REAL_DATA_TRAINING_CONFIG as Config keys (its "cosine" is zeta 2, see _protocol)
    **{f"{d}-ConvNet-3{bn}": dict(_SGD, epochs=200, step_size=100)
       for d in ("CIFAR10", "CIFAR100") for bn in ("", "-BN")},
    "TinyImageNet-ConvNet-4-BN": dict(_SGD, epochs=100, step_size=50),
    "TinyImageNet-ResNet-18-BN": dict(optimizer="adamw", sched="cosine", zeta=2.0, weight_decay=0.01, lr=0.01,
                                      epochs=100)}
DSA_PARAMS = {"scale": dsa.DSA_SCALE, "rotate": dsa.DSA_ROTATE, "crop": dsa.DSA_CROP_PAD, "cutout": dsa.DSA_CUTOUT,
              "flip": dsa.DSA_FLIP_P, "brightness": dsa.DSA_BRIGHTNESS, "saturation": dsa.DSA_SATURATION,
              "contrast": dsa.DSA_CONTRAST}
LOSSES = {"kl": "kl", "sce": "soft_ce", "mse_gt": "mse_gt"}  # soft_label_criterion -> Config loss
# DD-Ranking's constructor keywords (its three classes') with its defaults, except: real_data_path None
# ($RD3FAST_DATA), im_size None (the dataset's size), device "auto". num_workers, random_data_format and
# random_data_path say how it loads and where it stores; rd3fast holds sets on the device and writes the
# random set into the root, so they change nothing here.
DEFAULTS: dict[str, Any] = dict(
    dataset=None, real_data_path=None, ipc=None, model_name=None, soft_label_mode=None, soft_label_criterion="kl",
    loss_fn_kwargs=None, data_aug_func="cutmix", aug_params={"beta": 1.0}, optimizer="sgd", lr_scheduler="step",
    step_size=None, weight_decay=5e-4, momentum=0.9, num_eval=5, im_size=None, num_epochs=300, use_zca=False,
    use_aug_for_hard=False, syn_batch_size=256, real_batch_size=256, batch_size=None, save_path=None,
    eval_full_data=False, teacher_dir="./teacher_models", teacher_model_names=None, device="auto", label_type="soft",
    stu_use_torchvision=False, tea_use_torchvision=False, use_torchvision=False, custom_train_trans=None,
    custom_val_trans=None, dist=False, num_workers=4, random_data_format=None, random_data_path=None)
# rd3fast's own: teachers by file (arch names: `teacher`, default the student's), the lr grid, the held-out
# size, runs at once, the real-hard recipe ([scores.real] keys) or number, score units, progress lines,
# and Config keys over the protocol (e.g. {"amp": False}: fp32 on CUDA, as DD-Ranking).
EXTRAS: dict[str, Any] = dict(teacher_weights=None, teacher=None, lr_grid=LR_GRID, heldout_size=None,
                              parallel_seeds=None, real=None, real_hard=None, units="fraction", progress=True,
                              rd3fast=None)


def compute_metrics(image_tensor: Any = None, image_path: str | None = None, soft_labels: Any = None,
                    syn_lr: float | None = None, lrs_lambda: float = 0.5, ars_lambda: float = 0.5, *,
                    dataset: str, ipc: int, model_name: str, teacher_weights: str | Sequence[str] | None = None,
                    **options: Any) -> dict[str, Any]:
    """LRS and ARS of one distilled set, under DD-Ranking's keys.

    Inputs as DD-Ranking takes them: ``image_tensor`` (K x IPC, C, H, W), image i of class i // ipc,
    normalized as its get_dataset normalizes that dataset (an rd3fast dataset: with its BUILTIN mean/std;
    uint8 or [0, 1] pixels work too), or ``image_path``, an ImageFolder. ``soft_labels`` (K x IPC, K) are
    trained on as the set's own (soft_label_mode 'S'; the random baseline gets the teachers' logits of its
    images, as its ``_generate_soft_labels`` means to); without them the teachers relabel every batch ('M').
    ``options``: DD-Ranking's constructor keywords (``DEFAULTS``) and rd3fast's (``EXTRAS``). Returns:

    - ``hard_label_recovery``, ``improvement_over_random``, ``label_robust_score``, each ``_mean``, ``_std``
      (np.std over seeds, ddof 0, as DD-Ranking) and ``_ci95`` ([lo, hi]: 95 % bootstrap over seeds);
    - ``with_aug`` / ``without_aug``: the set's top-1 with and without augmentation (its docs' keys);
      ``with_aug_scores`` / ``without_aug_scores``: syn − random of each (what its aug_robust.py returns under
      those keys); ``augmentation_robust_score``; each with the same three suffixes;
    - ``lr`` / ``lr_random``: each set's lr; ``real_hard``: the real-data top-1; ``per_seed`` (score -> seed
      -> value); ``seeds``; ``heldout_size``; ``units``; ``root``: the sweep (``python -m rd3fast.bench report``).

    What differs from DD-Ranking: without ``syn_lr`` each set's lr is chosen from ``lr_grid`` on a held-out
    split of the real training set, never on the test set (with it, both sets train at ``syn_lr``, where its
    random set still searches); accuracies are the last epoch's, not the best of its every-20-epoch test
    evaluations; the random baseline is one random_real draw (seed 0), not one per round; seeds are 0 ..
    num_eval − 1, not the clock; scores are its docs' formula on fractions, in percent (``units="percent"``:
    its code's arithmetic); CutMix/Mixup mix the targets too; float images are read back to 8-bit pixels
    except under DSA. An image's class is i // ipc, as its hard_labels, whatever its soft labels' argmax."""
    opts = _options({**options, "dataset": dataset, "ipc": ipc, "model_name": model_name,
                     "teacher_weights": teacher_weights})
    labels = opts["soft_label_mode"] or ("S" if soft_labels is not None else "M")
    return _evaluate(opts, labels, ("lrs", "ars"), image_tensor, image_path, soft_labels, syn_lr, lrs_lambda,
                     ars_lambda)


class _Metric:
    """DD-Ranking's constructor: ``config`` (its Config, whose ``.config`` holds the YAML's keys, or a mapping)
    and keywords over it, all checked here."""

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        self.options = _options({**dict(getattr(config, "config", config) or {}), **kwargs})


class LabelRobustScoreSoft(_Metric):
    def compute_metrics(self, image_tensor: Any = None, image_path: str | None = None, soft_labels: Any = None,
                        syn_lr: float | None = None, lrs_lambda: float = 0.5) -> dict[str, Any]:
        if self.options["label_type"] == "hard":
            raise RD3Error("label_type 'hard': LabelRobustScoreSoft scores soft labels; use LabelRobustScoreHard")
        labels = self.options["soft_label_mode"] or "S"
        return _evaluate(self.options, labels, ("lrs",), image_tensor, image_path, soft_labels, syn_lr, lrs_lambda)


class LabelRobustScoreHard(_Metric):
    def compute_metrics(self, image_tensor: Any = None, image_path: str | None = None, hard_labels: Any = None,
                        syn_lr: float | None = None, lrs_lambda: float = 0.5) -> dict[str, Any]:
        return _evaluate(self.options, "hard", ("lrs",), image_tensor, image_path, hard_labels, syn_lr, lrs_lambda)


class AugmentationRobustScore(_Metric):
    def compute_metrics(self, image_tensor: Any = None, image_path: str | None = None, soft_labels: Any = None,
                        syn_lr: float | None = None, ars_lambda: float = 0.5) -> dict[str, Any]:
        labels = "hard" if self.options["label_type"] == "hard" else self.options["soft_label_mode"] or "S"
        return _evaluate(self.options, labels, ("ars",), image_tensor, image_path, soft_labels, syn_lr, 0.5, ars_lambda)


# ---------------------------------------------------------------------------------------------------
# DD-Ranking's arguments as rd3fast's
# ---------------------------------------------------------------------------------------------------
def _options(given: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(DEFAULTS) - set(EXTRAS))
    if unknown:
        raise RD3Error(f"unknown keyword {unknown[0]!r}; expected DD-Ranking's {', '.join(DEFAULTS)} or rd3fast's "
                       f"{', '.join(EXTRAS)}")
    o = {**DEFAULTS, **EXTRAS, **{k: v for k, v in given.items() if v is not None}}
    if o["dataset"] not in DATASETS and o["dataset"] not in BUILTIN:
        raise RD3Error(f"dataset {o['dataset']!r}: expected one of {', '.join(DATASETS)} or {', '.join(BUILTIN)}")
    if isinstance(o["ipc"], bool) or not isinstance(o["ipc"], int) or o["ipc"] < 1:
        raise RD3Error(f"ipc {o['ipc']!r}: expected an integer >= 1")
    for key in ("custom_train_trans", "custom_val_trans"):
        if o[key] is not None:
            raise RD3Error(f"{key}: rd3fast runs no torchvision transforms; it trains as DD-Ranking's tensor path "
                           "(no crop or flip, then data_aug_func) and tests with the dataset's eval transform")
    if o["dist"]:
        raise RD3Error("dist=True: rd3fast runs its sweep from one process (K runs at once per device); for many "
                       "devices run ROOT/sweep.toml with python -m rd3fast.bench --executor ray")
    if o["label_type"] not in ("soft", "hard"):
        raise RD3Error(f"label_type {o['label_type']!r}: expected soft or hard")
    name, mean, std = DATASETS.get(o["dataset"]) or (o["dataset"], BUILTIN[o["dataset"]].mean,
                                                     BUILTIN[o["dataset"]].std)
    size = o["im_size"]
    if size is not None and (len(size) != 2 or size[0] != size[1]):
        raise RD3Error(f"im_size {size!r}: rd3fast trains square images; expected (S, S)")
    o.update(_name=name, _mean=mean, _std=std, _k=BUILTIN[name].num_classes, _size=int(size[0]) if size else
             BUILTIN[name].image_size, _root=o["real_data_path"])
    o["_student"] = _model(o["model_name"], o["stu_use_torchvision"] or o["use_torchvision"], o, "model_name")
    return o


def _model(name: Any, torchvision: bool, o: Mapping[str, Any], what: str) -> str:
    """DD-Ranking's model name as rd3fast's (ConvNet-N: MTT's width-128 instance-norm ConvNet, -BN batch
    norm; ResNet-N: torchvision's, its stu_use_torchvision branch); an rd3fast name as it is."""
    if m := re.fullmatch(r"ConvNet-(\d+)(-BN)?", str(name)):
        return f"convnet-d{m[1]}" + ("-bn" if m[2] else "")
    if (m := re.fullmatch(r"ResNet-(18|34|50)(-BN)?", str(name))) and torchvision:
        return f"resnet{m[1]}" + ("-cifar" if o["_size"] in (32, 64) else "")  # its 3x3 stem at 32 and 64 px
    if re.match(r"(ConvNet|ResNet|AlexNet|VGG|LeNet|MLP)", str(name)):
        raise RD3Error(f"{what} {name!r}: rd3fast has no such network; expected ConvNet-N[-BN], ResNet-18/34/50[-BN] "
                       "with stu_use_torchvision=True, or an rd3fast name (convnet-d3, resnet18-cifar, ...)")
    try:
        build_model(str(name), o["_k"], o["_size"])
    except RD3Error as e:
        raise RD3Error(f"{what}: {e}") from None
    return str(name)


def _protocol(o: Mapping[str, Any], labels: str, syn_lr: float | None) -> dict[str, Any]:
    """DD-Ranking's training arguments as Config keys over rd3-small. Its tensor path augments with
    data_aug_func only (no crop, no flip); it evaluates every 20 epochs, rd3fast at the end."""
    p: dict[str, Any] = dict(crop="none", flip_p=0.0, patch_shuffle=1, mix="none", zca=bool(o["use_zca"]),
                             weight_decay=float(o["weight_decay"]), epochs=int(o["num_epochs"]),
                             eval_every=int(o["num_epochs"]), batch_size=int(o["batch_size"] or o["syn_batch_size"]),
                             device=o["device"], image_size=o["_size"],
                             label_source="set" if labels == "S" else "teacher")
    if o["optimizer"] not in ("sgd", "adam", "adamw"):
        raise RD3Error(f"optimizer {o['optimizer']!r}: expected sgd, adam or adamw")
    p["optimizer"] = o["optimizer"]
    momentum = o["momentum"]  # its Adam/AdamW take a tuple as betas
    p.update(betas=list(momentum)) if isinstance(momentum, (tuple, list)) else p.update(momentum=float(momentum))
    sched = o["lr_scheduler"]
    if sched == "step":
        if o["step_size"] is None:
            raise RD3Error("step_size: lr_scheduler 'step' needs the epochs between its 10x decays")
        p.update(sched="step", step_size=int(o["step_size"]), gamma=0.1)
    elif sched in ("cosine", "cosineannealing"):  # its "cosine" is LambdaLR 0.5 (1 + cos(pi ep / E / 2)): zeta 2
        p.update(sched="cosine", zeta=2.0 if sched == "cosine" else 1.0)
    else:
        raise RD3Error(f"lr_scheduler {sched!r}: expected step, cosine or cosineannealing")
    func, params = o["data_aug_func"], dict(o["aug_params"] or {})
    reads = {"cutmix": ("beta", "cutmix_beta"), "mixup": ("lambda", "mixup_alpha")}  # ddranking/aug/*.py
    if func in reads:
        if set(params) != {reads[func][0]}:
            raise RD3Error(f"aug_params {params}: its {func} reads {reads[func][0]!r} only (its docs' cutmix_p / "
                           "mixup_p are read nowhere)")
        p.update({"mix": func, "mix_prob": 1.0, reads[func][1]: float(params[reads[func][0]])})
    elif func == "dsa":  # siamese and latestseed are set by its DSA itself
        bad = {k: v for k, v in params.items() if k not in ("siamese", "latestseed") and DSA_PARAMS.get(k) != v}
        if bad:
            raise RD3Error(f"aug_params {bad}: rd3fast's DSA has MTT's fixed parameters {DSA_PARAMS}")
        p["aug"] = "dsa"
    elif func is not None:
        raise RD3Error(f"data_aug_func {func!r}: expected dsa, cutmix, mixup or None")
    if o["use_zca"] and func != "dsa":
        raise RD3Error("use_zca: rd3fast whitens in the DSA pipeline only (data_aug_func='dsa'), as MTT does")
    if not o["use_zca"]:  # under ZCA both whiten [0, 1] pixels without Normalize
        one = len(set(o["_mean"])) == len(set(o["_std"])) == 1  # a gray set's one value fits 1 and 3 channels
        p.update(mean=list(o["_mean"][:1] if one else o["_mean"]), std=list(o["_std"][:1] if one else o["_std"]))
    if labels == "hard":
        p["loss"] = "ce"
    else:
        crit, kw = o["soft_label_criterion"], dict(o["loss_fn_kwargs"] or {})
        if crit not in LOSSES:
            raise RD3Error(f"soft_label_criterion {crit!r}: expected {', '.join(LOSSES)}")
        known = ("mse_weight", "ce_weight") if crit == "mse_gt" else ("temperature", "scale_loss")
        if set(kw) - set(known) or kw.get("mse_weight", 1.0) != 1.0 or (crit == "sce" and kw.get("scale_loss")):
            raise RD3Error(f"loss_fn_kwargs {kw}: rd3fast's {crit} takes {', '.join(known)} (mse_weight 1 only; "
                           "scale_loss with kl only)")
        p.update(loss=LOSSES[crit], temperature=float(kw.get("temperature", 1.2)), kl_t2=bool(kw.get("scale_loss")),
                 ce_weight=float(kw.get("ce_weight", 0.0)))  # 1.2: its loss classes' default temperature
    if syn_lr is not None:
        p["lr"] = float(syn_lr)
    return {**p, **(o["rd3fast"] or {})}


def _teachers(o: Mapping[str, Any], labels: str) -> list[tuple[str, str]]:
    """(arch, weights) per teacher; none for hard labels (loss ce trains on the labels alone)."""
    if labels == "hard":
        return []
    names, weights, archs = o["teacher_model_names"], o["teacher_weights"], o["teacher"]
    weights = [weights] if isinstance(weights, (str, Path)) else weights
    archs = [archs] if isinstance(archs, str) else archs
    if weights is None:
        if not names:
            raise RD3Error("teacher_model_names (with teacher_dir) or teacher_weights: soft labels need a teacher")
        weights = [Path(o["teacher_dir"]) / o["dataset"] / n / "ckpt_best.pt" for n in names]
        if missing := [w for w in weights if not w.is_file()]:
            raise RD3Error(f"teacher_dir: no {missing[0]} (DD-Ranking's layout); or pass teacher_weights=[...]")
    archs = archs or [_model(n, o["tea_use_torchvision"], o, "teacher_model_names") for n in names or []] \
        or [o["_student"]] * len(weights)
    if len(archs) != len(weights):
        raise RD3Error(f"teacher_weights: {len(weights)} files for {len(archs)} teacher architectures")
    return [(a, str(Path(w).absolute())) for a, w in zip(archs, weights)]


# ---------------------------------------------------------------------------------------------------
# The inputs, the sweep, the scores
# ---------------------------------------------------------------------------------------------------
def _syn_inputs(o: Mapping[str, Any], labels: str, image_tensor: Any, image_path: Any,
                given: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, Path | None]:
    """(images, labels) for an MTT-style folder, or the ImageFolder to read, checked against the classes."""
    arg = "hard_labels" if labels == "hard" else "soft_labels"
    if (image_tensor is None) == (image_path is None):
        raise RD3Error("image_tensor or image_path: give exactly one")
    k, n = o["_k"], o["_k"] * o["ipc"]
    if image_path is not None:
        if given is not None or labels == "S":  # its ImageFolder path trains on the folder labels
            raise RD3Error(f"{arg} with image_path: DD-Ranking trains an image folder on its folder labels; give "
                           f"image_tensor with {arg}, or soft_label_mode 'M'")
        if not Path(image_path).is_dir():
            raise RD3Error(f"image_path {image_path}: not a folder (an ImageFolder: one sub-folder per class)")
        return None, None, Path(image_path).absolute()
    x = torch.as_tensor(image_tensor).detach().cpu()
    if x.dim() != 4 or len(x) != n or x.shape[1] not in (1, 3):
        raise RD3Error(f"image_tensor {tuple(x.shape)}: expected ({n}, C, H, W), {o['dataset']}'s {k} classes x ipc "
                       f"{o['ipc']} with image i of class i // ipc, C 1 or 3")
    classes = torch.arange(n) // o["ipc"]
    if given is None:
        if labels == "S":
            raise RD3Error("soft_labels: soft_label_mode 'S' trains on the set's own soft labels; give them, or "
                           "use 'M'")
        return x.clone(), classes, None
    if labels == "M":
        raise RD3Error("soft_labels: soft_label_mode 'M' relabels every batch with the teachers; leave them out "
                       "or use 'S'")
    y = torch.as_tensor(given).detach().cpu()
    want = (n,) if labels == "hard" else (n, k)
    if tuple(y.shape) != want or y.is_floating_point() != (labels != "hard") or not bool(torch.isfinite(y).all()):
        what = "class indices" if labels == "hard" else "floats"
        raise RD3Error(f"{arg} {tuple(y.shape)} {y.dtype}: expected finite {what} of shape {want}, a row per image "
                       "of image_tensor")
    if labels == "hard" and not bool(((y >= 0) & (y < k)).all()):
        raise RD3Error(f"hard_labels: expected class indices in [0, {k})")
    return x.clone(), y.clone(), None


def _write_set(path: Path, images: torch.Tensor, classes: torch.Tensor, soft: torch.Tensor | None = None) -> Path:
    """A .pt set (data/tensors.py reads it), written once, atomically: each image's class (DD-Ranking's
    hard_labels, i // ipc) and the soft labels beside them, whose argmax may differ from the class (a
    teacher's logits of an image it misreads)."""
    if not path.is_file():
        obj = {"images": images, "labels": classes.to(torch.int64)}
        if soft is not None:
            obj["soft_labels"] = soft
        with atomic_write(path) as tmp:
            torch.save(obj, tmp)
    return path


def _random_set(o: Mapping[str, Any], labels: str, teachers: list[tuple[str, str]], root: Path) -> Path:
    """The random baseline: ipc real training images per class (random_real, seed 0; of a file set only the
    drawn files are decoded). Under 'S' it carries the teachers' logits of its images, DD-Ranking's soft labels
    of random data (``_generate_soft_labels``)."""
    name, size = o["_name"], o["_size"]
    tag = _digest([name, o["ipc"], labels, teachers, size, o["use_zca"], o["_root"]])[:8]
    folder = root / "sets" / f"random-ipc{o['ipc']}-{tag}"
    if folder.is_dir() or folder.with_suffix(".pt").is_file():  # written whole (atomically) or not at all
        return folder if folder.is_dir() else folder.with_suffix(".pt")
    if BUILTIN[name].kind == "files":
        real = train_subset(name, o["ipc"], 0, data_root=o["_root"])
    else:
        real = random_real(load_real(name, "train", data_root=o["_root"]), o["ipc"], seed=0)
    if labels != "S":
        return write_image_folder(real, folder)
    x = resize_uint8(real.images, size).float().expand(-1, 3, -1, -1)
    mean, std = ((0.0,) * 3, (1.0,) * 3) if o["use_zca"] else (tuple(o["_mean"]), tuple(o["_std"]))
    if o["use_zca"]:  # its teachers see the whitened tensors
        x = fit_pixels(load_real(name, "train", image_size=size, data_root=o["_root"]).images.expand(
            -1, 3, -1, -1).contiguous())(x / 255)
    else:
        x = normalize(x, mean, std)
    teacher = load_teachers([a for a, _ in teachers], [w for _, w in teachers], o["_k"], size, torch.device("cpu"),
                            input_mean=mean, input_std=std)
    return _write_set(folder.with_suffix(".pt"), real.images, real.labels,
                      torch.cat([teacher(b) for b in x.split(256)]))


def _digest(key: Any, tensors: Sequence[torch.Tensor | None] = (), folder: Path | None = None) -> str:
    """sha256 over the settings, tensors' bytes (with dtype and shape) and an ImageFolder's files."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for t in tensors:
        if t is not None:
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
    for f in sorted(folder.rglob("*")) if folder is not None else ():
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def _heldout(o: Mapping[str, Any]) -> int:
    """A multiple of the class count: 1000 images, or 10 % of a smaller training split; one per class at least."""
    if o["heldout_size"]:
        return int(o["heldout_size"])
    files = BUILTIN[o["_name"]].kind == "files"  # not read for this: 1000 images
    n = 1000 if files else len(load_real(o["_name"], "train", data_root=o["_root"]).labels) // 10
    return o["_k"] * max(1, min(1000, n) // o["_k"])


def _real(o: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The real-hard reference: ([scores.real] keys, None) to train it (eval_full_data: its recipe for the pairs
    it has one for, no augmentation, real_batch_size; over the pretrain preset), or ({}, its top-1)."""
    key = f"{o['dataset']}-{o['model_name']}"
    if o["real_hard"] is not None or not o["eval_full_data"]:
        if o["real_hard"] is None and key not in REAL_ACC:
            raise RD3Error(f"eval_full_data=False: DD-Ranking caches a real-data top-1 for {', '.join(REAL_ACC)} only; "
                           "pass eval_full_data=True or real_hard=<top-1 %>")
        return {}, float(o["real_hard"] if o["real_hard"] is not None else REAL_ACC[key])
    return {"crop": "none", "flip_p": 0.0, "batch_size": int(o["real_batch_size"]), **REAL_TRAINING.get(key, {}),
            "device": o["device"], **(o["real"] or {})}, None


def _toml(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return ("true" if v else "false") if isinstance(v, bool) else repr(v) if isinstance(v, (int, float)) \
        else json.dumps(str(v))  # a JSON string is a TOML basic string


def _sweep(o: Mapping[str, Any], root: Path, sets: Mapping[str, Path], teachers: list[tuple[str, str]],
           tables: Mapping[str, Mapping[str, Any]]) -> Path:
    """ROOT/sweep.toml, rewritten only when it changed; ``python -m rd3fast.bench`` runs and reports it too."""
    head = dict(root=str(root.absolute()), dataset=o["_name"], seeds=list(range(int(o["num_eval"]))),
                students=[o["_student"]], parallel_seeds=int(o["parallel_seeds"] or o["num_eval"]),
                **({"data_root": str(Path(o["_root"]).absolute())} if o["_root"] else {}))
    lines = [f"{k} = {_toml(v)}" for k, v in head.items()]
    for arch, weights in teachers:
        lines += ["", "[[teachers]]", f"arch = {_toml(arch)}", f"weights = {_toml(weights)}"]
    for name, path in sets.items():  # the random-real set is the baseline of IOR and ARS
        method = "random-real" if name == "random" else "distilled"
        lines += ["", "[[sets]]", f"name = {_toml(name)}", f"path = {_toml(str(Path(path).absolute()))}",
                  f"method = {_toml(method)}", f"ipc = {o['ipc']}"]
    for name, table in tables.items():
        if table:
            lines += ["", f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
    text = "\n".join(lines) + "\n"
    path = root / "sweep.toml"
    write_text_if_changed(path, text)  # atomically: a sweep running from it never reads half a file
    return path


def _train(sweep_file: Path, root: Path, progress: bool) -> None:
    """``python -m rd3fast.bench SWEEP`` minus its report: plan, then train what has no result yet."""
    plan = build_plan(load_sweep(sweep_file), progress=progress)
    write_plan(root, plan)
    groups = [g for g in plan.groups if to_train(root, g.runs)]
    outcomes = run_groups(functools.partial(run_group, str(root), progress=progress), groups, "local",
                          progress=progress) if groups else []
    failed = [f"group {g.key}: {g.error}" for g in outcomes if not g.ok]
    failed += [f"run {r.id} ({r.set.name} {r.label} seed {r.seed}): {rec['error']}" for r in distinct(plan.runs)
               if (rec := read_result(root, r.id)) is not None and rec["status"] == "failed"]
    if failed:
        raise RD3Error(f"{len(failed)} run(s) failed, e.g. {failed[0]} (python -m rd3fast.bench {sweep_file} "
                       "--retry-failed trains them again)")


def _evaluate(o: Mapping[str, Any], labels: str, which: Sequence[str], image_tensor: Any, image_path: Any,
              given: Any, syn_lr: Any, lrs_lambda: float = 0.5, ars_lambda: float = 0.5) -> dict[str, Any]:
    if labels not in ("S", "M", "hard"):
        raise RD3Error(f"soft_label_mode {labels!r}: expected S or M")
    syn_lr = syn_lr.item() if torch.is_tensor(syn_lr) else syn_lr
    images, ys, folder = _syn_inputs(o, labels, image_tensor, image_path, given)
    protocol = _protocol(o, labels, syn_lr)
    real, real_hard = _real(o) if "lrs" in which else ({}, None)
    teachers = _teachers(o, labels)
    # The root is what decides the runs, not which scores are read from them: LRS and ARS of a set share it.
    key = dict(protocol=protocol, labels=labels, teachers=teachers, **{k: o[k] for k in (
        "_name", "ipc", "_student", "num_eval", "lr_grid", "heldout_size", "_root", "eval_full_data", "real",
        "real_hard", "real_batch_size", "use_aug_for_hard")})
    root = Path(o["save_path"] or Path("runs/ddranking") / _digest(key, (images, ys), folder)[:12])
    root = root.with_suffix("") if root.suffix == ".csv" else root  # its save_path is a CSV file: a folder beside it
    with OutputLock.folder(root, "save_path"):
        syn = folder or _write_set(root / "sets" / f"syn-{_digest({}, (images, ys))[:12]}.pt", images,
                                   torch.arange(len(images)) // o["ipc"] if ys.is_floating_point() else ys,
                                   ys if ys.is_floating_point() else None)
        heldout = _heldout(o) if syn_lr is None else 0
        # naug "mix": only data_aug_func off, as its aug_robust.py (aug_func=None); its hard-label class always
        # augments the syn-hard runs, its soft-label classes with use_aug_for_hard.
        scores = dict(lrs="lrs" in which, ars="ars" in which, lrs_weight=float(lrs_lambda),
                      ars_weight=float(ars_lambda), protocol=PROTOCOL, naug="mix", units=o["units"],
                      use_aug_for_hard=bool(o["use_aug_for_hard"]) or labels == "hard",
                      **({} if real_hard is None else {"real_hard": real_hard}))
        tables = {f"protocols.{PROTOCOL}": {"preset": "rd3-small", **protocol},
                  "grid": {} if heldout == 0 else {"lr": list(o["lr_grid"])},
                  "select": {} if heldout == 0 else {"keys": ["lr"], "mode": "heldout", "size": heldout, "seed": 0},
                  "scores": scores, "scores.real": real}
        sets = {"syn": syn, "random": _random_set(o, labels, teachers, root)}
        sweep_file = _sweep(o, root, sets, teachers, tables)
        _train(sweep_file, root, bool(o["progress"]))
        out = _scores(load(root), which, syn_lr)
    out.update(root=str(root.absolute()), seeds=list(range(int(o["num_eval"]))), units=o["units"],
               heldout_size=heldout or None)
    if o["save_path"] and Path(o["save_path"]).suffix == ".csv":
        _write_csv(Path(o["save_path"]), out)
    return out


def _scores(board: Board, which: Sequence[str], syn_lr: float | None) -> dict[str, Any]:
    """DD-Ranking's keys from the sweep's cells, by rd3fast.bench.scores' arithmetic."""
    sc, student = settings(board), board.students[0]
    syn, rdm = (student, "syn", ()), (student, "random", ())
    rs = row_scores(board, syn, PROTOCOL, sc)
    cell, rdm_cell = board.cells.get((syn, PROTOCOL)), board.cells.get((rdm, PROTOCOL))
    found: dict[str, Estimate | None] = {}
    if "lrs" in which:
        found.update(hard_label_recovery=rs.hlr, improvement_over_random=rs.ior, label_robust_score=rs.lrs)
    if "ars" in which:
        gains = per_seed_scores(seeds_of(cell), seeds_of(rdm_cell), syn_naug=seeds_of(rs.syn_naug),
                                rdm_naug=seeds_of(board.extra_cells.get((NAUG, rdm, PROTOCOL))))
        found.update(with_aug=estimate(seeds_of(cell)), without_aug=estimate(seeds_of(rs.syn_naug)),
                     with_aug_scores=estimate(gains["aug_gain"]), without_aug_scores=estimate(gains["naug_gain"]),
                     augmentation_robust_score=rs.ars)
    out: dict[str, Any] = {"per_seed": {}}
    for name, est in found.items():
        if est is None:
            raise RD3Error(f"{board.root}: no finished runs to compute {name} from")
        ci = est.interval
        out.update({f"{name}_mean": est.mean, f"{name}_std": est.population_std,
                    f"{name}_ci95": None if ci is None or ci.lo is None else [ci.lo, ci.hi]})
        out["per_seed"][name] = est.per_seed
    out.update(lr=syn_lr if syn_lr is not None else cell.choice.get("lr"),
               lr_random=syn_lr if syn_lr is not None else rdm_cell.choice.get("lr"))
    if "lrs" in which:
        out["real_hard"] = sc.real_hard if sc.real_hard is not None else \
            float(np.mean(list(seeds_of(real_cell(board, student)).values())))
    return out


def _write_csv(path: Path, out: Mapping[str, Any]) -> None:
    """DD-Ranking's save_results: a row per round under its column names."""
    columns = {"hard_label_recovery": "hard_label_recovery", "improvement_over_random": "improvement_over_random",
               "label_robust_score": "lrs", "with_aug_scores": "with_aug_scores",
               "without_aug_scores": "without_aug_scores", "augmentation_robust_score": "ars_list"}
    have = {col: out["per_seed"][k] for k, col in columns.items() if k in out["per_seed"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(have))
        w.writerows([v.get(s, "") for v in have.values()] for s in out["seeds"])
