"""Hostile inputs at every public boundary (issue #6): random and malformed values thrown at the SDE
constructors, `sample`, `log_likelihood` / `bits_per_dim`, the config loader, the data loaders, the
metrics and the CLIs.

The truth each test states: a bad value is refused with a ValueError or TypeError (ConfigError is a
ValueError) whose message names the offending parameter, never a traceback from inside torch, a
hang or a NaN result; a value that is accepted gives a finite result. Every call is small (a batch
of 2-3 points in 2-D, a handful of steps) and hypothesis runs few examples with a deadline; the
`slow`-marked variants run more.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoresde
from scoresde import VESDE, VPSDE, bits_per_dim, get_sde, list_samplers, list_sdes, log_likelihood, sample
from scoresde.analytic import GaussianMixture
from scoresde.config import Config, ConfigError, apply_overrides, load_config, validate
from scoresde.data import load_dataset
from scoresde.metrics import frechet_distance, mmd, sliced_wasserstein
from scoresde.sampling import (ClassifierFreeGuidance, ClassifierGuidance, GradientGuidance, GuidanceSum,
                               Inpainting)

FAST = settings(max_examples=25, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# -- strategies ---------------------------------------------------------------------------------
REALS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 30, 10 ** 30),
                  st.sampled_from([0, 0.0, -0.0, 1e-300, 5e-324, 1e300, -1.0, 0.5, 2, 20.0]))
NOT_REALS = st.one_of(st.booleans(), st.none(), st.text(max_size=4), st.lists(st.floats(), max_size=2),
                      st.just(torch.tensor(1.0)), st.just(1 + 2j), st.just({"a": 1}))
ANY_NUMBER = st.one_of(REALS, NOT_REALS)


def _tensor_dtypes():
    return st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64,
                            torch.float16, torch.bfloat16])


def _typo(word: str):
    """Strategies for a one-edit misspelling of word (deletion, insertion, swap, substitution)."""
    letters = st.sampled_from("abcdefghijklmnopqrstuvwxyz_")
    i = st.integers(0, max(0, len(word) - 1))
    return st.one_of(
        i.map(lambda k: word[:k] + word[k + 1:]),
        st.tuples(i, letters).map(lambda a: word[:a[0]] + a[1] + word[a[0]:]),
        st.tuples(i, letters).map(lambda a: word[:a[0]] + a[1] + word[a[0] + 1:]),
    ).filter(lambda w: w != word and w)


def _assert_names(err: BaseException, *names: str) -> None:
    msg = str(err)
    assert "\n" not in msg.strip() or "Traceback" not in msg, msg
    assert any(n in msg for n in names), f"message does not name any of {names}: {msg}"


def _finite(x) -> bool:
    return bool(torch.isfinite(torch.as_tensor(x)).all())


# -- SDE constructors ---------------------------------------------------------------------------
SDE_PARAMS = [("vp", "beta_min"), ("vp", "beta_max"), ("vp", "N"), ("subvp", "beta_max"),
              ("subvp", "beta_min"), ("ve", "sigma_min"), ("ve", "sigma_max"), ("ve", "N"),
              ("cosine", "s"), ("cosine", "T"), ("learned", "gamma_min"), ("learned", "gamma_max"),
              ("learned", "n_features")]


def _sde_is_sound(sde) -> None:
    """An accepted SDE gives finite float32 kernel moments, drift and diffusion on (0, T]."""
    t = torch.tensor([1e-5, 0.5 * sde.T, sde.T], dtype=torch.float32)
    x = torch.linspace(-3, 3, 6, dtype=torch.float32).reshape(3, 2)
    mean, std = sde.marginal_prob(x, t)
    drift, diffusion = sde.sde(x, t)
    for v in (mean, std, drift, diffusion):
        assert _finite(v) and v.dtype == torch.float32
    assert bool((std >= 0).all())
    z = sde.prior_sampling((3, 2), generator=torch.Generator().manual_seed(0))
    assert _finite(z) and _finite(sde.prior_logp(z))


def _check_sde_param(name, param, value):
    kwargs = {"n_features": 8} if name == "learned" and param != "n_features" else {}
    if name == "learned" and param == "n_features" and isinstance(value, int) and value > 64:
        value = 64  # a valid huge width is only slow
    try:
        sde = get_sde(name, **kwargs, **{param: value})
    except (ValueError, TypeError) as err:
        _assert_names(err, param)
        return
    _sde_is_sound(sde)


@FAST
@given(case=st.sampled_from(SDE_PARAMS), value=ANY_NUMBER)
def test_sde_constructor_rejects_or_works(case, value):
    _check_sde_param(*case, value)


@FAST
@given(case=st.sampled_from(SDE_PARAMS), value=NOT_REALS)
def test_sde_constructor_refuses_non_numbers_without_coercion(case, value):
    """A bool, a string such as "20", None, a list or a tensor is a TypeError, never converted."""
    name, param = case
    with pytest.raises(TypeError, match=param):
        get_sde(name, **{param: value})


@pytest.mark.slow
@SLOW
@given(case=st.sampled_from(SDE_PARAMS), value=ANY_NUMBER)
def test_sde_constructor_rejects_or_works_many(case, value):
    _check_sde_param(*case, value)


@FAST
@given(data=st.data())
def test_get_sde_unknown_name_or_argument_suggests(data):
    name = data.draw(st.sampled_from(["vp", "subvp", "ve", "cosine"]))
    typo = data.draw(_typo(name))
    if typo not in list_sdes():
        with pytest.raises(ValueError, match="unknown SDE") as err:
            get_sde(typo)
        assert repr(typo) in str(err.value)
    param = data.draw(st.sampled_from({"vp": ["beta_min", "beta_max"], "subvp": ["beta_max"],
                                       "ve": ["sigma_min", "sigma_max"], "cosine": ["s"]}[name]))
    bad = data.draw(_typo(param))
    if bad not in ("beta_min", "beta_max", "sigma_min", "sigma_max", "s", "N", "T"):
        with pytest.raises(TypeError, match=f"takes no argument {bad!r}"):
            get_sde(name, **{bad: 1.0})


@pytest.mark.parametrize("name", [None, 3, ["vp"], b"vp"])
def test_get_sde_name_must_be_a_string(name):
    with pytest.raises(TypeError, match="SDE name"):
        get_sde(name)


# -- SDE methods: t and x ---------------------------------------------------------------------
@FAST
@given(t=st.one_of(ANY_NUMBER, st.lists(REALS, min_size=3, max_size=3)), dtype=_tensor_dtypes())
def test_sde_methods_validate_t_and_x(t, dtype):
    sde = VPSDE()
    x = torch.zeros(3, 2)
    try:
        mean, std = sde.marginal_prob(x, t)
    except (ValueError, TypeError) as err:
        _assert_names(err, "t")
    else:
        assert _finite(mean) and _finite(std)
    x_bad = torch.zeros(3, 2).to(dtype)
    try:
        mean, _ = sde.marginal_prob(x_bad, 0.5)
    except (ValueError, TypeError) as err:
        _assert_names(err, "x0")
    else:  # only half precision is accepted here (training under autocast)
        assert dtype in (torch.float16, torch.bfloat16) and _finite(mean)


@pytest.mark.parametrize("call", ["marginal_prob", "sde", "discretize"])
@pytest.mark.parametrize("x, match", [
    ("abc", "must be a torch.Tensor"), (None, "must be a torch.Tensor"),
    (torch.zeros(3, 2, device="meta"), "meta"), (torch.zeros(3, 2, dtype=torch.complex64), "dtype")])
def test_sde_methods_reject_bad_x(call, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(VPSDE(), call)(x, torch.full((3,), 0.5))


@pytest.mark.parametrize("t, exc, match", [
    (torch.full((3,), 0.5, device="meta"), ValueError, "meta"),
    (torch.ones(3, dtype=torch.long), TypeError, "floating-point"),
    (torch.full((3,), 0.5, dtype=torch.complex64), TypeError, "floating-point"),
    (True, TypeError, "t must be"), ("0.5", TypeError, "t must be"),
    (torch.full((3,), float("nan")), ValueError, "t=nan"), (torch.zeros(3), ValueError, "outside"),
    (torch.full((2,), 0.5), ValueError, "batch size"), (torch.full((3, 1), 0.5), ValueError, "1-D")])
def test_sde_methods_reject_bad_t(t, exc, match):
    with pytest.raises(exc, match=match):
        VPSDE().marginal_prob(torch.zeros(3, 2), t)


@pytest.mark.parametrize("shape", ["ab", None, 3, (0, 2), (-1, 2), (2.5, 2), (True, 2), ()])
def test_prior_sampling_rejects_bad_shapes(shape):
    with pytest.raises((ValueError, TypeError), match="shape"):
        VPSDE().prior_sampling(shape)


@pytest.mark.parametrize("z, match", [(torch.full((2, 2), float("nan")), "NaN"), (torch.zeros(3), "batch"),
                                      ("z", "torch.Tensor"), (torch.zeros(2, 2, dtype=torch.long), "dtype")])
def test_prior_logp_rejects_bad_z(z, match):
    with pytest.raises((ValueError, TypeError), match=match):
        VPSDE().prior_logp(z)


def test_reverse_needs_a_callable_score():
    with pytest.raises(TypeError, match="score_fn must be a callable"):
        VPSDE().reverse(3)


# -- sample -------------------------------------------------------------------------------------
def _score(x, t):
    return -x


# the smallest valid call of every built-in method (a few steps, or a coarse tolerance)
BASE = {m: {"steps": 3} for m in list_samplers()}
BASE["ode"] = {"steps": 3, "solver": "rk4"}
BASE["annealed_langevin"] = {"steps": 2, "n_steps_each": 2}

SAMPLE_ARGS = {
    "steps": st.one_of(st.integers(-3, 6), NOT_REALS, st.floats(allow_nan=True)),
    "eps": ANY_NUMBER,
    "shape": st.one_of(st.lists(st.integers(-2, 3), max_size=3).map(tuple), NOT_REALS,
                       st.just((2.0, 2)), st.just((True, 2))),
    "generator": st.one_of(st.integers(), st.text(max_size=3), st.none(), st.just(torch.Generator())),
    "x_T": st.one_of(
        _tensor_dtypes().map(lambda d: torch.zeros(3, 2).to(d)),
        st.sampled_from([torch.zeros(0, 2), torch.zeros(3), torch.zeros(4, 2), torch.zeros(3, 2, device="meta"),
                         torch.full((3, 2), float("nan")), torch.full((3, 2), float("inf")), torch.zeros(3, 0)]),
        NOT_REALS, st.just(torch.zeros(3, 2)), st.just(torch.zeros(3, 2, dtype=torch.float64))),
    "method": st.one_of(st.sampled_from(list_samplers()).flatmap(_typo), NOT_REALS),
    "guidance": st.sampled_from([
        lambda x, t: x[:, :1], lambda x, t: x * float("nan"), lambda x, t: [1.0], lambda x, t: None,
        lambda x, t: torch.zeros_like(x, dtype=torch.long), lambda x, t: torch.zeros_like(x), "abc", 3,
        [lambda x, t: torch.zeros_like(x), "x"]]),
    "denoise": NOT_REALS.filter(lambda v: not isinstance(v, bool)),
}
OPTION_NAMES = ["schedule", "solver", "predictor", "snr", "rho", "n_corrector", "step_rule", "rtol"]


def _check_sample(method, param, value):
    kwargs = {"shape": (3, 2), "method": method, **BASE.get(method, {"steps": 3})}
    kwargs[param] = value
    if param == "x_T" and torch.is_tensor(value) and kwargs.get("shape") is not None:
        kwargs["shape"] = None
    if param == "method":
        kwargs = {"shape": (3, 2), "method": value, "steps": 3}
    try:
        x = sample(_score, VPSDE(), **kwargs)
    except (ValueError, TypeError) as err:
        names = {"steps": ["steps", "fixed-step"], "x_T": ["x_T"], "guidance": ["guidance", "Guidance"],
                 "method": ["sampler", "method"]}.get(param, [param])
        _assert_names(err, *names)
        return
    assert _finite(x) and x.shape == (kwargs["x_T"].shape if kwargs.get("x_T") is not None else kwargs["shape"])


@FAST
@given(method=st.sampled_from(list_samplers()), data=st.data())
def test_sample_rejects_or_works(method, data):
    param = data.draw(st.sampled_from(sorted(SAMPLE_ARGS)))
    if method in ("torchsde", "ode", "pc") and param == "guidance":
        method = "ddim"  # cheaper; guidance is checked identically for every method
    _check_sample(method, param, data.draw(SAMPLE_ARGS[param]))


@pytest.mark.slow
@SLOW
@given(method=st.sampled_from(list_samplers()), data=st.data())
def test_sample_rejects_or_works_many(method, data):
    param = data.draw(st.sampled_from(sorted(SAMPLE_ARGS)))
    _check_sample(method, param, data.draw(SAMPLE_ARGS[param]))


@FAST
@given(method=st.sampled_from(list_samplers()), data=st.data())
def test_sample_unknown_method_option_suggests_the_closest(method, data):
    option = data.draw(st.sampled_from(OPTION_NAMES).flatmap(_typo))
    fn = scoresde.sampling.METHODS.get(method)
    import inspect
    if option in inspect.signature(fn).parameters:
        return
    with pytest.raises(TypeError, match=f"sampler {method!r} takes no argument {option!r}"):
        sample(_score, VPSDE(), (2, 2), method=method, steps=2, **{option: 1})


@pytest.mark.parametrize("score, sde, match", [(None, VPSDE(), "score_fn"), (_score, None, "sde"),
                                               (_score, "vp", "sde"), ("f", VPSDE(), "score_fn")])
def test_sample_checks_score_and_sde_types(score, sde, match):
    with pytest.raises(TypeError, match=match):
        sample(score, sde, (2, 2), method="ddim", steps=2)


def test_sample_score_with_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match=r"score_fn returned \(2, 1\)"):
        sample(lambda x, t: x[:, :1], VPSDE(), (2, 2), method="ddim", steps=2)
    with pytest.raises(TypeError, match="score_fn returned dtype torch.int64"):
        sample(lambda x, t: x.long(), VPSDE(), (2, 2), method="ddim", steps=2)


GUIDANCE_CASES = [
    (lambda: ClassifierGuidance(3, 0), TypeError, "classifier"),
    (lambda: ClassifierGuidance(lambda x, t: x, 0.5), TypeError, "y must be"),
    (lambda: ClassifierGuidance(lambda x, t: x, "cat"), TypeError, "y must be"),
    (lambda: ClassifierFreeGuidance("f", 1.0), TypeError, "cond_score_fn"),
    (lambda: GradientGuidance(None), TypeError, "grad_fn"),
    (lambda: GuidanceSum(GradientGuidance(_score), "x"), TypeError, "Guidance terms"),
    (lambda: Inpainting([1.0], torch.ones(1, 2), VPSDE()), TypeError, "known"),
    (lambda: Inpainting(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2), VPSDE()), TypeError, "known"),
    (lambda: Inpainting(torch.full((2, 2), float("nan")), torch.ones(2, 2), VPSDE()), ValueError, "known"),
    (lambda: Inpainting(torch.zeros(2, 2), "mask", VPSDE()), TypeError, "mask"),
    (lambda: Inpainting(torch.zeros(2, 2), torch.ones(3, 3), VPSDE()), ValueError, "mask"),
    (lambda: Inpainting(torch.zeros(2, 2), torch.full((2, 2), 0.5), VPSDE()), ValueError, "mask"),
]


@pytest.mark.parametrize("make, exc, match", GUIDANCE_CASES)
def test_guidance_constructors_check_their_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@FAST
@given(scale=ANY_NUMBER, kind=st.sampled_from(["classifier", "free", "gradient"]))
def test_guidance_scale_rejects_or_works(scale, kind):
    try:
        term = {"classifier": lambda: ClassifierGuidance(lambda x, t: x, 0, scale),
                "free": lambda: ClassifierFreeGuidance(_score, scale),
                "gradient": lambda: GradientGuidance(lambda x, t: -x, scale)}[kind]()
    except (ValueError, TypeError) as err:
        _assert_names(err, "scale")
        return
    try:
        x = sample(_score, VPSDE(), (2, 2), method="ddim", steps=2, guidance=term)
    except ValueError as err:  # a huge finite scale overflows: reported with its time, not returned
        assert "non-finite" in str(err) and "t=" in str(err), str(err)
        return
    assert _finite(x)


# -- non-finite detection in sampling ---------------------------------------------------------
T_BAD = 0.5
# fixed-step grids from T = 1 to eps (20 steps, so that several lie below T_BAD); ode with an
# adaptive solver too
NONFINITE_CASES = [(m, {**BASE[m], "steps": 20}) for m in list_samplers()] + [("ode", {"rtol": 1e-2, "atol": 1e-2})]
NONFINITE_CASES = [(m, {**kw, "steps": 4, "n_steps_each": 20} if m == "annealed_langevin" else kw)
                   for m, kw in NONFINITE_CASES]


def _time_in(msg: str) -> float:
    return float(msg.split(" t=")[1].split(" ")[0])


@pytest.mark.parametrize("method, kwargs", NONFINITE_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(NONFINITE_CASES)])
def test_sampling_names_time_and_sample_where_the_score_turns_nan(method, kwargs):
    """Only sample 1's score is NaN, and only below T_BAD: the error names sample 1 and a time below T_BAD."""
    def score(x, t):
        s = -x.clone()
        s[1] = torch.where(t[1] < T_BAD, float("nan"), 1.0) * s[1]
        return s

    with pytest.raises(ValueError, match=r"score_fn returned non-finite values \(NaN or inf\) at t=") as err:
        sample(score, VPSDE(), (3, 2), method=method, generator=torch.Generator().manual_seed(0),
               **kwargs)
    msg = str(err.value)
    assert "samples [1]" in msg, msg
    assert 0 < _time_in(msg) < T_BAD, msg


