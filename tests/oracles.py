"""Oracles for the tests: a raw net whose output is the exact prediction implied by a known score, and
the exact probability-flow map of a known score.

ScoreModel hands a network only c_in x_t and c_noise = -log_snr / 4; the oracle recovers t and x_t from
those, so a test through it checks the wrapper's preconditioning as well as its conversions.
"""

import torch
from torch import nn
from torchdiffeq import odeint

from scoresde.sampling import tweedie_denoise


def exact_flow_map(score, sde, x_T, eps):
    """The probability-flow ODE from T to eps solved by dopri8 at rtol = atol = 1e-12, then the
    Tweedie step at eps: what a deterministic sampler with the final denoising step approximates."""
    flow = sde.reverse(score, probability_flow=True)
    x = odeint(flow, x_T, torch.tensor([sde.T, eps], dtype=torch.float64), method="dopri8",
               rtol=1e-12, atol=1e-12)[-1]
    return tweedie_denoise(score, sde, x, torch.full((x.shape[0],), eps, dtype=x.dtype))


def rms(x, y):
    return (x - y).pow(2).mean().sqrt().item()


def edm_F(x0, x, a, sg, sigma_data):
    """The raw output F of an x0-model: EDM's D = c_skip x~ + c_out F (Karras et al. 2022, Table 1) in the
    VE variables x~ = x / alpha, s = sigma / alpha: c_skip = sd^2/(s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2)."""
    s = sg / a
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s * sigma_data / torch.sqrt(s ** 2 + sigma_data ** 2)
    return (x0 - c_skip * x / a) / c_out


class ScoreAsNet(nn.Module):
    """A raw net predicting, in `parametrization`, what score_fn implies: eps = -sigma score and
    x0 = (x + sigma^2 score) / alpha (Tweedie), v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2)."""

    def __init__(self, sde, parametrization, score_fn, sigma_data=0.5):
        super().__init__()
        self.sde, self.parametrization, self.score_fn, self.sigma_data = sde, parametrization, score_fn, sigma_data

    def forward(self, x_in, c_noise, y=None):
        t = self.sde.t_of_log_snr(-4 * c_noise)
        a, sg = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        x = x_in * torch.sqrt(a ** 2 * self.sigma_data ** 2 + sg ** 2)
        score = self.score_fn(x, t)
        eps, x0 = -sg * score, (x + sg ** 2 * score) / a
        out = {"eps": eps, "x0": edm_F(x0, x, a, sg, self.sigma_data),
               "score": -eps,  # the wrapper divides a score net's output by sigma
               "v": (a * eps - sg * x0) / torch.sqrt(a ** 2 + sg ** 2)}
        return out[self.parametrization]
