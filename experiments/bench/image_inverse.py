"""Inverse problems on Fashion-MNIST test images with a trained model: inpainting, 4x super-resolution, deblurring.

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/bench/image_inverse.py --run RUN \
        --figure docs/inverse_images.png          # prints the table of experiments/results/image_inverse.md

RUN is a run trained with experiments/configs/fashion_mnist.toml (`scoresde.load` takes a run
directory, a checkpoint or an export). The first `--n` test images are measured, y = A(x_0) + n:

* inpainting: a centred 14x14 box hidden (MaskOperator), noise 0;
* super-resolution: 4x4 block means (AveragePool(4), 28x28 -> 7x7), noise std 0.05;
* deblurring: a 9x9 Gaussian blur of std 2 pixels (Blur.gaussian), noise std 0.05.

Each is solved `--samples` times per image by PiGDM guidance (PosteriorCovarianceGuidance with the
training data's std, ancestral steps); inpainting also by RePaint and by plain replacement (biased:
the generated pixels never adjust to the known ones). The baselines need no model: the hole filled
with the mean of the image's known pixels; bicubic upsampling of the 7x7 means; the Wiener
(Tikhonov) estimate x = m + A^T (s^2/d^2 I + A A^T)^{-1} (y - A m), the posterior mean under an
N(m, d^2 I) prior with the data's mean m and std d. Unconditional samples of the same model score
every task as the prior's reference. Reported per method, averaged over images: PSNR against the
truth (pixels in [-1, 1] clipped to it, peak-to-peak 2, so PSNR = 10 log10(4 / MSE)) of single
samples and of the mean of an image's samples (an estimate of the posterior mean, which maximizes
expected PSNR), and the measurement residual |A(x_hat) - y| / sqrt(M) (RMS over the M measured
values; the noise std is what a consistent reconstruction reaches).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import scoresde
from scoresde.data import center, load_dataset
from scoresde.sampling import (AveragePool, Blur, Inpainting, MaskOperator, Measurement,
                               PosteriorCovarianceGuidance, sample)

BOX = slice(7, 21)


def box_mask(size=28):
    """1 where a pixel is observed, 0 in the centred box."""
    mask = torch.ones(1, size, size)
    mask[:, BOX, BOX] = 0
    return mask


def wiener(meas, m, d):
    """m + A^T (s^2 / d^2 I + A A^T)^{-1} (y - A m): the posterior mean under an N(m, d^2 I) prior."""
    op = meas.operator
    r = meas.residual(torch.full_like(meas.y, m))
    return m + op.transpose(op.solve_gram(r, meas.noise_std ** 2 / d ** 2, torch.ones(r.shape[0])))


def problems(x, m, d, generator):
    """name -> (Measurement, baseline's name, baseline estimate, picture of the measurement) for truth
    images x of a data set with pixel mean m and std d."""
    mask = MaskOperator(box_mask(x.shape[-1]))
    pool, blur = AveragePool(4), Blur.gaussian(9, 2.0)
    out = {}
    y = mask(x)  # 0, mid-grey, in the hole
    fill = y + (1 - mask.mask) * (y.flatten(1).sum(1) / mask.mask.sum())[:, None, None, None]
    out["inpainting (14x14 box, s = 0)"] = (Measurement(mask, y, 0.0), "masked-mean fill", fill, y)
    y = pool(x) + 0.05 * torch.randn(pool(x).shape, generator=generator)
    out["super-resolution 4x (s = 0.05)"] = (Measurement(pool, y, 0.05), "bicubic upsampling",
                                              F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False),
                                              F.interpolate(y, scale_factor=4, mode="nearest"))
    y = blur(x) + 0.05 * torch.randn(x.shape, generator=generator)
    meas = Measurement(blur, y, 0.05)
    out["deblurring (Gaussian std 2, s = 0.05)"] = (meas, "Wiener (Gaussian prior)", wiener(meas, m, d), y)
    return out


def psnr(x_hat, x):
    """10 log10(4 / MSE) per image, x_hat clipped to [-1, 1]."""
    mse = (x_hat.clamp(-1, 1) - x).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse)


def residual_rms(meas, x_hat):
    """|A(x_hat) - y| / sqrt(M) per image; for a mask, over the observed pixels only."""
    r = meas.residual(x_hat).flatten(1)
    m = r.shape[1] if not isinstance(meas.operator, MaskOperator) else int(meas.operator.mask.sum())
    return r.pow(2).sum(1).div(m).sqrt()


def repeated(meas, k):
    """The measurement with each image's y taken k times (image-major), for k samples an image."""
    return Measurement(meas.operator, meas.y.repeat_interleave(k, 0), meas.noise_std)


def scores(meas, x, x_hat, k):
    """(PSNR of single samples, PSNR of the k-sample mean, residual RMS), each averaged over images;
    x_hat holds k samples per image, image-major."""
    rep = x.repeat_interleave(k, 0)
    single = psnr(x_hat, rep).mean().item()
    mean = psnr(x_hat.reshape(len(x), k, *x.shape[1:]).mean(1), x).mean().item()
    return single, mean, residual_rms(repeated(meas, k), x_hat).mean().item()


def solve(model, meas, x, k, steps, data_std, how, seed):
    """k reconstructions per image (image-major) by `how`: "pigdm", "repaint" or "replacement"."""
    sde, score = model.sde, model.score_fn()
    n = len(x) * k
    rep = repeated(meas, k)
    g = torch.Generator().manual_seed(seed)
    if how == "pigdm":
        guide = PosteriorCovarianceGuidance(score, sde, rep, data_std=data_std)
        return sample(score, sde, (n, *x.shape[1:]), method="ancestral", steps=steps, guidance=guide, generator=g)
    inpaint = Inpainting(rep.y, meas.operator.mask, sde)
    with torch.no_grad():
        if how == "repaint":
            return sample(score, sde, (n, *x.shape[1:]), method="repaint", steps=steps // 5, resample=5,
                          guidance=inpaint, generator=g)
        return sample(score, sde, (n, *x.shape[1:]), method="ancestral", steps=steps, guidance=inpaint, generator=g)


def figure(path, panels, shown):
    """One block of columns per task: rows truth, measurement, baseline, then the samples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = max(len(p[1]) for p in panels)
    cols = len(panels) * (shown + 1) - 1
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.95 + 0.5))
    for ax in axes.flat:
        ax.axis("off")
    for b, (title, row_images) in enumerate(panels):
        c0 = b * (shown + 1)
        axes[0, c0 + shown // 2].set_title(title, fontsize=8)
        for r, (label, images) in enumerate(row_images):
            for c in range(shown):
                axes[r, c0 + c].imshow(images[c, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[r, c0].text(-2, 14, label, fontsize=6, ha="right", va="center")
    fig.subplots_adjust(left=0.07, right=0.995, top=0.93, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a Fashion-MNIST run directory, checkpoint or export")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
    parser.add_argument("--n", type=int, default=32, help="test images")
    parser.add_argument("--samples", type=int, default=2, help="reconstructions per image")
    parser.add_argument("--steps", type=int, default=100, help="sampler steps (NFE = steps + 1)")
    parser.add_argument("--figure", help="write the figure (the first --shown images) to this PNG")
    parser.add_argument("--shown", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = scoresde.load(args.run)
    train = load_dataset("fashion_mnist", root=args.data_root, split="train")
    test = load_dataset("fashion_mnist", root=args.data_root, split="test")
    data = center(train.values, train.levels)
    m, d = data.mean().item(), data.std().item()
    x = center(test.values[:args.n], test.levels)
    k = args.samples
    print(f"## Inverse problems on Fashion-MNIST test images\n\nrun {args.run}; the first {args.n} test images, "
          f"{k} samples each; ancestral steps {args.steps} (NFE {args.steps + 1}, RePaint {args.steps // 5} "
          f"steps x 5); data mean {m:.3f}, std {d:.3f}; one torch thread.\n")
    t0 = time.perf_counter()
    with torch.no_grad():
        prior = sample(model.score_fn(), model.sde, (args.n * k, *x.shape[1:]), method="ancestral",
                       steps=args.steps, generator=torch.Generator().manual_seed(1))
    print(f"unconditional samples: {time.perf_counter() - t0:.0f} s\n")
    print("| task | method | PSNR (dB), one sample | PSNR, mean of samples | residual RMS | seconds |")
    print("|---|---|---|---|---|---|")
    panels = []
    for task, (meas, base_name, baseline, picture) in problems(x, m, d, torch.Generator().manual_seed(0)).items():
        noise = meas.noise_std
        rows = [("truth", x), ("measured", picture), (base_name.split(" ")[0], baseline)]
        print(f"| {task} | {base_name} | {psnr(baseline, x).mean():.2f} | | "
              f"{residual_rms(meas, baseline).mean():.4f} | |")
        single, _, res = scores(meas, x, prior, k)
        print(f"| | unconditional samples | {single:.2f} | | {res:.4f} | |")
        hows = ["replacement", "repaint", "pigdm"] if "inpainting" in task else ["pigdm"]
        for how in hows:
            t0 = time.perf_counter()
            x_hat = solve(model, meas, x, k, args.steps, d, how, seed=2)
            sec = time.perf_counter() - t0
            single, mean, res = scores(meas, x, x_hat, k)
            name = {"pigdm": "PiGDM guidance", "repaint": "RePaint (resample 5)",
                    "replacement": "replacement (biased)"}[how]
            print(f"| | {name} | {single:.2f} | {mean:.2f} | {res:.4f} | {sec:.0f} |", flush=True)
            if how != "replacement":  # the figure: one RePaint sample, two PiGDM samples an image
                samples = x_hat.reshape(args.n, k, *x.shape[1:])
                rows += [(f"{how} {i + 1}", samples[:, i]) for i in range(min(k, 1 if how == "repaint" else 2))]
        panels.append((f"{task.split(' (')[0]} (noise {noise:g})", rows))
        print(f"| | (noise std of y) | | | {noise:.4f} | |")
    if args.figure:
        figure(args.figure, panels, min(args.shown, args.n))


if __name__ == "__main__":
    main()
