"""Distilled sets stored as tensors: .pt/.pth/.npz files and MTT-style folders -> uint8 images + labels.

Methods save their sets in assorted layouts (dict keys, NHWC or NCHW, uint8 or float in [0, 1] or
normalized, hard or soft labels); everything here maps them to what the rest of rd3fast holds: uint8
N x C x H x W (C in {1, 3}) and int64 class indices. ``torch.load`` runs with ``weights_only`` because a
downloaded set is data, not code.

Float images are never guessed at: within [0, 1] they are pixels; anything else was normalized (or is
0-255 floats) and needs the mean/std the set was normalized with, as the user gives them; values those
put far outside [0, 1] mean they are the wrong ones, which is an error rather than silently clipped pixels.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import RD3Error
from .pixels import resize_uint8

TENSOR_EXTS = (".pt", ".pth", ".npz")
PT_IMAGE_KEYS = ("images", "x", "data", "image_syn")
PT_LABEL_KEYS = ("labels", "y", "targets", "label_syn")
PT_SOFT_KEY = "soft_labels"  # optional in a .pt dict: (N, K) soft labels beside the hard labels (DD-Ranking's API)
NPZ_IMAGE_KEYS = ("x", "images", "data")
NPZ_LABEL_KEYS = ("y", "labels", "targets")
MTT_FILES = ("images_best.pt", "labels_best.pt")
MTT_LR_FILE = "lr_best.pt"  # the learned learning rate MTT/TESLA/DATM save beside the images (syn_lr)
UNIT_TOLERANCE = 1e-3  # float images within [0, 1] +- this are plain [0, 1] pixels, not normalized ones
# De-normalized values may leave [0, 1] a little (an optimized set is not constrained to valid pixels), but
# when more than this fraction is clipped the mean/std are not the ones the set was normalized with.
MAX_CLIPPED = 0.05
CHUNK = 1024  # images per float conversion (or resize) step, so a large float set never doubles in memory


def is_mtt_folder(p: Path) -> bool:
    """Whether folder ``p`` holds (one of) images_best.pt / labels_best.pt: a tensor set, not an ImageFolder."""
    return any((p / name).is_file() for name in MTT_FILES)


class TensorSet(NamedTuple):
    images: torch.Tensor  # uint8 N x C x H x W, or float32 model-space values (``model_space``)
    labels: torch.Tensor  # int64 (N,): the class of each image (argmax of soft labels)
    num_classes: int  # as the labels imply
    soft: torch.Tensor | None  # float32 (N, K) when the set stores soft labels (logits), else None
    lr: float | None  # the learned learning rate of an MTT-style folder (lr_best.pt), else None


def read_tensor_set(p: Path, load_size: int = 0, mean: Sequence[float] = (), std: Sequence[float] = (),
                    model_space: bool = False) -> TensorSet:
    """The images, labels, soft labels and learned lr of a .pt/.pth/.npz file or an MTT folder.

    Images become uint8 N x C x H x W. load_size > 0 resizes to load_size x load_size (torch bilinear +
    antialias); mean/std (1 value for every channel, or one per channel; as the user gave them, never a
    dataset's defaults) undo the normalization of float images outside [0, 1]. With ``model_space`` float
    images are kept as stored (float32): the values the model was trained on when the set was distilled
    (MTT's images_best.pt: normalized, ZCA-whitened when distilled with ZCA), for the DSA pipeline."""
    present = [name for name in MTT_FILES if (p / name).is_file()] if p.is_dir() else []
    extra_soft = None  # a .pt dict's soft_labels beside its hard labels
    if len(present) == 2:
        images, labels = (_torch_load(p / name) for name in MTT_FILES)
    elif present:
        missing = next(name for name in MTT_FILES if name not in present)
        raise RD3Error(f"{p} has {present[0]} but no {missing}; an MTT-style folder needs both")
    elif not p.is_dir() and p.suffix.lower() == ".npz":
        images, labels = _read_npz(p)
    elif not p.is_dir() and p.suffix.lower() in (".pt", ".pth"):
        images, labels, extra_soft = _read_pt(p)
    else:
        raise RD3Error(f"{p}: unsupported distilled set; expected an ImageFolder directory, a "
                       f"{'/'.join(TENSOR_EXTS)} file or a folder with {' + '.join(MTT_FILES)}")
    x = _as_tensor(images, p, "images")
    y = _as_tensor(labels, p, "labels")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise RD3Error(f"{p}: {len(x) if x.dim() else 0} images but {len(y) if y.dim() else 0} labels; "
                       "expected one label per image")
    if len(x) == 0:
        raise RD3Error(f"{p}: holds no images")
    soft = y.float().contiguous() if y.dim() == 2 and y.is_floating_point() else None
    y, k = _hard_labels(y, p)
    if extra_soft is not None:  # DD-Ranking's layout: each image's class, and soft labels whose argmax may differ
        soft, k = _extra_soft(extra_soft, y, k, p)
    if model_space and x.is_floating_point():
        x = _model_space_images(x, p)
        if load_size:
            raise RD3Error(f"{p}: --load-size does not apply to float images kept as stored (--aug dsa); "
                           "resize the set before distilling, or evaluate it at its own size")
    else:
        x = _to_uint8_images(x, p, mean, std)
        if load_size:
            x = resize_uint8(x, load_size, CHUNK)
    lr = _read_lr(p / MTT_LR_FILE) if p.is_dir() and (p / MTT_LR_FILE).is_file() else None
    return TensorSet(x, y, k, soft, lr)


def _read_lr(path: Path) -> float:
    """lr_best.pt: a 0-d (or one-element) tensor, or a number, > 0 and finite."""
    value = _torch_load(path)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        scalar = value.reshape(()).to(torch.float32 if value.dtype == torch.bfloat16 else value.dtype).numpy()
        # The shortest decimal that is the same float32 (0.02, not 0.019999999552965164): what was learned.
        value = float(str(scalar)) if scalar.dtype in (np.float32, np.float16) else scalar.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise RD3Error(f"{path}: expected the learned learning rate (one positive number), got "
                       f"{value if isinstance(value, (int, float)) else type(value).__name__}")
    return float(value)


def _model_space_images(x: torch.Tensor, path: Path) -> torch.Tensor:
    """Float images as N x C x H x W float32, values untouched."""
    x = _layout(x, path)
    if not bool(torch.isfinite(x).all()):
        raise RD3Error(f"{path}: images contain NaN or inf")
    return x.float().contiguous()


class LoadFailed(Exception):
    """A file ``safe_load`` could not read. ``reason`` says why in one line; ``refused`` names what a safe load
    will not unpickle (a global such as ``pathlib.PosixPath``), None for a damaged or foreign file; ``cause``
    is torch's own exception."""

    def __init__(self, reason: str, refused: str | None, cause: BaseException) -> None:
        super().__init__(reason)
        self.reason, self.refused, self.cause = reason, refused, cause


def safe_load(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU: every file rd3fast reads with torch (tensor sets,
    MTT files, weights, checkpoints) comes through here, so each refusal is one line (``LoadFailed``).

    weights_only, because a downloaded set or checkpoint is data and must not run code. Torch's own refusal
    is a dozen lines of advice to pass weights_only=False (unsafe for a file from elsewhere, and useless for
    one that is no checkpoint), and its warnings (a pickle protocol other than 2, a TorchScript archive) are
    multi-line text on stderr; both are reduced here to the one reason a caller puts in its RD3Error."""
    with warnings.catch_warnings(record=True) as said:  # kept from stderr; a failure's reason may use them
        warnings.simplefilter("always")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
            failure = e
    reason, refused = _load_reason(failure, [str(w.message) for w in said])
    raise LoadFailed(reason, refused, failure) from None


# What torch's weights-only unpickler says when it refuses something, and how rd3fast says it.
_REFUSALS = (
    (re.compile(r"GLOBAL (\S+) was not an allowed global"), "it needs a global torch refuses to unpickle: {}"),
    (re.compile(r"unsupported GLOBAL (\S+) whose module"), "it needs a global torch refuses to unpickle: {}"),
    (re.compile(r"classes allowlisted via `add_safe_globals` but got (<class '[^']+'>|\S+)"),
     "it builds an object torch refuses to unpickle: {}"),
    (re.compile(r"unrecognized function (\S+)"), "it calls a function torch refuses to unpickle: {}"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_PROTOCOL = re.compile(r"Detected pickle protocol (\d+)")


def _load_reason(e: BaseException, warned: Sequence[str] = ()) -> tuple[str, str | None]:
    """(one line saying why torch.load failed, the refused global or None), from torch's message and the
    warnings it gave on the way."""
    text = _ANSI.sub("", str(e))
    for pattern, say in _REFUSALS:
        m = pattern.search(text)
        if m:
            name = m.group(1).strip("<>").removeprefix("class ").strip("'")
            return say.format(name), name
    if isinstance(e, OSError) and e.strerror:
        return f"it cannot be read: {e.strerror}", None
    protocol = next((m.group(1) for w in warned if (m := _PROTOCOL.search(w))), None)
    if protocol is not None:  # e.g. pickle.dump's default protocol: its FRAME opcode is "Unsupported operand 149"
        return (f"it was pickled with protocol {protocol}, which torch's safe loader does not read; save it with "
                "torch.save"), None
    if "WeightsUnpickler error:" in text:  # the part of torch's message that says what went wrong
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((s.strip() for s in text.splitlines() if s.strip()), "").split(". ")[0]
    return (f"{type(e).__name__}: {line[:200]}" if line else type(e).__name__), None


def _torch_load(path: Path) -> Any:
    try:
        return safe_load(path)
    except LoadFailed as e:
        if e.refused is not None:
            raise RD3Error(f"{path} is not a tensor file rd3fast can read safely ({e.reason}); save plain tensors "
                           "(a dict of images and labels, or an (images, labels) pair) with torch.save") from None
        raise RD3Error(f"cannot read tensor file {path} ({e.reason})") from None


def _pick(d: dict, keys: Sequence[str], path: Path, what: str) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    raise RD3Error(f"{path}: unknown tensor-file layout: no {what} key (expected one of {'|'.join(keys)}); "
                   f"found keys {', '.join(map(str, d)) or 'none'}")


def _read_pt(path: Path) -> tuple[Any, Any, Any]:
    """(images, labels, soft labels or None): a dict may carry ``soft_labels`` beside hard ``labels``."""
    obj = _torch_load(path)
    if isinstance(obj, dict):
        return (_pick(obj, PT_IMAGE_KEYS, path, "images"), _pick(obj, PT_LABEL_KEYS, path, "labels"),
                obj.get(PT_SOFT_KEY))
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1], None
    raise RD3Error(f"{path}: unknown tensor-file layout ({type(obj).__name__}); expected a dict with "
                   f"{'|'.join(PT_IMAGE_KEYS)} and {'|'.join(PT_LABEL_KEYS)} keys, "
                   "or an (images, labels) pair")


def _extra_soft(value: Any, hard: torch.Tensor, k: int, path: Path) -> tuple[torch.Tensor, int]:
    """A .pt dict's ``soft_labels`` checked against its hard labels: float (N, K), finite, K covering them."""
    s = _as_tensor(value, path, PT_SOFT_KEY)
    if s.dim() != 2 or len(s) != len(hard) or not s.is_floating_point() or s.shape[1] < k:
        raise RD3Error(f"{path}: {PT_SOFT_KEY} {tuple(s.shape)} {s.dtype}: expected floats of shape ({len(hard)}, K), "
                       f"one row per image, K >= {k} classes of its labels")
    if not bool(torch.isfinite(s).all()):
        raise RD3Error(f"{path}: {PT_SOFT_KEY} contain NaN or inf")
    return s.float().contiguous(), int(s.shape[1])


def _read_npz(path: Path) -> tuple[Any, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise RD3Error(f"cannot read {path}: {e}") from None
    return _pick(arrays, NPZ_IMAGE_KEYS, path, "images"), _pick(arrays, NPZ_LABEL_KEYS, path, "labels")


def _as_tensor(value: Any, path: Path, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise RD3Error(f"{path}: {what} must be a tensor or array, got {type(value).__name__}")


def _chunked_uint8(x: torch.Tensor, fn: Any) -> tuple[torch.Tensor, int]:
    """(uint8 tensor of fn(float32 chunk) clipped to 0..255, how many values the clipping changed by more
    than rounding would), over the first dim so a large float set is never copied whole."""
    out = torch.empty(x.shape, dtype=torch.uint8)
    clipped = 0
    for i in range(0, len(x), CHUNK):
        v = fn(x[i:i + CHUNK].float())
        clipped += int(((v < -0.5) | (v > 255.5)).sum())
        out[i:i + CHUNK] = v.clamp_(0, 255).round_().to(torch.uint8)
    return out, clipped


def _values(values: Sequence[float]) -> str:
    """Values as a --mean/--std flag takes them."""
    return ",".join(f"{float(v):g}" for v in values)


def _per_channel(values: Sequence[float], channels: int, path: Path, flag: str) -> torch.Tensor:
    """(1, C, 1, 1) float32 of ``values``: 1 value for every channel, or exactly one per channel."""
    if len(values) not in (1, channels):
        raise RD3Error(f"{path}: {flag} has {len(values)} values for {channels}-channel images; expected 1 "
                       f"(for every channel){f' or {channels}' if channels > 1 else ''}")
    return torch.tensor([float(v) for v in values] * (channels // len(values)),
                        dtype=torch.float32).view(1, channels, 1, 1)


def _layout(x: torch.Tensor, path: Path) -> torch.Tensor:
    """N x H x W (gray) or N x H x W x C -> N x C x H x W (C in 1, 3); anything else is an error."""
    if x.dim() == 3:
        x = x.unsqueeze(1)  # N x H x W: gray
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise RD3Error(f"{path}: images have shape {tuple(x.shape)}; expected N x C x H x W or N x H x W x C "
                       "with C in (1, 3), or N x H x W")
    return x


def _to_uint8_images(x: torch.Tensor, path: Path, mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """Any supported image array -> uint8 N x C x H x W, contiguous."""
    x = _layout(x, path)
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.dtype == torch.bool or x.is_complex():
        raise RD3Error(f"{path}: images have dtype {x.dtype}; expected uint8 or float")
    if not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise RD3Error(f"{path}: integer images range over [{lo}, {hi}]; expected [0, 255]")
        return x.to(torch.uint8).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise RD3Error(f"{path}: images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo >= -UNIT_TOLERANCE and hi <= 1 + UNIT_TOLERANCE:
        return _chunked_uint8(x, lambda v: v * 255)[0]
    if not mean or not std:
        raise RD3Error(f"{path}: float images range over [{lo:.3g}, {hi:.3g}]: not [0, 1] pixels, so they are "
                       "normalized or 0-255 floats; pass --mean/--std the set was normalized with (e.g. "
                       f"ImageNet: --mean {_values(IMAGENET_MEAN)} --std {_values(IMAGENET_STD)}; 0-255 floats: "
                       "--mean 0 --std 1/255)")
    m = _per_channel(mean, x.shape[1], path, "--mean")
    s = _per_channel(std, x.shape[1], path, "--std")
    out, clipped = _chunked_uint8(x, lambda v: (v * s + m) * 255)
    if clipped > MAX_CLIPPED * x.numel():
        raise RD3Error(f"{path}: --mean {_values(mean)} --std {_values(std)} do not fit the data: they put "
                       f"{100 * clipped / x.numel():.1f}% of the pixel values outside [0, 1] (the images range "
                       f"over [{lo:.3g}, {hi:.3g}]); pass the mean/std the set was normalized with")
    return out


def _hard_labels(y: torch.Tensor, path: Path) -> tuple[torch.Tensor, int]:
    """int64 (N,) labels and the class count they imply: soft (N, K) -> argmax and K; hard -> max + 1."""
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        # argmax would pick a NaN's or an inf's class silently.
        raise RD3Error(f"{path}: labels contain NaN or inf; expected class indices or finite soft labels")
    if y.dim() == 2:  # soft labels or logits: negative values and all-zero rows are fine
        return y.argmax(1).to(torch.int64), y.shape[1]
    if y.dim() != 1:
        raise RD3Error(f"{path}: labels have shape {tuple(y.shape)}; expected (N,) class indices or (N, K) "
                       "soft labels")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise RD3Error(f"{path}: 1-D labels must be whole class indices")
    y = y.to(torch.int64)
    if len(y) and int(y.min()) < 0:
        raise RD3Error(f"{path}: labels contain {int(y.min())}; expected class indices >= 0")
    return y, int(y.max()) + 1 if len(y) else 0
