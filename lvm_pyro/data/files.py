"""A user's own data from a file or folder: ``.npy`` / ``.npz`` / ``.pt`` arrays (N, ...) or
a folder of images (torchvision ``ImageFolder``), split into train / test by a seeded
permutation."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checks import all_finite
from .datasets import DatasetNotFoundError, ImageDataset

__all__ = ["DATA_SUFFIXES", "load_data_file", "split_indices"]

#: file suffixes read as arrays (anything else must be a folder of images)
DATA_SUFFIXES = (".npy", ".npz", ".pt")


def split_indices(n: int, split: str, *, split_seed: int = 0,
                  test_fraction: float = 0.2) -> torch.Tensor:
    """Indices of ``split`` (``"train"`` / ``"test"``) among n points: a permutation
    seeded by ``split_seed``, its first ``round(n * test_fraction)`` entries (at least 1)
    are the test split.

    Raises:
        ValueError: unknown split, ``test_fraction`` outside (0, 1), or fewer than 2 points.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise ValueError(f"the data hold {n} point(s); a train / test split needs at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    num_test = min(n - 1, max(1, round(n * test_fraction)))
    return perm[:num_test] if split == "test" else perm[num_test:]


def _array(path: Path) -> torch.Tensor:
    import numpy as np

    if path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            obj = obj.get("x", obj.get("data"))
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path} must hold a tensor (N, ...) or a dict with key 'x'")
        return obj
    arr = np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        keys = list(arr.keys())
        key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"{path} holds arrays {keys}; name the data array 'x'")
        arr = arr[key]
    return torch.from_numpy(np.ascontiguousarray(arr))


def _image_folder(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    def load(file: str):  # grayscale stays one channel (ImageFolder's loader makes RGB)
        from PIL import Image

        with Image.open(file) as im:
            return im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")

    ds = ImageFolder(str(path), transform=pil_to_tensor, loader=load)
    images = [ds[i][0] for i in range(len(ds))]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"the images in {path} have different shapes {sorted(shapes)[:3]}; "
                         "resize them to one size first")
    return torch.stack(images), torch.as_tensor(ds.targets, dtype=torch.long)


def load_data_file(path: str | Path, split: str = "train", *, split_seed: int = 0,
                   test_fraction: float = 0.2) -> ImageDataset:
    """A user's data set: an array file or an image folder, one split of it.

    Args:
        path: a ``.npy`` / ``.npz`` (the array ``x``, or its only array) / ``.pt`` (a
            tensor, or a dict with ``x``) of shape (N, ...), or a folder of class
            sub-folders of images of one size (torchvision ``ImageFolder``; grayscale
            images give (N, 1, H, W), others (N, 3, H, W)).
        split: ``"train"`` or ``"test"`` (:func:`split_indices`).
        split_seed, test_fraction: the seeded split.

    Returns:
        :class:`~lvm_pyro.data.ImageDataset`: ``images`` (n, ...) float32: ``uint8``
        arrays and images as intensities in [0, 1] (value / 255, ``levels`` 256); other
        arrays as they are (``levels`` 256 is then nominal); ``labels`` the folder classes
        (zeros for arrays); ``source`` the absolute path.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        ValueError: an unknown suffix, an array with fewer than 2 points, a bool/complex
            array, NaN / infinite values, or images of different sizes.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DatasetNotFoundError(f"no data at {path}; --data takes a .npy / .npz / .pt file "
                                   "or a folder of images")
    if path.is_dir():
        x, labels = _image_folder(path)
    elif path.suffix in DATA_SUFFIXES:
        x = _array(path)
        labels = torch.zeros(len(x), dtype=torch.long) if x.dim() else torch.zeros(0)
    else:
        raise ValueError(f"{path}: unknown data file type {path.suffix!r}; use {DATA_SUFFIXES} "
                         "or a folder of images")
    if x.dim() < 2:
        raise ValueError(f"{path}: data must have shape (N, ...) with N >= 1 and one or more "
                         f"dims per point, got {tuple(x.shape)} (for scalars use shape (N, 1))")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.dtype in (torch.bool,) or x.is_complex():
        raise ValueError(f"{path}: data of dtype {x.dtype} are not supported; convert to float")
    x = x.float()
    if not all_finite(x):
        raise ValueError(f"{path}: the data hold NaN or infinite values")
    idx = split_indices(len(x), split, split_seed=split_seed, test_fraction=test_fraction)
    return ImageDataset(x[idx], labels[idx], 256, str(path), str(path))
