"""Data loading (tiny IDX fixtures made here), missing-data errors, binarisation."""

import gzip
import struct

import numpy as np
import pytest
import torch

import lvm_pyro.data.datasets as datasets
from lvm_pyro.data import (Binarizer, DatasetNotFoundError, binarize, binarize_chunked,
                           binarize_test, load_dataset)


def _write_idx(path, arr: np.ndarray):
    magic = {3: 0x00000803, 1: 0x00000801}[arr.ndim]
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for s in arr.shape:
            f.write(struct.pack(">I", s))
        f.write(arr.astype(np.uint8).tobytes())


def _make_fashion(root, n_train=6, n_test=4):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (n_train, 28, 28)), "t10k": rng.integers(0, 256, (n_test, 28, 28))}
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", imgs[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return imgs


def test_fashion_mnist_from_root_with_tiny_idx(tmp_path, monkeypatch):
    monkeypatch.setenv("LVM_PYRO_DATA", str(tmp_path / "cache"))
    imgs = _make_fashion(tmp_path)
    tr = load_dataset("fashion-mnist", "train", root=tmp_path)
    te = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert tr.images.shape == (6, 1, 28, 28) and te.images.shape == (4, 1, 28, 28)
    assert tr.images.dtype == torch.float32 and tr.levels == 256
    assert torch.equal(tr.integers()[:, 0], torch.as_tensor(imgs["train"]))
    assert torch.equal(te.labels, torch.arange(4) % 10)


def test_fashion_mnist_staged_from_debian_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.ISOLATED_DATA_ENV, raising=False)
    src = tmp_path / "debian"
    _make_fashion(tmp_path / "src")
    (src).mkdir()
    for f in (tmp_path / "src" / "FashionMNIST" / "raw").iterdir():
        f.rename(src / f.name)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", src)
    monkeypatch.setenv("LVM_PYRO_DATA", str(tmp_path / "cache"))
    te = load_dataset("fashion-mnist", "test")
    assert te.images.shape == (4, 1, 28, 28)
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


def test_missing_dataset_names_both_ways(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("LVM_PYRO_DATA", str(tmp_path / "cache"))

    def no_network(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd.FashionMNIST, "download", no_network)
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion-mnist", "train")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "FashionMNIST/raw" in msg
    # a root that is missing or empty is an error of its own, never a fallback to the cache
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("fashion-mnist", "train", root=tmp_path / "missing")


def test_isolated_data_folder_skips_cache_system_folder_and_download(tmp_path, monkeypatch):
    """$LVM_PYRO_DATA_ONLY (set by CI to an empty folder) hides the cache and Debian's
    system folder and turns downloads off, so a hidden data dependency fails loudly."""
    import torchvision.datasets as tvd

    monkeypatch.delenv(datasets.ISOLATED_DATA_ENV, raising=False)
    src = tmp_path / "debian"
    _make_fashion(tmp_path / "src")
    src.mkdir()
    for f in (tmp_path / "src" / "FashionMNIST" / "raw").iterdir():
        f.rename(src / f.name)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", src)  # the system folder has it
    _make_fashion(tmp_path / "cache")                                  # so does the cache
    monkeypatch.setenv("LVM_PYRO_DATA", str(tmp_path / "cache"))
    assert load_dataset("fashion-mnist", "test").images.shape == (4, 1, 28, 28)

    calls = []
    monkeypatch.setattr(tvd.FashionMNIST, "download", lambda self: calls.append(1))
    monkeypatch.setenv(datasets.ISOLATED_DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="LVM_PYRO_DATA_ONLY"):
        load_dataset("fashion-mnist", "test")
    assert calls == []                                     # no download was attempted
    assert not (tmp_path / "empty" / "FashionMNIST").exists()  # nothing staged there
    # an explicit root is still read, and the bundled digits always load
    assert load_dataset("fashion-mnist", "test", root=tmp_path / "cache").images.shape[0] == 4
    assert load_dataset("digits", "test").images.shape == (297, 1, 8, 8)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "valid")


