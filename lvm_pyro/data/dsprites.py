"""dSprites: binary images of 2-D shapes with five known generative factors.

The factors and their ranges follow Matthey et al. 2017 ("dSprites: disentanglement
testing sprites dataset"), without the constant colour factor:

    shape        3 values  {square, ellipse, heart}
    scale        6 values  linspace(0.5, 1, 6)
    orientation  40 values 2 pi k / 40, k = 0..39          (radians)
    pos_x        32 values linspace(0, 1, 32)
    pos_y        32 values linspace(0, 1, 32)

:func:`make_dsprites` renders every factor combination procedurally (no download), either
at the full size (``variant="full"``: 64 x 64 pixels, 40 orientations, 32 x 32 positions,
737280 images) or at the CPU-sized default (``variant="cpu"``: 32 x 32 pixels,
10 orientations, 16 x 16 positions, 46080 images). :func:`load_dsprites_npz` reads the
real data set's ``.npz`` when a user has it. :func:`load_dsprites` is what
``load_dataset("dsprites", split)`` calls.

Rendering (deterministic, no randomness anywhere): pixel (row r, column c) covers
[c, c + 1) x [r, r + 1) in pixel units. A shape at scale s, angle theta and centre
(cx, cy) covers the points whose local coordinates

    (u, v) = R(-theta) (x - cx, y - cy) / (s * half_size),   half_size = 0.15 * image_size

lie in the unit shape: square max(|u|, |v|) <= 1 (area 4); ellipse u^2 + (v / 0.5)^2 <= 1
(area pi / 2); heart (a^2 + b^2 - 1)^3 - a^2 b^3 <= 0 with (a, b) = 1.14 (u, -v + 0.11)
(the classic implicit heart, pointing down the image). A pixel is 1 when at least half of
its 4 x 4 sub-pixel centres are inside. Positions move the centre by a whole number of
pixels (``position_step`` = 1 pixel in both variants, with the positions centred in the
image), so changing pos_x / pos_y translates the image exactly; the shape never leaves the
image (the rotated square reaches sqrt(2) half-sizes from its centre). pos_x moves along
the columns (to the right), pos_y along the rows (downwards).

Differences to the real data: the real orientation grid is 40 values over [0, 2 pi] with
both ends (so its first and last orientation coincide); the real positions span most of the
image, ours 31 (full) or 15 (cpu) pixels around the centre; our shapes are drawn from the
formulas above, not the original sprites.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

__all__ = ["FACTOR_NAMES", "SHAPES", "DSPRITES_VARIANTS", "DSPRITES_NPZ", "DSPRITES_TEST_FRACTION",
           "DSpritesConfig", "FactorImageDataset", "make_dsprites", "render_dsprites",
           "dsprites_factor_values", "load_dsprites_npz", "load_dsprites", "split_indices"]

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
SHAPES = ("square", "ellipse", "heart")
#: file name of the real data set (Matthey et al. 2017, github.com/deepmind/dsprites-dataset)
DSPRITES_NPZ = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
#: fraction of every dSprites data set held out as the test split
DSPRITES_TEST_FRACTION = 0.1
_SUPERSAMPLE = 4
_HALF_SIZE = 0.15  # half-size of a shape at scale 1, as a fraction of the image size
_ELLIPSE_MINOR = 0.5
_HEART_STRETCH, _HEART_SHIFT = 1.14, 0.11


class DSpritesConfig(NamedTuple):
    """Size of a procedural dSprites set.

    Attributes:
        image_size: H = W in pixels (>= 16).
        num_orientations: orientations 2 pi k / num_orientations, k = 0..num_orientations-1.
        num_positions: values of pos_x and of pos_y each (>= 2).
        num_scales: scales linspace(0.5, 1, num_scales).
    """

    image_size: int
    num_orientations: int
    num_positions: int
    num_scales: int = 6

    @property
    def half_size(self) -> float:
        """Half-size of a shape at scale 1, pixels."""
        return _HALF_SIZE * self.image_size

    @property
    def position_step(self) -> int:
        """Pixels between neighbouring positions (a whole number, so that positions translate
        the image exactly)."""
        return 1

    @property
    def first_centre(self) -> float:
        """Centre coordinate (pixels) of position index 0; the positions are centred."""
        return self.image_size / 2 - self.position_step * (self.num_positions - 1) / 2

    @property
    def num_images(self) -> int:
        """Number of factor combinations (= images) of the variant."""
        return len(SHAPES) * self.num_scales * self.num_orientations * self.num_positions ** 2

    def validate(self) -> None:
        """Raise ValueError when a shape could leave the image or a size is out of range."""
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.num_orientations < 1 or self.num_scales < 1:
            raise ValueError("num_orientations and num_scales must be >= 1, got "
                             f"{self.num_orientations} and {self.num_scales}")
        if self.num_positions < 2:
            raise ValueError(f"num_positions must be >= 2, got {self.num_positions}")
        reach = math.sqrt(2) * self.half_size  # rotated square at scale 1
        lo = self.first_centre - reach
        hi = self.first_centre + self.position_step * (self.num_positions - 1) + reach
        if lo < 0 or hi > self.image_size:
            raise ValueError(
                f"num_positions={self.num_positions} moves shapes out of a "
                f"{self.image_size}-pixel image (positions are 1 pixel apart); use at most "
                f"{int(self.image_size - 2 * reach)} positions or a larger image_size")


#: the two procedural sizes: Matthey et al.'s full grid and the CPU-sized default
DSPRITES_VARIANTS = {
    "full": DSpritesConfig(image_size=64, num_orientations=40, num_positions=32),
    "cpu": DSpritesConfig(image_size=32, num_orientations=10, num_positions=16),
}


class FactorImageDataset(NamedTuple):
    """An image data set with known generative factors (the fields of
    :class:`lvm_pyro.data.ImageDataset` plus the factors).

    Attributes:
        images: (N, 1, H, W) float32 in {0, 1}.
        labels: (N,) int64, the shape index (factor 0), for code that reads class labels.
        levels: 2 (binary pixels).
        name: ``"dsprites"``.
        factors: (N, 5) int64 factor indices, columns in the order of ``factor_names``.
        factor_names: ``("shape", "scale", "orientation", "pos_x", "pos_y")``.
        factor_values: one float64 tensor per factor mapping index -> value (shape: 0, 1, 2;
            scale: relative size; orientation: radians; positions: in [0, 1]).
        source: where the data came from: the real ``.npz`` file's absolute path, or
            ``"lvm_pyro.data.dsprites:<variant>"`` for a procedural set.
    """

    images: torch.Tensor
    labels: torch.Tensor
    levels: int
    name: str
    factors: torch.Tensor
    factor_names: tuple
    factor_values: tuple
    source: str = ""

    def integers(self) -> torch.Tensor:
        """Raw integer pixels (N, 1, H, W) int64 in {0, 1}."""
        return torch.round(self.images * (self.levels - 1)).long()

    @property
    def factor_sizes(self) -> tuple:
        """Number of values of each factor."""
        return tuple(len(v) for v in self.factor_values)


def _config(variant: str | DSpritesConfig) -> DSpritesConfig:
    if isinstance(variant, DSpritesConfig):
        cfg = variant
    elif variant in DSPRITES_VARIANTS:
        cfg = DSPRITES_VARIANTS[variant]
    else:
        raise ValueError(f"unknown dSprites variant {variant!r}; choose one of "
                         f"{tuple(DSPRITES_VARIANTS)} or pass a DSpritesConfig")
    cfg.validate()
    return cfg


def dsprites_factor_values(variant: str | DSpritesConfig = "cpu") -> tuple:
    """Values of the five factors of a procedural variant (see :class:`FactorImageDataset`)."""
    cfg = _config(variant)
    return (torch.arange(len(SHAPES), dtype=torch.float64),
            torch.linspace(0.5, 1.0, cfg.num_scales, dtype=torch.float64),
            2 * math.pi * torch.arange(cfg.num_orientations, dtype=torch.float64) / cfg.num_orientations,
            torch.linspace(0.0, 1.0, cfg.num_positions, dtype=torch.float64),
            torch.linspace(0.0, 1.0, cfg.num_positions, dtype=torch.float64))


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of local coordinates (u, v) in the unit shape (see module docstring)."""
    if shape == 0:
        return torch.maximum(u.abs(), v.abs()) <= 1
    if shape == 1:
        return u ** 2 + (v / _ELLIPSE_MINOR) ** 2 <= 1
    a, b = _HEART_STRETCH * u, _HEART_STRETCH * (-v + _HEART_SHIFT)
    return (a ** 2 + b ** 2 - 1) ** 3 - a ** 2 * b ** 3 <= 0