@pytest.mark.parametrize("method, kwargs", NONFINITE_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(NONFINITE_CASES)])
def test_sampling_names_time_where_the_state_overflows(method, kwargs):
    """Sample 1's score is finite but 3e38 below T_BAD, so its state overflows float32: the next
    evaluation reports that sample 1 became non-finite, and before which time."""
    def score(x, t):
        s = -x.clone()
        s[1] = torch.where(t[1] < T_BAD, 3e38, -x[1, 0])
        return s

    with pytest.raises(ValueError, match="the samples became non-finite") as err:
        sample(score, VPSDE(), (3, 2), method=method, generator=torch.Generator().manual_seed(0), **kwargs)
    msg = str(err.value)
    assert "samples [1]" in msg, msg
    assert 0 < _time_in(msg) < T_BAD, msg


def test_sampling_rejects_half_precision_and_reports_x_T_samples():
    with pytest.raises(TypeError, match="x_T has dtype torch.float16"):
        sample(_score, VESDE(sigma_max=378.0), x_T=torch.zeros(2, 2, dtype=torch.float16), method="ddim", steps=2)
    x_T = torch.zeros(3, 2)
    x_T[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"x_T contains non-finite values .* samples \[2\]"):
        sample(_score, VPSDE(), x_T=x_T, method="ddim", steps=2)


