"""The whole training step (augment -> teachers -> student forward/backward -> optimizer -> EMA) as one CUDA graph.

At the RD3 batch size of 50 an eager step is bound by Python and kernel launches; replaying a captured
graph removes both. The step's inputs (batch indices, augmentation parameters, cached soft labels) are
copied into static buffers before each replay; the learning rate lives in a device tensor that the
schedule fills in place (capturable Adam/AdamW), and the EMA is a foreach lerp, so both work under replay.

The first ``warmup`` steps run eagerly on a side stream (lazy optimizer state, cuDNN autotuning, Triton
compilation), exactly as real training steps; the next step is captured and replayed, and every later
step with the same shapes is a replay. A step with other shapes (the last, smaller batch of an epoch when
drop_last is off) runs eagerly.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from ..config import Config
from .aug import AugParams

log = logging.getLogger("rd3fast")


def graph_unavailable_reason(cfg: Config, device: torch.device) -> str | None:
    """None when the step can be captured; otherwise why not (logged, and saved with the results)."""
    if cfg.cuda_graph == "off":
        return "--cuda-graph off"
    reason = None
    if device.type != "cuda":
        reason = "CUDA graphs need a CUDA device"
    elif cfg.optimizer == "sgd":
        reason = "the SGD optimizer has no capturable mode"
    elif cfg.cache_mode == "record":
        reason = "recording a soft-label cache copies every step to the host"
    elif cfg.aug == "dsa":
        reason = "DSA applies one of its ops per batch, chosen on the host"
    elif cfg.teacher_bn_train:
        reason = "--teacher-bn-train updates teacher statistics outside inference mode"
    if reason and cfg.cuda_graph == "on":
        log.warning("--cuda-graph on: falling back to eager steps (%s)", reason)
    return reason


def _flatten(idx: list[torch.Tensor], params: list[AugParams], cached: list[torch.Tensor]) -> list[torch.Tensor]:
    flat = list(idx)
    for p in params:
        flat += [t for t in p.tensors().values() if t is not None]
    return flat + list(cached)


def _unflatten(flat: list[torch.Tensor], like: tuple[list, list, list]) -> tuple[list, list, list]:
    idx, params, cached = like
    it = iter(flat)
    new_idx = [next(it) for _ in idx]
    new_params = []
    for p in params:
        values = {name: (None if t is None else next(it)) for name, t in p.tensors().items()}
        new_params.append(AugParams(mix=p.mix, dsa_op=p.dsa_op, **values))
    return new_idx, new_params, [next(it) for _ in cached]


class GraphedStep:
    """Calls ``step(idx, params, cached) -> losses`` eagerly ``warmup`` times, then as a replayed graph."""

    def __init__(self, step: Callable, optimizer: torch.optim.Optimizer, warmup: int = 3) -> None:
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        self.calls = 0  # eager calls (warm-up, and steps of another shape after the capture)
        self.replays = 0  # steps run as a graph replay (the captured step included)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.signature: tuple | None = None
        self.static_in: list[torch.Tensor] = []
        self.static_out: torch.Tensor | None = None

    def __call__(self, idx: list, params: list, cached: list) -> torch.Tensor:
        flat = _flatten(idx, params, cached)
        signature = tuple((tuple(t.shape), t.dtype) for t in flat)
        if self.graph is not None and signature == self.signature:
            for static, new in zip(self.static_in, flat):
                static.copy_(new, non_blocking=True)
            self.graph.replay()
            self.replays += 1
            return self.static_out
        if self.graph is not None or self.calls < self.warmup:
            self.calls += 1
            return self._eager(idx, params, cached)
        # Capture: inputs become static buffers, the step is recorded (not run), then replayed once.
        self.static_in = [t.clone() for t in flat]
        s_idx, s_params, s_cached = _unflatten(self.static_in, (idx, params, cached))
        torch.cuda.synchronize()
        self.optimizer.zero_grad(set_to_none=True)  # backward in the graph then writes fresh .grad
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.step(s_idx, s_params, s_cached)
        self.graph, self.signature = graph, signature
        graph.replay()
        self.replays += 1
        return self.static_out

    def _eager(self, idx: list, params: list, cached: list) -> torch.Tensor:
        # Warm-up on a side stream, as torch.cuda.graph's documentation asks before a capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            out = self.step(idx, params, cached)
        torch.cuda.current_stream().wait_stream(side)
        return out