@functools.lru_cache(maxsize=4)
def _templates(cfg: DSpritesConfig) -> torch.Tensor:
    """(3, num_scales, num_orientations, H, W) bool: every shape at position index (0, 0).
    Cached per configuration (3 MB for the full variant); callers must not modify it."""
    size, ss = cfg.image_size, _SUPERSAMPLE
    sub = (torch.arange(size * ss, dtype=torch.float64) + 0.5) / ss  # sub-pixel centres
    y, x = torch.meshgrid(sub, sub, indexing="ij")  # (H ss, W ss)
    dx, dy = x - cfg.first_centre, y - cfg.first_centre
    scales = dsprites_factor_values(cfg)[1]
    angles = dsprites_factor_values(cfg)[2]
    out = torch.empty(len(SHAPES), cfg.num_scales, cfg.num_orientations, size, size, dtype=torch.bool)
    for k, theta in enumerate(angles.tolist()):
        c, s = math.cos(theta), math.sin(theta)
        ru, rv = c * dx + s * dy, -s * dx + c * dy  # rotate by -theta
        for j, scale in enumerate(scales.tolist()):
            r = scale * cfg.half_size
            for i in range(len(SHAPES)):
                inside = _inside(i, ru / r, rv / r).double()  # (H ss, W ss)
                cover = inside.reshape(size, ss, size, ss).mean((1, 3))  # (H, W)
                out[i, j, k] = cover >= 0.5
    return out


