"""Frozen teachers that relabel every augmented batch ("epoch-wise" soft labels).

Several teachers give hybrid soft labels: the mean of their logits (EDC / G-VBSM). Teachers run in eval
mode under inference_mode; on CUDA in bf16 autocast and channels_last.

Each teacher sees its input normalized as it was trained. The batch arrives normalized with the run's
mean/std (the student's); a teacher trained with other statistics (an rd3fast weights file records them;
``--teacher-mean/--teacher-std`` give them for plain state_dicts) gets the batch converted per channel,
x_t = (x * std + mean - mean_t) / std_t, folded into one multiply-add. Without this, a Fashion-MNIST
teacher under ``rded-small`` (ImageNet statistics) was fed inputs it never saw: 89.98 % -> 89.45 % test
accuracy. What each teacher saw is recorded in results.json (``Relabeler.inputs``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..data.pixels import normalize
from ..errors import RD3Error
from .models import build_model, load_weights, read_state_dict


class Relabeler(nn.Module):
    """``relabeler(x)`` -> float32 logits (B, K): the mean of the teachers' logits."""

    def __init__(self, teachers: Sequence[nn.Module], names: Sequence[str] = (), *, logit_norm: bool = False,
                 bn_train: bool = False, convert: Sequence[tuple[torch.Tensor, torch.Tensor] | None] = (),
                 inputs: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("Relabeler needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.names = list(names) or [type(t).__name__ for t in teachers]
        self.logit_norm, self.bn_train = logit_norm, bn_train
        self.inputs = list(inputs)  # per teacher: the normalization it was fed, and where that came from
        # Per teacher, (scale, shift) of shape (1, C, 1, 1) turning the run's normalized input into the
        # teacher's, or None when they agree. Buffers: they move with .to(device), no copy per step.
        self.convert = [c is not None for c in convert] or [False] * len(teachers)
        for i, c in enumerate(convert):
            if c is not None:
                self.register_buffer(f"scale{i}", c[0].view(1, -1, 1, 1).float())
                self.register_buffer(f"shift{i}", c[1].view(1, -1, 1, 1).float())
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
            logits = [t(self.input_for(i, x)).float() for i, t in enumerate(self.teachers)]
        if self.logit_norm and len(logits) > 1:
            # G-VBSM: each teacher's logits divided by their Frobenius norm over the batch, times the mean norm.
            norms = [z.norm() for z in logits]
            mean_norm = sum(norms) / len(norms)
            logits = [z / n * mean_norm for z, n in zip(logits, norms)]
        return (sum(logits) / len(logits)).clone()  # clone: a normal tensor outside inference mode

    def input_for(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The run's normalized batch as teacher ``i`` was trained to see it (a one-channel batch, --gray-channels
        1, repeated to the teachers' three)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if not self.convert[i]:
            return x
        return torch.addcmul(getattr(self, f"shift{i}").to(x.dtype), x, getattr(self, f"scale{i}").to(x.dtype))

    def num_classes(self, image_size: int, in_chans: int = 3) -> int:
        """Output width (the narrowest teacher's), probed with one zero image in eval mode."""
        dev = next(self.parameters()).device
        probe = torch.zeros(1, in_chans, image_size, image_size, device=dev)
        with torch.inference_mode():
            widths = [int(t.eval()(probe).shape[1]) for t in self.teachers]
        self.train()
        return min(widths)


def teacher_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """ToTensor + Normalize on 0..255 values (uint8 or float), 1-channel images expanded to the teachers'
    3 channels: how the distillers (RDED selection, coresets) feed real pixels to a teacher."""
    x = normalize(images.float(), tuple(mean), tuple(std))
    return x if x.shape[1] == 3 else x.expand(-1, 3, -1, -1)


def load_teachers(archs: Sequence[str], weights: Sequence[str | Path], num_classes: int, image_size: int,
                  device: torch.device, *, logit_norm: bool = False, bn_train: bool = False,
                  input_mean: Sequence[float] = (), input_std: Sequence[float] = (),
                  teacher_mean: Sequence[float] = (), teacher_std: Sequence[float] = ()) -> Relabeler:
    """Build each teacher, load its weights file, check its class count against the data's. With the run's
    ``input_mean/std``, each teacher is fed its own normalization: ``teacher_mean/std`` (for files that do
    not record one), else the file's, else the run's (assumed, and said so in ``Relabeler.inputs``)."""
    if len(weights) != len(archs):
        raise RD3Error(
            f"--teacher-weights: {len(archs)} teacher(s) ({', '.join(archs)}) need as many weights files, got "
            f"{len(weights)}. Pretrained teachers are not downloaded: train one with "
            f"`python -m rd3fast.pretrain` or pass your own file")
    if bool(teacher_mean) != bool(teacher_std):
        raise RD3Error("--teacher-mean and --teacher-std go together: give both (the normalization the teachers "
                       "were trained with)")
    models, convert, inputs = [], [], []
    for arch, path in zip(archs, weights):
        model = build_model(arch, num_classes, image_size)
        try:
            meta = load_weights(model, path, arch)
        except RD3Error as e:
            raise RD3Error(_why_weights_do_not_fit(path, arch, num_classes, image_size) or str(e)) from None
        models.append(model.to(device).to(memory_format=torch.channels_last if device.type == "cuda"
                                           else torch.contiguous_format))
        mean, std, source = _teacher_normalization(meta, path, teacher_mean, teacher_std, input_mean, input_std)
        inputs.append({"teacher": arch, "weights": str(path), "mean": mean, "std": std, "from": source})
        convert.append(_conversion(input_mean, input_std, mean, std))
    return Relabeler(models, archs, logit_norm=logit_norm, bn_train=bn_train, convert=convert,
                     inputs=inputs).to(device)


def _three(v: Sequence[float]) -> list[float]:
    return [float(x) for x in v] * (3 // len(v)) if len(v) == 1 else [float(x) for x in v]


def _teacher_normalization(meta: dict[str, Any], path: str | Path, flag_mean: Sequence[float],
                           flag_std: Sequence[float], run_mean: Sequence[float],
                           run_std: Sequence[float]) -> tuple[list[float], list[float], str]:
    """(mean, std, where they came from) of one teacher's training inputs."""
    if flag_mean:
        return _three(flag_mean), _three(flag_std), "--teacher-mean/--teacher-std"
    mean, std = meta.get("mean"), meta.get("std")
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and mean and std:
        try:
            m, s = _three(mean), _three(std)
        except (TypeError, ValueError):
            raise RD3Error(f"teacher weights {path}: its recorded mean/std are not numbers") from None
        if len(m) != 3 or len(s) != 3 or not all(x > 0 for x in s):
            raise RD3Error(f"teacher weights {path}: its recorded mean/std {mean}/{std} are not 1 or 3 values "
                           "(std > 0)")
        return m, s, "the weights file"
    return _three(run_mean) if run_mean else [], _three(run_std) if run_std else [], \
        "assumed: the run's (the file does not record it; pass --teacher-mean/--teacher-std if it differs)"


def _conversion(run_mean: Sequence[float], run_std: Sequence[float], mean: Sequence[float],
                std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) with teacher_input = run_input * scale + shift, or None when nothing changes."""
    if not run_mean or not mean:
        return None
    rm, rs = torch.tensor(_three(run_mean), dtype=torch.float64), torch.tensor(_three(run_std), dtype=torch.float64)
    tm, ts = torch.tensor(list(mean), dtype=torch.float64), torch.tensor(list(std), dtype=torch.float64)
    if torch.allclose(rm, tm, rtol=0, atol=1e-7) and torch.allclose(rs, ts, rtol=0, atol=1e-7):
        return None
    # x_run = (p - rm) / rs for pixel p in [0, 1]; the teacher wants (p - tm) / ts = x_run * rs/ts + (rm - tm)/ts.
    return (rs / ts).float(), ((rm - tm) / ts).float()


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
