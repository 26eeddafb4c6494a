"""Frozen teachers that relabel every augmented batch ("epoch-wise" soft labels).

Several teachers give hybrid soft labels: the mean of their logits (EDC / G-VBSM). Teachers run in eval
mode under inference_mode; on CUDA in bf16 autocast and channels_last.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .errors import RD3Error
from .models import build_model, load_weights, read_state_dict


class Relabeler(nn.Module):
    """``relabeler(x)`` -> float32 logits (B, K): the mean of the teachers' logits."""

    def __init__(self, teachers: Sequence[nn.Module], names: Sequence[str] = (), *, logit_norm: bool = False,
                 bn_train: bool = False) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("Relabeler needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.names = list(names) or [type(t).__name__ for t in teachers]
        self.logit_norm, self.bn_train = logit_norm, bn_train
        for t in self.teachers:
            t.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Relabeler":
        # Teachers stay in eval mode (BatchNorm on running statistics) whatever the caller does, unless
        # bn_train reproduces SRe2L's CIFAR script, whose teacher is never switched to eval.
        return super().train(self.bn_train)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # inference_mode would forbid the running-statistics update that bn_train asks for.
        grad_off = torch.no_grad() if self.bn_train else torch.inference_mode()
        with grad_off, torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            logits = [t(x).float() for t in self.teachers]
        if self.logit_norm and len(logits) > 1:
            # G-VBSM: each teacher's logits divided by their Frobenius norm over the batch, times the mean norm.
            norms = [z.norm() for z in logits]
            mean_norm = sum(norms) / len(norms)
            logits = [z / n * mean_norm for z, n in zip(logits, norms)]
        return (sum(logits) / len(logits)).clone()  # clone: a normal tensor outside inference mode

    def num_classes(self, image_size: int, in_chans: int = 3) -> int:
        """Output width (the narrowest teacher's), probed with one zero image in eval mode."""
        dev = next(self.parameters()).device
        probe = torch.zeros(1, in_chans, image_size, image_size, device=dev)
        with torch.inference_mode():
            widths = [int(t.eval()(probe).shape[1]) for t in self.teachers]
        self.train()
        return min(widths)


def load_teachers(archs: Sequence[str], weights: Sequence[str | Path], num_classes: int, image_size: int,
                  device: torch.device, *, logit_norm: bool = False, bn_train: bool = False) -> Relabeler:
    """Build each teacher, load its weights file, check its class count against the data's."""
    if len(weights) != len(archs):
        raise RD3Error(
            f"--teacher-weights: {len(archs)} teacher(s) ({', '.join(archs)}) need as many weights files, got "
            f"{len(weights)}. Pretrained teachers are not downloaded: train one with "
            f"`python -m rd3fast.pretrain` or pass your own file")
    models = []
    for arch, path in zip(archs, weights):
        model = build_model(arch, num_classes, image_size)
        try:
            load_weights(model, path, arch)
        except RD3Error as e:
            raise RD3Error(_why_weights_do_not_fit(path, arch, num_classes, image_size) or str(e)) from None
        models.append(model.to(device).to(memory_format=torch.channels_last if device.type == "cuda"
                                           else torch.contiguous_format))
    return Relabeler(models, archs, logit_norm=logit_norm, bn_train=bn_train)


def _why_weights_do_not_fit(path: str | Path, arch: str, num_classes: int, image_size: int) -> str | None:
    """The plain reason behind a shape mismatch, when the file tells: the class count (the commonest), or
    the image size an rd3fast weights file records (a ConvNet's classifier is sized by it)."""
    state, meta = read_state_dict(path)
    state_classes = _classifier_width(state, meta)
    if state_classes and state_classes != num_classes:
        return f"teacher weights {path} have {state_classes} outputs but the data has {num_classes} classes"
    trained = meta.get("image_size")
    if isinstance(trained, int) and trained and trained != image_size:
        return (f"teacher weights {path} were trained at {trained} px, this run uses --image-size {image_size}; "
                f"{arch}'s classifier depends on the image size")
    return None


def _classifier_width(state: dict[str, torch.Tensor], meta: dict[str, object]) -> int | None:
    if isinstance(meta.get("num_classes"), int):  # other tools' checkpoints may hold anything under that key
        return meta["num_classes"]
    last = [v for k, v in state.items() if k.endswith(("fc.weight", "classifier.weight", "head.weight",
                                                        "classifier.1.weight", "classifier.6.weight"))]
    return int(last[-1].shape[0]) if last else None
