"""CPU time per image of the CIFAR-10 networks: forward, and forward + backward, with parameter counts.

Protocol: each network gets a batch of --batch random 3x32x32 images and noise labels; "forward" is
net(x, c_noise) under torch.no_grad() in eval mode, "forward+backward" is one training step's
network work in train mode (dropout on): net(x, c_noise).square().mean().backward(). Each
measurement is taken --repeats times after one warm-up call, the networks interleaved in every
round (so load on a shared machine hits all alike), and the median is divided by the batch size.
torch runs with --threads intra-op threads (OMP_NUM_THREADS is set to the same); the header states
the machine's load average before and after, since other work on a shared machine slows every row.

Networks: DDPM++ and NCSN++ with the defaults of scoresde.models (score_sde's
vp/cifar10_ddpmpp_continuous and ve/cifar10_ncsnpp_continuous), DDPM++ deep (8 blocks per level,
vp/cifar10_ddpmpp_deep_continuous), and the project's U-Net as in experiments/configs/cifar10_unet.toml.
The score_sde column is the parameter count score_sde_pytorch's own NCSNpp(config) has for that
config (its Fourier frequencies, a frozen parameter there and a buffer here, included).

    .venv/bin/python experiments/bench/network_speed.py [--batch 4] [--repeats 5] [--threads 1] \\
        [--out experiments/results/network_speed.txt]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from scoresde.models import DDPMpp, NCSNpp, UNet

SCORE_SDE_SIZES = {"DDPM++": 61_804_419, "NCSN++": 62_758_915, "DDPM++ deep": 106_632_579}


def networks() -> dict[str, torch.nn.Module]:
    return {
        "DDPM++": DDPMpp(),
        "NCSN++": NCSNpp(),
        "DDPM++ deep": DDPMpp(num_res_blocks=8),
        "U-Net (cifar10_unet.toml)": UNet(3, 32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                                          attn_resolutions=(16,), dropout=0.1),
    }


def count(net: torch.nn.Module) -> int:
    fourier = getattr(net, "fourier", None)
    return sum(p.numel() for p in net.parameters()) + (fourier.W.numel() if fourier is not None else 0)


def forward(net, x, c):
    net.eval()
    with torch.no_grad():
        net(x, c)


def forward_backward(net, x, c):
    net.train()
    net.zero_grad(set_to_none=True)
    net(x, c).square().mean().backward()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = networks()
    load_before = os.getloadavg()[0]
    x = torch.randn(args.batch, 3, 32, 32)
    c = torch.rand(args.batch)
    times = {name: {"fwd": [], "fwdbwd": []} for name in nets}
    for name, net in nets.items():       # warm-up
        forward(net, x, c)
        forward_backward(net, x, c)
    for _ in range(args.repeats):
        for name, net in nets.items():
            times[name]["fwd"].append(timed(forward, net, x, c))
            times[name]["fwdbwd"].append(timed(forward_backward, net, x, c))

    lines = [f"# experiments/bench/network_speed.py --batch {args.batch} --repeats {args.repeats} "
             f"--threads {args.threads}",
             f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{args.threads} thread(s) (OMP_NUM_THREADS={args.threads}), batch {args.batch} x 3x32x32, "
             f"median of {args.repeats}; 1-minute load average {load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores",
             f"{'network':<28}{'parameters':>14}{'score_sde':>14}{'forward ms/img':>17}{'fwd+bwd ms/img':>17}"]
    for name, net in nets.items():
        fwd = 1000 * statistics.median(times[name]["fwd"]) / args.batch
        fb = 1000 * statistics.median(times[name]["fwdbwd"]) / args.batch
        ref = SCORE_SDE_SIZES.get(name)
        lines.append(f"{name:<28}{count(net):>14,}{(f'{ref:,}' if ref else '-'):>14}{fwd:>17.1f}{fb:>17.1f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
