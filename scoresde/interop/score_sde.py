"""Load score_sde_pytorch checkpoints (Song et al. 2021) as a ScoreModel with its SDE.

score_sde writes `torch.save({"model": state_dict, "ema": {"decay", "num_updates", "shadow_params"},
"optimizer": ..., "step": int})`: the network's state dict under DataParallel's `module.` prefix
(its layers are one flat list `all_modules.<i>`), and the EMA weights as a list in the order of
the network's trainable parameters. Its configs are ml_collections files; they are read here as
plain assignments (`ast`), never executed.

The loaded model keeps score_sde's conventions, so `model.score_fn()(x, t)` is its continuous
`get_score_fn(sde, model, continuous=True)`: VP / sub-VP networks see the raw x and label 999 t and
score = -output / std(t) (parametrization "eps"); VE networks see log sigma(t) and score =
output / sigma(t) (`scale_by_sigma`, parametrization "score"). x lives in score_sde's data range:
[-1, 1] when `data.centered`, else [0, 1] (the network maps it to 2x - 1 itself).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import torch

from ..models import NCSNpp, ScoreModel
from ..models.ncsnpp_layers import Attention, ResBlock
from ..models.resampling import Downsample, Upsample
from ..run import DataSpec, ModelSpec
from ..sdes import get_sde

# model.* options of score_sde's NCSN++ configs, by what the loader does with them
NET_OPTIONS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resblock_type", "fir",
               "fir_kernel", "resamp_with_conv", "skip_rescale", "progressive", "progressive_input",
               "progressive_combine", "embedding_type", "fourier_scale", "init_scale", "conditional",
               "nonlinearity")
FIXED_OPTIONS = {"normalization": "GroupNorm", "attention_type": "ddpm", "conv_size": 3}
SDE_OPTIONS = ("beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales")
OTHER_OPTIONS = ("name", "scale_by_sigma", "ema_rate", "sigma_begin")   # checked below, or training-only
# training.sde -> (SDE class, its model.* arguments, parametrization, noise label, embedding, scale_by_sigma)
SDE_CONVENTIONS = {
    "vpsde": ("vp", ("beta_min", "beta_max"), "eps", "999t", "positional", False),
    "subvpsde": ("subvp", ("beta_min", "beta_max"), "eps", "999t", "positional", False),
    "vesde": ("ve", ("sigma_min", "sigma_max"), "score", "log_sigma", "fourier", True),
}


# -- config files ---------------------------------------------------------------------------------
class _ConfigReader:
    """Interprets the assignments of a score_sde config file without running it."""

    def __init__(self, path: Path):
        self.path = path
        self.lines = path.read_text(encoding="utf-8").splitlines()
        self.functions: dict[str, ast.FunctionDef] = {}
        self.imports: dict[str, Path] = {}
        for node in ast.parse("\n".join(self.lines), str(path)).body:
            if isinstance(node, ast.FunctionDef) and not node.args.args:
                self.functions[node.name] = node
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = self._module_file(node)
            elif not (isinstance(node, ast.Import) or _is_docstring(node)):
                self._refuse(node)

    def _refuse(self, node: ast.AST, why: str = "") -> None:
        line = self.lines[node.lineno - 1].strip() if 0 < node.lineno <= len(self.lines) else ""
        raise ValueError(f"{self.path}:{node.lineno}: cannot read `{line}` without running it{why}; score_sde "
                         f"config files are read as assignments of literals, ConfigDict() and "
                         f"get_default_configs() only")

    def _module_file(self, node: ast.ImportFrom) -> Path:
        relative = Path(*node.module.split(".")).with_suffix(".py")
        for folder in self.path.resolve().parents:
            if (folder / relative).is_file():
                return folder / relative
        self._refuse(node, f" (no file {relative} in a folder above {self.path})")

    def call(self, name: str) -> dict:
        if name not in self.functions:
            raise ValueError(f"{self.path}: no function {name}() to read the config from")
        env: dict = {}
        for node in self.functions[name].body:
            if _is_docstring(node):
                continue
            if isinstance(node, ast.Return) and node.value is not None:
                result = self._value(node.value, env, node)
                if isinstance(result, dict):
                    return result
            if not isinstance(node, ast.Assign):
                self._refuse(node)
            if any(isinstance(t, ast.Attribute) and t.attr == "device" for t in node.targets):
                continue  # score_sde's torch.device choice: not a property of the model
            value = self._value(node.value, env, node)
            for target in node.targets:
                self._assign(target, value, env, node)
        self._refuse(self.functions[name], f" ({name}() returns no config)")

    def _value(self, expr: ast.expr, env: dict, stmt: ast.stmt):
        if isinstance(expr, ast.Call) and not expr.args and not expr.keywords:
            if isinstance(expr.func, ast.Name) and expr.func.id in self.imports:
                return _ConfigReader(self.imports[expr.func.id]).call(expr.func.id)
            if isinstance(expr.func, ast.Name) and expr.func.id in self.functions:
                return self.call(expr.func.id)
            if isinstance(expr.func, ast.Attribute) and expr.func.attr == "ConfigDict":
                return {}
        if isinstance(expr, ast.Name) and expr.id in env:
            return env[expr.id]
        if isinstance(expr, ast.Attribute):
            parent = self._value(expr.value, env, stmt)
            if isinstance(parent, dict) and expr.attr in parent:
                return parent[expr.attr]
        try:
            return ast.literal_eval(expr)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            self._refuse(stmt)

    def _assign(self, target: ast.expr, value, env: dict, stmt: ast.stmt) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
            return
        if isinstance(target, ast.Attribute):
            parent = self._value(target.value, env, stmt)
            if isinstance(parent, dict):
                parent[target.attr] = value
                return
        self._refuse(stmt)


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def read_config(path) -> dict:
    """score_sde's config `.py` file (its `get_config()`) as a nested dict, read without executing it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score_sde config {path}: no such file")
    return _ConfigReader(path).call("get_config")


