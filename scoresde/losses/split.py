"""A training loss in two parts: what it draws once per step, and the network's error on some rows.

A step of gradient accumulation (train.micro_batch) or of data-parallel training runs the network
on rows [lo, hi) of the batch at a time, while the loss's randomness (times t, noise, dropped
labels) must be the whole batch's, drawn once. So a loss is written as

    rows = prepare(model, sde, x0, y=None, *, generator, **options)   # once per step: the draws
    rows.per_sample(forward, lo, hi) -> (hi - lo,) per-sample losses   # once per pass: the network

`prepare` uses only the model's attributes (parametrization, num_classes); `per_sample` calls
`forward(x_t, t, y)` (the model, or its DistributedDataParallel / compiled wrapper) on rows lo:hi
only. `SplitLoss(prepare)` is the loss with the registry's plain contract
loss(model, sde, x0, y=None, *, generator, reduce, **options): prepare, then all rows, so each
loss has one implementation. A plain loss without this split still trains (`SplitLoss.of`): each
pass replays the step's generator state and runs the whole loss on the whole batch, with the
network run on the pass's rows only (`RowsModel`), which repeats the draws and the elementwise
work once per pass.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Protocol

import torch


class RowLosses(Protocol):
    """A step's draws for a batch; per_sample(forward, lo, hi) -> the losses of rows lo:hi, shape (hi - lo,)."""

    def per_sample(self, forward, lo: int, hi: int) -> torch.Tensor: ...


class SplitLoss:
    """The loss whose per-step part is `prepare` (module docstring): calling it is prepare, then
    per_sample over all rows, then the mean if reduce. Use as a decorator on `prepare`."""

    def __init__(self, prepare: Callable[..., RowLosses]):
        self.prepare = prepare
        functools.update_wrapper(self, prepare, updated=())
        del self.__wrapped__  # the signature is prepare's with reduce, set here
        params = [p for p in inspect.signature(prepare).parameters.values() if p.name != "reduce"]
        named = [p for p in params if p.kind != p.VAR_KEYWORD]
        reduce = inspect.Parameter("reduce", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool)
        self.__signature__ = inspect.Signature([*named, reduce, *params[len(named):]], return_annotation=torch.Tensor)

    def __call__(self, model, sde, x0: torch.Tensor, y: torch.Tensor | None = None, *,
                 reduce: bool = True, **options) -> torch.Tensor:
        per_sample = self.prepare(model, sde, x0, y, **options).per_sample(model, 0, x0.shape[0])
        return per_sample.mean() if reduce else per_sample

    def __repr__(self) -> str:
        return f"SplitLoss({getattr(self, '__qualname__', self.prepare)!r})"

    @staticmethod
    def of(loss) -> SplitLoss:
        """`loss` itself if it is split, else the plain loss run by replaying (module docstring)."""
        if isinstance(loss, SplitLoss):
            return loss
        return SplitLoss(functools.update_wrapper(functools.partial(Replay, loss), loss))  # loss's name and signature


class Replay:
    """A plain loss's rows: every per_sample(forward, lo, hi) restores the generator state of the
    step, so the loss draws the same t, noise and labels for the whole batch each time, and runs the
    network on rows [lo, hi) only (`RowsModel`). The generator ends where one call leaves it."""

    def __init__(self, loss, model, sde, x0, y=None, *, generator: torch.Generator, **options):
        if generator is None:
            raise ValueError("a loss without a per-step part (scoresde.losses.SplitLoss) is run on a batch's rows by "
                             "replaying its draws: pass a torch.Generator")
        self.loss, self.model, self.sde, self.x0, self.y = loss, model, sde, x0, y
        self.generator, self.state, self.options = generator, generator.get_state(), options

    def per_sample(self, forward, lo: int, hi: int) -> torch.Tensor:
        self.generator.set_state(self.state)
        model = RowsModel(forward, self.model, lo, hi, self.x0.shape[0])
        return self.loss(model, self.sde, self.x0, self.y, generator=self.generator, reduce=False,
                         **self.options)[lo:hi]


class RowsModel:
    """The model as a plain loss sees it when only rows [lo, hi) of the batch are computed.

    Calling it runs `forward` on those rows only and returns a tensor shaped like the whole batch,
    holding their predictions in its rows and zeros (without gradient) elsewhere, so the per-sample
    losses of rows lo:hi are exact. Other attributes (parametrization, num_classes, sde, ...) are
    `module`'s own. The loss must call the model once, on the whole batch.
    """

    def __init__(self, forward, module: torch.nn.Module, lo: int, hi: int, batch_size: int):
        self._forward, self._module = forward, module
        self.lo, self.hi, self.batch_size = lo, hi, batch_size

    def __call__(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        n = x.shape[0]
        if n != self.batch_size:
            raise ValueError(f"the loss called the model on {n} samples, expected the batch of {self.batch_size}: "
                             "a loss without a per-step part (scoresde.losses.SplitLoss) must call the model once, "
                             "on the whole batch")
        lo, hi = self.lo, self.hi
        if (lo, hi) == (0, n):
            return self._forward(x, t, y)
        rows = lambda v: v[lo:hi] if torch.is_tensor(v) and v.dim() > 0 else v
        out = self._forward(x[lo:hi], rows(t), rows(y))
        pad = lambda k: out.new_zeros((k, *out.shape[1:]))
        return torch.cat([pad(lo), out, pad(n - hi)])

    def __getattr__(self, name):
        return getattr(self._module, name)