# -- likelihood ---------------------------------------------------------------------------------
LIKELIHOOD_ARGS = {
    "eps": ANY_NUMBER, "rtol": ANY_NUMBER, "atol": ANY_NUMBER,
    "method": st.one_of(st.sampled_from(["rk4", "euler", "dopri", None, 3]), st.text(max_size=5)),
    "trace": st.one_of(_typo("exact"), _typo("hutchinson"), NOT_REALS),
    "probes": st.one_of(_typo("rademacher"), _typo("gaussian"), NOT_REALS),
    "n_probes": st.one_of(st.integers(-3, 2), NOT_REALS, st.floats(allow_nan=True)),
    "generator": st.one_of(st.integers(), st.text(max_size=3)),
    "x": st.one_of(
        _tensor_dtypes().map(lambda d: torch.zeros(2, 2).to(d)),
        st.sampled_from([torch.zeros(0, 2), torch.zeros(3), torch.zeros(2, 2, device="meta"),
                         torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.full((2, 2), float("-inf"))]),
        NOT_REALS, st.just(torch.zeros(2, 2))),
}


def _check_likelihood(param, value):
    kwargs = {"rtol": 1e-2, "atol": 1e-2}
    if param in ("probes", "n_probes", "generator"):
        kwargs["trace"] = "hutchinson"
    x = torch.zeros(2, 2)
    if param == "x":
        x = value
    else:
        kwargs[param] = value
    if param in ("rtol", "atol") and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and 0 < value < 1e-4:
        return  # valid and merely slow
    try:
        res = log_likelihood(_score, VPSDE(), x, **kwargs)
    except (ValueError, TypeError) as err:
        _assert_names(err, param)
        return
    assert _finite(res.log_p) and res.log_p.shape == (x.shape[0],)


