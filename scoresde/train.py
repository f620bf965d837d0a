"""`python -m scoresde.train`: train a score model from a config, checkpoint it, and evaluate it.

    python -m scoresde.train                                   # the embedded toy2d default
    python -m scoresde.train --config experiments/configs/digits.toml train.steps=2000
    python -m scoresde.train --resume runs/toy2d-20260101-120000 train.steps=8000

Optimisation: Adam with linear learning-rate warmup, gradient-norm clipping and an EMA of the
weights (Song et al. 2021, App. D). All training randomness comes from two torch.Generators (data:
order, toy draws and dequantization, on the CPU; noise: t, eps and label dropout, on the device)
whose states are checkpointed with the model, EMA, optimizer, scheduler and the global RNGs, so
`--resume` continues bitwise-exactly on the CPU. The run directory holds config.toml,
metrics.csv, TensorBoard events (tb/: the training scalars, then the samples figure and the final
metrics), ckpt_*.pt, loss.png, samples.png and summary.json.

    torchrun --nproc_per_node=2 -m scoresde.train --config ...     # DistributedDataParallel

Under torchrun the same config trains data-parallel (`scoresde.distributed` says how the global
batch and the RNG streams are split); checkpoints are the same and resume at any world size.

Crash safety: checkpoints are atomic and checksummed (`scoresde.checkpoint`); a run killed at any
moment and resumed loses at most the steps since its last checkpoint and then matches an
uninterrupted run exactly; `--resume RUN_DIR` skips a damaged newest checkpoint with a warning.
The run holds its directory's lock (`scoresde.rundir`) from start to end: a second writer stops at
once naming the holder, and a fresh run refuses a directory holding another run's files.
SIGTERM / SIGINT write a checkpoint and exit with 143 / 130; during the end-of-run evaluation
(the checkpoint is already written) they stop it at once, with the same exit codes. A step with a non-finite loss or
gradient is skipped (column `skipped` of metrics.csv); train.max_bad_steps consecutive ones stop the
run with an error naming the step and the last good checkpoint. A checkpoint whose model does not
fit the config is refused with the differing fields named ("model.ch: checkpoint 32, config 64").
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import os
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
from ._checks import check_device
from .checkpoint import CheckpointError, config_differences, list_checkpoints, load_run_checkpoint, recover, \
    save_checkpoint, set_aside_newer, state_differences
from .config import Config, ConfigError, apply_overrides, check_batch_values, config_from_dict, config_to_dict, \
    load_config, loss_kwargs, save_config, validate
from .data import BatchStream
from .evaluation import evaluate_run
from .extras import MissingExtraError, require
from .figures import loss_figure
from .run import DataSpec, build_dataset, build_score_model, build_sde
from .rundir import RunDirError, RunLock, check_fresh, check_is_dir


def select_device(name: str, world: distributed.World | None = None) -> torch.device:
    """'auto' -> cuda if available, else cpu; in a distributed run 'auto'/'cuda' mean cuda:LOCAL_RANK."""
    world = world or distributed.current()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = check_device("train.device", name)
    except ValueError as e:
        raise ConfigError(f"{e}; or use 'auto'") from None
    if device.type == "cuda" and world.distributed:
        if device.index is not None:
            raise ConfigError(f"train.device={name!r}: under torchrun each process uses cuda:LOCAL_RANK; "
                              "use 'auto' or 'cuda'")
        device = torch.device("cuda", world.local_rank)
    return device


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(t, device: torch.device) -> str:
    """train.precision on `device`: "auto" is bf16 on CUDA when train.bf16, else fp32; fp16 needs CUDA."""
    precision = t.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and t.bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision='fp16' needs a CUDA device, got {device.type!r}: fp16 training is "
                          "guarded by CUDA's gradient scaler; use 'bf16' (autocast on CPU too) or 'fp32'")
    return precision


def micro_batches(rows: tuple[int, int], micro_batch: int, world: distributed.World) -> list[tuple[int, int]]:
    """The passes [lo, hi) of train.micro_batch rows each that cover this process's rows of the batch
    (the whole of them when micro_batch is 0); ConfigError unless micro_batch divides them."""
    lo, hi = rows
    m = micro_batch or hi - lo
    if (hi - lo) % m:
        raise ConfigError(f"train.micro_batch={m} does not divide the per-process batch of {hi - lo} rows "
                          f"(train.batch_size={world.world_size * (hi - lo)} over {world.world_size} processes); "
                          f"use a divisor of {hi - lo}")
    return [(a, a + m) for a in range(lo, hi, m)]


class NonFiniteError(FloatingPointError):
    """Training stopped: too many consecutive steps with a non-finite loss or gradient."""


class EvaluationError(RuntimeError):
    """Training finished and is checkpointed, but the end-of-run evaluation failed."""


def _global_rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": random.getstate()}


def _set_global_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(rng["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class Trainer:
    """Model, EMA, optimizer, scheduler and the data/noise streams of one run; `step()` is one update.

    In a torchrun process group (`scoresde.distributed`, whose docstring says how the batch and the
    RNG streams are split) the model is wrapped in DistributedDataParallel and each rank trains on
    its rows of the global batch; everything in the checkpoint except the global RNGs is the same
    on every rank. A step whose loss or gradient is not finite is skipped: no parameter, optimizer
    or EMA update (the batch, its noise and the learning-rate schedule still advance), counted in
    `skipped` and `bad_streak` (consecutive skipped steps).
    """

    def __init__(self, cfg: Config, device: torch.device | None = None):
        from .losses import LOSSES, SplitLoss
        from .models import EMA

        validate(cfg)
        self.cfg = cfg
        t = cfg.train
        self.world = distributed.current()
        try:
            self.rows = distributed.shard(t.batch_size, self.world)
        except ValueError as e:
            raise ConfigError(f"train.batch_size: {e}") from None
        self.passes = micro_batches(self.rows, t.micro_batch, self.world)
        self.device = device if device is not None else select_device(t.device, self.world)
        seed_everything(t.seed)
        self.dataset = build_dataset(cfg, "train")
        check_batch_values("train.batch_size", t.batch_size, self.dataset.event_shape)
        check_batch_values("sample.n", cfg.sample.n, self.dataset.event_shape)
        self.sde = build_sde(cfg)
        self.model = build_score_model(cfg, self.dataset, self.sde).to(self.device)
        self.channels_last = t.channels_last
        if self.channels_last:
            if len(self.dataset.event_shape) != 3:
                raise ConfigError(f"train.channels_last=true needs image data (C, H, W); data.name="
                                  f"{cfg.data.name!r} has samples of shape {tuple(self.dataset.event_shape)}")
            self.model.to(memory_format=torch.channels_last)
        if self.world.rank > 0:  # rank 0's global RNGs are one process's; others drop out independently
            seed_everything(distributed.rank_seed(t.seed, self.world.rank))
        # every rank keeps its (identical) EMA; rank 0's is saved
        self.ema = EMA(self.model, t.ema_decay, warmup=t.ema_warmup)
        self.forward = self.model  # what runs the network: DDP-wrapped in a distributed run
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                                   if self.device.type == "cuda" else None)
        self.compile_errors = ()
        if t.compile:  # the state dicts stay self.model's: plain keys, loadable without compiling
            from torch._dynamo import list_backends
            from torch._dynamo.exc import BackendCompilerFailed

            known = list_backends(exclude_tags=())  # imports TorchDynamo (seconds): only when asked for
            if t.compile not in known:
                close = difflib.get_close_matches(t.compile, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"train.compile={t.compile!r} is unknown{hint} (known: {', '.join(known)})")
            self.forward = torch.compile(self.forward, backend=t.compile)
            self.compile_errors = BackendCompilerFailed
        self.loss = SplitLoss.of(LOSSES.get(t.loss))  # a plain loss is replayed pass by pass
        # a bound in bits/dim (vdm) takes the data's quantization; scoresde.data maps it to [-1, 1]
        self.loss_kwargs = loss_kwargs(cfg, levels=getattr(self.dataset, "levels", None), data_range=(-1.0, 1.0))
        # an SDE with parameters (a learned schedule) is a submodule of the ScoreModel: its parameters
        # are optimised, averaged by the EMA and checkpointed with the network's
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, foreach=True)
        warmup = t.warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        if cfg.data.random_flip and self.dataset.levels is None:
            raise ConfigError(f"data.random_flip=true needs image data; data.name={cfg.data.name!r} is not images")
        try:
            self.stream = BatchStream(self.dataset, t.batch_size, torch.Generator().manual_seed(t.seed),
                                      self.device, random_flip=cfg.data.random_flip, workers=t.workers)
        except ValueError as e:
            raise ConfigError(f"train.batch_size: {e}") from None
        self.noise = torch.Generator(self.device).manual_seed(t.seed + 1)
        self.class_cond = cfg.model.class_cond
        self.precision = resolve_precision(t, self.device)
        self.autocast = (torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision])
                         if self.precision in _AUTOCAST else contextlib.nullcontext())
        # fp16 gradients are scaled against underflow; a disabled scaler is a no-op
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step_count = 0
        self.skipped = 0         # steps skipped for a non-finite loss or gradient, over the run
        self.bad_streak = 0      # consecutive skipped steps up to now
        self.last_applied = True
        self.stop_signal = 0     # set by a signal handler: stop (with a checkpoint) after this step
        self.stop_agreed = False

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, grad norm), the loss the global batch's mean.

        The loss's per-step part (`scoresde.losses.split`) draws t, noise and labels once for the
        global batch; gradients then accumulate over `passes` (rows [lo, hi) of the global batch,
        train.micro_batch each), each running the network on its rows only, with a pass's loss its
        rows' mean weighted by its share, so the accumulated gradient is the whole batch's up to
        float rounding. The update is applied only if the loss and the gradient norm are finite (one
        host sync per step; in a distributed run the decision uses the all-reduced loss and
        gradients, so every rank makes the same one).
        """
        x, y = next(self.stream)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y if self.class_cond else None
        b = self.cfg.train.batch_size
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            drawn = self.loss.prepare(self.model, self.sde, x, y, generator=self.noise, **self.loss_kwargs)
        total = 0.0  # the per-sample losses' sum, in float32 or wider
        last = len(self.passes) - 1
        for i, (lo, hi) in enumerate(self.passes):
            total = total + self._backward_pass(drawn, lo, hi, last_pass=i == last)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        if self.world.distributed:
            both = torch.stack([total, torch.tensor(float(self.stop_signal > 0), device=total.device)])
            distributed.all_reduce_sum(both)
            loss, self.stop_agreed = both[0] / b, bool(both[1] > 0)
        else:
            loss, self.stop_agreed = total / b, self.stop_signal > 0
        self.last_applied = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if self.last_applied:
            self.scaler.step(self.optimizer)
            self.ema.update(self.model)
            self.bad_streak = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.bad_streak += 1
        self.scaler.update()  # fp16: halves the scale after an overflow, grows it after a good run
        self.scheduler.step()
        self.step_count += 1
        return loss, grad_norm

    def _backward_pass(self, drawn, lo: int, hi: int, last_pass: bool) -> torch.Tensor:
        """Backpropagate rows [lo, hi)'s share of the step's loss; returns their losses' sum (detached).
        Before the last pass DDP defers its all-reduce (no_sync) and the step's graph is kept: the
        per-step part may depend on parameters (a learned schedule), and every pass reaches them."""
        n = self.rows[1] - self.rows[0]
        defer_sync = self.world.distributed and not last_pass
        with self.forward.no_sync() if defer_sync else contextlib.nullcontext():
            with self.autocast:
                try:
                    per_sample = drawn.per_sample(self.forward, lo, hi)
                except self.compile_errors as e:
                    why = getattr(e, "inner_exception", e)
                    raise ConfigError(f"train.compile={self.cfg.train.compile!r}: the backend failed on this "
                                      f"machine ({type(why).__name__}: {str(why).strip().splitlines()[0]}); "
                                      "set train.compile='' to train without compiling") from None
                loss = per_sample.mean() * ((hi - lo) / n)  # DDP averages over ranks: the global mean
            self.scaler.scale(loss).backward(retain_graph=not last_pass)
        return per_sample.detach().sum(dtype=torch.promote_types(per_sample.dtype, torch.float32))

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resume needs; in a distributed run a collective (every rank must call it):
        rank 0's state, plus the other ranks' global RNG states under "rng_ranks"."""
        rng_ranks = distributed.all_gather_objects(_global_rng_state())[1:]
        return {
            "format": "scoresde-train-1",
            "step": self.step_count,
            "config": config_to_dict(self.cfg),
            "data_spec": DataSpec.of(self.dataset).to_dict(),  # so the model loads without its data
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),  # {} unless fp16
            "data": self.stream.state_dict(),
            "noise": self.noise.get_state(),
            "rng": _global_rng_state(),
            "rng_ranks": rng_ranks,
            "guard": {"skipped": self.skipped, "bad_streak": self.bad_streak},
        }

    def check_compatible(self, state: dict) -> None:
        """CheckpointError naming what differs (e.g. "model.ch: checkpoint 32, config 64") if the
        checkpoint's model state does not fit this config's model; a warning if it fits but the
        data, SDE or model settings differ."""
        saved = state.get("config", {})
        diffs = config_differences(saved, config_to_dict(self.cfg))
        shapes = state_differences(state["model"], self.model.state_dict())
        if shapes:
            why = "; ".join(diffs) if diffs else "the network's code changed"
            raise CheckpointError(f"the checkpoint (step {state.get('step')}) does not fit this config's model: "
                                  f"{why} (state: {'; '.join(shapes)})")
        if diffs:
            warnings.warn(f"resuming with settings that differ from the checkpoint's: {'; '.join(diffs)}",
                          stacklevel=3)

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "scoresde-train-1":
            raise CheckpointError(f"not a scoresde training checkpoint (format {state.get('format')!r})")
        missing = sorted(self.state_dict().keys() - state.keys() - {"rng_ranks", "guard", "data_spec", "scaler"})
        if missing:
            raise CheckpointError(f"the checkpoint (step {state.get('step')}) cannot be resumed: it has no "
                                  f"{', '.join(missing)} in it")
        self.check_compatible(state)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data"])
        self.noise.set_state(state["noise"])
        self.step_count = int(state["step"])
        rank, others = self.world.rank, state.get("rng_ranks", [])
        if rank == 0:
            _set_global_rng_state(state["rng"])
        elif rank - 1 < len(others):
            _set_global_rng_state(others[rank - 1])
        else:  # saved at a smaller world size: a fresh stream for this rank, fixed by the step
            seed_everything(distributed.rank_seed(self.cfg.train.seed, rank, self.step_count))
        guard = state.get("guard", {})
        self.skipped, self.bad_streak = int(guard.get("skipped", 0)), int(guard.get("bad_streak", 0))


# -- the run: logging, checkpoints, evaluation ----------------------------------------------------
@dataclass
class RunResult:
    run_dir: Path
    steps: int
    seconds: float
    metrics: dict
    summary: str


class MetricsLog:
    """metrics.csv (continued on resume) and, when available, TensorBoard scalars under tb/.

    `skipped` counts the steps of the row's window whose update was skipped (non-finite loss or
    gradient); `loss` is the mean over the others. On resume at start_step the rows an interrupted
    run logged after start_step (steps about to be redone) and a row cut short by a crash are
    dropped first, so each step appears once.
    """

    FIELDS = ("step", "loss", "grad_norm", "lr", "skipped", "steps_per_s", "elapsed_s")

    def __init__(self, run_dir: Path, tensorboard: bool, start_step: int = 0):
        path = run_dir / "metrics.csv"
        if path.exists():
            self._truncate(path, start_step)
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

    @classmethod
    def _truncate(cls, path: Path, start_step: int) -> None:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))

        def keep(row):
            try:
                return None not in row.values() and int(row["step"]) <= start_step
            except (KeyError, TypeError, ValueError):
                return False

        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, cls.FIELDS, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in rows if keep(r))
        tmp.replace(path)

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


def tensorboard_summary(run_dir: Path, step: int, metrics: dict, figure: Path) -> None:
    """Add the end-of-run results to the run's TensorBoard events (tb/): the samples figure (an
    image grid or the scatter plot) as image `samples` and each numeric metric as scalar `eval/<name>`,
    at the final step. Without tensorboard installed MetricsLog has already said so: nothing to do."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    from PIL import Image

    with SummaryWriter(str(run_dir / "tb")) as tb:
        if figure.is_file():
            with Image.open(figure) as im:
                tb.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
                tb.add_scalar(f"eval/{name}", value, step)


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer):
    """While active, SIGTERM and SIGINT ask `trainer` to stop after its current step (train_loop then
    writes a checkpoint and exits); a second signal aborts at once. Only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_signal:
            raise SystemExit(128 + signum)
        trainer.stop_signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(send it again to stop at once, without one)", file=sys.stderr)

    with _signal_handler(handler):
        yield


@contextlib.contextmanager
def exit_on_signals(why: str):
    """While active, SIGTERM and SIGINT stop the process at once: one line on stderr (the signal's
    name, then `why`) and SystemExit(128 + signal number). Only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        print(f"\n{signal.Signals(signum).name}: {why}", file=sys.stderr)
        raise SystemExit(128 + signum)

    with _signal_handler(handler):
        yield


