"""Training-step throughput of scoresde's Trainer against a bare hand-written PyTorch loop.

    .venv/bin/python experiments/bench/train_throughput.py               # every row below
    .venv/bin/python experiments/bench/train_throughput.py mlp           # rows whose name has "mlp"
    .venv/bin/python experiments/bench/train_throughput.py --repeats 21  # more alternating blocks: a tighter median
    .venv/bin/python experiments/bench/train_throughput.py --quick       # one 1-step block a row: a smoke test

Each row trains one network (same initial weights) with the same batch and the same work per step
in both loops: draw a batch (toy draws, or dequantized images), t ~ U[eps, T], x_t = alpha x_0 +
sigma z, the eps-prediction MSE summed over dimensions (the DSM loss with lambda = sigma^2),
backward (over train.micro_batch passes when set), grad-norm clipping, Adam with linear warmup,
EMA with warmup; bf16 rows run the forward pass under CPU autocast in both, channels_last rows
convert the network and the batch in both, compile rows compile both with the "eager" backend
(TorchDynamo's capture; inductor's code generation is a GPU matter). Blocks of steps alternate
between the two loops so that load on a shared machine hits both alike; the ratio is the median
over the pairs of adjacent blocks of Trainer time / bare time (a slow drift in load cancels within a
pair), and the target is <= 1.05.
GPU rows (fp16 with a gradient scaler, inductor) are not measured here: no GPU was available.
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

MLP = ["model.hidden=128", "model.depth=3", "train.batch_size=512"]
UNET = ["data.name=digits", "model.name=unet", "model.ch=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
        "model.attn_resolutions=[4]", "model.dropout=0.0", "train.batch_size=64"]
DDPMPP = ["data.name=digits", "model.name=ddpmpp", "model.nf=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
          "model.attn_resolutions=[4]", "model.dropout=0.0", "train.batch_size=32"]
ROWS = {
    "mlp": MLP, "mlp micro_batch=128": MLP + ["train.micro_batch=128"], "mlp bf16": MLP + ["train.precision=bf16"],
    "mlp compile=eager": MLP + ["train.compile=eager"],
    "unet": UNET, "unet micro_batch=16": UNET + ["train.micro_batch=16"], "unet bf16": UNET + ["train.precision=bf16"],
    "unet channels_last": UNET + ["train.channels_last=true"], "unet compile=eager": UNET + ["train.compile=eager"],
    "ddpmpp": DDPMPP,
}
GPU_ROWS = ["unet fp16 (GradScaler)", "unet compile=inductor", "ddpmpp bf16 channels_last"]


def bare_loop(trainer: Trainer):
    """A closure running n hand-written steps on a copy of trainer's initial model."""
    cfg = trainer.cfg.train
    model = copy.deepcopy(trainer.model)
    forward = torch.compile(model, backend=cfg.compile) if cfg.compile else model
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True)  # as the Trainer
    sde, ds, eps, B = trainer.sde, trainer.dataset, cfg.eps, cfg.batch_size
    m = cfg.micro_batch or B
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0

    def batch():
        if ds.levels is None:
            return ds.sample(B, gen)
        v = ds.values[torch.randint(len(ds), (B,), generator=gen)]
        x0 = 2 * (v + torch.rand(v.shape, generator=gen)) / ds.levels - 1
        return x0.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x0

    def run(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x0 = batch()
            t = eps + (sde.T - eps) * torch.rand(B, generator=gen)
            z = torch.randn(x0.shape, generator=gen)
            x_t = batch_view(sde.alpha(t), x0) * x0 + batch_view(sde.sigma(t), x0) * z
            opt.zero_grad(set_to_none=True)
            for lo in range(0, B, m):
                with autocast:
                    loss = (forward(x_t[lo:lo + m], t[lo:lo + m]) - z[lo:lo + m]).flatten(1).pow(2).sum(1).mean()
                (loss * (m / B)).backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
            step += 1

    return run


def framework_loop(trainer: Trainer):
    acc = torch.zeros(())

    def run(n: int) -> None:
        for _ in range(n):
            loss, _ = trainer.step()
            acc.add_(loss)  # what train_loop does between its logging syncs

    return run


def measure(overrides: list[str], block: int, repeats: int, warmup: int = 3) -> dict:
    cfg = load_config(None, overrides + ["train.threads=1", "train.tensorboard=false"])
    torch.set_num_threads(1)
    trainer = Trainer(cfg)
    loops = {"trainer": framework_loop(trainer), "bare": bare_loop(trainer)}
    for run in loops.values():
        run(warmup)  # warm-up (and graph capture)
    times = {name: [] for name in loops}
    for _ in range(repeats):
        for name, run in loops.items():
            start = time.perf_counter()
            run(block)
            times[name].append((time.perf_counter() - start) / block)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"params": sum(p.numel() for p in trainer.model.parameters()), "batch": cfg.train.batch_size,
            "trainer_ms": 1e3 * med["trainer"], "bare_ms": 1e3 * med["bare"],
            "ratio": statistics.median(a / b for a, b in zip(times["trainer"], times["bare"]))}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    repeats = 1 if quick else 7
    if "--repeats" in argv:
        i = argv.index("--repeats")
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--repeats needs a positive integer, got {value!r}")
        repeats = int(value)
        del argv[i:i + 2]
    names = [a for a in argv if a != "--quick"]
    rows = [r for r in ROWS if not names or any(a in r for a in names)]
    if not rows:
        raise SystemExit(f"no row matches {names}; rows: {', '.join(ROWS)}")
    print(f"CPU, 1 thread, torch {torch.__version__}; medians of {repeats} alternating blocks; ratio = median over "
          "adjacent block pairs of Trainer / bare time per step (target <= 1.05)")
    print(f"{'row':<24} {'params':>8} {'batch':>5} {'Trainer ms/step':>16} {'bare ms/step':>13} {'ratio':>6}")
    for name in rows:
        big = not name.startswith("mlp")
        r = measure(ROWS[name], block=1 if quick else 4 if big else 20, repeats=repeats, warmup=1 if quick else 3)
        print(f"{name:<24} {r['params']:>8} {r['batch']:>5} {r['trainer_ms']:>16.2f} {r['bare_ms']:>13.2f} "
              f"{r['ratio']:>6.3f}", flush=True)
    for name in GPU_ROWS:
        print(f"{name:<24} GPU: not measured")


if __name__ == "__main__":
    main()
