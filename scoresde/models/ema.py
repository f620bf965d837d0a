"""Exponential moving average of a model's weights (Polyak averaging; Song et al. 2021 use decay 0.9999),
bias-corrected as Adam's moment estimates are (Kingma & Ba 2015, sec. 3):

    theta_ema_k = (1 - decay) sum_{j=1..k} decay^(k-j) theta_j / (1 - decay^k)

after k updates with weights theta_1 .. theta_k: the weights sum to 1 and the initialization theta_0 has
none. The plain average, started at theta_0, keeps decay^k theta_0; with a last layer initialised at
zero (the U-Net's) that shrinks the network's output by about that share: after 2000 updates at decay
0.999 the digits U-Net predicted eps = 0.867 x_T at t = T, so Tweedie's x0 = (x - sigma eps) / alpha
was 0.133 x_T / alpha(T) = 20 x_T there instead of a digit, and the probability-flow ODE carries that
to t = 0 (docs/benchmarks.md). The update that keeps the bias-corrected average is

    theta_ema <- theta_ema + w_k (theta_k - theta_ema),   w_k = (1 - decay) / (1 - decay^k),

so w_1 = 1 (the first update replaces theta_0) and w_k -> 1 - decay. Floating buffers are averaged
the same way; integer buffers (counters) are copied.

The averaged network is `ema.module`: a frozen copy of the model in eval mode, used for sampling and
evaluation (e.g. `ema.module.score_fn()` for a ScoreModel).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `module`, the exponential moving average of `model`'s parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = _check_decay(decay)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.num_updates = 0
        self._pairs, self._source = None, None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- theta_ema + w (theta - theta_ema), w = (1 - decay) / (1 - decay^k) at the k-th
        update, for every parameter and floating buffer.

        The pairing of tensors is computed once per source model: rebuilding it (or two state_dicts)
        every step cost 5-9% of a small model's training step (experiments/bench/train_throughput.py).
        """
        if self._pairs is None or self._source is not model:
            self._pairs = _pair_tensors(self.module, model)
            self._source = model
        params, buffers = self._pairs
        self.num_updates += 1
        weight = (1.0 - self.decay) / (1.0 - self.decay ** self.num_updates)
        torch._foreach_lerp_([e for e, _ in params], [s.detach() for _, s in params], weight)
        for (em, name), (sm, _) in buffers:  # looked up each step: module.to() replaces buffers
            e, s = em._buffers[name], sm._buffers[name]
            if e.is_floating_point():
                e.lerp_(s, weight)
            else:
                e.copy_(s)

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; parameter names and shapes must match exactly."""
        missing = {"decay", "num_updates", "module"} - set(state)
        if missing:
            raise ValueError(f"not an EMA state dict: missing {sorted(missing)}")
        self.module.load_state_dict(state["module"], strict=True)
        self.decay = _check_decay(state["decay"])
        self.num_updates = int(state["num_updates"])


def _pair_tensors(ema: nn.Module, model: nn.Module):
    """Matching (ema, model) parameters, and matching (module, buffer name) slots, by qualified name."""
    ema_p, src_p = dict(ema.named_parameters()), dict(model.named_parameters())
    slots = lambda m: {f"{mn}.{bn}": (mod, bn) for mn, mod in m.named_modules() for bn in mod._buffers
                       if mod._buffers[bn] is not None}
    ema_b, src_b = slots(ema), slots(model)
    if ema_p.keys() != src_p.keys() or ema_b.keys() != src_b.keys():
        diff = sorted((ema_p.keys() ^ src_p.keys()) | (ema_b.keys() ^ src_b.keys()))[:5]
        raise ValueError(f"EMA.update got a model with different parameters than the averaged one ({diff})")
    return [(ema_p[k], src_p[k]) for k in ema_p], [(ema_b[k], src_b[k]) for k in ema_b]


def _check_decay(decay) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay!r} is not allowed: it must be a number in [0, 1)")
    return float(decay)