@contextlib.contextmanager
def _signal_handler(handler):
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def train_loop(trainer: Trainer, run_dir: Path, progress: bool = True) -> float:
    """Train to cfg.train.steps with logging and checkpoints; returns the seconds spent.

    Rank 0 alone writes (metrics every train.log_every steps, a checkpoint every train.ckpt_every
    steps and at the end); in a distributed run every rank must call this. A crash loses at most
    the steps since the last checkpoint, and `--resume` redoes them exactly.
    * SIGTERM / SIGINT: the current step finishes, a checkpoint is written and SystemExit(128 +
      signal number) is raised (143 for SIGTERM, 130 for SIGINT; the shell's convention, so a job
      script can tell a stopped run from a finished one); `--resume` continues it exactly.
    * NonFiniteError after train.max_bad_steps consecutive skipped steps (non-finite loss or
      gradient), naming the step and the last good checkpoint. While steps are being skipped no
      periodic checkpoint is written, so keep-last pruning never removes the last good one.
    """
    from tqdm import tqdm

    t = trainer.cfg.train
    main = trainer.world.main
    log, last_good = None, None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(run_dir, t.tensorboard, trainer.step_count)
        earlier = [p for s, p in list_checkpoints(run_dir) if s <= trainer.step_count]
        last_good = earlier[-1] if earlier else None
    start = time.perf_counter()
    window_start, window_steps, window_good, window_skipped = start, 0, 0, 0
    loss_sum = torch.zeros((), device=trainer.device)
    bar = tqdm(total=t.steps, initial=trainer.step_count, disable=not (progress and main), dynamic_ncols=True,
               desc=trainer.cfg.name, unit="step")

    def checkpoint():
        state = trainer.state_dict()  # a collective in a distributed run
        return save_checkpoint(state, run_dir, trainer.step_count, t.keep_last) if main else None

    saved = None
    try:
        with stop_on_signals(trainer):
            while trainer.step_count < t.steps:
                loss, grad_norm = trainer.step()
                step = trainer.step_count
                window_steps += 1
                if trainer.last_applied:
                    loss_sum += loss
                    window_good += 1
                else:
                    window_skipped += 1
                if step % t.log_every == 0 or step == t.steps:
                    now = time.perf_counter()
                    mean_loss = float(loss_sum) / window_good if window_good else float("nan")
                    rate = window_steps / (now - window_start)
                    if main:
                        log.log({"step": step, "loss": mean_loss, "grad_norm": float(grad_norm),
                                 "lr": trainer.scheduler.get_last_lr()[0], "skipped": window_skipped,
                                 "steps_per_s": rate, "elapsed_s": now - start})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", steps_per_s=f"{rate:.1f}", skipped=trainer.skipped)
                    bar.update(window_steps)
                    loss_sum.zero_()
                    window_start, window_steps, window_good, window_skipped = now, 0, 0, 0
                if trainer.bad_streak >= t.max_bad_steps:
                    n = trainer.bad_streak
                    where = (f"the last good checkpoint is {last_good}; resume from it with a lower train.lr "
                             f"(now {t.lr}) or train.grad_clip (now {t.grad_clip})" if last_good is not None
                             else "no checkpoint was written before them")
                    raise NonFiniteError(f"training stopped at step {step}: the last {n} steps "
                                         f"(train.max_bad_steps={t.max_bad_steps}) had a non-finite loss or "
                                         f"gradient and were skipped; {where}")
                saved = None
                if (step % t.ckpt_every == 0 and trainer.bad_streak == 0) or step == t.steps:
                    saved = checkpoint()
                    if trainer.bad_streak == 0:
                        last_good = saved
                if trainer.stop_agreed:
                    saved = saved or checkpoint()
                    distributed.barrier()  # no rank exits while rank 0 still writes
                    signum = trainer.stop_signal or signal.SIGTERM
                    if main:
                        print(f"stopped at step {step} ({signal.Signals(signum).name}); saved {saved}; continue "
                              f"with: python -m scoresde.train --resume {run_dir}", file=sys.stderr)
                    raise SystemExit(128 + signum)
            if trainer.stop_signal:  # arrived after the last step's check: its checkpoint is written
                name = signal.Signals(trainer.stop_signal).name
                if main:
                    print(f"stopped at step {trainer.step_count}, the last ({name}); saved {saved}; the end-of-run "
                          "evaluation was skipped", file=sys.stderr)
                raise SystemExit(128 + trainer.stop_signal)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return time.perf_counter() - start


