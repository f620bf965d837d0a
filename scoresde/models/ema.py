"""Exponential moving average of a model's weights (Polyak averaging; Song et al. 2021 use decay 0.9999).

After each optimiser step,  theta_ema <- d_n * theta_ema + (1 - d_n) * theta,  n = 0, 1, ... the
number of earlier updates. With warmup (the default) the decay grows as

    d_n = min(decay, (1 + n) / (10 + n)),

so early averages forget the random initialization fast (d_0 = 0.1; the same schedule as
TensorFlow's ExponentialMovingAverage with num_updates): at decay 0.9999 a constant decay keeps
0.9999^k of theta_0 after k steps, 37% after 10k, while with warmup theta_0 keeps
prod_j d_j = 1 / C(k + 9, 9) while (1 + n) / (10 + n) < decay. Without warmup d_n = decay.
`initial_weight` is that product, the weight theta_0 still has in the average.
Floating buffers are averaged the same way; integer buffers (counters) are copied.

The averaged network is `ema.module`: a frozen copy of the model in eval mode, used for sampling and
evaluation (e.g. `ema.module.score_fn()` for a ScoreModel).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `module`, the exponential moving average of `model`'s parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = _check_decay(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.num_updates = 0
        self.initial_weight = 1.0  # prod of the decays applied so far: theta_0's weight in the average
        self._pairs, self._source = None, None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta, d = `current_decay()`, for every parameter and
        floating buffer.

        The pairing of tensors is computed once per source model: rebuilding it (or two state_dicts)
        every step cost 5-9% of a small model's training step (experiments/bench/train_throughput.py).
        """
        if self._pairs is None or self._source is not model:
            self._pairs = _pair_tensors(self.module, model)
            self._source = model
        params, buffers = self._pairs
        decay = self.current_decay()
        torch._foreach_lerp_([e for e, _ in params], [s.detach() for _, s in params], 1.0 - decay)
        for (em, name), (sm, _) in buffers:  # looked up each step: module.to() replaces buffers
            e, s = em._buffers[name], sm._buffers[name]
            if e.is_floating_point():
                e.lerp_(s, 1.0 - decay)
            else:
                e.copy_(s)
        self.num_updates += 1
        self.initial_weight *= decay

    def current_decay(self) -> float:
        """The decay the next update applies: min(decay, (1 + n) / (10 + n)) with warmup, else decay."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "initial_weight": self.initial_weight, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; parameter names and shapes must match exactly. A state saved
        before warmup existed (no "warmup" key) continues with a constant decay, as it was made."""
        missing = {"decay", "num_updates", "module"} - set(state)
        if missing:
            raise ValueError(f"not an EMA state dict: missing {sorted(missing)}")
        self.module.load_state_dict(state["module"], strict=True)
        self.decay = _check_decay(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.warmup = bool(state.get("warmup", False))
        self.initial_weight = float(state.get("initial_weight", self.decay ** self.num_updates))


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
