"""A trained model as a self-contained directory that loads without its data, config or Trainer.

    scoresde.save_pretrained("runs/digits", "exported/digits")    # a run, a checkpoint or a ScoreModel
    model = scoresde.load("exported/digits")                        # or a run directory, or a checkpoint
    x = scoresde.sample(model.score_fn(), model.sde, (16, *model.spec.data.event_shape))

The directory holds two files:
* `model.safetensors`: the ScoreModel's state dict (the network's weights and, for an SDE with
  parameters such as the learned schedule, the SDE's), the EMA weights of a run by default;
* `config.json`: what rebuilds the model around them,

      {"format": "scoresde-export-1",
       "network": {"name": "unet", "kwargs": {"in_channels": 1, "image_size": 8, ...}},
       "sde": {"name": "vp", "kwargs": {"beta_min": 0.1, "beta_max": 20.0}},
       "score_model": {"parametrization": "eps", "sigma_data": 0.5},
       "data": {"event_shape": [1, 8, 8], "num_classes": 10, "levels": 17, "data_range": [-1.0, 1.0]},
       "weights": "ema", "step": 2000, "run_config": {... the run's config, or null ...}}

  `score_model` holds every ScoreModel constructor argument besides the network and the SDE, read
  from the model's attributes of the same names. `run_config` lets `python -m scoresde.evaluate`
  find the held-out data; loading does not need it.

Loading reads JSON and safetensors only: no code from the files runs (checkpoints are read with
torch.load(weights_only=True), as everywhere in scoresde).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checkpoint import CheckpointError, state_differences, uncompiled
from ..config import config_from_dict, config_to_dict
from ..run import DataSpec, ModelSpec, Run, load_run

FORMAT = "scoresde-export-1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_REQUIRED = ("format", "network", "sde", "score_model", "data")


def is_export(path) -> bool:
    """Whether `path` is a directory written by `save_pretrained` (it holds config.json)."""
    return (Path(path) / CONFIG_FILE).is_file()


def score_model_arguments(model) -> dict:
    """The ScoreModel's constructor arguments other than the network and the SDE, read from its
    attributes of the same names (so an argument added to ScoreModel is exported too)."""
    from ..models import ScoreModel

    args = {}
    for name in inspect.signature(ScoreModel).parameters:
        if name in ("net", "sde"):
            continue
        if not hasattr(model, name):
            raise ValueError(f"cannot export this ScoreModel: it has no attribute {name!r} for its constructor "
                             f"argument of that name")
        args[name] = _json_value(f"ScoreModel.{name}", getattr(model, name))
    return args


def _json_value(where: str, value):
    """value as JSON (tuples become lists); ValueError naming `where` for anything else."""
    if isinstance(value, (list, tuple)):
        return [_json_value(f"{where}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _json_value(f"{where}.{k}", v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot export {where}={value!r}: only numbers, strings, booleans, lists and dicts "
                     "can be written to config.json")


def save_pretrained(model_or_run, out_dir, ema: bool = True) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.json` (module docstring), replacing an
    earlier export there; returns out_dir.

    model_or_run: a run directory, a checkpoint or an exported directory (the EMA weights unless
    ema=False), a `Run` from `load_run`, or a ScoreModel built by scoresde (`build_score_model`,
    `load`), which carries its `ModelSpec` as `.spec`.
    """
    if isinstance(model_or_run, (str, os.PathLike)):
        run = load_saved(model_or_run, ema)
    elif isinstance(model_or_run, Run):
        run = model_or_run
    else:
        if isinstance(model_or_run, torch.nn.Module) and isinstance(getattr(model_or_run, "_orig_mod", None),
                                                                    torch.nn.Module):
            model_or_run = model_or_run._orig_mod  # torch.compile's wrapper: export the module it compiled
        spec = getattr(model_or_run, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise ValueError(f"save_pretrained needs a run directory, a checkpoint, a Run or a ScoreModel built by "
                             f"scoresde (with its .spec); got {type(model_or_run).__name__} without a ModelSpec")
        run = Run(None, model_or_run, spec.data, None, None, None)
    model, spec = run.model, run.model.spec
    config = {"format": FORMAT,
              "network": {"name": spec.network, "kwargs": _json_value("network", spec.network_kwargs)},
              "sde": {"name": spec.sde, "kwargs": _json_value("sde", spec.sde_kwargs)},
              "score_model": score_model_arguments(model),
              "data": spec.data.to_dict(),
              "weights": run.weights,
              "step": run.step,
              "run_config": config_to_dict(run.config) if run.config is not None else None}
    out = Path(out_dir)
    if any(out.glob("ckpt_*.pt")):
        raise ValueError(f"{out} holds a run's checkpoints: export into another directory (an export there "
                         "would hide the checkpoints from scoresde.load)")
    out.mkdir(parents=True, exist_ok=True)
    # each file is written under a temporary name and renamed, so a crash leaves no half-written file
    tmp_weights, tmp_config = out / f".{WEIGHTS_FILE}.tmp", out / f".{CONFIG_FILE}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp_weights,
              metadata={"format": FORMAT})
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    tmp_weights.replace(out / WEIGHTS_FILE)
    tmp_config.replace(out / CONFIG_FILE)
    return out


