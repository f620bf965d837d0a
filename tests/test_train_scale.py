"""Training at scale: EMA warmup against its closed form, gradient accumulation against the whole
batch (float64), mixed precision (bf16 autocast on the CPU, fp16's gradient-scaler skips), and the
errors for settings that cannot run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from scoresde.config import ConfigError, load_config
from scoresde.losses import SplitLoss
from scoresde.models import EMA
from scoresde.train import Trainer, parse_args, prepare, train_loop

from test_train import DIGITS, TOY, assert_same_state


# -- EMA warmup ------------------------------------------------------------------------------------
def initial_weight_closed_form(decay: float, k: int) -> float:
    """theta_0's weight after k warmup updates: prod_{n<k} min(decay, (1+n)/(10+n)). While the
    warmup term is the smaller, the product telescopes to 9! k! / (k+9)! = 1 / C(k+9, 9)."""
    m = sum(1 for n in range(k) if (1 + n) / (10 + n) < decay)  # warmup-limited updates come first
    return decay ** (k - m) / math.comb(m + 9, 9)


@pytest.mark.parametrize("decay, k", [(0.999, 5), (0.5, 12), (0.9, 200)])
def test_ema_warmup_weight_of_the_initial_parameters(decay, k):
    # theta_0 = 1 and the model at 0 thereafter: the average is exactly theta_0's weight
    model = nn.Linear(1, 1, bias=False).double()
    nn.init.ones_(model.weight)
    ema = EMA(model, decay)
    model.weight.data.zero_()
    for _ in range(k):
        ema.update(model)
    expected = initial_weight_closed_form(decay, k)
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-12)
    assert ema.initial_weight == pytest.approx(expected, rel=1e-12)


def test_ema_warmup_decays_and_the_constant_decay_without_it():
    ema = EMA(nn.Linear(1, 1), 0.999)
    assert ema.current_decay() == 0.1  # (1 + 0) / (10 + 0)
    ema.num_updates = 8990
    assert ema.current_decay() == 8991 / 9000
    ema.num_updates = 8991  # (1 + n) / (10 + n) = 0.999 exactly from here on
    assert ema.current_decay() == 0.999
    assert EMA(nn.Linear(1, 1), 0.999, warmup=False).current_decay() == 0.999


def test_ema_state_without_warmup_keys_resumes_with_a_constant_decay():
    a = EMA(nn.Linear(1, 1), 0.9)
    state = a.state_dict()
    del state["warmup"], state["initial_weight"]
    state["num_updates"] = 3
    a.load_state_dict(state)
    assert not a.warmup and a.current_decay() == 0.9 and a.initial_weight == pytest.approx(0.9 ** 3)


def test_the_run_summary_warns_while_the_ema_is_mostly_initialization(tmp_path):
    from scoresde.train import main

    base = ["--no-progress", *TOY, "train.steps=8", "sample.n=64", "sample.steps=10"]
    # decay 0.999 without warmup keeps 0.999^8 = 99% of theta_0
    result = main(["--run-dir", str(tmp_path / "a"), *base, "train.ema_warmup=false"])
    assert "warning: the EMA is still 99% the initial weights" in result.summary
    # with warmup theta_0 keeps 1 / C(17, 9) after 8 updates: no warning
    result = main(["--run-dir", str(tmp_path / "b"), *base])
    assert "warning" not in result.summary
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["ema_initial_weight"] == pytest.approx(1 / math.comb(17, 9), rel=1e-12)


# -- gradient accumulation --------------------------------------------------------------------------
def plain(loss):
    """`loss` as a plain callable, without its per-step part: the Trainer runs it by replaying."""
    return lambda *args, **kwargs: loss(*args, **kwargs)


def as_float64(tr: Trainer) -> Trainer:
    """tr computing in float64 throughout, so that only the summation order differs between runs."""
    tr.model.double()
    tr.ema.module.double()
    stream = tr.stream
    tr.stream = ((x.double(), y) for x, y in stream)
    return tr


@pytest.mark.parametrize("micro, base, form", [
    (8, TOY, "split"), (16, TOY, "split"), (32, TOY, "split"), (16, TOY, "plain"),
    # the learned schedule's parameters reach the step's draws: every pass backpropagates into them
    (16, TOY + ["sde.name=learned", "sde.n_features=8", "train.loss=vdm"], "split"),
    # labels, dropped for classifier-free guidance, and an image network
    (16, DIGITS + ["model.dropout=0.0", "model.class_cond=true", "train.p_uncond=0.2", "train.loss=ddpm"], "split"),
])
def test_micro_batches_give_the_whole_batch_step(micro, base, form):
    base = base + ["train.batch_size=64"]
    whole = as_float64(Trainer(load_config(None, base)))
    accumulated = as_float64(Trainer(load_config(None, base + [f"train.micro_batch={micro}"])))
    if form == "plain":
        accumulated.loss = SplitLoss.of(plain(accumulated.loss))
    assert len(accumulated.passes) == 64 // micro and next(whole.model.parameters()).dtype == torch.float64
    for _ in range(3):
        (la, ga), (lb, gb) = whole.step(), accumulated.step()
        assert lb.item() == pytest.approx(la.item(), rel=1e-12) and gb.item() == pytest.approx(ga.item(), rel=1e-12)
    for (name, a), b in zip(whole.model.state_dict().items(), accumulated.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
    # the noise generator is where one pass leaves it
    assert torch.equal(whole.noise.get_state(), accumulated.noise.get_state())


def test_micro_batches_draw_once_a_step_and_run_each_row_once():
    """Accumulation over 4 passes: the loss's per-step part runs once a step, on the whole batch, and
    the network once a pass, on that pass's 16 rows, which together cover the 64 rows once."""
    tr = Trainer(load_config(None, TOY + ["train.micro_batch=16"]))
    prepared, passes, network = [], [], []
    real_prepare, real_forward = tr.loss.prepare, tr.forward

    class Recorded:
        def __init__(self, drawn):
            self.drawn = drawn

        def per_sample(self, forward, lo, hi):
            passes.append((lo, hi))
            return self.drawn.per_sample(forward, lo, hi)

    def prepare(model, sde, x0, *args, **kwargs):
        prepared.append(x0.shape[0])
        return Recorded(real_prepare(model, sde, x0, *args, **kwargs))

    tr.loss = SplitLoss(prepare)
    tr.forward = lambda x, t, y=None: network.append(x.shape[0]) or real_forward(x, t, y)
    for _ in range(2):
        tr.step()
    assert prepared == [64, 64]
    assert passes == [(0, 16), (16, 32), (32, 48), (48, 64)] * 2 and network == [16] * 8


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(ConfigError, match=r"train.micro_batch=24 does not divide train.batch_size=64"):
        load_config(None, TOY + ["train.micro_batch=24"])