@FAST
@given(data=st.data())
def test_log_likelihood_rejects_or_works(data):
    param = data.draw(st.sampled_from(sorted(LIKELIHOOD_ARGS)))
    _check_likelihood(param, data.draw(LIKELIHOOD_ARGS[param]))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_log_likelihood_rejects_or_works_many(data):
    param = data.draw(st.sampled_from(sorted(LIKELIHOOD_ARGS)))
    _check_likelihood(param, data.draw(LIKELIHOOD_ARGS[param]))


@pytest.mark.parametrize("score, match", [(None, "score_fn"), (lambda x, t: x[:, :1], "shaped like x"),
                                          (lambda x, t: [1.0], "shaped like x")])
def test_log_likelihood_bad_score(score, match):
    with pytest.raises((ValueError, TypeError), match=match):
        log_likelihood(score, VPSDE(), torch.zeros(2, 2))


def test_log_likelihood_names_the_time_where_the_drift_turns_nan():
    """The score is NaN above t = 0.5 (independently of x, so the exact trace stays finite below)."""
    def score(x, t):
        return -x + torch.where(t > T_BAD, float("nan"), 0.0).to(x.dtype)[:, None]

    with pytest.raises(FloatingPointError, match="not finite at t=") as err:
        log_likelihood(score, VPSDE(), torch.zeros(2, 2), rtol=1e-3, atol=1e-3)
    assert T_BAD < _time_in(str(err.value)) <= 1.0


