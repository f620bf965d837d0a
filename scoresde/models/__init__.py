"""Networks, their parametrization wrapper, the noise-conditional classifier and EMA.

Raw networks have the contract net(x, c_noise, y=None) -> Tensor shaped like x; `ScoreModel` turns
one into eps / x0 / score / v predictions and a sampler's score_fn(x, t). Networks are built by name
(`build_model("mlp", dim=2)`, `build_model("unet", in_channels=1, image_size=28)`,
`build_model("ncsnpp")` / `"ddpmpp"` for the score-SDE paper's networks); another package
adds one through the `scoresde.models` entry-point group or `register_model`.
"""

from __future__ import annotations

import inspect

from ..registry import Registry
from .classifier import ClassifierModel, NoiseConditionalClassifier
from .ema import EMA
from .embeddings import ConditioningEmbedding, GaussianFourierProjection, SinusoidalEmbedding
from .mlp import ScoreMLP
from .ncsnpp import DDPMpp, NCSNpp
from .parametrization import PARAMETRIZATIONS, ScoreModel, convert, noise_conditioning
from .unet import UNet

MODELS = Registry("model", "scoresde.models", builtins={"mlp": ScoreMLP, "unet": UNet, "ncsnpp": NCSNpp,
                                                               "ddpmpp": DDPMpp})


def register_model(name: str, *, overwrite: bool = False):
    """Class decorator registering a network under `name` for `build_model` and configs."""
    return MODELS.register(name, overwrite=overwrite)


def _build(kind: str, factory, kwargs: dict):
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        params = ", ".join(p for p in inspect.signature(factory).parameters if p != "self")
        raise ValueError(f"{kind}: {err} (its parameters are: {params})") from None
    return factory(**kwargs)


def build_model(name: str, **kwargs):
    """The raw network registered as `name` ("mlp": ScoreMLP, "unet": UNet), built with kwargs."""
    return _build(f"model {name!r}", MODELS.get(name), kwargs)


def build_classifier(**kwargs) -> NoiseConditionalClassifier:
    """A raw NoiseConditionalClassifier (wrap it in ClassifierModel(net, sde) to use it with times t)."""
    return _build("classifier", NoiseConditionalClassifier, kwargs)


__all__ = ["ScoreMLP", "UNet", "NCSNpp", "DDPMpp", "NoiseConditionalClassifier", "ClassifierModel", "ScoreModel", "EMA",
           "GaussianFourierProjection", "SinusoidalEmbedding", "ConditioningEmbedding", "PARAMETRIZATIONS",
           "convert", "noise_conditioning", "MODELS", "register_model", "build_model", "build_classifier"]
