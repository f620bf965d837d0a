"""Typed run configurations: TOML files plus `key.sub=value` overrides from the command line.

A `Config` is a tree of dataclasses. Files and overrides may only name known fields (an unknown
key stops with the closest known one suggested); values are checked against the field's type and
range, and every error names the field in the user's terms (`ConfigError`, one line).

The `[sde]` and `[model]` tables hold, besides their fixed fields, the keyword arguments of the
named SDE / network constructor (e.g. `beta_max`, `hidden`); those are checked against the
constructor's signature when the run is built, so a plugin's own parameters work the same way.
The `[loss]` table likewise holds the keyword arguments of the loss named by `train.loss` (its own
hyperparameters, e.g. a plugin loss's `p_mean`); the options every loss may share (weighting,
t_sampling, eps, p_uncond) stay train.* fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and what is allowed."""


# Sizes that become tensor lengths (batch size, sample count, solver steps) are bounded so that a
# typo such as 10**12 is an error naming the bound, not a failed allocation; the CLIs use the same.
MAX_COUNT = 10 ** 7
MAX_VALUES = 2 ** 31       # numbers in one batch of samples: 8 GiB of float32
MAX_SEED = 2 ** 63 - 1     # torch generators take seeds below 2**64; runs derive seed + 1, seed + 5
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class DataConfig:
    name: str = "ring8"
    root: str = ""          # directory (or archive) of file-based data sets; "" = the set's default
    channels: int = 0       # image_folder only: 1 grey, 3 RGB, 0 as stored
    random_flip: bool = False  # training batches: mirror each image left-right with probability 1/2
    image_size: int = 0     # image_folder only: resize + center-crop to image_size^2 (0 = as stored)
    stream: bool = False    # image_folder only: read the training images from disk batch by batch


@dataclass
class SDEConfig:
    name: str = "vp"
    params: dict = field(default_factory=lambda: {"beta_min": 0.1, "beta_max": 20.0})  # written flat in [sde]


@dataclass
class ModelConfig:
    name: str = "mlp"
    parametrization: str = "eps"
    sigma_data: float = 0.5
    class_cond: bool = False
    params: dict = field(default_factory=lambda: {"hidden": 128, "depth": 3, "embed_dim": 64})


@dataclass
class LossConfig:
    params: dict = field(default_factory=dict)  # keyword arguments of the loss train.loss, written flat in [loss]


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 512
    micro_batch: int = 0    # rows per forward/backward pass (gradient accumulation); 0 = the whole batch
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True     # decay min(ema_decay, (1 + n) / (10 + n)) at the n-th update (models.ema)
    loss: str = "dsm"
    weighting: str = "sigma2"
    t_sampling: str = "auto"    # "auto": the loss's default for the weighting
    eps: float = 1e-5
    p_uncond: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int = 1        # CPU threads for torch (0 = torch's default); 1 suits small models
    precision: str = "auto"  # "auto" (bf16 on CUDA if train.bf16, else fp32), "fp32", "bf16" (autocast,
    #                          CUDA or CPU), "fp16" (autocast with a gradient scaler, CUDA only)
    bf16: bool = True       # precision="auto" on CUDA: bf16 autocast if true, fp32 if false
    compile: str = ""       # a torch.compile backend for the network ("inductor", the usual); "" = eager
    channels_last: bool = False  # image networks: NHWC memory layout (faster convolutions on GPUs)
    log_every: int = 100
    ckpt_every: int = 2000
    keep_last: int = 3
    workers: int = 0        # DataLoader processes reading streamed images ahead (data.stream); 0 = inline
    tensorboard: bool = True
    max_bad_steps: int = 20  # stop after this many consecutive skipped (non-finite loss/gradient) steps


@dataclass
class SampleConfig:
    method: str = "euler_maruyama"
    steps: int = 500
    n: int = 2000
    eps: float = 1e-3
    seed: int = 1234