def test_log_likelihood_of_far_out_data():
    """score = -x is the exact score of N(0, I) under VP (its marginals stay N(0, I)), so log p(x) =
    -|x|^2/2 - log 2 pi: -1e40 here, below float32's range: refused in float32, exact in float64."""
    x = torch.full((2, 2), 1e20)
    with pytest.raises(ValueError, match="pass float64 data"):
        log_likelihood(_score, VPSDE(), x, rtol=1e-3, atol=1e-3)
    res = log_likelihood(_score, VPSDE(), x.double(), rtol=1e-3, atol=1e-3)
    assert torch.allclose(res.log_p, torch.full((2,), -1e40 - math.log(2 * math.pi), dtype=torch.float64), rtol=1e-6)
    # a score that is wrong for VE lets the state overflow: the error names a time inside (0, T]
    with pytest.raises(FloatingPointError, match="not finite at t=") as err:
        log_likelihood(_score, VESDE(sigma_max=1e4), torch.full((2, 2), 1e30), rtol=1e-3, atol=1e-3)
    assert 0 < _time_in(str(err.value)) <= 1.0


@pytest.mark.parametrize("scale", [1e20, 1e36])
def test_log_likelihood_huge_score_under_an_adaptive_solver_is_a_clear_error(scale):
    """torchdiffeq's dopri5 asserts "underflow in dt 0.0" when the step size shrinks to nothing."""
    with pytest.raises(FloatingPointError, match=r"dopri5 solver's step size underflowed to 0: .*score_fn's scale"):
        log_likelihood(lambda x, t: -scale * x, VPSDE(), torch.ones(2, 2), rtol=1e-3, atol=1e-3)


BPD_ARGS = {
    "levels": st.one_of(st.integers(-2, 3), NOT_REALS, st.floats(allow_nan=True)),
    "data_range": st.one_of(st.tuples(REALS, REALS), NOT_REALS, st.just((0.0, 1.0, 2.0))),
    "n_draws": st.one_of(st.integers(-2, 2), NOT_REALS),
    "dtype": st.sampled_from([torch.int64, torch.float16, torch.complex64, "float32", None, torch.float64]),
    "v": st.sampled_from([torch.zeros(2, 2), torch.zeros(0, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.bool),
                          torch.full((2, 2), 7), torch.full((2, 2), -1), torch.zeros(2, dtype=torch.long), "v",
                          torch.ones(2, 2, dtype=torch.long)]),
    "generator": st.sampled_from([1, "seed"]),
    "unknown": _typo("rtol").filter(lambda k: k not in ("rtol", "atol")),
}


@FAST
@given(data=st.data())
def test_bits_per_dim_rejects_or_works(data):
    param = data.draw(st.sampled_from(sorted(BPD_ARGS)))
    value = data.draw(BPD_ARGS[param])
    kwargs = {"levels": 4, "rtol": 1e-2, "atol": 1e-2}
    v = torch.zeros(2, 2, dtype=torch.long)
    if param == "v":
        v = value
    elif param == "unknown":
        kwargs[value] = 1e-3
    else:
        kwargs[param] = value
    try:
        res = bits_per_dim(_score, VPSDE(), v, **kwargs)
    except (ValueError, TypeError) as err:
        _assert_names(err, value if param == "unknown" else param, "levels")
        return
    assert _finite(res.bpd)


# -- config -------------------------------------------------------------------------------------
def _leaf_keys():
    cfg = Config()
    keys = []
    for section in ("data", "sde", "model", "train", "sample", "eval"):
        sub = getattr(cfg, section)
        keys += [f"{section}.{f}" for f in vars(sub) if f not in ("params", "name")]
    return keys


LEAVES = _leaf_keys()
CONFIG_VALUES = st.one_of(st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=True, allow_infinity=True),
                          st.booleans(), st.text(alphabet="abc xyz", max_size=4),
                          st.sampled_from(["[1, 2]", "{a = 1}", "nan", "-inf", "1e999", "\"\"", "0", "-1"]))


@FAST
@given(key=st.sampled_from(LEAVES), value=CONFIG_VALUES)
def test_config_override_rejects_or_validates(key, value):
    text = value if isinstance(value, str) else ("true" if value is True else "false" if value is False
                                                 else repr(value).replace("inf", "inf"))
    try:
        cfg = load_config(None, [f"{key}={text}"])
    except ConfigError as err:
        _assert_names(err, key, key.split(".")[0])
        return
    assert isinstance(cfg, Config)


@FAST
@given(key=st.sampled_from(LEAVES).flatmap(
    lambda k: st.tuples(st.just(k.split(".")[0]), _typo(k.split(".")[1]))))
def test_config_unknown_key_suggests_the_closest(key):
    section, leaf = key
    cfg = Config()
    fields = set(vars(getattr(cfg, section)))
    if leaf in fields:
        return
    try:
        load_config(None, [f"{section}.{leaf}=1"])
    except ConfigError as err:
        assert repr(f"{section}.{leaf}") in str(err) or leaf in str(err), str(err)
        if section not in ("sde", "model"):  # [sde]/[model] keys may be constructor arguments
            assert "unknown config key" in str(err)
        return
    assert section in ("sde", "model")  # a constructor argument of the SDE / network that exists


@pytest.mark.parametrize("override, match", [
    ("trian.steps=3", "did you mean 'train'"), ("train.stepz=3", "did you mean 'steps'"),
    ("sde.betamax=3", "did you mean 'beta_max'"), ("sde.beta_max=-1", "beta_max=-1"),
    ("sde.beta_max=abc", "sde.beta_max"), ("sde.N=0", "N=0"), ("sde.name=cosine", None),
    ("model.hidden=abc", "model.hidden"), ("sample.eps=1e-300", "sample.eps"), ("train.lr=nan", "train.lr")])
