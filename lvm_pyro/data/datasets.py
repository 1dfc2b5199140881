"""Datasets as in-memory tensors: one entry point, :func:`load_dataset`."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

import torch

__all__ = ["ImageDataset", "load_dataset", "DatasetNotFoundError", "DATASETS",
           "DEBIAN_FASHION_MNIST_DIR", "default_root", "DATASET_LEVELS", "ISOLATED_DATA_ENV",
           "isolated_data_dir"]

#: where Debian's ``dataset-fashion-mnist`` package puts the IDX ``.gz`` files
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("digits", "fashion-mnist", "mnist", "dsprites")
#: discrete intensity levels of each data set's raw pixels
DATASET_LEVELS = {"digits": 17, "fashion-mnist": 256, "mnist": 256, "dsprites": 2}
#: environment variable: when set to a folder, every data-set lookup uses that folder alone
#: (no cache, no system folder, no download). CI points it at an empty folder so that a
#: hidden dependency on a downloadable data set fails there, not on a user's machine.
ISOLATED_DATA_ENV = "LVM_PYRO_DATA_ONLY"
DIGITS_NUM_TEST = 297  # fixed split: 1500 train / 297 test
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could be found neither locally nor by download."""


class ImageDataset(NamedTuple):
    """An image data set in memory.

    Attributes:
        images: (N, C, H, W) float32 intensities in [0, 1] (raw value / max value):
            digits (N, 1, 8, 8) from 0..16, MNIST / Fashion-MNIST (N, 1, 28, 28) from 0..255.
        labels: (N,) int64 class labels.
        levels: number of discrete intensity levels of the raw data (17 or 256); the raw
            integers are ``round(images * (levels - 1))``.
        name: data-set name.
        source: where the data came from: an absolute folder path, or
            ``"sklearn.datasets.load_digits"`` for the bundled digits.
    """

    images: torch.Tensor
    labels: torch.Tensor
    levels: int
    name: str
    source: str = ""

    def integers(self) -> torch.Tensor:
        """Raw integer pixels (N, C, H, W) int64 in 0..levels-1."""
        return torch.round(self.images * (self.levels - 1)).long()


def isolated_data_dir() -> Optional[Path]:
    """The folder named by ``$LVM_PYRO_DATA_ONLY`` (:data:`ISOLATED_DATA_ENV`), or ``None``.

    When set, downloadable data sets are looked for in that folder only: the cache, Debian's
    system folder and torchvision's download are all skipped.
    """
    value = os.environ.get(ISOLATED_DATA_ENV)
    return Path(value) if value else None


def default_root() -> Path:
    """Cache root: ``$LVM_PYRO_DATA_ONLY`` when set, else ``$LVM_PYRO_DATA`` or
    ``~/.cache/lvm_pyro``."""
    isolated = isolated_data_dir()
    if isolated is not None:
        return isolated
    return Path(os.environ.get("LVM_PYRO_DATA", Path.home() / ".cache" / "lvm_pyro"))


def _digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.as_tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    sel = perm[:DIGITS_NUM_TEST] if split == "test" else perm[DIGITS_NUM_TEST:]
    return ImageDataset(x[sel], y[sel], DATASET_LEVELS["digits"], "digits",
                        "sklearn.datasets.load_digits")