# -- config -> network and SDE -------------------------------------------------------------------
def _section(config: dict, name: str) -> dict:
    section = config.get(name)
    if not isinstance(section, dict):
        raise ValueError(f"the score_sde config has no '{name}' section")
    return section


def _get(section: dict, prefix: str, key: str):
    if key not in section:
        raise ValueError(f"the score_sde config lacks {prefix}.{key}")
    return section[key]


def build_from_config(config: dict) -> tuple[ScoreModel, object]:
    """The ScoreModel (randomly initialised) and SDE that score_sde's `config` describes."""
    training, data, model = (_section(config, s) for s in ("training", "data", "model"))
    name = _get(model, "model", "name")
    if name != "ncsnpp":
        raise ValueError(f"model.name={name!r} is not supported: score_sde's NCSN++ / DDPM++ configs use 'ncsnpp'")
    sde_name = _get(training, "training", "sde")
    if sde_name not in SDE_CONVENTIONS:
        raise ValueError(f"training.sde={sde_name!r} is not supported; supported: {', '.join(SDE_CONVENTIONS)}")
    if _get(training, "training", "continuous") is not True:
        raise ValueError("training.continuous=False is not supported: only continuous-time score_sde models "
                         "(the *_continuous configs) are loaded")
    unknown = sorted(set(model) - set(NET_OPTIONS) - set(FIXED_OPTIONS) - set(SDE_OPTIONS) - set(OTHER_OPTIONS))
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a score_sde NCSN++ option this loader knows "
                         f"(unknown: {', '.join('model.' + k for k in unknown)})")
    for key, allowed in FIXED_OPTIONS.items():
        if model.get(key, allowed) != allowed:
            raise ValueError(f"model.{key}={model[key]!r} is not supported; supported: {allowed!r}")
    sde_key, sde_args, parametrization, label, embedding, scale_by_sigma = SDE_CONVENTIONS[sde_name]
    if bool(model.get("scale_by_sigma", False)) != scale_by_sigma:
        raise ValueError(f"model.scale_by_sigma={model.get('scale_by_sigma', False)!r} is not supported with "
                         f"training.sde={sde_name!r}; supported: {scale_by_sigma}")
    if str(_get(model, "model", "embedding_type")).lower() != embedding:
        raise ValueError(f"model.embedding_type={model['embedding_type']!r} is not supported with "
                         f"training.sde={sde_name!r}; supported: {embedding!r}")
    kwargs = {k: _get(model, "model", k) for k in NET_OPTIONS}
    for k in ("resblock_type", "progressive", "progressive_input", "progressive_combine", "embedding_type",
              "nonlinearity"):
        kwargs[k] = str(kwargs[k]).lower()
    channels, size = _get(data, "data", "num_channels"), _get(data, "data", "image_size")
    centered = bool(_get(data, "data", "centered"))
    kwargs.update(in_channels=channels, image_size=size, centered=centered)
    try:
        net = NCSNpp(**kwargs)
    except ValueError as err:
        section = "data" if str(err).startswith(("image_size", "in_channels")) else "model"
        raise ValueError(f"score_sde config: {section}.{err}") from None
    sde_kwargs = {k: _get(model, "model", k) for k in sde_args}
    sde_kwargs["N"] = _get(model, "model", "num_scales")
    sde = get_sde(sde_key, **sde_kwargs)
    score_model = ScoreModel(net, sde, parametrization, noise_label=label)
    # score_sde feeds 8-bit images scaled to [0, 1] (or [-1, 1] when data.centered); the spec lets
    # the model be exported with save_pretrained and sampled without the config
    data_spec = DataSpec((channels, size, size), None, 256, (-1.0, 1.0) if centered else (0.0, 1.0))
    score_model.spec = ModelSpec("ncsnpp", kwargs, sde_key, sde_kwargs, data_spec)
    return score_model, sde