def test_config_constructor_arguments_are_checked(override, match):
    if match is None:
        assert load_config(None, [override]).sde.name == "cosine"
        with pytest.raises(ConfigError, match="sample.eps"):  # eps must lie below the cosine T = 0.9946
            load_config(None, [override, "sample.eps=0.999"])
        return
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@FAST
@given(text=st.text(max_size=40))
def test_config_file_with_random_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert str(path) in str(err) or "config key" in str(err) or "=" in str(err), str(err)
        return
    assert isinstance(cfg, Config)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe[train]")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)
    bad.write_text("[trian]\nsteps = 3")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(bad)
    with pytest.raises(TypeError, match="path"):
        load_config(3)
    with pytest.raises(TypeError, match="overrides"):
        load_config(None, "train.steps=3")
    with pytest.raises(TypeError, match="override"):
        load_config(None, [3])
    with pytest.raises(TypeError, match="Config"):
        apply_overrides("cfg", ["train.steps=3"])
    with pytest.raises(TypeError, match="Config"):
        validate(None)


# -- data loaders -------------------------------------------------------------------------------
def test_data_loaders_check_paths(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("hello")
    for name in ("mnist", "image_folder"):
        with pytest.raises(FileNotFoundError, match="is a file, not a directory"):
            load_dataset(name, str(afile))
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_dataset(name, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="neither a directory nor a CIFAR-10 tar archive"):
        load_dataset("cifar10", str(afile))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="a.png is not a readable PNG"):
        load_dataset("image_folder", str(tmp_path / "imgs"))
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("mnist", None)
    for kwargs, match in [({"name": None}, "data set name"), ({"name": "mnist", "root": 3}, "root"),
                          ({"name": "ring8", "split": None}, "split"),
                          ({"name": "image_folder", "root": str(tmp_path), "channels": True}, "channels")]:
        with pytest.raises(TypeError, match=match):
            load_dataset(**kwargs)
    with pytest.raises(ValueError, match="did you mean 'ring8'"):
        load_dataset("ring9")


# -- metrics and the analytic mixture -----------------------------------------------------------
POINTS = st.one_of(
    st.sampled_from([torch.zeros(0, 2), torch.zeros(1, 2), torch.tensor(1.0), torch.randn(4, 3),
                     torch.full((4, 2), float("nan")), torch.zeros(4, 2, dtype=torch.complex64),
                     [[1.0, 2.0], [3.0]], "ab", None]),
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=2),
             min_size=2, max_size=5))


@FAST
@given(x=POINTS, metric=st.sampled_from([sliced_wasserstein, mmd, frechet_distance]))
def test_metrics_reject_or_work(x, metric):
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    try:
        d = metric(x, y)
    except (ValueError, TypeError) as err:
        _assert_names(err, "x", "feat_x")
        return
    assert math.isfinite(d)


@FAST
@given(means=st.one_of(st.lists(st.lists(REALS, min_size=2, max_size=2), min_size=1, max_size=2), NOT_REALS),
       stds=ANY_NUMBER, weights=st.one_of(st.none(), st.lists(REALS, min_size=1, max_size=2)))
def test_gaussian_mixture_rejects_or_works(means, stds, weights):
    try:
        gm = GaussianMixture(means, stds, weights)
    except (ValueError, TypeError) as err:
        _assert_names(err, "means", "stds", "weights")
        return
    x, _ = gm.sample(3, generator=torch.Generator().manual_seed(0))
    assert _finite(x)


# -- CLIs (subprocesses: ~2 s of imports each, so few) -------------------------------------------
def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", f"scoresde.{module}", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert all(n in last for n in needles), proc.stderr


def test_cli_sample_bad_flag_and_missing_checkpoint(tmp_path):
    proc = _cli("sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png"), "--bogus")
    assert proc.returncode == 2
    _one_line_error(proc, "unrecognized arguments: --bogus")
    proc = _cli("sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    _one_line_error(proc, "error:", "nope")


def test_cli_evaluate_invalid_checkpoint(tmp_path):
    bad = tmp_path / "ckpt_1.pt"
    bad.write_bytes(b"garbage")
    proc = _cli("evaluate", "--checkpoint", str(bad))
    assert proc.returncode == 2
    _one_line_error(proc, "error:", "ckpt_1.pt")


def test_cli_train_unknown_config_key(tmp_path):
    proc = _cli("train", "--run-dir", str(tmp_path / "run"), "train.stepz=3")
    _one_line_error(proc, "error:", "did you mean 'steps'")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("ckpt_*"))


