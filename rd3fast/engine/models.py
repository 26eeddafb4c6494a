"""Students and teachers by name, and weights files.

Names resolve in this order:
- ``convnet[-dN][-wW][-bn]``: the ConvNet of the distillation literature (DC/DM/MTT): N blocks of
  conv3x3(W) -> instance norm (GroupNorm with one group per channel, affine; BatchNorm with ``-bn``)
  -> ReLU -> avgpool 2, then a linear classifier. ``convnet-d3`` for 32 px, ``convnet-d4`` for 64 px;
  width 128 by default.
- ``<torchvision resnet>-cifar`` (alias ``<name>_modified``, RDED's name): the CIFAR/Tiny-ImageNet stem,
  a 3x3 stride-1 conv1 and no max-pool.
- any torchvision classification model name, then any timm model name (random init; pretrained
  weights come from a local file, never from a hub).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_write
from ..data.tensors import LoadFailed, safe_load
from ..errors import RD3Error

_CONVNET = re.compile(r"^convnet(?:-d(\d+))?(?:-w(\d+))?(-bn)?$")


class ConvNet(nn.Module):
    def __init__(self, num_classes: int, image_size: int, depth: int = 3, width: int = 128, in_chans: int = 3,
                 batchnorm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = in_chans, image_size
        for d in range(depth):
            norm = nn.BatchNorm2d(width) if batchnorm else nn.GroupNorm(width, width, affine=True)
            # MTT networks.py ConvNet._make_layers: padding=3 if channel == 1 and d == 0 (28 px MNIST -> 32 px,
            # so three poolings leave 4 x 4, as on CIFAR)
            pad = 3 if in_chans == 1 and d == 0 else 1
            layers += [nn.Conv2d(c, width, 3, padding=pad), norm, nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            c, s = width, (s + 2 * pad - 2) // 2
        if s < 1:
            raise RD3Error(f"convnet-d{depth}: {image_size} px is too small for {depth} pooling stages")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _cifar_stem(model: nn.Module) -> nn.Module:
    conv1 = model.conv1
    model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int, image_size: int = 224, in_chans: int = 3) -> nn.Module:
    """A randomly initialized model with ``num_classes`` outputs."""
    m = _CONVNET.match(name)
    if m:
        return ConvNet(num_classes, image_size, depth=int(m.group(1) or 3), width=int(m.group(2) or 128),
                       in_chans=in_chans, batchnorm=bool(m.group(3)))
    # Imported only here: torchvision pulls in torch._dynamo (about 2 s of start-up on a small CPU),
    # which a ConvNet run never needs.
    import torchvision

    tv_names = set(torchvision.models.list_models(module=torchvision.models))
    for suffix in ("-cifar", "_modified"):
        if name.endswith(suffix) and name[: -len(suffix)] in tv_names and name.startswith("resnet"):
            return _cifar_stem(torchvision.models.get_model(name[: -len(suffix)], weights=None,
                                                            num_classes=num_classes))
    if name in tv_names:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    import timm

    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    raise RD3Error(f"unknown architecture {name!r}: expected convnet-dN[-wW], a torchvision model "
                   f"(resnet18, mobilenet_v2, ...), <resnet>-cifar, or a timm model name")


# ---------------------------------------------------------------------------------------------------
# Weights files
# ---------------------------------------------------------------------------------------------------
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "net", "student")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a plain state_dict, a training checkpoint, or an rd3fast weights file."""
    p = Path(path)
    if p.is_dir():
        raise RD3Error(f"weights file {p} is a folder; expected a file (a state_dict or checkpoint saved by "
                       "torch.save)")
    if not p.is_file():
        raise RD3Error(f"weights file {p} does not exist")
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise RD3Error(f"weights file {p} cannot be read ({e.strerror})") from None
    try:
        obj = safe_load(p)
    except LoadFailed as e:
        raise RD3Error(_unreadable(p, head, e)) from None
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                meta = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RD3Error(f"weights file {p}: expected a state_dict or a checkpoint with one of the keys "
                       f"{', '.join(_STATE_KEYS)}")
    state = {}
    for k, v in obj.items():
        for prefix in _PREFIXES:  # DataParallel / torch.compile wrappers
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state, meta


def _unreadable(p: Path, head: bytes, e: LoadFailed) -> str:
    """One line for a file torch.load refused (``safe_load`` has already cut torch's dozen lines of advice to
    set weights_only=False, which is wrong for a file that is no checkpoint and unsafe for one from elsewhere,
    down to its reason)."""
    if not head:
        return f"weights file {p} is not a torch checkpoint (it is empty)"
    if head.startswith(b"version https://git-lfs"):
        return f"weights file {p} is not a torch checkpoint (it is a Git LFS pointer: run `git lfs pull`)"
    if e.refused is not None:
        return (f"weights file {p} is not a weights file rd3fast can read safely: it holds Python objects besides "
                f"tensors ({e.reason}); save the model's state_dict alone")
    reason = e.reason
    # What torch.save writes is a zip archive (torch >= 1.6) or a pickle (protocol 2+ starts with 0x80).
    checkpoint_like = head.startswith((b"PK\x03\x04", b"\x80"))
    if not checkpoint_like and _is_text(head):
        first = head.decode("utf-8", "replace").splitlines()[0][:40]
        reason = f"it is a text file starting {first!r}"
    return f"weights file {p} is not a torch checkpoint ({reason[:200]})"


def _is_text(head: bytes) -> bool:
    return all(c >= 32 or c in b"\t\n\r" for c in head)  # no control bytes (UTF-8 bytes are >= 0x80)


def load_weights(model: nn.Module, path: str | Path, arch: str) -> dict[str, Any]:
    """Load a weights file into ``model`` strictly; a clear error when it does not fit ``arch``."""
    state, meta = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        trained = f" (the file says it holds {meta['arch']!r})" if "arch" in meta else ""
        parts = [f"{len(missing)} missing keys e.g. {missing[:3]}" if missing else "",
                 f"{len(unexpected)} unexpected keys e.g. {unexpected[:3]}" if unexpected else "",
                 f"shape mismatch {shapes[:3]}" if shapes else ""]
        raise RD3Error(f"weights file {path} does not fit architecture {arch!r}{trained}: "
                       + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
    return meta


def save_weights(path: str | Path, model: nn.Module, arch: str, **meta: Any) -> None:
    """Atomic write (tmp file + rename) of {'arch', 'state_dict', **meta}, readable by load_weights."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Through a Python file object: torch.save to a path reports a full disk as a RuntimeError ("unexpected
    # pos"), to a file object as the OSError (ENOSPC) that atomic_write turns into one clear line.
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save({"arch": arch, "state_dict": state, **meta}, f)
