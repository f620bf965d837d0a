"""Cost of the two ways `log_likelihood` takes a divergence: vmapped or looped vector-Jacobian products.

One ODE evaluation of the likelihood is the probability-flow drift and its divergence
(`scoresde.likelihood._ProbabilityFlow.drift_and_divergence`). Its D (exact trace) or K (Hutchinson)
vector-Jacobian products run as one vmapped backward pass where the model allows it, else as one
backward pass each over the retained graph (diffusers' UNet2DModel and channels_last networks fail
under vmap). This times one evaluation both ways on the same models, at t = 0.5 under the VP SDE:

  mlp-64      ScoreMLP on 64-D points (hidden 256, depth 3), batch --mlp-batch
  unet-8x8    scoresde's U-Net on 1x8x8 images (ch 16, ch_mult 1 2), batch --image-batch
  diffusers   diffusers' UNet2DModel on 1x8x8 images (block_out_channels 16 32): looped only

Each figure is the median of --repeats evaluations after one warm-up, the two paths interleaved,
with --threads torch threads (default 1).

    .venv/bin/python experiments/bench/likelihood_vjp_paths.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scoresde import VPSDE
from scoresde.likelihood import _ProbabilityFlow
from scoresde.models import ScoreModel, build_model


def models(image_batch: int, mlp_batch: int):
    """(name, score_fn, sde, x) for each model; random weights, all parameters drawn."""
    torch.manual_seed(0)
    mlp = ScoreModel(build_model("mlp", dim=64, hidden=256, depth=3), VPSDE())
    unet = ScoreModel(build_model("unet", in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                  attn_resolutions=(), dropout=0.0), VPSDE())
    out = [("mlp-64", mlp.score_fn(), mlp.sde, torch.randn(mlp_batch, 64)),
           ("unet-8x8", unet.score_fn(), unet.sde, torch.randn(image_batch, 1, 8, 8))]
    try:
        import diffusers

        from scoresde.interop import from_diffusers
    except ImportError:
        print("diffusers is not installed: its row is skipped")
        return out
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    score_fn, sde = from_diffusers(net, diffusers.DDPMScheduler())
    return out + [("diffusers", score_fn, sde, torch.randn(image_batch, 1, 8, 8))]


def time_evaluation(flow: _ProbabilityFlow, x: torch.Tensor, probes) -> float:
    t = torch.full((x.shape[0],), 0.5)
    start = time.perf_counter()
    flow.drift_and_divergence(x, t, probes)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed evaluations per path (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--image-batch", type=int, default=4, help="images per evaluation")
    p.add_argument("--mlp-batch", type=int, default=100, help="64-D points per evaluation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | trace | batch | vmapped (ms) | looped (ms) | looped / vmapped |")
    print("|---|---|---|---|---|---|")
    for name, score_fn, sde, x in models(args.image_batch, args.mlp_batch):
        for trace in ("exact", "hutchinson"):
            probes = None if trace == "exact" else torch.randint(0, 2, (1,) + x.shape).float() * 2 - 1
            paths = {"vmapped": _ProbabilityFlow(score_fn, sde, batched=None),
                     "looped": _ProbabilityFlow(score_fn, sde, batched=False)}
            time_evaluation(paths["vmapped"], x, probes)  # warm-up; decides whether vmap runs
            if not paths["vmapped"].batched:
                del paths["vmapped"]
            time_evaluation(paths["looped"], x, probes)
            times = {k: [] for k in paths}
            for _ in range(args.repeats):
                for k, flow in paths.items():
                    times[k].append(time_evaluation(flow, x, probes))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            vm = f"{med['vmapped']:.1f}" if "vmapped" in med else "fails under vmap"
            ratio = f"{med['looped'] / med['vmapped']:.2f}" if "vmapped" in med else "-"
            print(f"| {name} | {trace} | {x.shape[0]} | {vm} | {med['looped']:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
