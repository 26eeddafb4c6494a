"""Coreset baselines on teacher features: herding and k-center greedy, IPC real images per class.

Both select, per class, real training images from the teacher's penultimate embedding (the input of its
final ``nn.Linear``), as DeepCore's class-balanced selection does (``balance=True``: each class selected
on its own, with the class's own budget). The teacher is the first one of the ``Relabeler``, in eval mode,
fed the images normalized as ``rded_select`` feeds them.

Upstream followed: PatrickZH/DeepCore (HEAD 74ec709, the code DC-Bench and the dataset-distillation
papers cite for these baselines; DC-Bench (justincui03/dc_benchmark) and DD-Ranking (NUS-HPC-AI-Lab/
DD-Ranking) ship no herding / k-center code of their own):

- ``herding``: ``deepcore/methods/herding.py`` ``Herding.herding``. Step i (0-based) scores every
  unselected x by ``|| (i+1) * mu - sum(selected) - x ||``, i.e. (i+1) times the distance between the mean
  of the selection with x added and the class mean mu. Welling (2009) and iCaRL (Rebuffi et al. 2017,
  Alg. 4) take the *argmin* of it; DeepCore's code takes the argmax (it picks the sample that pushes the
  running mean furthest away, the opposite of herding). We take the argmin, the published algorithm.
- ``kcenter``: ``deepcore/methods/kcentergreedy.py`` ``k_center_greedy``: a random first center, then
  the point whose distance to its nearest selected center is largest; selected points are never picked
  again (DeepCore sets their distance to -1, which also settles duplicates of a center).

Features are NOT L2-normalized: DeepCore feeds both methods the raw ``embedding_recorder`` embedding (the
input of the last linear layer, ``deepcore/nets/nets_utils/recorder.py``). iCaRL's herding normalizes;
DeepCore's does not, and we follow DeepCore. Distances are Euclidean.

Differences from DeepCore, all deliberate:
- indices come back in selection order (DeepCore returns them sorted by dataset index);
- herding uses argmin (above);
- the first k-center of each class is drawn from one ``np.random.default_rng(seed)`` walked in class
  order (DeepCore reseeds numpy's global RNG with the same seed for every class, so with equal class sizes
  every class starts at the same position);
- the selection runs on float64 copies of the features on the CPU with exact squared distances (same
  argmin/argmax as distances), so it does not depend on the device the features were computed on. Ties
  go to the lowest index (``torch.argmin``/``argmax`` return the first extremum).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.sets import ImageSet
from ..engine.teacher import Relabeler, teacher_input
from ..errors import RD3Error
from ..progress import bar

METHODS = ("herding", "kcenter")


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Herding (Welling 2009, iCaRL Alg. 4) on an (N, D) feature matrix: ``k`` int64 indices in selection
    order, without replacement. Step i picks the unselected x minimizing
    ``|| mu - (sum(selected) + x) / (i + 1) ||`` (mu: the mean of all N rows); ties to the lowest index."""
    x = _matrix(features, k, "herding")
    mu = x.mean(0)
    total = torch.zeros_like(mu)  # sum of the selected features
    taken = torch.zeros(len(x), dtype=torch.bool)
    order: list[int] = []
    for i in range(k):
        # (i+1) * mu - total - x: (i+1) times the gap between the class mean and the mean with x added;
        # the factor (i+1) is the same for every x, so the argmin is that of the gap itself.
        d = (((i + 1) * mu - total) - x).square().sum(1)
        d[taken] = float("inf")
        p = int(torch.argmin(d))
        order.append(p)
        taken[p] = True
        total += x[p]
    return torch.tensor(order, dtype=torch.int64)


