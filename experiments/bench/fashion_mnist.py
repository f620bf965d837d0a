"""Fashion-MNIST, side by side: scoresde against diffusers' standard training loop, same budget.

    apt-get install dataset-fashion-mnist     # as root: the IDX files in /usr/share/datasets/fashion-mnist
    python experiments/bench/fashion_mnist.py train-scoresde --work W      # these three side by side:
    python experiments/bench/fashion_mnist.py train-scoresde --work W --recipe eps   # 46-47 min each
    python experiments/bench/fashion_mnist.py train-diffusers --work W     # on two cores
    python experiments/bench/fashion_mnist.py classifier --work W          # ~2 min
    python experiments/bench/fashion_mnist.py sample --work W              # every sampler row (~1 h)
    python experiments/bench/fashion_mnist.py score --work W               # classifier FD; Inception rows
    python experiments/bench/fashion_mnist.py report --work W --figure docs/fashion_mnist_samples.png
    python experiments/bench/fashion_mnist.py all --work W --quick         # all parts, a few minutes

Both sides train the same U-Net (the same blocks and parameter count: scoresde's `unet` and
diffusers' `UNet2DModel` with `block_out_channels` = ch * ch_mult) for the same number of optimizer
steps at the same batch size, learning rate, warmup and gradient clipping, with an EMA of the same
maximum decay, one CPU thread each:
  * scoresde: `python -m scoresde.train --config experiments/configs/fashion_mnist.toml` (the recipe
    there; `--recipe eps` trains the eps-parametrized variant it was chosen against);
  * diffusers: its train_unconditional example's loop: DDPMScheduler (1000 linear betas), epsilon
    prediction and MSE, AdamW (betas 0.95, 0.999, weight decay 1e-6) with cosine decay after warmup,
    `EMAModel` with its warmup (power 3/4).
Samplers at each NFE: scoresde's dpmpp_2m and unipc on their default grids and on grids calibrated to
the model (`--calibrate`); diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler with
their defaults and with the dynamic thresholding of x0 they offer for pixel-space models. Every part skips what it finds done, so an interrupted benchmark is rerun as is:
the trainings resume from their checkpoints, the sample sets and scores already written are kept.

Scores, each against the Fashion-MNIST test split: the Frechet distance in the features of a small
classifier trained here (cheap, for every row) and, for the `--inception` rows, FID / KID /
precision-recall in the FID Inception network's features (the `metrics` extra) at N samples. FID is
biased upward at small N, so only rows at equal N are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "experiments" / "configs" / "fashion_mnist.toml"
RECIPES = {"x0": [], "eps": ["model.parametrization=eps", "train.t_sampling=uniform"]}
QUICK = {"steps": 6, "batch": 8, "n": 16, "nfe": [10], "classifier_epochs": 1, "calibrate": 4, "reference_n": 32}
FULL = {"n": 1000, "nfe": [10, 20, 50], "classifier_epochs": 3, "calibrate": 32,
        "reference_n": 2000}
CALIBRATED_NFE = (10, 20)
# diffusers' schedulers as configured by from_config(DDPMScheduler's config), and with the dynamic
# thresholding of x0 that diffusers offers for pixel-space models (Saharia et al. 2022)
DIFFUSERS_SAMPLERS = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                      "DPMSolverMultistepScheduler+thresholding", "UniPCMultistepScheduler+thresholding")
BPD_N = {False: 16, True: 2}  # test images for bits/dim (an adaptive ODE solve each, with its VJPs)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and labels of a split, or an error saying how to get the files."""
    from scoresde.data import FASHION_MNIST_ROOT, load_dataset

    try:
        data = load_dataset("fashion_mnist", split=split)
    except FileNotFoundError as e:
        sys.exit(f"{e}\nThe benchmark reads Debian's package: as root, apt-get update && "
                 f"apt-get install -y dataset-fashion-mnist (files in {FASHION_MNIST_ROOT})")
    return data.values.to(torch.uint8), data.labels


