"""The one way to turn a config or a checkpoint into a run's parts: data set, SDE and score model.

Training builds all three from its config; sampling, evaluation and the export load a checkpoint
with `load_run` and get the model (raw or EMA weights) and its SDE without the data set: what the
network needs to know about the data (event shape, classes, levels) is the checkpoint's `DataSpec`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_run_checkpoint, state_differences, uncompiled
from .config import Config, ConfigError, config_from_dict, validate
from .data import load_dataset


def _config_error(field: str, err: Exception) -> ConfigError:
    return ConfigError(f"{field}: {err}")


@dataclass(frozen=True)
class DataSpec:
    """What a model knows of its data: the event shape of one sample, the number of classes of
    labelled data, and for quantized data its number of levels and the range [lo, hi] they are
    centred on (scoresde.data maps level v to 2 (v + 1/2) / levels - 1, i.e. (-1, 1))."""

    event_shape: tuple[int, ...]
    num_classes: int | None = None
    levels: int | None = None
    data_range: tuple[float, float] | None = None

    @classmethod
    def of(cls, dataset) -> "DataSpec":
        """The spec of a data set (anything with event_shape, num_classes and levels)."""
        levels = getattr(dataset, "levels", None)
        return cls(tuple(dataset.event_shape), getattr(dataset, "num_classes", None), levels,
                   (-1.0, 1.0) if levels is not None else None)

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Samples x of quantized data as uint8 images for image tools: x mapped from data_range to
        [-1, 1], its level v (`scoresde.data.quantize`), then round(v * 255 / (levels - 1)), the map
        `scoresde.metrics.reference_statistics` applies to a data set's own levels."""
        from .data import quantize

        if self.levels is None:
            raise ValueError("the data are not quantized (no levels recorded), so samples have no image values")
        lo, hi = self.data_range or (-1.0, 1.0)
        v = quantize((x.double() - lo) * (2.0 / (hi - lo)) - 1.0, self.levels)
        return (v.double() * (255 / (self.levels - 1))).round().to(torch.uint8)

    def to_dict(self) -> dict:
        return {"event_shape": list(self.event_shape), "num_classes": self.num_classes, "levels": self.levels,
                "data_range": list(self.data_range) if self.data_range is not None else None}

    @classmethod
    def from_dict(cls, table: dict, where: str = "data") -> "DataSpec":
        """The spec a `to_dict` table describes; ValueError naming `where` and the bad key."""
        if not isinstance(table, dict) or "event_shape" not in table:
            raise ValueError(f"{where}: needs an 'event_shape' entry (a list of positive integers), got {table!r}")
        shape = table["event_shape"]
        if not (isinstance(shape, (list, tuple)) and shape
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise ValueError(f"{where}.event_shape={shape!r} is not allowed: it must be a list of positive integers")
        for key in ("num_classes", "levels"):
            v = table.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{where}.{key}={v!r} is not allowed: it must be a positive integer or null")
        rng = table.get("data_range")
        if rng is not None and not (isinstance(rng, (list, tuple)) and len(rng) == 2
                                    and all(isinstance(v, (int, float)) for v in rng) and rng[0] < rng[1]):
            raise ValueError(f"{where}.data_range={rng!r} is not allowed: it must be [lo, hi] with lo < hi, or null")
        return cls(tuple(shape), table.get("num_classes"), table.get("levels"),
                   (float(rng[0]), float(rng[1])) if rng is not None else None)


def build_dataset(cfg: Config, split: str = "train"):
    try:
        d = cfg.data
        options = {"image_size": d.image_size or None, "stream": d.stream and split == "train"} \
            if d.name == "image_folder" else {}  # evaluation reads its test images into memory
        return load_dataset(d.name, d.root or None, split, d.channels or None, **options)
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


def network_arguments(cfg: Config, data) -> dict:
    """The keyword arguments of cfg's network: shape-dependent ones from `data` (a DataSpec or a
    data set), the rest from [model]."""
    from .models import MODELS

    m = cfg.model
    shape = tuple(data.event_shape)
    num_classes = data.num_classes if m.class_cond else None
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
    return kwargs


@dataclass(frozen=True)
class ModelSpec:
    """What builds a ScoreModel again: its network's and SDE's registered names and arguments, and
    its data. `build_score_model` attaches it to the model as `model.spec`, so the model can be
    exported (`scoresde.save_pretrained`) without the config it came from."""

    network: str
    network_kwargs: dict
    sde: str
    sde_kwargs: dict
    data: DataSpec


def build_score_model(cfg: Config, data, sde):
    """The ScoreModel of this config for data of `data`'s shape and classes (a DataSpec or a data set),
    with its `ModelSpec` as `.spec`."""
    from .models import ScoreModel, build_model as build_net

    m = cfg.model
    kwargs = network_arguments(cfg, data)
    try:
        net = build_net(m.name, **kwargs)
        model = ScoreModel(net, sde, m.parametrization, m.sigma_data)
    except (TypeError, ValueError) as e:
        raise _config_error(f"model ({m.name})", e) from None
    spec = data if isinstance(data, DataSpec) else DataSpec.of(data)
    model.spec = ModelSpec(m.name, kwargs, cfg.sde.name, dict(cfg.sde.params), spec)
    return model


@dataclass
class Run:
    """A loaded run: its config (None for an export of a bare model), the model (with `.sde` and
    `.spec`) holding the chosen weights, its data spec, the file it came from, the training step
    and which weights were loaded ("ema" or "raw")."""

    config: Config | None
    model: torch.nn.Module
    data: DataSpec
    source: Path | None
    step: int | None = None
    weights: str = "ema"


def run_data_spec(state: dict, cfg: Config) -> DataSpec:
    """The data spec a checkpoint records; for a checkpoint written before it was recorded, the spec
    of the config's training data (which then must be readable)."""
    if "data_spec" in state:
        return DataSpec.from_dict(state["data_spec"], "checkpoint data_spec")
    try:
        return DataSpec.of(build_dataset(cfg, "train"))
    except ConfigError as e:
        raise ConfigError(f"{e} (this checkpoint predates the data spec that checkpoints now record, so loading "
                          "it needs its training data)") from None


def load_run(path, use_ema: bool = True, device="cpu") -> Run:
    """The run of a checkpoint or run directory (its newest good checkpoint, falling back past
    damaged ones with a warning: `checkpoint.load_run_checkpoint`), the model holding the saved EMA
    (or raw) weights; builds no data set, optimizer or Trainer."""
    ckpt, state = load_run_checkpoint(path)
    cfg = validate(config_from_dict(state["config"]))
    spec = run_data_spec(state, cfg)
    model = build_score_model(cfg, spec, build_sde(cfg))
    weights = uncompiled(state["ema"]["module"] if use_ema else state["model"])
    diffs = state_differences(weights, model.state_dict())
    if diffs:  # the run's own config builds another network: another scoresde version or an edited file
        raise CheckpointError(f"{ckpt}: its weights do not fit the model its config builds: " + "; ".join(diffs))
    model.load_state_dict(weights)
    return Run(cfg, model.to(device).eval(), spec, ckpt, int(state.get("step", 0)), "ema" if use_ema else "raw")