# -- CLIs in-process: a table of bad inputs, each a one-line error (exit 2) or a correct result ------
TINY = ["model.hidden=16", "model.depth=2", "model.embed_dim=8", "train.batch_size=32", "train.steps=8",
        "train.ckpt_every=4", "train.keep_last=10", "train.log_every=4", "train.tensorboard=false", "train.warmup=2",
        "sample.steps=4", "sample.n=20"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A finished 8-step toy run with checkpoints at steps 4 and 8."""
    from scoresde.train import main as train_main
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_main(["--run-dir", str(run_dir), "--no-progress", *TINY])
    finally:
        torch.set_num_threads(threads)
    return run_dir


def _cli_main(module: str, args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `python -m scoresde.<module> args`, run in this process."""
    import importlib
    main = importlib.import_module(f"scoresde.{module}").main
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


CLI_CASES = [  # (module, arguments, expected exit status, text the last stderr line must hold)
    ("sample", ["--n", "1000000000000"], 2, "--n 1000000000000 is not allowed: it must be a number of samples in "
                                            "1..10000000"),
    ("sample", ["--steps", "1000000000000"], 2, "--steps 1000000000000 is not allowed: it must be in 1..10000000"),
    ("sample", ["--seed", "100000000000000000000"], 2, "--seed 100000000000000000000"),
    ("sample", ["--calibrate", "1000000000000", "--steps", "4"], 2, "--calibrate 1000000000000"),
    ("evaluate", ["--batch-size", "0"], 2, "--batch-size 0 is not allowed: it must be in 1..10000000"),
    ("evaluate", ["--n", "1000000000000"], 2, "--n 1000000000000 is not allowed"),
    ("evaluate", ["--steps", "1000000000000", "--method", "rk4"], 2, "--steps 1000000000000"),
    ("evaluate", ["--draws", "0"], 2, "--draws 0 is not allowed"),
    ("evaluate", ["--draws", "2"], 2, "--draws 2: 'ring8' is continuous data"),
    ("evaluate", ["--split", "foo"], 2, "--split 'foo': 'ring8' is drawn afresh, it has no splits"),
    ("evaluate", ["--split", "train"], 2, "--split 'train'"),
    ("evaluate", ["--device", "nonsense"], 2, "--device 'nonsense' is not a device"),
    ("evaluate", ["--seed", "-1"], 2, "--seed -1 is not allowed"),
    ("train", ["train.seed=100000000000000000000"], 2, "train.seed=100000000000000000000 is not allowed"),
    ("train", ["train.batch_size=1000000000000"], 2, "train.batch_size=1000000000000 is not allowed: it must be "
                                                     "in 1..10000000"),
    ("train", ["sample.n=1000000000000"], 2, "sample.n=1000000000000"),
    ("train", ["sample.steps=1000000000000"], 2, "sample.steps=1000000000000"),
    ("train", ["train.loss=vdm"], 2, "train.loss='vdm' needs an SDE with a learned schedule"),
    ("train", ['name="../../x"'], 2, "name='../../x' is not allowed"),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("evaluate", ["--device", "cuda"], 2, "--device cuda: CUDA is not available on this machine"))


@pytest.mark.parametrize("module, args, code, needle", CLI_CASES,
                         ids=[f"{m}-{' '.join(a)[:40]}" for m, a, _, _ in CLI_CASES])
def test_cli_bad_inputs_are_one_line_errors(toy_run, tmp_path, capsys, module, args, code, needle):
    if module == "sample":
        args = ["--checkpoint", str(toy_run), "--out", str(tmp_path / "s.png"), "--no-progress", *args]
    elif module == "evaluate":
        args = ["--checkpoint", str(toy_run), "--n", "4", "--no-progress", *args]
    else:
        args = ["--run-dir", str(tmp_path / "new"), "--no-progress", *TINY, *args]
    status, err = _cli_main(module, args, capsys)
    lines = err.strip().splitlines()
    assert status == code and lines and lines[-1].startswith("error: ") and needle in lines[-1], err
    assert not list((tmp_path / "new").glob("ckpt_*"))


def test_cli_sizes_within_the_count_bound_but_too_many_values(tmp_path, capsys):
    """10**7 samples pass the count bound, but of 16x16 images they are 2.56e9 values, over the
    2**31-value bound (8 GiB of float32): the check names the largest count that fits (8388608)."""
    from PIL import Image

    from scoresde.config import check_batch_values
    for i in range(2):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / f"{i}.png")
    args = ["--run-dir", str(tmp_path / "run"), "--no-progress", "data.name=image_folder", f"data.root={tmp_path}",
            "model.name=unet", "model.ch=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
            "model.attn_resolutions=[]", "train.batch_size=2", "sample.n=10000000"]
    status, err = _cli_main("train", args, capsys)
    assert status == 2 and "sample.n=10000000 is not allowed for samples of shape (1, 16, 16): 10000000 x 256 " \
                           "values is over 2**31 (8 GiB of float32); use at most 8388608" in err, err
    check_batch_values("--n", 10 ** 7, (2,))  # 2-D points: 2e7 values fit


def test_cli_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    status, err = _cli_main("train", ["--run-dir", str(tmp_path / "f"), "--no-progress", *TINY], capsys)
    assert status == 2 and "f is a file, not a directory" in err
    assert (tmp_path / "f").read_text() == "x"


def test_cli_sample_out_without_png_suffix_reports_the_file_it_wrote(toy_run, tmp_path, capsys):
    out = tmp_path / "figs"
    out.mkdir()  # --out names an existing directory: the figure goes beside it, as figs.png
    capsys.readouterr()
    written = scoresde.sample.main(["--checkpoint", str(toy_run), "--out", str(out), "--n", "8", "--steps", "3",
                                    "--no-progress"])
    assert written == tmp_path / "figs.png" and written.is_file() and (tmp_path / "figs.npz").is_file()
    assert f"wrote {tmp_path / 'figs.png'} and {tmp_path / 'figs.npz'}" in capsys.readouterr().out


def _copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.parametrize("module", ["sample", "evaluate", "train"])
def test_cli_damaged_newest_checkpoint_falls_back_everywhere(toy_run, tmp_path, capsys, module):
    """A valid checksum over weights with a NaN in them: each CLI skips it with a warning naming it."""
    from scoresde.checkpoint import CheckpointWarning, load_checkpoint, save_checkpoint
    run_dir = _copy_run(toy_run, tmp_path / "run")
    state = load_checkpoint(run_dir / "ckpt_00000008.pt")
    next(iter(state["ema"]["module"].values())).view(-1)[0] = float("nan")
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    save_checkpoint(state, run_dir, 8)
    args = {"sample": ["--checkpoint", str(run_dir), "--out", str(tmp_path / "s.png"), "--n", "4", "--steps", "3"],
            "evaluate": ["--checkpoint", str(run_dir), "--n", "4", "--method", "rk4", "--steps", "3"],
            "train": ["--resume", str(run_dir), "train.steps=10"]}[module]
    with pytest.warns(CheckpointWarning, match=r"skipping checkpoint .*ckpt_00000008\.pt: .*weights are not finite"
                                               r".*previous one, ckpt_00000004\.pt"):
        status, err = _cli_main(module, [*args, "--no-progress"], capsys)
    assert status == 0, err
    if module == "train":  # continued from step 4; the NaN checkpoint was set aside, not deleted
        assert (run_dir / "superseded" / "ckpt_00000008.pt").is_file()
        assert load_checkpoint(run_dir)["step"] == 10
    # named explicitly, the bad file is an error, not a traceback
    explicit = {"sample": "--checkpoint", "evaluate": "--checkpoint", "train": "--resume"}[module]
    target = run_dir / ("superseded" if module == "train" else "") / "ckpt_00000008.pt"
    status, err = _cli_main(module, [explicit, str(target), *args[2:], "--no-progress"], capsys)
    assert status == 2 and "weights are not finite" in err and "Traceback" not in err