def scoresde_config() -> dict:
    from scoresde.config import load_config

    cfg = load_config(str(CONFIG), [])
    m, t = cfg.model.params, cfg.train
    return {"ch": m["ch"], "ch_mult": list(m["ch_mult"]), "num_res_blocks": m["num_res_blocks"],
            "attn_resolutions": list(m["attn_resolutions"]), "dropout": m["dropout"], "steps": t.steps,
            "batch": t.batch_size, "lr": t.lr, "warmup": t.warmup, "grad_clip": t.grad_clip,
            "ema_decay": t.ema_decay, "ckpt_every": t.ckpt_every, "seed": t.seed}


def mode(args) -> dict:
    """The sizes of the sampling and scoring parts: QUICK or FULL."""
    return QUICK if args.quick else FULL


def ddpm_scheduler():
    """diffusers' training noise schedule (DDPM's 1000 linear betas); its config builds the samplers."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


def budget(args) -> dict:
    """The shared training budget: the config's, or the quick mode's few steps."""
    b = scoresde_config()
    if args.quick:
        b.update(steps=QUICK["steps"], batch=QUICK["batch"], ckpt_every=QUICK["steps"] // 2)
    return b


# ----------------------------------------------------------------------------------------------- training

def train_scoresde(args) -> None:
    from scoresde import train

    b = budget(args)
    run_dir = args.work / f"scoresde_{args.recipe}"
    overrides = [*RECIPES[args.recipe], f"train.steps={b['steps']}", f"train.batch_size={b['batch']}",
                 f"train.ckpt_every={b['ckpt_every']}", "sample.n=16" if args.quick else "sample.n=100"]
    if (run_dir / "summary.json").is_file():
        log(f"{run_dir} is trained")
        return
    done = any(run_dir.glob("ckpt_*.pt"))
    argv = ["--resume", str(run_dir), *overrides] if done else ["--config", str(CONFIG), "--run-dir", str(run_dir),
                                                                   *overrides]
    log(f"python -m scoresde.train {' '.join(argv)}")
    train.main(argv + ["--no-progress"])


def scoresde_unet(b: dict):
    from scoresde.models import build_model

    return build_model("unet", in_channels=1, image_size=28, ch=b["ch"], ch_mult=b["ch_mult"],
                       num_res_blocks=b["num_res_blocks"], attn_resolutions=b["attn_resolutions"], dropout=b["dropout"])


def diffusers_unet(b: dict):
    from diffusers import UNet2DModel

    levels = len(b["ch_mult"])
    sizes = [28 // 2 ** i for i in range(levels)]
    attn = [s in b["attn_resolutions"] for s in sizes]
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=b["num_res_blocks"],
                       block_out_channels=tuple(b["ch"] * k for k in b["ch_mult"]), dropout=b["dropout"],
                       down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                       up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)))


def train_diffusers(args) -> None:
    """diffusers' train_unconditional loop on uint8 images scaled to [-1, 1], checkpointed atomically."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    torch.set_num_threads(1)
    b = budget(args)
    out = args.work / "diffusers"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if (out / "summary.json").is_file():
        log(f"{out} is trained")
        return
    torch.manual_seed(b["seed"])
    images, _ = fashion_mnist("train")
    x_all = images.float() / 127.5 - 1
    model = diffusers_unet(b)
    ema = EMAModel(model.parameters(), decay=b["ema_decay"], use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    opt = torch.optim.AdamW(model.parameters(), lr=b["lr"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_sched = get_cosine_schedule_with_warmup(opt, b["warmup"], b["steps"])
    noise = ddpm_scheduler()
    gen = torch.Generator().manual_seed(b["seed"])
    step, seconds = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)  # written by this function
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, seconds = state["step"], state["seconds"]
        log(f"diffusers: resumed at step {step}")
    params = sum(p.numel() for p in model.parameters())
    log(f"diffusers UNet2DModel: {params:,} parameters; {b['steps']} steps of {b['batch']}")
    model.train()
    t0 = time.perf_counter() - seconds
    while step < b["steps"]:
        x0 = x_all[torch.randint(len(x_all), (b["batch"],), generator=gen)]
        eps = torch.randn(x0.shape, generator=gen)
        k = torch.randint(0, noise.config.num_train_timesteps, (b["batch"],), generator=gen)
        loss = F.mse_loss(model(noise.add_noise(x0, eps, k), k).sample, eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), b["grad_clip"])
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        step += 1
        if step % 100 == 0 or step == b["steps"]:
            log(f"diffusers step {step}: loss {loss.item():.4f}, {step / (time.perf_counter() - t0):.3f} steps/s")
        if step % b["ckpt_every"] == 0 or step == b["steps"]:
            state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "lr_sched": lr_sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                     "step": step, "seconds": time.perf_counter() - t0}
            torch.save(state, out / "checkpoint.pt.tmp")
            os.replace(out / "checkpoint.pt.tmp", ckpt)
    seconds = time.perf_counter() - t0
    _write_json(out / "summary.json", {"steps": step, "batch": b["batch"], "parameters": params, "seconds": seconds,
                                       "steps_per_s": step / seconds})
    log(f"diffusers trained: {step} steps in {seconds:.0f} s")