# -- score_sde's parameter names -----------------------------------------------------------------
def score_sde_layout(net: NCSNpp) -> list[tuple[str, str | None, bool]]:
    """(score_sde key, this network's key or None, trainable) for every entry of score_sde's state dict,
    trainable ones in score_sde's parameter order (the order of its EMA shadow_params).

    Its 1x1 "NIN" layers (attention projections, DDPM block shortcuts) store W (in, out) where this
    network has a 1x1 convolution (out, in, 1, 1); `to_network` / `from_network` convert.
    """
    entries: list[tuple[str, str | None, bool]] = [("sigmas", None, False)]
    index = 0

    def add(sub_map, mine: str | None):
        nonlocal index
        for theirs, ours in sub_map:
            key = f"all_modules.{index}.{theirs}".rstrip(".")
            entries.append((key, None if mine is None or ours is None else f"{mine}.{ours}".strip("."),
                            theirs != "W"))
        index += 1

    wb = [("weight", "weight"), ("bias", "bias")]

    def resblock(block: ResBlock, mine: str, ddpm_type: bool):
        subs = [("GroupNorm_0.weight", "norm0.weight"), ("GroupNorm_0.bias", "norm0.bias"),
                ("Conv_0.weight", "conv0.weight"), ("Conv_0.bias", "conv0.bias"),
                ("Dense_0.weight", "dense.weight" if block.dense is not None else None),
                ("Dense_0.bias", "dense.bias" if block.dense is not None else None),
                ("GroupNorm_1.weight", "norm1.weight"), ("GroupNorm_1.bias", "norm1.bias"),
                ("Conv_1.weight", "conv1.weight"), ("Conv_1.bias", "conv1.bias")]
        if block.shortcut is not None:
            subs += ([("NIN_0.W", "shortcut.weight"), ("NIN_0.b", "shortcut.bias")] if ddpm_type
                     else [("Conv_2.weight", "shortcut.weight"), ("Conv_2.bias", "shortcut.bias")])
        add(subs, mine)

    def attention(mine: str):
        subs = [("GroupNorm_0.weight", "norm.weight"), ("GroupNorm_0.bias", "norm.bias")]
        for i, proj in enumerate(("q", "k", "v", "proj")):
            subs += [(f"NIN_{i}.W", f"{proj}.weight"), (f"NIN_{i}.b", f"{proj}.bias")]
        add(subs, mine)

    def module(m, mine: str, ddpm_type: bool):
        if isinstance(m, ResBlock):
            resblock(m, mine, ddpm_type)
        elif isinstance(m, Attention):
            attention(mine)
        elif isinstance(m, (Upsample, Downsample)):
            name = "Conv2d_0" if m.fir else "Conv_0"
            add([(f"{name}.weight", "conv.weight"), (f"{name}.bias", "conv.bias")] if m.conv is not None else [],
                mine)
        else:  # Combine
            add([("Conv_0.weight", "conv.weight"), ("Conv_0.bias", "conv.bias")], mine)

    ddpm_type = net.resblock_type == "ddpm"
    if net.embedding_type == "fourier":
        add([("W", "W")], "fourier" if net.fourier is not None else None)
    if net.conditional:
        add(wb, "dense0")
        add(wb, "dense1")
    add(wb, "stem")
    for i, level in enumerate(net.down):
        for j, block in enumerate(level.blocks):
            resblock(block, f"down.{i}.blocks.{j}", ddpm_type)
            if len(level.attns):
                attention(f"down.{i}.attns.{j}")
        if level.downsample is not None:
            module(level.downsample, f"down.{i}.downsample", ddpm_type)
            if level.pyramid is not None:
                module(level.pyramid, f"down.{i}.pyramid", ddpm_type)
    for j, m in enumerate(net.mid):
        module(m, f"mid.{j}", ddpm_type)
    for i, level in enumerate(net.up):
        for j, block in enumerate(level.blocks):
            resblock(block, f"up.{i}.blocks.{j}", ddpm_type)
        if level.attn is not None:
            attention(f"up.{i}.attn")
        if level.pyramid_norm is not None:
            add(wb, f"up.{i}.pyramid_norm")
            add(wb, f"up.{i}.pyramid_conv")
        if level.pyramid_up is not None:
            module(level.pyramid_up, f"up.{i}.pyramid_up", ddpm_type)
        if level.upsample is not None:
            module(level.upsample, f"up.{i}.upsample", ddpm_type)
    if net.conv_out is not None:
        add(wb, "norm_out")
        add(wb, "conv_out")
    return entries