def kcenter_greedy(features: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """k-center greedy (Sener & Savarese 2018, DeepCore ``k_center_greedy``) on an (N, D) feature matrix:
    ``first``, then repeatedly the point farthest (Euclidean) from its nearest selected center. ``k`` int64
    indices in selection order, without replacement; ties to the lowest index."""
    x = _matrix(features, k, "kcenter_greedy")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    if not 0 <= first < len(x):
        raise ValueError(f"kcenter_greedy: first={first} is not an index of the {len(x)} points")
    # Squared distance to the nearest selected center; -1 marks the centers themselves (as DeepCore's
    # ``mins[p] = -1``), so a center is never picked again even when it has exact duplicates.
    nearest = (x - x[first]).square().sum(1)
    nearest[first] = -1.0
    order = [first]
    for _ in range(k - 1):
        p = int(torch.argmax(nearest))
        order.append(p)
        nearest = torch.minimum(nearest, (x - x[p]).square().sum(1))
        nearest[p] = -1.0
    return torch.tensor(order, dtype=torch.int64)


def _matrix(features: torch.Tensor, k: int, who: str) -> torch.Tensor:
    """float64 CPU copy of an (N, D) matrix, after checking 0 <= k <= N."""
    if features.dim() != 2:
        raise ValueError(f"{who}: expected an (N, D) feature matrix, got shape {tuple(features.shape)}")
    if not 0 <= k <= len(features):
        raise ValueError(f"{who}: cannot select k={k} of {len(features)} points")
    return features.detach().to("cpu", torch.float64)


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the last ``nn.Linear`` registered in ``model``: the classifier of rd3fast's
    ConvNet (``classifier``), torchvision ResNets (``fc``), MobileNets/VGG/AlexNet (``classifier.N``) and
    most timm models (``head``/``fc``/``classifier``). Registration order puts the head last in all of them."""
    found: tuple[str, nn.Linear] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    if found is None:
        raise RD3Error(f"coreset selection: the teacher {type(model).__name__} has no nn.Linear layer; herding "
                       "and k-center use the input of the final linear classifier as the image's feature")
    return found


@torch.inference_mode()
def teacher_features(teacher: Relabeler | nn.Module, images: torch.Tensor, mean: Sequence[float],
                     std: Sequence[float], *, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> torch.Tensor:
    """(M, D) float32 CPU features of uint8 (M, C, H, W) images: the input of the (first) teacher's final
    nn.Linear, captured by a forward hook, in eval mode, ``batch_size`` images at a time."""
    if isinstance(teacher, Relabeler):
        model = teacher.teachers[0]
        convert = lambda x: teacher.input_for(0, x)  # noqa: E731 - the teacher's own normalization, if it differs
    else:
        model, convert = teacher, (lambda x: x)
    name, linear = final_linear(model)
    captured: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    was_training = model.training
    model.eval()  # BatchNorm on running statistics, whatever state the teacher was left in (bn_train)
    try:
        out = []
        for i in range(0, len(images), batch_size):
            captured.clear()
            x = teacher_input(images[i:i + batch_size].to(device), mean, std)
            logits = model(convert(x))
            if not captured:
                raise RD3Error(f"coreset selection: the final nn.Linear {name!r} of {type(model).__name__} was "
                               "not called in its forward pass; cannot take its input as the feature")
            if logits.shape[-1] != linear.out_features:
                raise RD3Error(f"coreset selection: the last nn.Linear {name!r} of {type(model).__name__} has "
                               f"{linear.out_features} outputs but the model gives {logits.shape[-1]}: it is "
                               "not the final classifier")
            out.append(captured[-1].flatten(1).float().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    feats = torch.cat(out)
    if not bool(torch.isfinite(feats).all()):  # herding/k-center would pick by NaN comparisons, silently
        raise RD3Error(f"coreset selection: {type(model).__name__}'s features are NaN/inf (non-finite teacher "
                       "weights?)")
    return feats


def coreset_indices(real: ImageSet, teacher: Relabeler, ipc: int, mean: Sequence[float], std: Sequence[float], *,
                    method: str, seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256,
                    progress: bool = True) -> torch.Tensor:
    """Indices into ``real`` of the selection of ``coreset_select``: class order, selection order within
    a class (int64, ``ipc * num_classes``)."""
    if method not in METHODS:
        raise RD3Error(f"coreset method {method!r}: expected one of {', '.join(METHODS)}")
    if ipc < 1:
        raise RD3Error(f"--ipc {ipc}: expected at least 1 image per class")
    if batch_size < 1:
        raise RD3Error(f"batch size {batch_size}: expected at least 1")
    members = [torch.nonzero(real.labels == c).flatten() for c in range(real.num_classes)]
    for c, idx in enumerate(members):  # all classes checked before any teacher pass
        if len(idx) < ipc:
            raise RD3Error(f"--ipc {ipc}: class {real.classes[c]!r} of {real.source} has only {len(idx)} images")
    # One generator walked in class order: each class gets its own first k-center (herding draws nothing).
    rng = np.random.default_rng(seed)
    firsts = [int(rng.integers(len(idx))) for idx in members] if method == "kcenter" else [0] * len(members)
    picks = []
    for c in bar(range(real.num_classes), total=real.num_classes, desc=f"{method} select", unit="class",
                 enabled=progress):
        feats = teacher_features(teacher, real.images[members[c]], mean, std, device=device, batch_size=batch_size)
        local = herding(feats, ipc) if method == "herding" else kcenter_greedy(feats, ipc, firsts[c])
        picks.append(members[c][local])
    return torch.cat(picks)


def coreset_select(real: ImageSet, teacher: Relabeler, ipc: int, mean: Sequence[float], std: Sequence[float], *,
                   method: str, seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256,
                   progress: bool = True) -> ImageSet:
    """``ipc`` real images per class chosen by ``method`` ("herding" | "kcenter") on the teacher's penultimate
    features: exact copies of training images, class order, selection order within a class; source
    ``f"{method}-ipc{ipc}"``. ``seed`` draws k-center's first center per class (herding is deterministic)."""
    sel = coreset_indices(real, teacher, ipc, mean, std, method=method, seed=seed, device=device,
                          batch_size=batch_size, progress=progress)
    return ImageSet(real.images[sel].clone(), real.labels[sel].clone(), list(real.classes), f"{method}-ipc{ipc}")


def random_real(real: ImageSet, ipc: int, seed: int = 0) -> ImageSet:
    """IPC images per class, without replacement."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(real.num_classes):
        idx = np.flatnonzero(real.labels.numpy() == c)
        if len(idx) < ipc:
            raise RD3Error(f"--ipc {ipc}: class {real.classes[c]!r} of {real.source} has only {len(idx)} images")
        picks.append(np.sort(rng.choice(idx, size=ipc, replace=False)))
    sel = torch.from_numpy(np.concatenate(picks))
    return ImageSet(real.images[sel].clone(), real.labels[sel].clone(), list(real.classes), f"random-ipc{ipc}")