def read_export(directory, device="cpu") -> Run:
    """The Run of a directory written by `save_pretrained`; CheckpointError naming the file and the
    key for a missing or malformed one."""
    from ..models import ScoreModel, build_model
    from ..sdes import get_sde

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise CheckpointError(f"{config_path}: missing key {', '.join(map(repr, missing))} "
                              f"(an export holds {', '.join(_REQUIRED)})")
    if config["format"] != FORMAT:
        raise CheckpointError(f"{config_path}: format {config['format']!r} is not {FORMAT!r}")
    try:
        network, sde_entry = _named(config, "network"), _named(config, "sde")
        data = DataSpec.from_dict(config["data"], "data")
        score_args = config["score_model"]
        if not isinstance(score_args, dict):
            raise ValueError(f"'score_model' must be an object of ScoreModel arguments, got {score_args!r}")
        sde = get_sde(sde_entry["name"], **sde_entry["kwargs"])
        net = build_model(network["name"], **network["kwargs"])
        model = ScoreModel(net, sde, **score_args)
        run_config = config.get("run_config")  # for finding the held-out data; the model does not need it
        cfg = config_from_dict(run_config) if run_config is not None else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    try:
        weights = uncompiled(load_file(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: has {CONFIG_FILE} but no {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file, truncated or corrupt ({e})") from None
    diffs = state_differences(weights, model.state_dict())
    if diffs:
        raise CheckpointError(f"{weights_path}: the weights do not fit the model {CONFIG_FILE} describes: "
                              + "; ".join(diffs))
    model.load_state_dict(weights)
    model.spec = ModelSpec(network["name"], network["kwargs"], sde_entry["name"], sde_entry["kwargs"], data)
    return Run(cfg, model.to(device).eval(), data, weights_path, config.get("step"), config.get("weights"))


def _named(config: dict, key: str) -> dict:
    entry = config[key]
    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("kwargs"), dict)):
        raise ValueError(f"{key!r} must be {{\"name\": <registered name>, \"kwargs\": {{...}}}}, got {entry!r}")
    return entry


def load_saved(path, ema: bool = True, device="cpu") -> Run:
    """The Run saved at `path`: an exported directory, a run directory (its newest complete
    checkpoint) or a checkpoint file; the EMA weights unless ema=False. Builds no data set."""
    path = Path(path)
    if path.name in (CONFIG_FILE, WEIGHTS_FILE) and is_export(path.parent):
        path = path.parent
    if is_export(path):
        run = read_export(path, device)
        if run.weights == "ema" and not ema:
            raise CheckpointError(f"{path} holds the EMA weights only; export the raw ones with "
                                  "save_pretrained(..., ema=False)")
        return run
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (expected an exported directory, a run directory or a "
                              "ckpt_*.pt file)")
    if path.is_dir() and not any(path.glob("ckpt_*.pt")):
        raise CheckpointError(f"{path}: no export ({CONFIG_FILE} and {WEIGHTS_FILE}) and no complete checkpoint "
                              "(ckpt_*.pt with its .sha256) in this directory")
    return load_run(path, ema, device)


def load(path, device="cpu", ema: bool = True):
    """A ready ScoreModel (eval mode, with `.sde`, `.score_fn()` and `.spec`) from an exported
    directory, a run directory or a checkpoint; builds no data set, optimizer or Trainer."""
    return load_saved(path, ema, device).model


__all__ = ["save_pretrained", "load", "load_saved", "read_export", "is_export"]
