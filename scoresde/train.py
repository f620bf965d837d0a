"""`python -m scoresde.train`: train a score model from a config, checkpoint it, and evaluate it.

    python -m scoresde.train                                   # the embedded toy2d default
    python -m scoresde.train --config experiments/configs/digits.toml train.steps=2000
    python -m scoresde.train --resume runs/toy2d-20260101-120000 train.steps=8000

Optimisation: Adam with linear learning-rate warmup, gradient-norm clipping and an EMA of the
weights (Song et al. 2021, App. D). All training randomness comes from two torch.Generators (data:
order, toy draws and dequantization, on the CPU; noise: t, eps and label dropout, on the device)
whose states are checkpointed with the model, EMA, optimizer, scheduler and the global RNGs, so
`--resume` continues bitwise-exactly on the CPU. The run directory holds config.toml,
metrics.csv, TensorBoard events (tb/), ckpt_*.pt, samples.png and summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config, \
    save_config, validate
from .data import BatchStream, QuantizedDataset, ToyDataset, center, load_dataset, quantize


def _config_error(field: str, err: Exception) -> ConfigError:
    return ConfigError(f"{field}: {err}")


def select_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_dataset(cfg: Config, split: str = "train"):
    try:
        return load_dataset(cfg.data.name, cfg.data.root or None, split, cfg.data.channels or None)
    except (FileNotFoundError, ValueError) as e:
        raise _config_error("data.root" if cfg.data.root or isinstance(e, FileNotFoundError) else "data", e) from None


def build_sde(cfg: Config):
    from .sdes import get_sde

    try:
        return get_sde(cfg.sde.name, **cfg.sde.params)
    except TypeError as e:
        raise _config_error(f"sde ({cfg.sde.name})", e) from None
    except ValueError as e:
        raise _config_error("sde", e) from None


def build_model(cfg: Config, dataset, sde):
    """The ScoreModel for this data set: shape-dependent arguments come from the data."""
    from .models import MODELS, ScoreModel, build_model as build_net

    m = cfg.model
    shape = dataset.event_shape
    num_classes = dataset.num_classes if m.class_cond else None
    if m.class_cond and num_classes is None:
        raise ConfigError(f"model.class_cond=true but data set {cfg.data.name!r} has no labels")
    data_args = {"num_classes": num_classes}
    if len(shape) == 1:
        data_args["dim"] = shape[0]
    else:
        if shape[1] != shape[2]:
            raise ConfigError(f"data: images are {shape[1]}x{shape[2]}; the networks need square images")
        data_args.update(in_channels=shape[0], image_size=shape[1])
    params = set(inspect.signature(MODELS.get(m.name)).parameters)
    kwargs = {k: v for k, v in data_args.items() if k in params or v is not None}
    kwargs.update(m.params)
    try:
        net = build_net(m.name, **kwargs)
        return ScoreModel(net, sde, m.parametrization, m.sigma_data)
    except (TypeError, ValueError) as e:
        raise _config_error(f"model ({m.name})", e) from None


def loss_options(cfg: Config, loss_fn) -> dict:
    """The train.* options the chosen loss accepts (e.g. ddpm has no weighting); others must be default."""
    t = cfg.train
    wanted = {"weighting": t.weighting, "t_sampling": None if t.t_sampling == "auto" else t.t_sampling,
              "eps": t.eps, "p_uncond": t.p_uncond}
    defaults = {"weighting": "sigma2", "t_sampling": None, "eps": 1e-5, "p_uncond": 0.0}
    params = inspect.signature(loss_fn).parameters
    for k, v in wanted.items():
        if k not in params and v != defaults[k]:
            raise ConfigError(f"train.{k}={v!r} does not apply to train.loss={t.loss!r}")
    return {k: v for k, v in wanted.items() if k in params}


class Trainer:
    """Model, EMA, optimizer, scheduler and the data/noise streams of one run; `step()` is one update."""

    def __init__(self, cfg: Config, device: torch.device | None = None):
        from .losses import LOSSES
        from .models import EMA

        validate(cfg)
        self.cfg = cfg
        t = cfg.train
        self.device = device if device is not None else select_device(t.device)
        seed_everything(t.seed)
        self.dataset = build_dataset(cfg, "train")
        self.sde = build_sde(cfg)
        self.model = build_model(cfg, self.dataset, self.sde).to(self.device)
        self.ema = EMA(self.model, t.ema_decay)
        self.loss_fn = LOSSES[t.loss]
        self.loss_kwargs = loss_options(cfg, self.loss_fn)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, foreach=True)
        warmup = t.warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        try:
            self.stream = BatchStream(self.dataset, t.batch_size, torch.Generator().manual_seed(t.seed),
                                      self.device)
        except ValueError as e:
            raise _config_error("train.batch_size", e) from None
        self.noise = torch.Generator(self.device).manual_seed(t.seed + 1)
        self.class_cond = cfg.model.class_cond
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" and t.bf16 else contextlib.nullcontext())
        self.step_count = 0

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, grad norm) as device tensors (no host sync)."""
        x, y = next(self.stream)
        with self.autocast:
            loss = self.loss_fn(self.model, self.sde, x, y if self.class_cond else None,
                                generator=self.noise, **self.loss_kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step_count += 1
        return loss.detach(), grad_norm

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        return {
            "format": "scoresde-train-1",
            "step": self.step_count,
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.stream.state_dict(),
            "noise": self.noise.get_state(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                              "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
                    "python": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "scoresde-train-1":
            raise CheckpointError(f"not a scoresde training checkpoint (format {state.get('format')!r})")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["data"])
        self.noise.set_state(state["noise"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        random.setstate(rng["python"])
        self.step_count = int(state["step"])


# -- the run: logging, checkpoints, evaluation ----------------------------------------------------
@dataclass
class RunResult:
    run_dir: Path
    steps: int
    seconds: float
    metrics: dict
    summary: str


class MetricsLog:
    """metrics.csv (appended on resume) and, when available, TensorBoard scalars under tb/."""

    FIELDS = ("step", "loss", "grad_norm", "lr", "steps_per_s", "elapsed_s")

    def __init__(self, run_dir: Path, tensorboard: bool):
        path = run_dir / "metrics.csv"
        new = not path.exists()
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(self.FIELDS)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("note: tensorboard is not installed; metrics go to metrics.csv only", file=sys.stderr)

    def log(self, row: dict) -> None:
        self._csv.writerow([row[k] for k in self.FIELDS])
        self._file.flush()
        if self._tb is not None:
            for k in self.FIELDS[1:]:
                self._tb.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def train_loop(trainer: Trainer, run_dir: Path, progress: bool = True) -> float:
    """Train to cfg.train.steps with logging and checkpoints; returns the seconds spent."""
    from tqdm import tqdm

    t = trainer.cfg.train
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir, t.tensorboard)
    start = time.perf_counter()
    window_start, window_steps = start, 0
    loss_sum = torch.zeros((), device=trainer.device)
    bar = tqdm(total=t.steps, initial=trainer.step_count, disable=not progress, dynamic_ncols=True,
               desc=trainer.cfg.name, unit="step")
    try:
        while trainer.step_count < t.steps:
            loss, grad_norm = trainer.step()
            loss_sum += loss
            window_steps += 1
            step = trainer.step_count
            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                mean_loss = float(loss_sum) / window_steps  # the only host sync, every log_every steps
                if not np.isfinite(mean_loss):
                    raise FloatingPointError(f"the loss became {mean_loss} at step {step}; lower train.lr "
                                             f"(now {t.lr}) or train.grad_clip (now {t.grad_clip})")
                rate = window_steps / (now - window_start)
                log.log({"step": step, "loss": mean_loss, "grad_norm": float(grad_norm),
                         "lr": trainer.scheduler.get_last_lr()[0], "steps_per_s": rate,
                         "elapsed_s": now - start})
                bar.set_postfix(loss=f"{mean_loss:.4f}", steps_per_s=f"{rate:.1f}")
                bar.update(window_steps)
                loss_sum.zero_()
                window_start, window_steps = now, 0
            if step % t.ckpt_every == 0 or step == t.steps:
                save_checkpoint(trainer.state_dict(), run_dir, step, t.keep_last)
    except KeyboardInterrupt:
        path = save_checkpoint(trainer.state_dict(), run_dir, trainer.step_count, t.keep_last)
        bar.close()
        log.close()
        print(f"\ninterrupted at step {trainer.step_count}; saved {path}; "
              f"continue with: python -m scoresde.train --resume {run_dir}", file=sys.stderr)
        raise SystemExit(130) from None
    bar.close()
    log.close()
    return time.perf_counter() - start


def generate(trainer: Trainer, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """n samples from the EMA model with the [sample] settings, seeded by sample.seed."""
    from .sampling import sample

    s = trainer.cfg.sample
    gen = torch.Generator(trainer.device).manual_seed(s.seed)
    x_T = trainer.sde.prior_sampling((n, *trainer.dataset.event_shape), generator=gen, device=trainer.device)
    with torch.no_grad():
        return sample(trainer.ema.module.score_fn(y), trainer.sde, method=s.method, steps=s.steps, eps=s.eps,
                      x_T=x_T, generator=gen)


def evaluate(trainer: Trainer, run_dir: Path) -> tuple[dict, list[str]]:
    """Samples figure and the sample-quality numbers: toy sets SW2 / MMD against held-out data
    with the noise floor of a second held-out draw; digits the classifier-feature Frechet
    distance; quantized data the test bits/dim when eval.bpd_n > 0."""
    cfg, ds = trainer.cfg, trainer.dataset
    n = cfg.sample.n
    y = None
    if trainer.class_cond:
        y = torch.arange(n, device=trainer.device) % ds.num_classes
    samples = generate(trainer, n, y).float().cpu()
    metrics: dict = {"nonfinite_samples": int((~torch.isfinite(samples.flatten(1))).any(1).sum())}
    parts: list[str] = []
    if isinstance(ds, ToyDataset):
        metrics.update(toy_metrics(samples, ds, cfg.eval.heldout_seed))
        from .figures import scatter_figure
        scatter_figure(samples, ds.heldout(n, cfg.eval.heldout_seed), run_dir / "samples.png",
                       title=f"{cfg.name}: {ds.name}, {cfg.sde.name} SDE, {cfg.sample.method} "
                             f"{cfg.sample.steps} steps")
        parts.append(f"SW2 {metrics['sw2']:.4f} (noise floor {metrics['sw2_floor']:.4f}, "
                     f"{min(metrics['sw2_floor_draws']):.4f}..{max(metrics['sw2_floor_draws']):.4f})")
        parts.append(f"MMD {metrics['mmd']:.1e} (noise floor {metrics['mmd_floor']:.1e}, "
                     f"{min(metrics['mmd_floor_draws']):.1e}..{max(metrics['mmd_floor_draws']):.1e})")
    else:
        from .figures import image_grid
        values = quantize(samples, ds.levels)
        image_grid(values[:100], ds.levels, run_dir / "samples.png", nrow=10, scale=max(1, 64 // ds.event_shape[-1]))
        if cfg.data.name == "digits":
            fd = digits_fd(values, cfg.eval.classifier)
            if fd is not None:
                metrics.update(fd)
                parts.append(f"FD {fd['fd']:.2f} (train data: {fd['fd_floor']:.2f}; n={fd['fd_n']} vs 360 test)")
            else:
                parts.append(f"FD skipped: no classifier at {cfg.eval.classifier} "
                             "(train it with experiments/digits_classifier.py)")
        if cfg.eval.bpd_n > 0:
            bpd = test_bits_per_dim(trainer, cfg.eval.bpd_n)
            if bpd is not None:
                metrics["test_bpd"] = bpd
                parts.append(f"test bits/dim {bpd:.3f}")
    if metrics["nonfinite_samples"]:
        parts.append(f"{metrics['nonfinite_samples']} NON-FINITE SAMPLES")
    return metrics, parts


def toy_metrics(samples: torch.Tensor, ds: ToyDataset, heldout_seed: int, n_floor: int = 5) -> dict:
    """SW2 and MMD of samples against held-out draw A (seed heldout_seed), and the noise floor: the
    same numbers for n_floor further held-out draws (seeds heldout_seed + 1, ...) against A, whose
    mean is reported (with n = 2000 on ring8 a single draw's SW2 ranges over 0.09 .. 0.18)."""
    from .metrics import mmd, sliced_wasserstein

    n = samples.shape[0]
    a = ds.heldout(n, heldout_seed)
    d2 = torch.cdist(a.double(), a.double()).pow(2)
    med = float(d2[d2 > 0].median().sqrt())
    # fixed from held-out data so all MMDs are comparable; the small ones resolve modes and edges
    bandwidths = [0.1 * med, 0.3 * med, med]

    def both(x):
        sw = sliced_wasserstein(x, a, n_projections=512, generator=torch.Generator().manual_seed(0))
        return sw, mmd(x, a, bandwidths)

    sw2, mmd2 = both(samples[torch.isfinite(samples).all(1)])
    floors = [both(ds.heldout(n, heldout_seed + k)) for k in range(1, n_floor + 1)]
    return {"sw2": sw2, "mmd": mmd2, "sw2_floor": float(np.mean([f[0] for f in floors])),
            "mmd_floor": float(np.mean([f[1] for f in floors])), "sw2_floor_draws": [f[0] for f in floors],
            "mmd_floor_draws": [f[1] for f in floors]}


def digits_fd(values: torch.Tensor, classifier_path: str) -> dict | None:
    """Frechet distance in the digits classifier's features: n samples vs the 360 test digits, and
    n train digits vs the same test digits as the reference (FD's finite-sample bias depends on n,
    so both use the same n; use sample.n = 1437, the train size: at n = 180 the bias of two test
    halves alone is ~44, against 6.5 for all train vs test)."""
    from .data import DIGITS_LEVELS, load_digits_dataset
    from .data.digits_features import load_digits_features
    from .metrics import frechet_distance

    path = Path(classifier_path)
    if not path.is_file():
        return None
    net = load_digits_features(path)
    test = load_digits_dataset("test").values
    train = load_digits_dataset("train").values
    n = min(values.shape[0], train.shape[0])
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]]
    with torch.no_grad():
        ft, fr, fs = (net.features(center(v, DIGITS_LEVELS)) for v in (test, train, values[:n]))
    return {"fd": frechet_distance(fs, ft), "fd_floor": frechet_distance(fr, ft), "fd_n": n}


def test_bits_per_dim(trainer: Trainer, n: int) -> float | None:
    """Mean test bits/dim (one dequantization draw per image) via the probability-flow likelihood."""
    try:
        from .likelihood import log_likelihood
    except ImportError:
        return None
    from .data import bits_per_dim, dequantize

    ds = build_dataset(trainer.cfg, "test")
    v = ds.values[:n]
    x = dequantize(v, ds.levels, generator=torch.Generator().manual_seed(0)).to(trainer.device)
    dims = v[0].numel()
    out = log_likelihood(trainer.ema.module.score_fn(), trainer.sde, x,
                         trace="exact" if dims <= 64 else "hutchinson",
                         generator=torch.Generator(trainer.device).manual_seed(0))
    return float(bits_per_dim(out.log_p.double().cpu(), ds.levels, dims).mean())


def run(cfg: Config, run_dir: Path, resume: dict | None = None, progress: bool = True) -> RunResult:
    """Train (or continue) the run in run_dir, then evaluate; returns the numbers and the summary."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    trainer = Trainer(cfg)
    if resume is not None:
        trainer.load_state_dict(resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    first = trainer.step_count
    seconds = train_loop(trainer, run_dir, progress)
    metrics, parts = evaluate(trainer, run_dir)
    done = trainer.step_count - first
    head = (f"{cfg.name} [{cfg.data.name}, {cfg.model.name}, {cfg.sde.name}] step {trainer.step_count}: "
            f"{done} steps in {seconds:.0f} s ({done / max(seconds, 1e-9):.1f} steps/s, {trainer.device.type})")
    summary = " | ".join([head, *parts, f"{run_dir / 'samples.png'}"])
    result = {"step": trainer.step_count, "train_seconds": seconds, **metrics, "summary": summary}
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return RunResult(run_dir, trainer.step_count, seconds, metrics, summary)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoresde.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config (default: the embedded toy2d config)")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                   help="continue a run from its latest (or the given) checkpoint, with its saved config")
    p.add_argument("--run-dir", help="run directory (default: <out_dir>/<name>-<date>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key.field=value",
                   help="config overrides, e.g. train.steps=2000 model.hidden=128")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[Config, Path, dict | None]:
    """Resolve the config, the run directory and the checkpoint to resume from."""
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues with the run's saved config; give overrides, not --config")
        state = load_checkpoint(args.resume)
        cfg = config_from_dict(state["config"])
        apply_overrides(cfg, args.overrides)
        validate(cfg)
        src = Path(args.resume)
        run_dir = Path(args.run_dir) if args.run_dir else (src if src.is_dir() else src.parent)
        return cfg, run_dir, state
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else \
        Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"--run-dir {run_dir} already holds checkpoints: continue it with --resume {run_dir} "
                          "or choose another directory")
    return cfg, run_dir, None


def main(argv=None) -> RunResult:
    args = parse_args(argv)
    try:
        cfg, run_dir, state = prepare(args)
        result = run(cfg, run_dir, state, progress=not args.no_progress)
    except (ConfigError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    print(result.summary)
    return result


if __name__ == "__main__":
    main()
