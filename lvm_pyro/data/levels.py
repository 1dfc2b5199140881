"""Discrete intensity levels of quantised images (no model knowledge here)."""

from __future__ import annotations

import torch

__all__ = ["to_levels", "off_grid"]


#: tolerance, in levels, of a float value on the grid k / (L - 1)
GRID_TOLERANCE = 1e-3


def off_grid(x: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Boolean mask of the float values of ``x`` that are not on the grid k / (L - 1),
    k in {0, ..., L - 1} (within :data:`GRID_TOLERANCE` of a level; NaN counts as off)."""
    top = num_levels - 1
    scaled = x * top
    k = torch.round(scaled)
    return ~((scaled - k).abs() <= GRID_TOLERANCE) | (k < 0) | (k > top)


def to_levels(x: torch.Tensor, num_levels: int, name: str = "x") -> torch.Tensor:
    """Integer intensity levels k in {0, ..., L - 1} of quantised data, as floats.

    Two encodings are accepted:

    * an integer dtype: the levels themselves (e.g. raw 8-bit pixels, L = 256);
    * a floating dtype: the library's image convention, the grid k / (L - 1) in [0, 1]
      (``ImageDataset.images`` of 8-bit data, binarization ``"none"``).

    Args:
        x: (...) tensor in one of the two encodings.
        num_levels: L >= 2.
        name: the site / argument name used in error messages.

    Returns:
        (...) tensor of levels k (integer-valued floats): x's dtype when floating, else
        ``torch.get_default_dtype()``.

    Raises:
        ValueError: L < 2; values outside 0..L-1 (integers) or off the grid
        k / (L - 1) (floats, tolerance 1e-3 of a level), NaN or infinite values.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    top = num_levels - 1
    if torch.is_floating_point(x):
        k = torch.round(x * top)
        bad = off_grid(x, num_levels)
        kind = f"floats on the grid k / {top} in [0, 1]"
    else:
        k = x.to(torch.get_default_dtype())
        bad = (k < 0) | (k > top)
        kind = f"integer levels 0..{top}"
    if bool(bad.any()):
        v = x[bad].flatten()[0].item()
        raise ValueError(
            f"'{name}': dequantisation needs {kind} ({num_levels} levels), found {v:g} "
            f"({int(bad.sum())} of {x.numel()} entries). Pass the quantised data itself "
            "(8-bit images as ImageDataset.images with binarization 'none', not binarised "
            "or already dequantised values), or set num_levels to the data's levels")
    return k