# -- mixed precision --------------------------------------------------------------------------------
def test_bf16_autocast_on_the_cpu_trains_and_resumes_bitwise(tmp_path):
    overrides = TOY + ["train.precision=bf16", "train.steps=16"]
    full = Trainer(load_config(None, overrides))
    assert full.precision == "bf16"
    seen = []
    real = full.loss
    full.loss = SplitLoss.of(lambda *a, **k: seen.append(torch.get_autocast_dtype("cpu")
                                                          if torch.is_autocast_enabled("cpu") else None) or real(*a, **k))
    train_loop(full, tmp_path / "full", progress=False)
    assert seen == [torch.bfloat16] * 16
    cfg, _, state = prepare(parse_args(["--resume", str(tmp_path / "full" / "ckpt_00000008.pt")]))
    resumed = Trainer(cfg)
    resumed.load_state_dict(state)
    train_loop(resumed, tmp_path / "resumed", progress=False)
    assert_same_state(full, resumed)
    fp32 = Trainer(load_config(None, TOY + ["train.steps=16"]))
    train_loop(fp32, tmp_path / "fp32", progress=False)
    assert fp32.precision == "fp32"
    assert not torch.equal(next(fp32.model.parameters()), next(full.model.parameters()))


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(ConfigError, match=r"train.precision='fp16' needs a CUDA device, got 'cpu'"):
        Trainer(load_config(None, TOY + ["train.precision=fp16", "train.device=cpu"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training needs a CUDA device")
def test_fp16_on_cuda_trains_with_a_gradient_scaler(tmp_path):
    tr = Trainer(load_config(None, TOY + ["train.precision=fp16", "train.device=cuda", "train.steps=8"]))
    assert tr.scaler.is_enabled()
    train_loop(tr, tmp_path, progress=False)
    state = torch.load(tmp_path / "ckpt_00000008.pt", weights_only=True)
    assert state["scaler"]["scale"] == tr.scaler.get_scale() and tr.skipped < 8


def test_an_overflowing_scaled_step_is_skipped_and_the_scale_backs_off():
    """fp16's skip logic with the CPU's GradScaler: a scale of 2^127 overflows the float32 gradients
    of a loss made 1000 times larger (themselves finite), as a too-large scale overflows fp16's."""
    tr = Trainer(load_config(None, TOY))
    real = tr.loss
    tr.loss = SplitLoss.of(lambda *a, **k: real(*a, **k) * (1000.0 if tr.step_count == 0 else 1.0))
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.step()
    assert not tr.last_applied and tr.skipped == 1 and tr.ema.num_updates == 0
    assert all(torch.equal(v, tr.model.state_dict()[k]) for k, v in before.items())
    assert tr.scaler.get_scale() == 2.0 ** 126
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
    loss, grad_norm = tr.step()
    assert tr.last_applied and tr.skipped == 1 and math.isfinite(grad_norm.item())
    assert tr.scaler.get_scale() == 2.0 ** 11  # a good step grows it (growth_interval=1)


# -- torch.compile and channels_last -------------------------------------------------------------------
def test_compiled_training_keeps_plain_checkpoint_keys_and_resumes_either_way(tmp_path):
    """The "eager" backend runs TorchDynamo's graph capture without a C compiler; inductor is the
    same path with code generation (test_inductor_compile_trains, slow)."""
    overrides = TOY + ["train.steps=8", "train.ckpt_every=4"]
    compiled = Trainer(load_config(None, overrides + ["train.compile=eager"]))
    train_loop(compiled, tmp_path / "compiled", progress=False)
    plain = Trainer(load_config(None, overrides))
    train_loop(plain, tmp_path / "plain", progress=False)
    assert_same_state(compiled, plain)  # graph capture changes no number on the CPU
    state = torch.load(tmp_path / "compiled" / "ckpt_00000004.pt", weights_only=True)
    assert not [k for k in state["model"] if "_orig_mod" in k]
    for into in ([], ["train.compile=eager"]):  # a compiled run's checkpoint continues uncompiled and back
        cfg, _, state = prepare(parse_args(["--resume", str(tmp_path / "compiled" / "ckpt_00000004.pt"), *into]))
        resumed = Trainer(cfg)
        resumed.load_state_dict(state)
        train_loop(resumed, tmp_path / f"resumed{len(into)}", progress=False)
        assert_same_state(plain, resumed)


@pytest.mark.slow
def test_inductor_compile_trains(tmp_path):
    tr = Trainer(load_config(None, TOY + ["train.steps=4", "train.compile=inductor"]))
    train_loop(tr, tmp_path, progress=False)
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_a_failing_compile_backend_is_a_clear_error():
    from torch._dynamo import register_backend

    @register_backend(name="scoresde_test_broken")
    def broken(gm, example_inputs):
        raise RuntimeError("no C compiler found")

    tr = Trainer(load_config(None, TOY + ["train.compile=scoresde_test_broken"]))
    with pytest.raises(ConfigError, match=r"train.compile='scoresde_test_broken': the backend failed on this "
                                          r"machine .*no C compiler found.*train.compile=''"):
        tr.step()


def test_an_unknown_compile_backend_is_refused():
    with pytest.raises(ConfigError, match=r"train.compile='inductr' is unknown; did you mean 'inductor'"):
        Trainer(load_config(None, TOY + ["train.compile=inductr"]))


UNET = ["data.name=digits", "model.name=unet", "model.ch=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
        "model.attn_resolutions=[4]", "model.dropout=0.0", "train.batch_size=16", "train.tensorboard=false"]


def test_channels_last_trains_like_the_contiguous_layout():
    a = Trainer(load_config(None, UNET))
    b = Trainer(load_config(None, UNET + ["train.channels_last=true"]))
    conv = next(m for m in b.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dim() == 4
    for _ in range(3):
        (la, ga), (lb, gb) = a.step(), b.step()
        assert lb.item() == pytest.approx(la.item(), rel=1e-5) and gb.item() == pytest.approx(ga.item(), rel=1e-4)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6, msg=name)


def test_channels_last_needs_image_data():
    with pytest.raises(ConfigError, match=r"train.channels_last=true needs image data .* data.name='ring8'"):
        Trainer(load_config(None, TOY + ["train.channels_last=true"]))


# -- random horizontal flips -------------------------------------------------------------------------
def left_heavy_images(n: int = 50):
    """Binary 4x4 images whose left half is 1 and right half 0: a flip moves the ones to the right."""
    from scoresde.data import QuantizedDataset

    values = torch.zeros(n, 1, 4, 4, dtype=torch.long)
    values[..., :2] = 1
    return QuantizedDataset(values, 2, name="left-heavy")


def flipped_fraction(random_flip: bool, draws: int = 400) -> tuple[float, int]:
    from scoresde.data import BatchStream

    stream = BatchStream(left_heavy_images(), 50, torch.Generator().manual_seed(0), random_flip=random_flip)
    x = torch.cat([next(stream)[0] for _ in range(draws)])  # dequantized: v = 1 -> x in [0, 1), v = 0 -> [-1, 0)
    flipped = (x[..., 0] < 0).all(-1).squeeze(1)
    assert torch.equal(flipped, (x[..., -1] >= 0).all(-1).squeeze(1))  # whole images, mirrored
    return flipped.double().mean().item(), x.shape[0]


def test_random_flip_mirrors_half_of_the_training_images():
    p, n = flipped_fraction(True)
    # 20000 independent Bernoulli(1/2) flips: sd = sqrt(1/4 / n) = 0.0035; 5 sd (0.018) fails a correct
    # implementation with probability 6e-7, and catches p = 0.47 or 0.53
    assert abs(p - 0.5) < 5 * (0.25 / n) ** 0.5


def test_no_flips_without_random_flip_nor_in_evaluation_data():
    assert flipped_fraction(False)[0] == 0.0
    # the flip lives in the training stream only: the data set evaluation reads stays as stored
    tr = Trainer(load_config(None, UNET + ["data.random_flip=true"]))
    stored = tr.dataset.values.clone()
    tr.step()
    assert torch.equal(tr.dataset.values, stored) and tr.stream.random_flip


def test_random_flip_needs_image_data():
    with pytest.raises(ConfigError, match=r"data.random_flip=true needs image data; data.name='ring8'"):
        Trainer(load_config(None, TOY + ["data.random_flip=true"]))


# -- streamed image folders --------------------------------------------------------------------------
def write_images(root, n_per_class: int = 12, size: int = 8):
    """Two classes of random 8-bit RGB images, class a as PNG and class b as (lossy) JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, ext in (("a", "png"), ("b", "jpg")):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i}.{ext}")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_image_folder_gives_the_in_memory_batches(tmp_path, workers):
    from scoresde.data import BatchStream, ImageFolderStream, QuantizedDataset, load_dataset

    write_images(tmp_path)
    memory = load_dataset("image_folder", str(tmp_path))
    streamed = load_dataset("image_folder", str(tmp_path), stream=True)
    assert isinstance(memory, QuantizedDataset) and isinstance(streamed, ImageFolderStream)
    assert streamed.event_shape == memory.event_shape == (3, 8, 8) and streamed.num_classes == 2
    a = BatchStream(memory, 5, torch.Generator().manual_seed(3), random_flip=True)
    b = BatchStream(streamed, 5, torch.Generator().manual_seed(3), random_flip=True, workers=workers)
    for _ in range(12):  # 2.5 epochs of 4 batches
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.load_state_dict(a.state_dict())  # a resume mid-epoch restarts the read-ahead where the state is
    for _ in range(3):
        assert torch.equal(next(a)[0], next(b)[0])


def test_resize_and_center_crop(tmp_path):
    from PIL import Image

    from scoresde.data import load_dataset

    # a 16 x 8 (W x H) image: the shorter side is already 8, so the crop keeps columns 4..11
    wide = np.arange(16, dtype=np.uint8)[None, :].repeat(8, 0) * 10
    Image.fromarray(wide).save(tmp_path / "wide.png")
    ds = load_dataset("image_folder", str(tmp_path), image_size=8)
    assert torch.equal(ds.values[0, 0], torch.from_numpy(wide[:, 4:12]))
    # a constant 32 x 24 image becomes a constant 8 x 8 one (bicubic keeps constants)
    (tmp_path / "wide.png").unlink()
    Image.fromarray(np.full((24, 32), 77, np.uint8)).save(tmp_path / "flat.png")
    ds = load_dataset("image_folder", str(tmp_path), image_size=8)
    assert ds.event_shape == (1, 8, 8) and bool((ds.values == 77).all())


def test_image_folder_errors_name_the_file(tmp_path):
    from scoresde.data import load_dataset

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no image files \(.png, .jpg, .jpeg\) under .*empty"):
        load_dataset("image_folder", str(tmp_path / "empty"), stream=True)
    write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "b" / "5.jpg").write_bytes(b"not a jpeg")
    streamed = load_dataset("image_folder", str(tmp_path / "imgs"), stream=True)  # reads only the first
    with pytest.raises(ValueError, match=r"b/5\.jpg is not a readable JPEG image"):
        streamed.values[torch.arange(len(streamed))]
    with pytest.raises(ValueError, match=r"b/5\.jpg is not a readable JPEG image"):
        load_dataset("image_folder", str(tmp_path / "imgs"))
    with pytest.raises(ConfigError, match=r"data.image_size applies to data.name='image_folder' only"):
        load_config(None, ["data.name=digits", "data.image_size=8"])


def test_training_on_a_streamed_folder_resumes_bitwise(tmp_path):
    write_images(tmp_path / "imgs")
    overrides = ["data.name=image_folder", f"data.root={tmp_path / 'imgs'}", "data.stream=true",
                 "data.random_flip=true", "model.name=unet", "model.ch=8", "model.ch_mult=[1]",
                 "model.num_res_blocks=1", "model.attn_resolutions=[]", "train.batch_size=8", "train.steps=6",
                 "train.ckpt_every=3", "train.log_every=3", "train.tensorboard=false"]
    full = Trainer(load_config(None, overrides))
    train_loop(full, tmp_path / "full", progress=False)
    memory = Trainer(load_config(None, [o for o in overrides if o != "data.stream=true"]))
    train_loop(memory, tmp_path / "memory", progress=False)
    assert_same_state(full, memory)
    cfg, _, state = prepare(parse_args(["--resume", str(tmp_path / "full" / "ckpt_00000003.pt")]))
    resumed = Trainer(cfg)
    resumed.load_state_dict(state)
    train_loop(resumed, tmp_path / "resumed", progress=False)
    assert_same_state(full, resumed)
