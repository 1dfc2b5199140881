"""Binarisation of intensities in [0, 1] as in the IWAE paper (Burda et al. 2015, sec. 5)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["binarize", "Binarizer", "BINARIZATIONS", "binarize_test", "dequantize",
           "dequantize_test"]

BINARIZATIONS = ("dynamic", "static", "none", "dequantize")


def binarize(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with p = x: x (..., ) float in [0, 1] -> same shape,
    values in {0., 1.}.

    Raises:
        ValueError: x outside [0, 1].
    """
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("binarize needs intensities in [0, 1]; rescale the data first")
    return torch.bernoulli(x, generator=generator)


def binarize_test(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The fixed binarisation of a test set (one draw with ``seed``, default 0), so every
    evaluation sees the same bits."""
    return binarize(x, torch.Generator(device=x.device).manual_seed(seed))


def dequantize(x: torch.Tensor, levels: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform dequantisation (Theis et al. 2016; Ho et al. 2019, sec. 3.1): pixels on the
    grid k / (levels - 1), k in 0..levels-1, become y = (k + u) / levels with
    u ~ U[0, 1) per pixel, so y in [0, 1). For any density p on [0, 1)^D,
    log P(k) >= E_u[log p(y)] - D log(levels): a continuous likelihood's NLL plus
    D log(levels) nats is an upper bound on the discrete NLL.

    Raises:
        ValueError: x outside [0, 1] or levels < 2.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("dequantize needs intensities in [0, 1]; rescale the data first")
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return (k + u) / levels


def dequantize_test(x: torch.Tensor, levels: int, seed: int = 0) -> torch.Tensor:
    """The fixed dequantisation of a test set (one draw of u with ``seed``, default 0)."""
    return dequantize(x, levels, torch.Generator().manual_seed(seed))


class Binarizer:
    """Per-epoch binarisation of a training set.

    Modes: ``"dynamic"`` (a fresh Bernoulli draw every epoch from a seeded generator),
    ``"static"`` (one fixed draw, made once with the seed), ``"none"`` (data unchanged),
    ``"dequantize"`` (fresh uniform dequantisation noise every epoch, see
    :func:`dequantize`; needs ``levels``, the number of discrete intensity levels).
    The generator state is part of the training checkpoint (:meth:`state`).

    Raises:
        ValueError: unknown mode.
    """

    def __init__(self, mode: str = "dynamic", seed: int = 0, levels: int = 256):
        if mode not in BINARIZATIONS:
            raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {mode!r}")
        self.mode = mode
        self.levels = int(levels)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._static: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The training data for the next epoch: x (N, ...) in [0, 1]."""
        if self.mode == "none":
            return x
        if self.mode == "dequantize":
            return dequantize(x, self.levels, self.generator)
        if self.mode == "static":
            if self._static is None or self._static.shape != x.shape:
                g = torch.Generator().manual_seed(self.seed)
                self._static = binarize(x.cpu(), g).to(x.device)
            return self._static
        return binarize(x.cpu(), self.generator).to(x.device)

    def state(self) -> torch.Tensor:
        """Generator state (uint8 tensor) for checkpoints."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
