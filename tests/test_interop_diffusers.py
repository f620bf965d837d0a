"""scoresde.interop.from_diffusers against diffusers itself and against closed forms.

Truths: diffusers' own `DDIMScheduler` loop (eta = 0) with the same network and timesteps, which
scoresde's `ddim` on the discrete grid t_k = (k + 1)/N must reproduce; diffusers' `add_noise`
(the forward chain the network was trained on), which the SDE's kernel must equal at the knots;
for each prediction type, the exact prediction of Gaussian data N(m, s^2 I), whose score is
-(x - alpha m) / (alpha^2 s^2 + sigma^2); the trace of the full Jacobian for the divergence.
"""

from __future__ import annotations

import pytest
import torch

from scoresde import list_samplers, log_likelihood, sample
from scoresde.interop import from_diffusers

diffusers = pytest.importorskip("diffusers")

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]


def tiny_unet(size: int = 8, dtype=torch.float64, seed: int = 0, **kwargs):
    """A random UNet2DModel with every parameter drawn (none left at a zero initialisation)."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kwargs)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.1)
    return unet.to(dtype).eval()


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_reproduces_diffusers_ddim_loop(prediction_type, steps):
    unet = tiny_unet()
    scheduler = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False,
                                        timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    x_T = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = x_T.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            reference = scheduler.step(unet(reference, k).sample, k, reference, eta=0.0).prev_sample
    score_fn, sde = from_diffusers(unet, scheduler)
    grid = (scheduler.timesteps.to(torch.float64) + 1) / sde.N  # t_k = (k + 1) / N, from T = 1 down
    # diffusers' last step goes to alpha-bar = 1 (set_alpha_to_one): Tweedie's x0 at the last timestep
    ours = sample(score_fn, sde, method="ddim", x_T=x_T, schedule=grid, eps=float(grid[-1]))
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-4


def test_kernel_is_diffusers_forward_chain():
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    _, sde = from_diffusers(tiny_unet(), scheduler)
    x0 = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    k = torch.tensor([0, 1, 250, 500, 998, 999])
    mean, std = sde.marginal_prob(x0, (k.double() + 1) / sde.N)
    expected = scheduler.add_noise(x0, noise, k)
    assert torch.allclose(mean + std[:, None, None, None] * noise, expected, rtol=0, atol=1e-6)


class GaussianPredictor(torch.nn.Module):
    """The exact `prediction_type` output for data N(m, s^2 I) under a scheduler, at integer timesteps."""

    def __init__(self, scheduler, m: float, s: float):
        super().__init__()
        self.abar = scheduler.alphas_cumprod.double()
        self.kind, self.m, self.s = scheduler.config.prediction_type, m, s
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # gives the module a dtype

    def forward(self, x, timestep):
        k = timestep.round().long()
        assert torch.allclose(timestep, k.to(timestep.dtype), atol=1e-6), timestep
        a2 = self.abar[k].reshape(-1, 1, 1, 1)
        a, sg = a2.sqrt(), (1 - a2).sqrt()
        score = -(x - a * self.m) / (a2 * self.s ** 2 + sg ** 2)
        eps = -sg * score
        x0 = (x - sg * eps) / a
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sg * x0}[self.kind]
        return diffusers.models.unets.unet_2d.UNet2DOutput(sample=out)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_each_prediction_type_gives_the_exact_score(prediction_type):
    scheduler = diffusers.DDPMScheduler(prediction_type=prediction_type)
    m, s = 0.3, 0.7
    score_fn, sde = from_diffusers(GaussianPredictor(scheduler, m, s), scheduler)
    k = torch.tensor([0, 3, 100, 500, 900, 999])
    t = (k.double() + 1) / sde.N
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a2 = scheduler.alphas_cumprod.double()[k].reshape(-1, 1, 1, 1)
    truth = -(x - a2.sqrt() * m) / (a2 * s ** 2 + 1 - a2)
    assert torch.allclose(score_fn(x, t), truth, rtol=1e-10, atol=1e-10)


def test_class_conditional_model():
    unet = tiny_unet(num_class_embeds=3)
    scheduler = diffusers.DDPMScheduler()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    k = torch.tensor([10, 600])
    score_fn, sde = from_diffusers(unet, scheduler, class_labels=2)
    abar = scheduler.alphas_cumprod.double()[k].reshape(-1, 1, 1, 1)
    eps = unet(x, k, class_labels=torch.tensor([2, 2])).sample
    assert torch.allclose(score_fn(x, (k.double() + 1) / sde.N), -eps / (1 - abar).sqrt(), rtol=1e-9, atol=1e-9)
    per_sample, _ = from_diffusers(unet, scheduler, class_labels=torch.tensor([0, 1]))
    assert not torch.allclose(per_sample(x, (k.double() + 1) / sde.N), score_fn(x, (k.double() + 1) / sde.N))
    with pytest.raises(ValueError, match="class-conditional .*pass class_labels"):
        from_diffusers(unet, scheduler)
    with pytest.raises(ValueError, match="not class-conditional"):
        from_diffusers(tiny_unet(), scheduler, class_labels=1)


def test_unsupported_scheduler_and_prediction_type_are_named():
    unet = tiny_unet()
    for scheduler in (diffusers.FlowMatchEulerDiscreteScheduler(), diffusers.ScoreSdeVeScheduler()):
        with pytest.raises(ValueError, match=f"scheduler {type(scheduler).__name__} is not supported.*alphas_cumprod"):
            from_diffusers(unet, scheduler)
    with pytest.raises(ValueError, match="prediction_type='x1' of DDPMScheduler is not supported: use one of "
                                         "epsilon, sample, v_prediction"):
        from_diffusers(unet, diffusers.DDPMScheduler(prediction_type="x1"))
    with pytest.raises(TypeError, match="unet must be a diffusers model"):
        from_diffusers("unet", diffusers.DDPMScheduler())


@pytest.mark.parametrize("method", list_samplers())
def test_every_sampler_runs(method):
    scheduler = diffusers.DDPMScheduler(prediction_type="v_prediction")
    score_fn, sde = from_diffusers(tiny_unet(dtype=torch.float32), scheduler)
    options = {"ode": {"rtol": 1e-2, "atol": 1e-2}, "annealed_langevin": {"n_steps_each": 2}}.get(method, {})
    steps = None if method == "ode" else 3
    x = sample(score_fn, sde, (2, 1, 8, 8), method=method, steps=steps,
               generator=torch.Generator().manual_seed(0), **options)
    assert x.shape == (2, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_log_likelihood_runs_and_its_divergence_is_the_jacobian_trace():
    """diffusers' UNet cannot run under vmap: the likelihood falls back to looped products, whose
    divergence equals the trace of each sample's full Jacobian (torch.autograd.functional.jacobian)."""
    import scoresde.likelihood as lik

    score_fn, sde = from_diffusers(tiny_unet(size=4), diffusers.DDPMScheduler())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    flow = lik._ProbabilityFlow(score_fn, sde)
    _, div = flow.drift_and_divergence(x, t, None)
    assert flow.batched is False
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda y: flow.drift(y[None], t[b:b + 1])[0], x[b])
        assert div[b].item() == pytest.approx(torch.diagonal(jac.reshape(16, 16)).sum().item(), rel=1e-10)
    res = log_likelihood(score_fn, sde, x, method="rk4", steps=2)
    assert res.log_p.shape == (2,) and bool(torch.isfinite(res.log_p).all()) and res.nfe == 8