# --------------------------------------------------------------------------------------------- classifier

class FashionClassifier(nn.Module):
    """The feature network of the classifier Frechet distance: three 3x3 convolutions (32, 64 stride 2,
    64 stride 2), a 128-D penultimate layer (the features) and 10 logits; inputs uint8 / 127.5 - 1."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.SiLU())
        self.head = nn.Linear(128, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float() / 127.5 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(args) -> None:
    path = args.work / "classifier.pt"
    if path.is_file():
        log(f"{path} is trained")
        return
    torch.set_num_threads(args.threads)
    sizes = mode(args)
    torch.manual_seed(0)
    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    net = FashionClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n = 2048 if args.quick else len(x)
    for epoch in range(sizes["classifier_epochs"]):
        for idx in torch.randperm(n).split(128):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float(torch.cat([net(part).argmax(1) for part in xt.split(1000)]).eq(yt).float().mean())
    log(f"classifier: test accuracy {acc:.4f} after {sizes['classifier_epochs']} epochs")
    torch.save({"model": net.state_dict(), "test_accuracy": acc}, path)


def load_classifier(work: Path) -> FashionClassifier:
    state = torch.load(work / "classifier.pt", map_location="cpu", weights_only=True)
    net = FashionClassifier()
    net.load_state_dict(state["model"])
    return net.eval()


# ----------------------------------------------------------------------------------------------- sampling

def rows(args) -> list[dict]:
    """Every sample set: side, run, sampler, NFE, grid."""
    sizes = mode(args)
    out = []
    for recipe in RECIPES:
        if not (args.work / f"scoresde_{recipe}" / "summary.json").is_file():
            continue
        best = recipe == "x0"  # the alternative recipe is compared at the low NFE, one sampler, default grid
        for nfe in sizes["nfe"] if best else [k for k in sizes["nfe"] if k in CALIBRATED_NFE]:
            grids = ("default", "calibrated") if best and nfe in CALIBRATED_NFE else ("default",)
            for method in ("dpmpp_2m", "unipc") if best else ("dpmpp_2m",):
                out.extend({"side": "scoresde", "run": f"scoresde_{recipe}", "sampler": method, "nfe": nfe,
                            "grid": grid} for grid in grids)
    if (args.work / "diffusers" / "summary.json").is_file():
        for nfe in sizes["nfe"]:
            for sched in DIFFUSERS_SAMPLERS:
                out.append({"side": "diffusers", "run": "diffusers", "sampler": sched, "nfe": nfe,
                            "grid": "default"})
    for r in out:
        r["name"] = f"{r['run']}-{r['sampler']}-{r['nfe']}" + ("-cal" if r["grid"] == "calibrated" else "")
    return out


def sample_all(args) -> None:
    torch.set_num_threads(args.threads)
    n = mode(args)["n"]
    folder = args.work / "samples"
    folder.mkdir(exist_ok=True)
    for r in rows(args):
        npz = folder / f"{r['name']}.npz"
        if npz.is_file() or (args.only and args.only not in r["name"]):
            continue
        log(f"sampling {r['name']} ({n} images)")
        t0 = time.perf_counter()
        if r["side"] == "scoresde":
            sample_scoresde(args, r, n, folder)
        else:
            sample_diffusers(args, r, n, npz)
        _write_json(folder / f"{r['name']}.json", {**r, "n": n, "seconds": time.perf_counter() - t0})


def sample_scoresde(args, r: dict, n: int, folder: Path) -> None:
    import scoresde.sample as cli

    argv = ["--checkpoint", str(args.work / r["run"]), "--method", r["sampler"], "--steps", str(r["nfe"]),
            "--n", str(n), "--batch-size", "250", "--out", str(folder / f"{r['name']}.png"), "--no-progress"]
    if r["grid"] == "calibrated":
        draws = mode(args)["calibrate"]
        argv += ["--calibrate", str(draws), "--calibrate-iterations", "4" if args.quick else "100",
                 "--calibrate-batch", str(max(2, draws // 4))]
    cli.main(argv)


def sample_diffusers(args, r: dict, n: int, npz: Path) -> None:
    """diffusers' scheduler loop (as its pipelines run it) with the EMA weights, in chunks of 250."""
    model = load_diffusers_ema(args)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = [diffusers_draw(model, r["sampler"], r["nfe"], min(250, n - start), gen) for start in range(0, n, 250)]
    tmp = npz.with_name(npz.name + ".tmp.npz")
    np.savez(tmp, images=torch.cat(out).numpy())
    os.replace(tmp, npz)


