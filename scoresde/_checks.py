"""Validators for the public boundaries: `sample`, `log_likelihood`, `calibrate_schedule`, the
constructors and the config.

Each one returns the value in the type the code uses, or raises a TypeError (wrong kind of value)
or ValueError (right kind, wrong value) whose message names the parameter and what is allowed.
They run once where input enters; inner loops trust what was checked there.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers

import torch

# Smallest start/end time eps of sampling and likelihood: float32 times below ~1e-6 are too coarse
# for sigma(t) near 0 (and eps = 1e-300 rounds to t = 0 in float32).
MIN_EPS = 1e-6


def check_real(name: str, value) -> float:
    """Return value as a float if it is a real number (int, float or numpy scalar; not a bool, a
    string or a tensor: no silent conversion), else raise TypeError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {value!r} "
                        f"of type {type(value).__name__}")
    return float(value)


def check_positive_finite(name: str, value, allow_zero: bool = False) -> float:
    """Return value as a float, or raise ValueError naming it and what is allowed."""
    v = check_real(name, value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is not allowed: it must be finite and {allowed}")
    return v


def check_tolerance(name: str, value) -> float:
    """Return an ODE/SDE solver tolerance in (0, 1] as a float, or raise naming it (a tolerance above 1
    lets adaptive solvers take steps past the end of the interval: NaN times were observed at 3e38)."""
    v = check_positive_finite(name, value)
    if v > 1:
        raise ValueError(f"{name}={value!r} is not allowed: a solver tolerance must lie in (0, 1]")
    return v


def check_count(name: str, value) -> int:
    """Return a count (steps, a size, a number of draws or features) as an int >= 1, or raise naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} is not allowed: it must be an integer >= 1")
    return int(value)


def check_eps(eps, T: float) -> float:
    """Return the end time eps of sampling (or start of the likelihood) as a float in [MIN_EPS, T)."""
    eps = check_positive_finite("eps", eps)
    if not MIN_EPS <= eps < T:
        raise ValueError(f"eps={eps!r} is not allowed: it must lie in [{MIN_EPS:g}, T={T}) "
                         f"(below {MIN_EPS:g} float32 times lose their resolution)")
    return eps


def check_data(name: str, x, half: bool = True) -> torch.Tensor:
    """Raise unless x is a real floating-point tensor of shape (batch, ...) holding data (not on the
    'meta' device); float16/bfloat16 only when `half` (their range, 65504 for float16, is too small
    for sigma^2 of a VE SDE, so samplers and the likelihood ask for float32 or float64)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, ...), got {type(x).__name__}")
    allowed = (torch.float16, torch.bfloat16, torch.float32, torch.float64) if half else (torch.float32, torch.float64)
    if x.dtype not in allowed:
        raise TypeError(f"{name} has dtype {x.dtype}; it must be one of {', '.join(map(str, allowed))}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device, which holds no values; move it to 'cpu' or 'cuda'")
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (batch, ...), got a 0-d tensor")
    return x


def check_shape(name: str, shape) -> tuple[int, ...]:
    """Return shape as a tuple of ints >= 1, or raise naming it."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a tuple of positive ints such as (batch, 2), got {shape!r}")
    if len(shape) == 0 or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape):
        raise ValueError(f"{name}={tuple(shape)!r} is not allowed: it must be (batch, *data_shape) "
                         f"with integer sizes >= 1")
    return tuple(int(n) for n in shape)


def check_kwargs(what: str, fn, kwargs: dict, reserved=()) -> None:
    """Raise TypeError for a keyword that fn does not take (and is not reserved), suggesting the
    closest one it takes; fn taking **kwargs accepts everything."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [k for k, p in params.items() if k not in reserved and k != "self"
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{what} takes no argument {key!r}{hint} (allowed: {', '.join(allowed) or 'none'})")


def check_sde(sde) -> None:
    """Raise TypeError unless sde provides the SDE contract (e.g. scoresde.VPSDE(), get_sde(name))."""
    if not all(hasattr(sde, a) for a in ("T", "sde", "marginal_prob", "prior_sampling", "prior_logp", "reverse")):
        raise TypeError(f"sde must be an SDE such as scoresde.VPSDE() (or scoresde.get_sde(name)), got {sde!r}")


def check_generator(generator) -> None:
    """Raise TypeError unless generator is None or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r} "
                        f"(use torch.Generator().manual_seed(seed) for a seed)")


def check_callable(name: str, fn) -> None:
    """Raise TypeError unless fn is callable as name(x, t)."""
    if not callable(fn):
        raise TypeError(f"{name} must be a callable {name}(x, t), got {fn!r}")


# -- what a user's function returns ----------------------------------------------------------------
def check_like(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise unless value (returned by `name`) is a real floating-point tensor shaped like x.
    Attribute checks only: no pass over the values, no device synchronisation."""
    if not torch.is_tensor(value) or value.shape != x.shape:
        got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{name} returned {got}, but it must return a tensor shaped like x {tuple(x.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} returned dtype {value.dtype}; it must return a real floating-point tensor like x ({x.dtype})")
    return value


def nonfinite_samples(value: torch.Tensor) -> list[int]:
    """Indices of the samples (rows) of value holding a NaN or inf; [] when none do."""
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return []
    return (~finite).flatten(1).any(1).nonzero().flatten().tolist()


def maybe_nonfinite(value: torch.Tensor) -> bool:
    """False when every entry of value is certainly finite, by one sum: a NaN or inf anywhere makes the
    sum non-finite. True may also mean the sum of finite entries overflowed; `nonfinite_samples`
    then tells. The sum allocates nothing the size of value: on a (64, 3, 32, 32) float32 batch and
    one CPU thread it takes 0.02 ms, an isfinite test of the same tensor 0.5-0.7 ms."""
    return not math.isfinite(float(value.detach().sum()))


def format_time(t, bad: list[int]) -> str:
    """The time of the first listed sample, for messages: t a float or a per-sample (B,) tensor."""
    if torch.is_tensor(t) and t.dim() > 0:
        t = t[bad[0]] if bad and t.shape[0] > bad[0] else t[0]
    return f"{float(t):.6g}"


def listed(bad: list[int]) -> str:
    """The first ten sample indices, for messages."""
    return f"{bad[:10]}{' ...' if len(bad) > 10 else ''}"


def check_finite(value: torch.Tensor, name: str, t=None) -> torch.Tensor:
    """Raise ValueError naming `name`, the time t (if given) and the samples if value holds a NaN or inf."""
    bad = nonfinite_samples(value)
    if bad:
        at = "" if t is None else f" at t={format_time(t, bad)}"
        raise ValueError(f"{name} returned non-finite values (NaN or inf){at} for samples {listed(bad)}")
    return value


def check_device(flag: str, name: str) -> torch.device:
    """The torch device `name` names (cpu, cuda, cuda:N, mps) if this machine has it; ValueError
    naming `flag` and what is allowed otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{flag} {name!r} is not a device: use cpu, cuda, cuda:N or mps ({e})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {name!r} is not allowed: use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: CUDA is not available on this machine (use {flag} cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: MPS (Apple GPU) is not available on this machine (use {flag} cpu)")
    return device