def test_digits_split_is_fixed_and_disjoint():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert tr.images.shape == (1500, 1, 8, 8) and te.images.shape == (297, 1, 8, 8)
    assert float(tr.images.max()) == 1.0 and float(tr.images.min()) == 0.0
    assert torch.equal(load_dataset("digits", "test").images, te.images)
    # no test image appears in the training split
    d = torch.cdist(te.images.flatten(1), tr.images.flatten(1))
    assert int((d.min(1).values == 0).sum()) < 5  # (the digits set has a few exact duplicates)


def test_chunked_binarization_is_bernoulli_of_the_intensities():
    # per-pixel probabilities 0, 0.1, ..., 1 over 4000 images: each pixel's frequency within
    # 5 sd of its p (sd <= sqrt(.25 / 4000) = 0.0079), 0 and 1 exact
    p = torch.linspace(0, 1, 11).repeat(4000, 1).reshape(4000, 1, 11)
    b = binarize_chunked(p, torch.Generator().manual_seed(0), chunk=777)  # chunks cut rows
    assert b.shape == p.shape and b.dtype == p.dtype and set(b.unique().tolist()) <= {0.0, 1.0}
    freq = b.mean(0).flatten()
    assert freq[0] == 0 and freq[-1] == 1
    assert (freq - torch.linspace(0, 1, 11)).abs().max() < 5 * 0.0079
    # exactly u < p with u the generator's uniforms in order: any chunk size, the same bits
    u = torch.empty(p.numel()).uniform_(generator=torch.Generator().manual_seed(0))
    assert torch.equal(b.flatten(), (u < p.flatten()).float())
    assert torch.equal(binarize_chunked(p.double(), torch.Generator().manual_seed(3), chunk=5),
                       binarize_chunked(p.double(), torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        binarize_chunked(p + 0.5)
    with pytest.raises(ValueError, match="floating-point"):
        binarize_chunked(torch.ones(3, dtype=torch.uint8))


def test_binarization_statistics_and_modes():
    p = torch.full((200, 1, 10, 10), 0.3)
    b = binarize(p, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    # 20000 Bernoulli(0.3) draws: sd of the mean = sqrt(.21/20000) = 0.0032; 5 sd
    assert abs(float(b.mean()) - 0.3) < 0.017
    dyn = Binarizer("dynamic", seed=1)
    assert not torch.equal(dyn(p), dyn(p))
    st = Binarizer("static", seed=1)
    assert torch.equal(st(p), st(p))
    assert torch.equal(Binarizer("dynamic", seed=1)(p), Binarizer("dynamic", seed=1)(p))
    assert torch.equal(binarize_test(p), binarize_test(p))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        binarize(p * 4)
    with pytest.raises(ValueError, match="binarization"):
        Binarizer("sometimes")


def test_dequantize_cells_and_uniform_bound():
    from lvm_pyro.data import dequantize, dequantize_test

    levels = 17
    k = torch.arange(levels, dtype=torch.float32).repeat(200)
    y = dequantize(k / (levels - 1), levels, torch.Generator().manual_seed(0))
    # each value lands in its own cell [k / L, (k + 1) / L)
    assert bool(((y >= k / levels) & (y < (k + 1) / levels)).all())
    # within a cell the offset is U[0, 1): mean 1/2 (sd of the mean 0.29/sqrt(3400) = 0.005)
    assert abs(float((y * levels - k).mean()) - 0.5) < 0.025
    assert torch.equal(dequantize_test(k / 16, levels), dequantize_test(k / 16, levels))
    # closed form: the uniform density on [0, 1) has log p(y) = 0, so the bound
    # -log p(y) + D log L equals -log P(k) of the uniform distribution over L levels exactly
    with pytest.raises(ValueError, match="levels"):
        dequantize(k / 16, 1)
    b = Binarizer("dequantize", seed=0, levels=levels)
    assert not torch.equal(b(k / 16), b(k / 16))


@pytest.mark.dataset("fashion-mnist")
def test_real_fashion_mnist_when_present():
    """The full Fashion-MNIST (Xiao et al. 2017): 60000 / 10000 images of 28x28 on 256 levels,
    10 balanced classes. Skipped, with the reason, where the data set is absent."""
    tr, te = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.levels == 256 and float(tr.images.min()) == 0.0 and float(tr.images.max()) == 1.0
    assert torch.equal(torch.bincount(te.labels), torch.full((10,), 1000))