def _stage_idx_gz(src_dir: Path, raw_dir: Path) -> bool:
    """Decompress ``<name>.gz`` from src_dir into raw_dir (atomically); True if all 4 exist."""
    if not all((src_dir / f"{n}.gz").exists() for n in _IDX_FILES):
        return False
    raw_dir.mkdir(parents=True, exist_ok=True)
    for n in _IDX_FILES:
        dst = raw_dir / n
        if dst.exists():
            continue
        tmp = raw_dir / f".{n}.tmp{os.getpid()}"
        with gzip.open(src_dir / f"{n}.gz", "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    return True


def _torchvision(name: str, split: str, root: Optional[Path]) -> ImageDataset:
    from torchvision import datasets as tvd

    cls, folder = (tvd.FashionMNIST, "FashionMNIST") if name == "fashion-mnist" else (tvd.MNIST, "MNIST")
    train = split == "train"
    tried = []
    isolated = isolated_data_dir()
    if root is not None:  # a folder the caller named: only there, never a silent fallback
        root = Path(root).expanduser().resolve()
        if not root.is_dir() or not any(root.iterdir()):
            raise DatasetNotFoundError(
                f"data root {root} {'is empty' if root.is_dir() else 'does not exist'}; "
                f"place the four IDX files ({', '.join(_IDX_FILES)}, optionally .gz) under "
                f"{root / folder / 'raw'}, or leave the root unset to use the cache "
                f"({default_root()})")
        candidates = [root]
    else:
        candidates = [default_root()]
    cache = default_root()  # the isolated folder when set: no cache, system folder, download
    for r in candidates:
        raw = r / folder / "raw"
        if not all((raw / n).exists() for n in _IDX_FILES):
            # torchvision also accepts the .gz files themselves next to raw/
            if name == "fashion-mnist" and r == cache and root is None and isolated is None:
                _stage_idx_gz(DEBIAN_FASHION_MNIST_DIR, raw)
            _stage_idx_gz(raw, raw)
        try:
            ds = cls(root=str(r), train=train, download=False)
            source = str((r / folder / "raw").resolve())
            break
        except RuntimeError as e:
            tried.append(f"{r / folder / 'raw'} ({e})")
    else:
        if root is not None:
            raise DatasetNotFoundError(
                f"{name} not found under the data root {root}: looked in {'; '.join(tried)}. "
                f"Place the four IDX files ({', '.join(_IDX_FILES)}, optionally .gz) under "
                f"{root / folder / 'raw'}")
        created = _missing_parents(cache / folder / "raw")
        try:
            if isolated is not None:
                raise RuntimeError(f"downloads are off while ${ISOLATED_DATA_ENV}={isolated} "
                                   "restricts data-set lookups to that folder")
            ds = cls(root=str(cache), train=train, download=True)
            source = str((cache / folder / "raw").resolve())
        except Exception as e:  # no network here: name both ways to get the data
            _remove_empty(created)  # a failed download leaves no empty folders behind
            hint = ("apt-get install dataset-fashion-mnist (IDX files in "
                    f"{DEBIAN_FASHION_MNIST_DIR}), or " if name == "fashion-mnist" else "")
            raise DatasetNotFoundError(
                f"{name} not found. Looked in: {'; '.join(tried)}; download failed: {e}. "
                f"Get it with: {hint}placing the four IDX files ({', '.join(_IDX_FILES)}, "
                f"optionally .gz) under <root>/{folder}/raw/ and passing root=<root> "
                f"(or --data-root), or with network access for torchvision's download."
            ) from e
    x = ds.data.to(torch.float32).unsqueeze(1) / 255.0  # (N, 1, 28, 28)
    y = ds.targets.to(torch.int64)
    return ImageDataset(x, y, DATASET_LEVELS[name], name, source)


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that exist and are empty, e.g. those a failed
    download created."""
    for d in folders:
        for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True) if d.is_dir() else ():
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def load_dataset(name: str, split: str = "train", root: Optional[str | Path] = None) -> ImageDataset:
    """Load a data set into memory.

    Args:
        name: ``"digits"`` (scikit-learn's 8x8 handwritten digits, bundled; fixed split of
            1500 train / 297 test by a seed-0 permutation), ``"fashion-mnist"``
            (torchvision FashionMNIST, 60000 / 10000), or ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        root: a folder holding ``FashionMNIST/raw/`` (or ``MNIST/raw/``) IDX files: when
            given, the data are looked for there only (a missing or empty folder is an
            error). Without it, Fashion-MNIST is looked for in the cache root
            (:func:`default_root`), staged there from Debian's ``dataset-fashion-mnist``
            package (``/usr/share/datasets/fashion-mnist``), then by torchvision's
            download (a failed download leaves no new empty folders). When
            ``$LVM_PYRO_DATA_ONLY`` names a folder, it replaces the cache and nothing is
            staged from the system folder or downloaded (an explicit ``root`` is still read).
            ``"dsprites"``: with no root, the procedural CPU-sized set; with a root, the real
            ``.npz`` under it (:func:`lvm_pyro.data.dsprites.load_dsprites`: a fixed
            seed-0 90 % / 10 % split; returns a ``FactorImageDataset`` with ``factors``
            (N, 5) int64 and ``factor_names``).

    Returns:
        :class:`ImageDataset` with float32 images in [0, 1] (not binarised).

    Raises:
        ValueError: unknown name or split.
        DatasetNotFoundError: ``root`` is missing or empty or lacks the files, or the
            data exist nowhere and cannot be downloaded; the message names the ways to
            get them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return _digits(split)
    if name == "dsprites":
        from .dsprites import load_dsprites

        return load_dsprites(split, root)
    return _torchvision(name, split, None if root is None else Path(root))
