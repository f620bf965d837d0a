"""Data sets against known truths: toy-set geometry and moments, the dequantization map and its
Jacobian, the digits protocol, and the file loaders on small files written here in each format."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from scoresde.data import (DIGITS_LEVELS, TOY_SETS, BatchStream, QuantizedDataset, center, dequantize,
                           load_dataset, log_det_jacobian, log_p_to_bits_per_dim, quantize, read_idx,
                           to_unit_bins)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- toy sets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TOY_SETS))
def test_toy_sets_seeded_and_finite(name):
    a = load_dataset(name).sample(500, gen(1))
    b = load_dataset(name).sample(500, gen(1))
    c = load_dataset(name).sample(500, gen(2))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 6


def test_ring8_modes():
    # 8 equal modes at radius 2, angles k pi/4, std 0.1 per coordinate
    x = load_dataset("ring8").sample(40_000, gen()).double()
    k = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)) % 8
    freq = torch.bincount(k.long(), minlength=8).double() / len(x)
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    ang = k * math.pi / 4
    resid = x - 2 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    assert torch.allclose(resid.std(0), torch.tensor([0.1, 0.1], dtype=torch.float64), rtol=0.03)


def test_checkerboard_is_uniform_on_dark_squares():
    # density 1/8 on the squares with (col + row) even of the 4x4 board on [-2, 2]^2
    x = load_dataset("checkerboard").sample(40_000, gen()).double()
    col, row = torch.floor(x[:, 0] + 2), torch.floor(x[:, 1] + 2)
    assert bool(((col + row) % 2 == 0).all())
    counts = torch.bincount((4 * row + col).long(), minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]].double() / len(x)
    assert torch.allclose(counts, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    # marginal of each coordinate is U[-2, 2]: mean 0, variance 16/12
    assert torch.allclose(x.var(0), torch.full((2,), 16 / 12, dtype=torch.float64), rtol=0.03)


def test_grid25_and_moons_geometry():
    g = load_dataset("grid25").sample(20_000, gen()).double()
    assert (g - g.round()).std() == pytest.approx(0.05, rel=0.05)
    assert g.round().unique().tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    m = load_dataset("moons").sample(20_000, gen()).double()
    # noise-free moons are unit half circles centred at (0, 0) and (1, 0.5) (before centring/scaling)
    p = m / 2 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    r = torch.minimum((p.norm(dim=1) - 1).abs(), ((p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs())
    assert r.median() < 0.1


# -- dequantization ----------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantize_inverts_and_is_uniform(levels):
    v = torch.randint(0, levels, (20_000,), generator=gen())
    x = dequantize(v, levels, generator=gen(1), dtype=torch.float64)
    assert x.min() >= -1 and x.max() < 1
    assert torch.equal(quantize(x, levels), v)
    x32 = dequantize(v, levels, generator=gen(1))  # float32: only points at a bin edge may move
    assert x32.dtype == torch.float32 and (quantize(x32, levels) - v).abs().max() <= 1
    assert (quantize(x32, levels) != v).float().mean() < 1e-3
    u = (to_unit_bins(x.double(), levels) - v).numpy()  # must be U[0, 1)
    assert u.min() >= 0 and u.max() < 1
    assert u.mean() == pytest.approx(0.5, abs=0.01) and u.var() == pytest.approx(1 / 12, abs=0.003)
    assert torch.allclose(center(v, levels), 2 * (v + 0.5) / levels - 1)


def test_log_det_jacobian_matches_autograd():
    levels, d = 17, 5
    w = torch.rand(d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda w: w * (2.0 / levels) - 1.0, w)  # x(v + u)
    assert log_det_jacobian(levels, d) == pytest.approx(torch.logdet(jac).item(), rel=1e-12)


def test_bits_per_dim_of_uniform_density_is_log2_levels():
    # the uniform density 2^-D on [-1, 1]^D is the uniform distribution over levels^D values: log2(levels) bits
    d = 64
    log_px = torch.full((3,), -d * math.log(2.0), dtype=torch.float64)
    assert torch.allclose(log_p_to_bits_per_dim(log_px, 256, d), torch.full((3,), 8.0, dtype=torch.float64))
    assert torch.allclose(log_p_to_bits_per_dim(log_px, 17, d), torch.full((3,), math.log2(17), dtype=torch.float64))


def test_levels_must_be_an_integer_at_least_2():
    with pytest.raises(ValueError, match="levels"):
        dequantize(torch.zeros(3), 1)


# -- digits ------------------------------------------------------------------------------------------
def test_digits_protocol():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(train) == 1437 and len(test) == 360  # 1797 digits, 20% test
    assert train.event_shape == (1, 8, 8) and train.levels == DIGITS_LEVELS == 17
    assert int(train.values.max()) == 16 and int(train.values.min()) == 0
    both = torch.cat([train.values, test.values]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(load_dataset("digits", split="all").values.flatten(1), dim=0).shape[0]
    # stratified: each class's test share is 20% of its count, to within one sample
    n_all = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10).double()
    n_test = torch.bincount(test.labels, minlength=10).double()
    assert ((n_test - 0.2 * n_all).abs() <= 1).all()


# -- IDX ----------------------------------------------------------------------------------------------
def write_idx(path, arr: np.ndarray, code: int, compress: bool = False):
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    sets = {}
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x08, compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
        sets[prefix] = (images, labels)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", root=str(tmp_path), split=split)
        assert ds.levels == 256 and ds.event_shape == (1, 5, 4)
        assert np.array_equal(ds.values[:, 0].numpy(), sets[prefix][0])
        assert np.array_equal(ds.labels.numpy(), sets[prefix][1])


def test_read_idx_types_and_errors(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    write_idx(tmp_path / "f.idx", a, 0x0D)
    b = read_idx(tmp_path / "f.idx")
    assert b.dtype == np.float32 and np.array_equal(a, b)
    i16 = np.array([-300, 5, 32000], dtype=np.int16)
    write_idx(tmp_path / "i.idx", i16, 0x0B)
    assert np.array_equal(read_idx(tmp_path / "i.idx"), i16)
    (tmp_path / "bad.idx").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    raw = (tmp_path / "f.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="promises shape"):
        read_idx(tmp_path / "short.idx")


def test_idx_label_mismatch_and_missing(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 2, 2), np.uint8), 0x08)
    with pytest.raises(FileNotFoundError, match="labels"):
        load_dataset("mnist", root=str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), 0x08)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        load_dataset("mnist", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", root=str(tmp_path / "nope"))


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    import scoresde.data as data
    monkeypatch.setattr(data, "FASHION_MNIST_ROOT", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_real_fashion_mnist_if_installed():
    import scoresde.data as data
    from pathlib import Path
    if not Path(data.FASHION_MNIST_ROOT).is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    ds = load_dataset("fashion_mnist", split="test")
    # published: 10,000 test images of 28x28, 1,000 per class; train pixel mean 0.2860 * 255
    assert ds.event_shape == (1, 28, 28) and len(ds) == 10_000
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


# -- CIFAR-10 -------------------------------------------------------------------------------------------
def cifar_batches(rng):
    out = {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        out[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
    return out


def test_cifar10_folder_and_archive(tmp_path):
    batches = cifar_batches(np.random.default_rng(0))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for root in (tmp_path, folder, archive):
        test = load_dataset("cifar10", root=str(root), split="test")
        assert test.event_shape == (3, 32, 32) and len(test) == 3
        d = batches["test_batch"][b"data"]
        # the row is the R, G, B planes in turn, each 32x32 row-major: pixel (c, h, w) at c*1024 + h*32 + w
        assert int(test.values[1, 2, 5, 7]) == int(d[1, 2 * 1024 + 5 * 32 + 7])
        assert test.labels.tolist() == batches["test_batch"][b"labels"]
        train = load_dataset("cifar10", root=str(root), split="train")
        assert len(train) == 10
        assert torch.equal(train.values[8:].reshape(2, -1), torch.from_numpy(batches["data_batch_5"][b"data"]))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_dataset("cifar10", root=str(tmp_path), split="test")


# -- PNG folder ----------------------------------------------------------------------------------------
def test_image_folder_classes_and_modes(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    ds = load_dataset("image_folder", root=str(tmp_path))
    assert ds.event_shape == (3, 6, 6) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(ds.values[4].permute(1, 2, 0).numpy(), arrays[("dog", 1)])
    grey = load_dataset("image_folder", root=str(tmp_path), channels=1)
    expect = np.asarray(Image.fromarray(arrays[("cat", 0)]).convert("L"))
    assert grey.event_shape == (1, 6, 6) and np.array_equal(grey.values[0, 0].numpy(), expect)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(ValueError, match="same size"):
        load_dataset("image_folder", root=str(tmp_path))


def test_image_folder_splits_and_errors(tmp_path):
    from PIL import Image
    with pytest.raises(FileNotFoundError, match=r"no image files \(.png, .jpg, .jpeg\)"):
        load_dataset("image_folder", root=str(tmp_path))
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        Image.fromarray(np.full((4, 4), 7 if split == "train" else 9, np.uint8)).save(tmp_path / split / "a.png")
    assert int(load_dataset("image_folder", root=str(tmp_path), split="test").values.max()) == 9
    assert load_dataset("image_folder", root=str(tmp_path)).labels is None  # files directly in the split


def test_unknown_dataset_suggests():
    with pytest.raises(ValueError, match="did you mean 'checkerboard'"):
        load_dataset("checkerbord")


# -- batches -------------------------------------------------------------------------------------------
def indexed_dataset(n=10):
    # values encode their own index, so dequantize + quantize recovers which samples a batch holds
    return QuantizedDataset(torch.arange(n).reshape(n, 1, 1, 1), 256, torch.arange(n) % 3)


def test_stream_epochs_are_permutations_and_resume_exactly():
    ds = indexed_dataset(10)
    s = BatchStream(ds, 3, gen(0))
    seen = [quantize(next(s)[0], 256).flatten() for _ in range(3)]  # one epoch: 3 batches, 1 dropped
    epoch = torch.cat(seen)
    assert len(set(epoch.tolist())) == 9 and s.epoch == 0
    state = s.state_dict()
    ahead = [next(s) for _ in range(5)]
    assert s.epoch == 2  # 3 batches per epoch: batches 4-6 in epoch 1, 7-8 in epoch 2
    s2 = BatchStream(ds, 3, gen(99))
    s2.load_state_dict(state)
    for (x, y), (x2, y2) in zip(ahead, (next(s2) for _ in range(5))):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(quantize(ahead[0][0], 256).flatten() % 3, ahead[0][1])  # labels follow samples


def test_stream_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size=0"):
        BatchStream(indexed_dataset(), 0, gen())
    with pytest.raises(ValueError, match="larger than the data set"):
        BatchStream(indexed_dataset(4), 5, gen())


# -- damaged and hostile files: each is refused naming the file (and the value) ----------------------
def _idx(shape, data: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + np.array(shape, ">u4").tobytes() + data.astype(np.uint8).tobytes()


def _mnist_dir(root, labels=(0, 1, 2), test_labels=None):
    import gzip
    root.mkdir(parents=True, exist_ok=True)
    for prefix, lab in (("train", labels), ("t10k", test_labels if test_labels is not None else labels)):
        n = len(lab)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx((n, 2, 2), np.zeros((n, 2, 2)))))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx((n,), np.array(lab)))
    return root


def test_idx_corrupt_gzip_and_labels_out_of_range_name_the_file(tmp_path):
    root = _mnist_dir(tmp_path / "ok", test_labels=(0, 0, 1))  # the test split misses class 2
    test = load_dataset("mnist", str(root), "test")
    assert test.num_classes == 10 == load_dataset("mnist", str(root)).num_classes  # from the layout, not the split
    bad = _mnist_dir(tmp_path / "labels", labels=(0, 250, 3))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: label 250 of image 1 is not allowed: .*0\.\.9"):
        load_dataset("mnist", str(bad))
    gz = _mnist_dir(tmp_path / "gz")
    data = (gz / "train-images-idx3-ubyte.gz").read_bytes()
    (gz / "train-images-idx3-ubyte.gz").write_bytes(data[:12] + b"\x00" * 8 + data[20:])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is not a readable gzip file"):
        load_dataset("mnist", str(gz))
    (gz / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is not a readable gzip file"):
        load_dataset("mnist", str(gz))


def test_cifar_labels_out_of_range_name_the_batch_and_value(tmp_path):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, lab in (("test_batch", [3, -1]),):
        (folder / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": lab}))
    with pytest.raises(ValueError, match=r"test_batch: label -1 of image 1 is not allowed: CIFAR-10 labels are 0\.\.9"):
        load_dataset("cifar10", str(tmp_path), "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 0]}))
    assert load_dataset("cifar10", str(tmp_path), "test").num_classes == 10


def test_image_folder_truncated_and_bomb_pngs_name_the_file(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / "a.png")
    data = (folder / "a.png").read_bytes()
    (folder / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"a\.png is not a readable PNG image: .*truncated"):
        load_dataset("image_folder", str(folder))
    # a valid 1x1 PNG whose header claims 2^15 x 2^15 pixels, over PIL's decompression-bomb limit
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 2 ** 15, 2 ** 15, 8, 0, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0"))
                                   + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=r"a\.png is not a readable PNG image: DecompressionBomb"):
        load_dataset("image_folder", str(folder))


def test_image_folder_test_split_missing_a_class_keeps_the_class_numbers(tmp_path):
    from PIL import Image
    for split, classes in (("train", ("cat", "dog", "eel")), ("test", ("cat", "eel"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / split / c / "x.png")
    test = load_dataset("image_folder", str(tmp_path), "test")
    assert test.num_classes == 3 and test.labels.tolist() == [0, 2]  # eel stays class 2


def test_quantized_dataset_labels_must_fit_num_classes():
    with pytest.raises(ValueError, match=r"label 5 of sample 1 is not allowed: labels must be in 0\.\.2"):
        QuantizedDataset(torch.zeros(2, 1, 1, 1, dtype=torch.long), 4, torch.tensor([0, 5]), num_classes=3)
    with pytest.raises(ValueError, match="label -1"):
        QuantizedDataset(torch.zeros(2, 1, 1, 1, dtype=torch.long), 4, torch.tensor([0, -1]))


def test_unreadable_data_files_name_the_file(tmp_path, monkeypatch):
    """What chmod 0 gives a non-root user (simulated: the tests may run as root)."""
    from pathlib import Path
    root = _mnist_dir(tmp_path / "m")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name.startswith("train-labels"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte cannot be read: Permission denied"):
        load_dataset("mnist", str(root))
