"""Guidance: composable terms that turn a score function into a guided one, for every sampler.

By Bayes, grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x). A guidance term maps
(x, t, score) to what it adds to the unconditional score; terms add up (`a + b`, `GuidanceSum`):

* `ClassifierGuidance`:     gamma grad_x log p_t(y | x) of a noise-aware classifier (Dhariwal & Nichol
                            2021; Song et al. 2021 sec. 5);
* `ClassifierFreeGuidance`: w (s_cond - s_uncond), so the guided score is s_uncond + w (s_cond -
                            s_uncond) (Ho & Salimans 2022; the seed's section 4.2 form);
* `GradientGuidance`:       scale * a user-supplied grad log p(y | x_t).

`Inpainting` (Song et al. 2021 App. I.2) is not a score term but a projection: after every step to
time t the known pixels are replaced by a fresh draw of their forward marginal alpha_t x_known +
sigma_t z, and after the final denoising step by x_known itself.
"""

from __future__ import annotations

import abc

import torch

from .._checks import check_callable, check_data, check_finite, check_like, check_positive_finite
from ..sdes.base import batch_view


class Guidance(abc.ABC):
    """A term added to the unconditional score: guided(x, t) = score(x, t) + term(x, t, score(x, t))."""

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """The additive correction at (x, t), given the unconditional score there."""

    def __add__(self, other: "Guidance") -> "GuidanceSum":
        return GuidanceSum(self, other)

    def apply(self, score_fn):
        """The guided score function (x, t) -> score + term, checking the term's output is shaped like x."""
        def guided(x, t):
            score = score_fn(x, t)
            return score + check_like(self(x, t, score), x, repr(self))
        return guided

    def raise_if_nonfinite(self, x: torch.Tensor, t, score: torch.Tensor) -> None:
        """Raise ValueError naming this term, t and the samples if the term is not finite at (x, t)
        (`sample` asks once the state has turned non-finite, not at every evaluation)."""
        check_finite(self(x, t, score), repr(self), t)


class GuidanceSum(Guidance):
    """The sum of several guidance terms (a product of likelihoods p(y_1 | x) p(y_2 | x) ...)."""

    def __init__(self, *terms: Guidance):
        flat = []
        for term in terms:
            if not isinstance(term, Guidance):
                raise TypeError(f"GuidanceSum takes Guidance terms, got {term!r}")
            flat.extend(term.terms if isinstance(term, GuidanceSum) else [term])
        self.terms = flat

    def __call__(self, x, t, score):
        return sum(check_like(term(x, t, score), x, repr(term)) for term in self.terms)

    def raise_if_nonfinite(self, x, t, score):
        for term in self.terms:
            term.raise_if_nonfinite(x, t, score)

    def __repr__(self):
        return " + ".join(map(repr, self.terms))


def _labels(y, x: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y, device=x.device)
    if y.dim() == 0:
        y = y.expand(x.shape[0])
    if y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(f"y must be an integer class or a (batch,) tensor of classes, got shape {tuple(y.shape)}")
    return y.long()


class ClassifierGuidance(Guidance):
    """gamma grad_x log p_t(y | x) for a noise-aware classifier(x, t) -> logits (B, K)."""

    def __init__(self, classifier, y, scale: float = 1.0):
        check_callable("classifier", classifier)
        if isinstance(y, (bool, float, str)) or y is None or (torch.is_tensor(y) and y.is_floating_point()):
            raise TypeError(f"y must be an integer class or a (batch,) tensor of integer classes, got {y!r}")
        self.classifier, self.y = classifier, y
        self.scale = check_positive_finite("scale", scale, allow_zero=True)

    def __call__(self, x, t, score):
        y = _labels(self.y, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, t)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier returned shape {tuple(logits.shape)}; it must return "
                                 f"logits of shape (batch={x.shape[0]}, classes)")
            if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
                raise ValueError(f"class labels must lie in [0, {logits.shape[1]}), got {y.unique().tolist()}")
            log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        return self.scale * grad

    def __repr__(self):
        return f"ClassifierGuidance(y={self.y!r}, scale={self.scale})"


