"""K students trained side by side, seen by the training loop as one module with a leading K axis.

``Students(models)`` takes K freshly initialized models of one architecture. With K = 1 it simply wraps
the model. With K > 1 the parameters and buffers are stacked on a leading axis (torch.func's
stack_module_state) and the forward is ``vmap(functional_call)``: one batched kernel per layer instead of
K small ones, which is what fills a GPU at the RD3 batch size of 50. Each stacked slice only ever sees its
own model's batch, the losses are summed, and every optimizer here is elementwise, so slice k follows
exactly the trajectory of training model k alone (up to floating-point summation order).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap


class Students(nn.Module):
    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.k = len(models)
        if self.k == 1:
            self.single = models[0]
            return
        params, buffers = stack_module_state(list(models))
        self._pnames, self._bnames = list(params), list(buffers)
        for name, value in params.items():  # registered so .parameters() feeds the optimizer
            self.register_parameter(_key(name), nn.Parameter(value))
        for name, value in buffers.items():
            self.register_buffer(_key(name), value)
        # A parameter-free skeleton to call functionally; kept out of the module tree.
        self.__dict__["_skeleton"] = copy.deepcopy(models[0]).to("meta")
        self.__dict__["_template"] = copy.deepcopy(models[0])  # materialized for evaluation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K, B, C, H, W) -> logits (K, B, classes)."""
        if self.k == 1:
            return self.single(x[0])[None]
        params = {n: getattr(self, _key(n)) for n in self._pnames}
        buffers = {n: getattr(self, _key(n)) for n in self._bnames}

        def one(p: dict, b: dict, xk: torch.Tensor) -> torch.Tensor:
            return functional_call(self._skeleton, (p, b), (xk,))

        return vmap(one, randomness="different")(params, buffers, x)

    def named_model_parameters(self) -> list[tuple[str, nn.Parameter, int]]:
        """(name in one model, parameter, ndim in one model): for per-model decay rules."""
        if self.k == 1:
            return [(n, p, p.ndim) for n, p in self.single.named_parameters()]
        return [(n, getattr(self, _key(n)), getattr(self, _key(n)).ndim - 1) for n in self._pnames]

    @torch.no_grad()
    def model(self, i: int) -> nn.Module:
        """Student i as an ordinary module (the wrapped model itself when K = 1, else a copy)."""
        if self.k == 1:
            return self.single
        m = self._template
        dev = next(iter(self.parameters())).device
        m.to(dev)
        state = {n: getattr(self, _key(n))[i] for n in self._pnames + self._bnames}
        m.load_state_dict(state)
        m.train(self.training)
        return m


def _key(name: str) -> str:
    return "stacked__" + name.replace(".", "__")