def test_cli_checkpoint_without_config_or_model_key(tmp_path, capsys):
    from scoresde.checkpoint import save_checkpoint
    for key in ("config", "model"):
        state = {"format": "scoresde-train-1", "step": 1, "config": {}, "model": {}, "ema": {"module": {}}}
        del state[key]
        path = save_checkpoint(state, tmp_path / key, 1)
        status, err = _cli_main("evaluate", ["--checkpoint", str(path), "--no-progress"], capsys)
        assert status == 2 and f"has no '{key}'" in err, err


def test_cli_train_lr_1e30_is_a_clear_error_after_training(tmp_path, capsys):
    """Fewer bad steps than train.max_bad_steps: training ends, then the evaluation cannot sample."""
    status, err = _cli_main("train", ["--run-dir", str(tmp_path / "run"), "--no-progress", *TINY, "train.lr=1e30"],
                            capsys)
    assert status == 1 and "Traceback" not in err, err
    assert "training reached step 8 and its checkpoint is saved in" in err and "end-of-run evaluation failed" in err


@pytest.mark.parametrize("errno_, where", [(28, "fsync"), (30, "lock")], ids=["disk full", "read-only"])
def test_cli_train_disk_full_or_read_only_is_a_clear_error_and_loses_nothing(toy_run, tmp_path, capsys,
                                                                            monkeypatch, errno_, where):
    import errno as errno_module
    from scoresde.checkpoint import list_checkpoints, load_checkpoint
    run_dir = _copy_run(toy_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name.startswith("ckpt_")}
    text = os.strerror(errno_)
    if where == "fsync":  # the first checkpoint of the continued run finds the disk full
        real = os.fsync

        def fsync(fd):
            if os.fstat(fd).st_size > 1000:
                raise OSError(errno_, text)
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:  # a read-only directory: even its lock file cannot be opened for writing
        real_open = os.open

        def ro_open(path, flags, *a):
            if str(path).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY):
                raise OSError(errno_module.EROFS, text, str(path))
            return real_open(path, flags, *a)

        monkeypatch.setattr(os, "open", ro_open)
    status, err = _cli_main("train", ["--resume", str(run_dir), "--no-progress", "train.steps=12"], capsys)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert status == 1 and lines[-1].startswith(f"error: {text}") and "--resume continues" in lines[-1], err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name.startswith("ckpt_")} == before
    assert [s for s, _ in list_checkpoints(run_dir)] == [4, 8] and load_checkpoint(run_dir)["step"] == 8


@FAST
@given(flag=st.sampled_from(["--n", "--steps", "--seed", "--eps", "--guidance-scale", "--calibrate"]),
       value=st.one_of(st.integers(-10 ** 20, 10 ** 20), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(["abc", "", "1e999", "-0", "0x10"])))
def test_cli_sample_flags_fuzzed(toy_run, tmp_path_factory, capsys, flag, value):
    """Any value of a numeric flag: argparse's usage error, a one-line error, or samples (exit 0)."""
    out = tmp_path_factory.mktemp("fuzz") / "s.png"
    extra = ["--class", "0"] if flag == "--guidance-scale" else []
    args = ["--checkpoint", str(toy_run), "--out", str(out), "--n", "3", "--steps", "2", "--no-progress", *extra,
            flag, str(value)]
    status, err = _cli_main("sample", args, capsys)
    assert "Traceback" not in err
    if status == 0:
        assert out.is_file()
    else:
        last = err.strip().splitlines()[-1]
        assert status == 2 and ("error:" in last) and (flag in last or "--" in last or "eps" in last), err


def test_cli_resume_of_a_checkpoint_missing_its_optimizer_state(toy_run, tmp_path, capsys):
    """A valid checksum and finite weights, but no optimizer state: --resume says what is missing."""
    from scoresde.checkpoint import load_checkpoint, save_checkpoint
    state = load_checkpoint(toy_run / "ckpt_00000008.pt")
    del state["optimizer"]
    path = save_checkpoint(state, tmp_path / "run", 8)
    status, err = _cli_main("train", ["--resume", str(path), "--no-progress", "train.steps=10"], capsys)
    assert status == 2 and "cannot be resumed: it has no optimizer in it" in err and "Traceback" not in err, err


def test_cli_evaluate_huge_score_is_a_clear_error(toy_run, tmp_path, capsys):
    """Finite but huge weights: dopri5's step size underflows; evaluate exits 1 with one line."""
    from scoresde.checkpoint import load_checkpoint, save_checkpoint
    state = load_checkpoint(toy_run / "ckpt_00000008.pt")
    module = state["ema"]["module"]
    last = [k for k in module if k.endswith("weight")][-1]
    module[last] = module[last] * 1e30
    path = save_checkpoint(state, tmp_path / "run", 8)
    status, err = _cli_main("evaluate", ["--checkpoint", str(path), "--n", "2", "--no-progress"], capsys)
    last = err.strip().splitlines()[-1]
    assert status == 1 and "Traceback" not in err, err
    assert last.startswith("error: the dopri5 solver's step size underflowed to 0") or "not finite" in last, err