def render_dsprites(factors: torch.Tensor, variant: str | DSpritesConfig = "cpu") -> torch.Tensor:
    """Render images for given factor indices, deterministically.

    Args:
        factors: (N, 5) integer indices (shape, scale, orientation, pos_x, pos_y) within the
            variant's ranges.
        variant: ``"cpu"`` (32 x 32, default), ``"full"`` (64 x 64) or a
            :class:`DSpritesConfig`.

    Returns:
        (N, 1, H, W) uint8 in {0, 1}.

    Raises:
        ValueError: wrong shape of ``factors``, an index out of range, or an unknown variant.
    """
    cfg = _config(variant)
    factors = torch.as_tensor(factors)
    if factors.dim() != 2 or factors.shape[1] != 5:
        raise ValueError(f"factors must have shape (N, 5), got {tuple(factors.shape)}")
    if factors.is_floating_point():
        raise ValueError("factors must be integer indices, not values")
    sizes = (len(SHAPES), cfg.num_scales, cfg.num_orientations, cfg.num_positions, cfg.num_positions)
    for col, (name, n) in enumerate(zip(FACTOR_NAMES, sizes)):
        bad = (factors[:, col] < 0) | (factors[:, col] >= n)
        if bool(bad.any()):
            raise ValueError(f"factor {name!r} must be in 0..{n - 1}; got "
                             f"{int(factors[bad.nonzero()[0, 0], col])}")
    factors = factors.long()
    templates = _templates(cfg)  # (3, S, O, H, W)
    flat = templates.reshape(-1, cfg.image_size, cfg.image_size).to(torch.uint8)  # a copy
    t_idx = (factors[:, 0] * cfg.num_scales + factors[:, 1]) * cfg.num_orientations + factors[:, 2]
    size, step = cfg.image_size, cfg.position_step
    shift = step * (cfg.num_positions - 1)  # the largest shift, pixels
    # templates at offset (shift, shift) of a zero canvas; window (a, b) of the canvas is the
    # template shifted by (shift - a, shift - b) pixels, zero-filled (validate() keeps the
    # ink inside the image, so no shape is cut)
    canvas = torch.zeros(len(flat), size + shift, size + shift, dtype=torch.uint8)
    canvas[:, shift:, shift:] = flat
    s0, s1, s2 = canvas.stride()
    windows = canvas.as_strided((len(flat), shift + 1, shift + 1, size, size),
                                (s0, s1, s2, s1, s2))  # a view, no copy
    sx, sy = step * factors[:, 3], step * factors[:, 4]
    return windows[t_idx, shift - sy, shift - sx].unsqueeze(1)  # (N, 1, H, W)


def _all_factors(sizes: tuple) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n) for n in sizes], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)  # (N, 5), last factor fastest


def make_dsprites(variant: str | DSpritesConfig = "cpu") -> FactorImageDataset:
    """Every factor combination of a procedural dSprites variant, in row-major order
    (shape slowest, pos_y fastest, as in the real ``.npz``).

    Args:
        variant: ``"cpu"`` (default; 46080 images of 32 x 32, about 190 MB as float32),
            ``"full"`` (737280 images of 64 x 64: 12 GB as float32, use a machine with the
            memory) or a :class:`DSpritesConfig`.

    Returns:
        :class:`FactorImageDataset` (images float32 in {0, 1}).

    Raises:
        ValueError: unknown variant or a configuration whose shapes leave the image.
    """
    cfg = _config(variant)
    sizes = (len(SHAPES), cfg.num_scales, cfg.num_orientations, cfg.num_positions, cfg.num_positions)
    factors = _all_factors(sizes)
    images = render_dsprites(factors, cfg).to(torch.float32)
    label = variant if isinstance(variant, str) else repr(cfg)
    return FactorImageDataset(images, factors[:, 0].clone(), 2, "dsprites", factors,
                              FACTOR_NAMES, dsprites_factor_values(cfg),
                              f"lvm_pyro.data.dsprites:{label}")