def run(cfg: Config, run_dir: Path, resume: dict | None = None, progress: bool = True) -> RunResult | None:
    """Train (or continue) the run in run_dir, then evaluate; returns the numbers and the summary.
    In a distributed run rank 0 evaluates and writes; the other ranks return None after training.
    The caller holds run_dir's lock (`main` does) and has recovered it (`checkpoint.recover`)."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    trainer = Trainer(cfg)
    if resume is not None:
        trainer.load_state_dict(resume)
    if trainer.world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for p in set_aside_newer(run_dir, trainer.step_count):
            print(f"note: moved {p.name} to {p.parent}: this run continues from step {trainer.step_count}",
                  file=sys.stderr)
        save_config(cfg, run_dir / "config.toml")
    first = trainer.step_count
    seconds = train_loop(trainer, run_dir, progress)
    if not trainer.world.main:
        return None
    step = trainer.step_count
    with exit_on_signals(f"stopped the end-of-run evaluation; the checkpoint of step {step} is saved in {run_dir}"):
        loss_figure(run_dir / "metrics.csv", run_dir / "loss.png", title=f"{cfg.name}: training loss, steps 1..{step}")
        try:
            metrics, parts = evaluate_run(cfg, trainer.ema.module, trainer.dataset, run_dir, trainer.device,
                                          progress)
        except (ValueError, FloatingPointError) as e:  # e.g. a model trained at train.lr=1e30 overflows
            raise EvaluationError(f"training reached step {step} and its checkpoint is saved in {run_dir}, but the "
                                  f"end-of-run evaluation failed: {e}") from None
        done = step - first
        ema = trainer.ema
        if ema.initial_weight > 0.5:  # the samples come mostly from the untrained network
            parts = [*parts, f"warning: the EMA is still {ema.initial_weight:.0%} the initial weights after "
                             f"{ema.num_updates} updates (train.ema_decay={ema.decay}); train longer or lower the decay"]
        head = (f"{cfg.name} [{cfg.data.name}, {cfg.model.name}, {cfg.sde.name}] step {step}: "
                f"{done} steps in {seconds:.0f} s ({done / max(seconds, 1e-9):.1f} steps/s, {trainer.device.type})")
        summary = " | ".join([head, *parts, f"{run_dir / 'samples.png'}"])
        result = {"step": step, "train_seconds": seconds, **metrics, "ema_initial_weight": ema.initial_weight,
                  "summary": summary}
        (run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        if cfg.train.tensorboard:
            tensorboard_summary(run_dir, step, result, run_dir / "samples.png")
    return RunResult(run_dir, step, seconds, metrics, summary)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoresde.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config (default: the embedded toy2d config)")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                   help="continue a run from its latest (or the given) checkpoint, with its saved config")
    p.add_argument("--run-dir", help="run directory (default: <out_dir>/<name>-<date>-<time>; with --resume, the "
                                     "resumed run's own directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key.field=value",
                   help="config overrides, e.g. train.steps=2000 model.hidden=128")
    return p.parse_intermixed_args(argv)  # overrides may come before and after options


def run_directory(args: argparse.Namespace, cfg: Config | None = None) -> Path:
    """--run-dir; else the resumed run's own directory; else <out_dir>/<name>-<date>-<time>."""
    if args.run_dir:
        return check_is_dir(args.run_dir)
    if args.resume:
        src = Path(args.resume)
        return src if src.is_dir() else src.parent
    return check_is_dir(Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare(args: argparse.Namespace, run_dir: Path | None = None, cfg: Config | None = None
            ) -> tuple[Config, Path, dict | None]:
    """Resolve the config, the run directory and the checkpoint to resume from.

    Call it holding run_dir's lock (`main` does). A fresh run's directory must hold no run's files.
    `--resume SRC` into its own directory first recovers it (`checkpoint.recover`), then takes the
    newest good checkpoint (`checkpoint.load_run_checkpoint`: a damaged newer one is skipped with a
    warning naming it); `--resume SRC --run-dir B` continues SRC's run in B, which must hold no run.
    """
    if not args.resume:
        cfg = cfg or load_config(args.config, args.overrides)
        run_dir = run_dir or run_directory(args, cfg)
        check_fresh(run_dir)
        return cfg, run_dir, None
    if args.config:
        raise ConfigError("--resume continues with the run's saved config; give overrides, not --config")
    src = Path(args.resume)
    if not src.exists():
        raise CheckpointError(f"--resume {src}: no such run directory or checkpoint")
    run_dir = run_dir or run_directory(args)
    own = run_dir.resolve() == (src if src.is_dir() else src.parent).resolve()
    if own:
        for p in recover(run_dir) if _launch_rank() == 0 else []:  # rank 0 alone writes (and holds the lock)
            print(f"note: removed {p.name}, left by an interrupted checkpoint write of this run", file=sys.stderr)
    else:
        try:
            check_fresh(run_dir)
        except RunDirError as e:
            raise RunDirError(f"--resume {src} --run-dir {run_dir}: {e}; a resumed run continues in its own "
                              "directory or in one that holds no run") from None
    _, state = load_run_checkpoint(src)
    cfg = config_from_dict(state["config"])
    apply_overrides(cfg, args.overrides)
    validate(cfg)
    return cfg, run_dir, state


def main(argv=None) -> RunResult | None:
    """The CLI; under torchrun every process runs it (scoresde.distributed) and rank 0 prints the summary.

    Exit status: 0 done; 1 failed while running (non-finite training, disk full, an I/O error);
    2 a bad argument, config, checkpoint or run directory, or a missing extra (nothing was
    trained); 130 / 143 stopped by SIGINT / SIGTERM.
    """
    args = parse_args(argv)
    main_rank = _launch_rank() == 0  # rank 0 alone locks, recovers and writes
    try:
        # before any work: the end-of-run figures need them (a run must not train, then crash)
        require(("matplotlib", "PIL"), "train", "python -m scoresde.train (its loss.png and samples.png)")
        cfg = None if args.resume else load_config(args.config, args.overrides)
        run_dir = run_directory(args, cfg)
        lock = RunLock(run_dir, " ".join(["python -m scoresde.train", *sys.argv[1:]])) if main_rank \
            else contextlib.nullcontext()
        with lock:
            cfg, run_dir, state = prepare(args, run_dir, cfg)
            use_cuda = select_device(cfg.train.device, distributed.World()).type == "cuda"
            with distributed.process_group(use_cuda) as world:
                run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's time stamp
                if state is not None:  # every rank continues from rank 0's choice (a directory's newest)
                    step = distributed.broadcast_object(int(state["step"]))
                    if step != int(state["step"]):
                        state = load_run_checkpoint(Path(args.resume) / f"ckpt_{step:08d}.pt")[1]
                result = run(cfg, run_dir, state, progress=not args.no_progress and world.main)
    except (ConfigError, CheckpointError, RunDirError, MissingExtraError) as e:
        _fail(f"error: {e}", 2)
    except (NonFiniteError, EvaluationError) as e:
        _fail(f"error: {e}", 1)
    except OSError as e:  # a full disk, a read-only or vanished directory: the last checkpoint is intact
        what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        _fail(f"error: {what} (checkpoints already written are intact; once this is fixed, --resume continues "
              "from the last one)", 1)
    except KeyboardInterrupt:  # Ctrl-C before training started or after it stopped
        _fail("interrupted", 130)
    if result is not None:
        print(result.summary)
    return result


def _launch_rank() -> int:
    """This process's rank before the process group exists: torchrun's RANK, else 0."""
    return int(os.environ["RANK"]) if distributed.launched_by_torchrun() else 0


def _fail(message: str, status: int) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