class ClassifierFreeGuidance(Guidance):
    """w (s_cond - s_uncond): guided score s_uncond + w (s_cond - s_uncond); w = 1 gives s_cond."""

    def __init__(self, cond_score_fn, scale: float):
        check_callable("cond_score_fn", cond_score_fn)
        self.cond_score_fn = cond_score_fn
        self.scale = check_positive_finite("scale", scale, allow_zero=True)

    def __call__(self, x, t, score):
        cond = check_like(self.cond_score_fn(x, t), x, "the conditional score function")
        return self.scale * (cond - score)

    def raise_if_nonfinite(self, x, t, score):
        check_finite(self.cond_score_fn(x, t), "the conditional score function", t)
        super().raise_if_nonfinite(x, t, score)

    def __repr__(self):
        return f"ClassifierFreeGuidance(scale={self.scale})"


class GradientGuidance(Guidance):
    """scale * grad_fn(x, t), a user-supplied grad_x log p_t(y | x)."""

    def __init__(self, grad_fn, scale: float = 1.0):
        check_callable("grad_fn", grad_fn)
        self.grad_fn = grad_fn
        self.scale = check_positive_finite("scale", scale, allow_zero=True)

    def __call__(self, x, t, score):
        return self.scale * check_like(self.grad_fn(x, t), x, f"guidance gradient {self.grad_fn!r}")

    def __repr__(self):
        return f"GradientGuidance({getattr(self.grad_fn, '__name__', self.grad_fn)!r}, scale={self.scale})"


class Inpainting:
    """Known values `known` where `mask` == 1 (mask broadcastable to the samples' shape)."""

    def __init__(self, known: torch.Tensor, mask: torch.Tensor, sde):
        if not hasattr(sde, "alpha"):
            raise ValueError(f"inpainting needs a kernel SDE with alpha(t) and sigma(t); got {type(sde).__name__}")
        check_data("known", known, half=False)
        if not torch.is_tensor(mask) or mask.is_complex():
            raise TypeError(f"mask must be a real tensor of 0 (generate) and 1 (known), got {mask!r}")
        if not bool(torch.isfinite(known).all()):
            raise ValueError("known contains NaN or infinite values; values under mask == 0 may be anything finite")
        try:
            torch.broadcast_shapes(mask.shape, known.shape)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to known's shape "
                             f"{tuple(known.shape)}") from None
        self.known, self.mask, self.sde = known, mask.to(known.dtype), sde
        if not bool(((self.mask == 0) | (self.mask == 1)).all()):
            raise ValueError("mask must contain only 0 (generate) and 1 (known)")

    def check(self, x: torch.Tensor) -> None:
        if self.known.shape != x.shape:
            raise ValueError(f"inpainting: known has shape {tuple(self.known.shape)} but the samples "
                             f"have shape {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor, t, generator=None) -> torch.Tensor:
        """Replace the known region by a draw of alpha_t x_known + sigma_t z."""
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
        alpha = batch_view(self.sde.alpha(tt).to(x.dtype), x)
        sigma = batch_view(self.sde.sigma(tt).to(x.dtype), x)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.mask * (alpha * self.known.to(x) + sigma * z) + (1 - self.mask) * x

    def finalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * self.known.to(x) + (1 - self.mask) * x


def split_guidance(guidance) -> tuple[Guidance | None, Inpainting | None]:
    """Sort `sample`'s guidance argument (a term, a plain gradient callable, an Inpainting, or a
    list of these) into one summed score term and at most one projection."""
    if guidance is None:
        return None, None
    items = list(guidance) if isinstance(guidance, (list, tuple)) else [guidance]
    terms, projections = [], []
    for item in items:
        if isinstance(item, Inpainting):
            projections.append(item)
        elif isinstance(item, Guidance):
            terms.append(item)
        elif callable(item):
            terms.append(GradientGuidance(item))
        else:
            raise TypeError(f"guidance must be a Guidance term, an Inpainting, a callable grad_fn(x, t) "
                            f"or a list of these; got {item!r}")
    if len(projections) > 1:
        raise ValueError("at most one Inpainting can be used at a time")
    term = None if not terms else terms[0] if len(terms) == 1 else GuidanceSum(*terms)
    return term, projections[0] if projections else None