def load_dsprites_npz(path: str | Path) -> FactorImageDataset:
    """Read the real dSprites file (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``,
    keys ``imgs`` (737280, 64, 64) uint8 and ``latents_classes`` (737280, 6) with the
    constant colour first; ``latents_values`` when present).

    Returns:
        :class:`FactorImageDataset` of all 737280 images (float32: about 12 GB).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file lacks the keys above or has inconsistent shapes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dSprites file at {path}")
    with np.load(path, allow_pickle=False, encoding="latin1") as d:
        if "imgs" not in d or "latents_classes" not in d:
            raise ValueError(f"{path} is not the dSprites .npz: it needs the arrays 'imgs' and "
                             f"'latents_classes', found {sorted(d.keys())}")
        imgs = torch.from_numpy(np.asarray(d["imgs"], dtype=np.uint8))
        classes = torch.from_numpy(np.asarray(d["latents_classes"], dtype=np.int64))
        values = np.asarray(d["latents_values"], dtype=np.float64) if "latents_values" in d else None
    if imgs.dim() != 3 or classes.shape != (imgs.shape[0], 6):
        raise ValueError(f"{path}: expected imgs (N, H, W) and latents_classes (N, 6), got "
                         f"{tuple(imgs.shape)} and {tuple(classes.shape)}")
    factors = classes[:, 1:].contiguous()  # drop the constant colour
    factor_values = []
    for c in range(5):
        col = factors[:, c].numpy()
        vals = np.arange(col.max() + 1, dtype=np.float64)  # indices when no values stored
        if values is not None:
            vals[:] = np.nan  # an index that never occurs has no value
            vals[col] = values[:, c + 1]
        factor_values.append(torch.from_numpy(vals))
    return FactorImageDataset(imgs.unsqueeze(1).to(torch.float32), factors[:, 0].clone(), 2,
                              "dsprites", factors, FACTOR_NAMES, tuple(factor_values),
                              str(path.resolve()))


def split_indices(num_images: int, split: str) -> torch.Tensor:
    """The fixed train / test split of a dSprites set of ``num_images`` images: a seed-0
    permutation (``torch.randperm`` with its own generator); its first
    ceil(0.1 N) entries are the test split, the rest (in permutation order) the training
    split. The same for the procedural sets and the real ``.npz``.

    Raises:
        ValueError: ``split`` not ``"train"`` / ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(0))
    num_test = math.ceil(DSPRITES_TEST_FRACTION * num_images)
    return perm[:num_test] if split == "test" else perm[num_test:]


def load_dsprites(split: str = "train", root: Optional[str | Path] = None,
                  variant: str | DSpritesConfig = "cpu") -> FactorImageDataset:
    """The train or test split of dSprites (see :func:`split_indices`: 90 % / 10 %).

    Args:
        split: ``"train"`` or ``"test"``.
        root: a folder holding the real ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
            (directly or in ``root/dsprites/``). ``None``: the procedural set of ``variant``,
            rendered here (about 1 s for ``"cpu"``).
        variant: procedural size when ``root`` is None: ``"cpu"`` or ``"full"``.

    Returns:
        :class:`FactorImageDataset` of the split.

    Raises:
        ValueError: bad ``split`` or ``variant``.
        lvm_pyro.data.DatasetNotFoundError: ``root`` is given but holds no dSprites file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is None:
        full = make_dsprites(variant)
    else:
        from .datasets import DatasetNotFoundError

        candidates = [Path(root) / DSPRITES_NPZ, Path(root) / "dsprites" / DSPRITES_NPZ]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DatasetNotFoundError(
                f"dSprites not found: looked for {' and '.join(map(str, candidates))}. Get "
                f"{DSPRITES_NPZ} from github.com/deepmind/dsprites-dataset, or pass no root to "
                "use the procedural set")
        full = load_dsprites_npz(found)
    sel = split_indices(len(full.images), split)
    return full._replace(images=full.images[sel], labels=full.labels[sel],
                         factors=full.factors[sel])
