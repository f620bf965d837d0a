"""Training-step throughput of scoresde's Trainer against a bare hand-written PyTorch loop.

    .venv/bin/python experiments/bench/train_throughput.py [key=value overrides]

Both loops train the same network (same initial weights) on the same batch size with the same
work per step: draw a toy batch, t ~ U[eps, T], x_t = alpha x_0 + sigma z, the eps-prediction
MSE summed over dimensions (the DSM loss with lambda = sigma^2), backward, grad-norm clipping,
Adam with linear warmup, EMA. Blocks of steps alternate between the two loops so that load on a
shared machine hits both alike; the overhead ratio is median(bare steps/s) / median(Trainer
steps/s), and the target is <= 1.05.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

from scoresde.config import load_config
from scoresde.sdes.base import batch_view
from scoresde.train import Trainer


def bare_loop(trainer: Trainer):
    """A closure running n hand-written steps on a copy of trainer's initial model."""
    cfg = trainer.cfg.train
    model = copy.deepcopy(trainer.model)
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True)  # as the Trainer
    sde, ds, eps, B = trainer.sde, trainer.dataset, cfg.eps, cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0

    def run(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x0 = ds.sample(B, gen)
            t = eps + (sde.T - eps) * torch.rand(B, generator=gen)
            z = torch.randn(x0.shape, generator=gen)
            x_t = batch_view(sde.alpha(t), x0) * x0 + batch_view(sde.sigma(t), x0) * z
            loss = (model(x_t, t) - z).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            opt.step()
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.ema_decay)
            step += 1

    return run


def framework_loop(trainer: Trainer):
    acc = torch.zeros(())

    def run(n: int) -> None:
        for _ in range(n):
            loss, _ = trainer.step()
            acc.add_(loss)  # what train_loop does between its logging syncs

    return run


def main(argv=None) -> float:
    cfg = load_config(None, list(sys.argv[1:] if argv is None else argv))
    t = cfg.train
    if (t.loss, t.weighting, t.t_sampling, cfg.model.parametrization, cfg.model.class_cond) != \
            ("dsm", "sigma2", "auto", "eps", False) or cfg.data.name not in ("ring8", "grid25", "moons",
                                                                            "checkerboard", "swiss_roll", "pinwheel"):
        raise SystemExit("the bare loop implements the toy, eps-prediction, sigma^2-weighted DSM step only")
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    trainer = Trainer(cfg)
    loops = {"scoresde Trainer.step": framework_loop(trainer), "bare PyTorch loop": bare_loop(trainer)}
    block, repeats = 100, 7
    for run in loops.values():
        run(20)  # warm-up
    rates = {name: [] for name in loops}
    for _ in range(repeats):
        for name, run in loops.items():
            start = time.perf_counter()
            run(block)
            rates[name].append(block / (time.perf_counter() - start))
    med = {name: statistics.median(r) for name, r in rates.items()}
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"model {cfg.model.name} ({n_params} parameters), batch {t.batch_size}, {torch.get_num_threads()} "
          f"thread(s), {repeats} alternating blocks of {block} steps")
    for name, r in med.items():
        print(f"  {name:<22} {r:8.1f} steps/s (blocks: {min(rates[name]):.1f} .. {max(rates[name]):.1f})")
    ratio = med["bare PyTorch loop"] / med["scoresde Trainer.step"]
    print(f"overhead ratio (bare / Trainer, target <= 1.05): {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