def _nin(theirs_key: str) -> bool:
    return ".NIN_" in theirs_key and theirs_key.endswith(".W")


def to_network(theirs_key: str, value: torch.Tensor) -> torch.Tensor:
    """score_sde's tensor as this network's (NIN W (in, out) -> 1x1 convolution (out, in, 1, 1))."""
    return value.t()[:, :, None, None] if _nin(theirs_key) else value


def from_network(theirs_key: str, value: torch.Tensor) -> torch.Tensor:
    """This network's tensor in score_sde's layout (the inverse of to_network)."""
    return value[:, :, 0, 0].t() if _nin(theirs_key) else value


# -- checkpoints ---------------------------------------------------------------------------------
def _describe(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
    return f"{kind}: {shown}"


def load_score_sde(path_or_state, config, ema: bool = True) -> tuple[ScoreModel, object]:
    """(ScoreModel, SDE) of a score_sde_pytorch checkpoint; `config` is its config as a nested dict
    (`ConfigDict.to_dict()`) or the path of its `.py` file. ema=True loads the EMA weights
    (`ema.shadow_params`), else the raw `model` weights. The model is returned in eval mode."""
    if isinstance(config, (str, os.PathLike)):
        config = read_config(config)
    if not isinstance(config, dict):
        raise TypeError(f"config must be score_sde's config as a nested dict or the path of its .py file, "
                        f"got {type(config).__name__}")
    if isinstance(path_or_state, (str, os.PathLike)):
        state = torch.load(path_or_state, map_location="cpu", weights_only=True)
    else:
        state = path_or_state
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError("not a score_sde checkpoint: expected a dict with 'model' (a state dict), 'ema' and 'step'")
    weights = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state["model"].items()}

    model, sde = build_from_config(config)
    net = model.net
    layout = score_sde_layout(net)
    ours = net.state_dict()
    expected = {}
    for theirs, mine, _ in layout:
        if mine is not None:
            expected[theirs] = from_network(theirs, ours[mine]).shape
        else:
            expected[theirs] = None
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} (config: {tuple(s)})" for k, s in expected.items()
              if s is not None and k in weights and tuple(weights[k].shape) != tuple(s)]
    problems = [_describe(kind, keys) for kind, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        raise ValueError("the checkpoint does not fit the config: " + "; ".join(problems))

    values = {theirs: weights[theirs] for theirs, _, _ in layout}
    if ema:
        if not isinstance(state.get("ema"), dict) or not isinstance(state["ema"].get("shadow_params"), (list, tuple)):
            raise ValueError("the checkpoint has no ema.shadow_params; load it with ema=False for the raw weights")
        shadow = state["ema"]["shadow_params"]
        trainable = [theirs for theirs, _, is_trainable in layout if is_trainable]
        if len(shadow) != len(trainable):
            raise ValueError(f"ema.shadow_params has {len(shadow)} tensors; the config's network has "
                             f"{len(trainable)} trainable parameters")
        for i, (theirs, tensor) in enumerate(zip(trainable, shadow)):
            if tuple(tensor.shape) != tuple(weights[theirs].shape):
                raise ValueError(f"ema.shadow_params[{i}] has shape {tuple(tensor.shape)}, but parameter {i} "
                                 f"({theirs}) has shape {tuple(weights[theirs].shape)}")
            values[theirs] = tensor
    net.load_state_dict({mine: to_network(theirs, values[theirs]) for theirs, mine, _ in layout if mine is not None})
    return model.eval(), sde