def load_diffusers_ema(args):
    from diffusers.training_utils import EMAModel

    model = diffusers_unet(budget(args))
    state = torch.load(args.work / "diffusers" / "checkpoint.pt", map_location="cpu", weights_only=False)
    ema = EMAModel(model.parameters())
    ema.load_state_dict(state["ema"])
    ema.copy_to(model.parameters())
    return model.eval()


def diffusers_draw(model, sampler: str, nfe: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n uint8 images from `sampler` ("Scheduler" or "Scheduler+option") at nfe evaluations."""
    import diffusers

    config = ddpm_scheduler().config
    name, _, option = sampler.partition("+")
    sched = getattr(diffusers, name).from_config(config, **({option: True} if option else {}))
    sched.set_timesteps(nfe)
    x = torch.randn((n, 1, 28, 28), generator=gen) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def speed(args) -> None:
    """Seconds per 100 images at NFE 20 of each side's samplers, alternating, median of --repeats."""
    from scoresde.run import load_run
    from scoresde.sampling import sample

    torch.set_num_threads(args.threads)
    n, nfe = (8, 10) if args.quick else (100, 20)
    ours, theirs = load_run(args.work / "scoresde_x0").model, load_diffusers_ema(args)
    gen = torch.Generator().manual_seed(0)
    runs = {f"scoresde {m}": lambda m=m: sample(ours.score_fn(), ours.sde, (n, 1, 28, 28), method=m, steps=nfe,
                                                generator=gen) for m in ("dpmpp_2m", "unipc")}
    runs.update({f"diffusers {s}": lambda s=s: diffusers_draw(theirs, s, nfe, n, gen) for s in DIFFUSERS_SAMPLERS})
    times = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    lines = [f"seconds for {n} images at NFE {nfe}, {args.threads} thread(s), median of {args.repeats} "
             "(alternating):"] + [f"  {name}: {float(np.median(t)):.2f}" for name, t in times.items()]
    print("\n".join(lines))
    (args.work / "speed.txt").write_text("\n".join(lines) + "\n")


def load_images(work: Path, name: str) -> torch.Tensor:
    with np.load(work / "samples" / f"{name}.npz") as f:
        return torch.from_numpy(f["images"])


# ------------------------------------------------------------------------------------------------ scoring

def score_all(args) -> None:
    """Classifier FD for every row; Inception FID/KID/PR for the rows named by --inception (default:
    each side's best classifier-FD row at each NFE); test bits/dim of each scoresde run."""
    from scoresde.metrics import frechet_distance

    torch.set_num_threads(args.threads)
    sizes = mode(args)
    scores_path = args.work / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    net = load_classifier(args.work)
    test, _ = fashion_mnist("test")
    train, _ = fashion_mnist("train")
    n = sizes["n"]
    with torch.no_grad():
        ref = net.features(test)
        floor = frechet_distance(net.features(train[:n]), ref)
        scores.setdefault("train_images", {})["classifier_fd"] = floor
        for r in rows(args):
            if r["name"] not in scores and (args.work / "samples" / f"{r['name']}.npz").is_file():
                scores[r["name"]] = {"classifier_fd": frechet_distance(net.features(load_images(args.work, r["name"])),
                                                                       ref)}
    _write_json(scores_path, scores)
    for name in inception_rows(args, scores):
        if "fid" not in scores[name]:
            scores[name].update(inception_scores(args, name, train[:n] if name == "train_images" else None))
            _write_json(scores_path, scores)
    for recipe in RECIPES:
        run = args.work / f"scoresde_{recipe}"
        key = f"scoresde_{recipe}"
        if (run / "summary.json").is_file() and "bpd" not in scores.get(key, {}):
            scores.setdefault(key, {})["bpd"] = test_bits_per_dim(run, BPD_N[args.quick])
            _write_json(scores_path, scores)
    log(f"scores in {scores_path}")


def inception_rows(args, scores: dict) -> list[str]:
    if args.inception:
        return args.inception
    best = {}
    for r in rows(args):
        if r["name"] in scores:
            key = (r["side"], r["nfe"])
            if key not in best or scores[r["name"]]["classifier_fd"] < scores[best[key]]["classifier_fd"]:
                best[key] = r["name"]
    return ["train_images", *sorted(best.values())]


def inception_scores(args, name: str, images: torch.Tensor | None) -> dict:
    from scoresde.metrics.features import image_features, reference_statistics
    from scoresde.metrics.images import gaussian_frechet_distance, kernel_inception_distance, \
        manifold_precision_recall

    sizes = mode(args)
    ref = reference_statistics("fashion_mnist", "test", n=sizes["reference_n"], cache_dir=args.work / "cache",
                               progress=False)
    log(f"Inception features of {name}")
    fake = image_features(load_images(args.work, name) if images is None else images, progress=False)
    kid = kernel_inception_distance(fake.features, ref.features, 100, min(1000, len(fake)),
                                    torch.Generator().manual_seed(0))
    pr = manifold_precision_recall(ref.features[:len(fake)], fake.features, 3)
    return {"fid": gaussian_frechet_distance(fake.mean, fake.cov, ref.mean, ref.cov), "kid": kid.mean,
            "kid_std": kid.std, "precision": pr.precision, "recall": pr.recall, "inception_n": len(fake),
            "reference_n": len(ref)}


def test_bits_per_dim(run: Path, n: int) -> float:
    from scoresde.data import load_dataset
    from scoresde.evaluation import heldout_bits_per_dim
    from scoresde.run import load_run

    log(f"test bits/dim of {run.name} on {n} test images")
    model = load_run(run).model
    return heldout_bits_per_dim(model, load_dataset("fashion_mnist", split="test"), n)


# ------------------------------------------------------------------------------------------------- report

def report(args) -> str:
    scores = json.loads((args.work / "scores.json").read_text())
    n = mode(args)["n"]
    lines = ["| side | sampler | grid | NFE | classifier FD | FID (N) | KID x1e3 | precision | recall | "
             "sampling s / 1000 |", "|---|---|---|---|---|---|---|---|---|---|"]
    floor = scores["train_images"]
    lines.append(f"| {n} Fashion-MNIST train images (the floor) | | | | {floor['classifier_fd']:.2f} | "
                 f"{_inception_cells(floor)} | |")
    for r in sorted(rows(args), key=lambda r: (r["nfe"], r["side"], r["run"], r["sampler"], r["grid"])):
        s = scores.get(r["name"])
        if s is None:
            continue
        timing = json.loads((args.work / "samples" / f"{r['name']}.json").read_text())
        label = "scoresde" + ("" if r["run"] == "scoresde_x0" else f" ({r['run'][9:]} recipe)") \
            if r["side"] == "scoresde" else "diffusers"
        lines.append(f"| {label} | {r['sampler']} | {r['grid']} | {r['nfe']} | {s['classifier_fd']:.2f} | "
                     f"{_inception_cells(s)} | {timing['seconds'] * 1000 / timing['n']:.0f} |")
    train = ["", "| side | steps x batch | parameters | training s | steps/s | "
             f"test bits/dim ({BPD_N[args.quick]} images) |",
             "|---|---|---|---|---|---|"]
    for recipe in RECIPES:
        run = args.work / f"scoresde_{recipe}"
        if (run / "summary.json").is_file():
            summ = json.loads((run / "summary.json").read_text())
            params = sum(p.numel() for p in scoresde_unet(budget(args)).parameters())
            train.append(f"| scoresde ({recipe}) | {summ['step']} x {budget(args)['batch']} | {params} | "
                         f"{summ['train_seconds']:.0f} | {summ['step'] / summ['train_seconds']:.3f} | "
                         f"{scores.get(f'scoresde_{recipe}', {}).get('bpd', float('nan')):.3f} |")
    d = json.loads((args.work / "diffusers" / "summary.json").read_text())
    train.append(f"| diffusers | {d['steps']} x {d['batch']} | {d['parameters']} | {d['seconds']:.0f} | "
                 f"{d['steps_per_s']:.3f} | |")
    speed_file = args.work / "speed.txt"
    text = "\n".join(lines + train + (["", speed_file.read_text().strip()] if speed_file.is_file() else []))
    print(text)
    (args.work / "report.md").write_text(text + "\n")
    if args.figure:
        figure(args, scores, Path(args.figure))
    return text


def _inception_cells(s: dict) -> str:
    if "fid" not in s:
        return " | | |"
    return (f"{s['fid']:.1f} ({s['inception_n']}) | {s['kid'] * 1e3:.1f} | {s['precision']:.3f} | "
            f"{s['recall']:.3f}")


def figure(args, scores: dict, path: Path) -> None:
    """The first 64 samples of each side's best Inception row at each NFE, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = [name for name in inception_rows(args, scores) if name != "train_images"]
    nfes = sorted({int(name.split("-")[2]) for name in best})
    fig, axes = plt.subplots(2, len(nfes), figsize=(3.2 * len(nfes), 6.8), squeeze=False)
    for col, nfe in enumerate(nfes):
        for row, side in enumerate(("scoresde", "diffusers")):
            ax = axes[row, col]
            ax.axis("off")
            names = [b for b in best if b.startswith(side) and int(b.split("-")[2]) == nfe]
            if not names:
                continue
            imgs = load_images(args.work, names[0])[:64].float()
            k = int(len(imgs) ** 0.5)
            grid = imgs[:k * k, 0].reshape(k, k, 28, 28).permute(0, 2, 1, 3).reshape(28 * k, 28 * k)
            ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=255)
            fid = scores[names[0]].get("fid")
            sampler = names[0].split("-")[1].replace("MultistepScheduler", "")
            ax.set_title(f"{side}, {sampler}, NFE {nfe}" + (f"\nFID {fid:.1f}" if fid else ""),
                         fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log(f"figure {path}")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["train-scoresde", "train-diffusers", "classifier", "sample", "score",
                                    "report", "speed", "all"])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "fashion_mnist_bench",
                   help="directory of the runs, sample sets and scores (default runs/fashion_mnist_bench)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="x0", help="scoresde recipe (train-scoresde)")
    p.add_argument("--quick", action="store_true", help="a few steps and samples: checks the pipeline in minutes")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the sample and score parts (default 2)")
    p.add_argument("--inception", nargs="*", metavar="ROW",
                   help="rows to score with Inception (default: the floor and each side's best classifier-FD "
                        "row at each NFE)")
    p.add_argument("--only", default=None, metavar="TEXT",
                   help="sample: only the rows whose name contains TEXT (e.g. scoresde_x0, diffusers, thresholding), "
                        "to run parts side by side in separate processes")
    p.add_argument("--repeats", type=int, default=5, help="speed: timed rounds (default 5)")
    p.add_argument("--figure", default=None, help="report: write the side-by-side sample grids to this PNG")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {"train-scoresde": train_scoresde, "train-diffusers": train_diffusers, "classifier": train_classifier,
             "sample": sample_all, "score": score_all, "report": report, "speed": speed}
    if args.part != "all":
        parts[args.part](args)
        return
    for recipe in RECIPES:
        args.recipe = recipe
        train_scoresde(args)
    for part in ("train-diffusers", "classifier", "sample", "score", "speed", "report"):
        parts[part](args)


if __name__ == "__main__":
    main()