@dataclass
class EvalConfig:
    heldout_seed: int = 10_000     # toy sets: held-out draws use seeds heldout_seed .. heldout_seed + 5
    classifier: str = "experiments/assets/digits_classifier.pt"
    bpd_n: int = 0                 # test samples for bits/dim (0 = skip)
    fid_n: int = 0                 # image data: samples for the FID against the test split (0 = skip; needs the metrics extra)


@dataclass
class Config:
    name: str = "toy2d"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# -- reading and writing ------------------------------------------------------------------------
def _fields(obj) -> dict[str, type]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(path: str, typ, value):
    """value checked / converted to the field type `typ`, or ConfigError naming `path`."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{path}={value!r} is not allowed: it must be of type {name}")


def _merge(obj, table: dict, prefix: str) -> None:
    """Set obj's fields from a (nested) table; keys that are not fields go to obj.params if it has one."""
    fields = _fields(obj)
    for key, value in table.items():
        path = f"{prefix}{key}"
        if key in fields and dataclasses.is_dataclass(fields[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section: set its fields, e.g. {path}.{next(iter(_fields(getattr(obj, key))))}=...")
            _merge(getattr(obj, key), value, f"{path}.")
        elif key in fields and key != "params":
            setattr(obj, key, _coerce(path, fields[key], value))
        elif "params" in fields:
            obj.params[key] = value      # a constructor argument: checked when the run is built
        else:
            raise ConfigError(f"unknown config key {path!r}{_suggest(key, fields)} "
                              f"(known in this section: {', '.join(fields)})")


def config_from_dict(table: dict) -> Config:
    """The Config a complete table describes (as saved with a run): [sde]/[model] arguments are not
    mixed with the defaults."""
    cfg = Config()
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub) and "params" in _fields(sub):
            sub.params = {}
    _merge(cfg, table, "")
    return cfg


def config_to_dict(cfg) -> dict:
    """Nested plain dicts; `params` tables are written flat into their section."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = config_to_dict(v)
        elif f.name == "params":
            out.update({k: _plain(x) for k, x in v.items()})
        else:
            out[f.name] = _plain(v)
    return out


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def load_config(path=None, overrides=()) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `key.sub=value` overrides; validated."""
    cfg = Config()
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike) or None, got {path!r}")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}")
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a UTF-8 text file (TOML must be UTF-8): {e}") from None
        # a file states the whole model/sde: its [model]/[sde] arguments replace the defaults
        for section in ("model", "sde"):
            if "name" in table.get(section, {}):
                getattr(cfg, section).params = {}
        if "loss" in table.get("train", {}):
            cfg.loss.params = {}
        _merge(cfg, table, "")
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def parse_value(text: str):
    """A command-line value read as a TOML value (2000, 1e-3, true, [1, 2]); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply `a.b=value` strings in place (a.b names a field, or a constructor argument of [sde]/[model]).

    `sde.name` / `model.name` / `train.loss` are applied first; changing them drops the previous
    constructor (loss) arguments, so `model.name=unet model.ch=32` means a U-Net with ch=32 and its
    other defaults.
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"apply_overrides needs a Config (from load_config), got {type(cfg).__name__}")
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, (list, tuple)):
        raise TypeError(f"overrides must be a list of 'section.field=value' strings, got {overrides!r}")
    for item in overrides:
        if not isinstance(item, str):
            raise TypeError(f"each override must be a 'section.field=value' string, got {item!r}")
    names = [o for o in overrides if o.partition("=")[0].strip() in ("sde.name", "model.name", "train.loss")]
    for item in names + [o for o in overrides if o not in names]:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. train.steps=2000")
        *parents, leaf = key.split(".")
        obj, walked = cfg, ""
        for p in parents:
            fields = _fields(obj)
            if p not in fields or not dataclasses.is_dataclass(fields[p]):
                sections = [k for k, t in fields.items() if dataclasses.is_dataclass(t)]
                raise ConfigError(f"unknown config section {walked + p!r}{_suggest(p, sections)} "
                                  f"(sections: {', '.join(sections)})")
            obj, walked = getattr(obj, p), f"{walked}{p}."
        typ = _fields(obj).get(leaf)
        value = parse_value(text.strip())
        if typ is str and not isinstance(value, str):
            value = text.strip()          # data.root=2024 means the string "2024"
        if leaf == "name" and hasattr(obj, "params") and value != obj.name:
            obj.params = {}
        if obj is cfg.train and leaf == "loss" and value != obj.loss:
            cfg.loss.params = {}
        _merge(obj, {leaf: value}, walked)
    return cfg


def toml_dumps(table: dict) -> str:
    """TOML text for nested dicts of str/int/float/bool/lists (what config_to_dict produces)."""
    lines: list[str] = []

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} ({type(v).__name__}) to TOML")

    def emit(t: dict, prefix: str) -> None:
        for k, v in t.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {value(v)}")
        for k, v in t.items():
            if isinstance(v, dict):
                lines.append(f"\n[{prefix}{k}]")
                emit(v, f"{prefix}{k}.")

    emit(table, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def save_config(cfg: Config, path) -> None:
    """Write the resolved config as TOML (loadable again with --config)."""
    Path(path).write_text(toml_dumps(config_to_dict(cfg)))


# -- validation ---------------------------------------------------------------------------------
def _positive(path: str, v, allow_zero: bool = False) -> None:
    ok = math.isfinite(v) and (v > 0 or (allow_zero and v == 0))
    if not ok:
        raise ConfigError(f"{path}={v!r} is not allowed: it must be {'>= 0' if allow_zero else '> 0'}")


def _count(path: str, v) -> None:
    if not 1 <= v <= MAX_COUNT:
        raise ConfigError(f"{path}={v!r} is not allowed: it must be in 1..{MAX_COUNT}")


def check_batch_values(name: str, count: int, event_shape) -> None:
    """ConfigError if `count` samples of `event_shape` hold more than MAX_VALUES numbers: a batch
    that no allocator would give, named (`name`, e.g. "sample.n" or "--n") with the largest count
    that fits."""
    per_sample = math.prod(event_shape)
    if count * per_sample > MAX_VALUES:
        raise ConfigError(f"{name}={count} is not allowed for samples of shape {tuple(event_shape)}: {count} x "
                          f"{per_sample} values is over 2**31 (8 GiB of float32); use at most "
                          f"{MAX_VALUES // per_sample}")


def _seed(path: str, v) -> None:
    if not 0 <= v <= MAX_SEED:
        raise ConfigError(f"{path}={v!r} is not allowed: a seed must be in 0..2**63-1 ({MAX_SEED})")


def _in_range(path: str, v, lo, hi, closed_hi: bool = False) -> None:
    if not (lo <= v < hi or (closed_hi and v == hi)):
        raise ConfigError(f"{path}={v!r} is not allowed: it must be in [{lo}, {hi}{']' if closed_hi else ')'}")


def _known(path: str, name: str, known) -> None:
    known = sorted(known)
    if name not in known:
        raise ConfigError(f"{path}={name!r} is unknown{_suggest(name, known)} (known: {', '.join(known)})")


DATA_ARGS = ("dim", "in_channels", "image_size", "num_classes")  # network arguments taken from the data
# arguments of a loss that no [loss] table sets: the call's own, the data's quantization, and the
# options shared by the losses, which are train.* fields
LOSS_CALL_ARGS = ("model", "sde", "x0", "y", "generator", "reduce")
LOSS_DATA_ARGS = ("levels", "data_range")
LOSS_TRAIN_OPTIONS = {"weighting": "sigma2", "t_sampling": "auto", "eps": 1e-5, "p_uncond": 0.0}


def _check_params(section: str, name: str, factory, params: dict, reserved: dict | None = None) -> dict:
    """params checked against factory's keyword arguments (none of the `reserved` ones: name -> where it
    is set) and converted to the types of their plain defaults."""
    import inspect

    reserved = reserved or {}
    sig = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return dict(params)
    allowed = [k for k in sig if k not in reserved and k != "self"]
    fixed = [k for k in _fields(getattr(Config(), section)) if k != "params"]
    out = {}
    for key, value in params.items():
        if key in reserved:
            raise ConfigError(f"{section}.{key} is {reserved[key]}; remove it from the config")
        if key not in allowed:
            raise ConfigError(f"unknown config key {section + '.' + key!r}{_suggest(key, allowed)} "
                              + (f"(fields: {', '.join(fixed)}; " if fixed else "(")
                              + f"arguments of {section} {name!r}: {', '.join(allowed) or 'none'})")
        default = sig[key].default  # a plain default states the argument's type
        out[key] = _coerce(f"{section}.{key}", type(default), value) if type(default) in (bool, int, float, str) \
            else value
    return out


def loss_kwargs(cfg: Config, **data) -> dict:
    """Keyword arguments for the loss train.loss: the train.* options it accepts (the others must keep
    their defaults), its `[loss]` table, and those of `data` (LOSS_DATA_ARGS: the data's quantization)
    it takes. ConfigError names a bad option and what is allowed."""
    import inspect

    from .losses import LOSSES

    t = cfg.train
    fn = LOSSES.get(t.loss)
    accepted = inspect.signature(fn).parameters
    kwargs = {}
    for key, default in LOSS_TRAIN_OPTIONS.items():
        value = getattr(t, key)
        if key in accepted:
            kwargs[key] = None if (key, value) == ("t_sampling", "auto") else value
        elif value != default:
            raise ConfigError(f"train.{key}={value!r} does not apply to train.loss={t.loss!r} "
                              f"(its arguments: {', '.join(k for k in accepted if k not in LOSS_CALL_ARGS)})")
    reserved = {**{k: "an argument of every loss call" for k in LOSS_CALL_ARGS},
                **{k: "set from the data set" for k in LOSS_DATA_ARGS},
                **{k: f"the field train.{k}" for k in LOSS_TRAIN_OPTIONS}}
    kwargs.update(_check_params("loss", t.loss, fn, cfg.loss.params, reserved))
    kwargs.update({k: v for k, v in data.items() if k in LOSS_DATA_ARGS and k in accepted})
    return kwargs


def validate(cfg: Config) -> Config:
    """Check every value that can be checked without building the run; raise ConfigError."""
    import torch

    from .data import list_datasets
    from .losses import T_SAMPLINGS, WEIGHTINGS, list_losses
    from .models import MODELS, PARAMETRIZATIONS
    from .sampling import list_samplers
    from .sdes import SDES, list_sdes
    from ._checks import MIN_EPS

    if not isinstance(cfg, Config):
        raise TypeError(f"validate needs a Config (from load_config), got {type(cfg).__name__}")
    t, s = cfg.train, cfg.sample
    if not _PLAIN_NAME.match(cfg.name):
        raise ConfigError(f"name={cfg.name!r} is not allowed: the run name becomes a directory in out_dir, so it "
                          "must be a plain name of letters, digits, '.', '_' and '-' (not starting with '.' or "
                          "'-', no '/')")
    _known("data.name", cfg.data.name, list_datasets())
    if cfg.data.channels not in (0, 1, 3):
        raise ConfigError(f"data.channels={cfg.data.channels} is not allowed: use 0 (as stored), 1 or 3")
    _known("sde.name", cfg.sde.name, list_sdes())
    _check_params("sde", cfg.sde.name, SDES.get(cfg.sde.name), cfg.sde.params)
    try:  # the constructor checks its own ranges (cheap for every built-in SDE; the learned one
        # draws its initial weights, so the global RNG is restored afterwards)
        with torch.random.fork_rng(devices=[]):
            sde = SDES.get(cfg.sde.name)(**cfg.sde.params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[sde] name={cfg.sde.name!r}: {err}") from None
    for name in ("steps", "log_every", "ckpt_every", "keep_last", "max_bad_steps"):
        _positive(f"train.{name}", getattr(t, name))
    _count("train.batch_size", t.batch_size)
    _seed("train.seed", t.seed)
    _known("train.loss", t.loss, list_losses())
    loss_kwargs(cfg)
    if t.loss == "vdm" and not hasattr(sde, "gamma_and_derivative"):
        raise ConfigError(f"train.loss='vdm' needs an SDE with a learned schedule (sde.name='learned'), "
                          f"got sde.name={cfg.sde.name!r}")
    _known("train.weighting", t.weighting, WEIGHTINGS)
    if t.t_sampling != "auto":
        _known("train.t_sampling", t.t_sampling, T_SAMPLINGS)
    _known("model.name", cfg.model.name, MODELS.names())
    _check_params("model", cfg.model.name, MODELS.get(cfg.model.name), cfg.model.params,
                  {k: "set from the data set" for k in DATA_ARGS})
    _known("model.parametrization", cfg.model.parametrization, PARAMETRIZATIONS)
    _positive("train.warmup", t.warmup, allow_zero=True)
    _positive("train.micro_batch", t.micro_batch, allow_zero=True)
    _positive("train.workers", t.workers, allow_zero=True)
    _positive("data.image_size", cfg.data.image_size, allow_zero=True)
    if (cfg.data.image_size or cfg.data.stream) and cfg.data.name != "image_folder":
        what = "data.image_size" if cfg.data.image_size else "data.stream"
        raise ConfigError(f"{what} applies to data.name='image_folder' only, got data.name={cfg.data.name!r}")
    if t.micro_batch and t.batch_size % t.micro_batch:
        raise ConfigError(f"train.micro_batch={t.micro_batch} does not divide train.batch_size={t.batch_size}: "
                          "a step accumulates batch_size / micro_batch passes; use a divisor of the batch size")
    _known("train.precision", t.precision, PRECISIONS)
    _positive("train.threads", t.threads, allow_zero=True)
    _positive("train.lr", t.lr)
    _positive("train.grad_clip", t.grad_clip)
    _in_range("train.ema_decay", t.ema_decay, 0.0, 1.0)
    _in_range("train.eps", t.eps, 0.0, 1.0)
    _positive("train.eps", t.eps)
    _in_range("train.p_uncond", t.p_uncond, 0.0, 1.0)
    if t.device != "auto" and not (t.device == "cpu" or t.device.startswith("cuda")):
        raise ConfigError(f"train.device={t.device!r} is not allowed: use 'auto', 'cpu' or 'cuda[:N]'")
    _positive("model.sigma_data", cfg.model.sigma_data)
    if t.p_uncond > 0 and not cfg.model.class_cond:
        raise ConfigError(f"train.p_uncond={t.p_uncond} needs a class-conditional model (model.class_cond=true)")
    _known("sample.method", s.method, list_samplers())
    for name in ("steps", "n"):
        _count(f"sample.{name}", getattr(s, name))
    _seed("sample.seed", s.seed)
    _in_range("sample.eps", s.eps, MIN_EPS, sde.T)
    _positive("sample.eps", s.eps)
    _in_range("train.eps", t.eps, 0.0, sde.T)
    _positive("eval.bpd_n", cfg.eval.bpd_n, allow_zero=True)
    if cfg.eval.bpd_n > MAX_COUNT:
        raise ConfigError(f"eval.bpd_n={cfg.eval.bpd_n!r} is not allowed: it must be in 0..{MAX_COUNT}")
    _positive("eval.fid_n", cfg.eval.fid_n, allow_zero=True)
    if cfg.eval.fid_n > MAX_COUNT:
        raise ConfigError(f"eval.fid_n={cfg.eval.fid_n!r} is not allowed: it must be in 0..{MAX_COUNT}")
    _seed("eval.heldout_seed", cfg.eval.heldout_seed)
    return cfg
