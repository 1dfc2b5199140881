"""Binarisation of intensities in [0, 1] as in the IWAE paper (Burda et al. 2015, sec. 5),
uniform dequantisation, and :class:`Binarizer`, the per-epoch data transform the training
loop applies (seeded, with its state in the training checkpoint)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["binarize", "binarize_chunked", "Binarizer", "BINARIZATIONS", "binarize_test", "dequantize",
           "dequantize_test"]

BINARIZATIONS = ("dynamic", "static", "none", "dequantize")


def _check_intensities(x: torch.Tensor, what: str) -> None:
    """ValueError unless x is floating point, free of NaN and inside [0, 1]."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{what} needs floating-point intensities in [0, 1], got dtype {x.dtype}; "
                         "convert first, e.g. x.float() / 255 for 8-bit pixels")
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)  # one pass; NaN propagates into both
    if bool(torch.isnan(lo) | torch.isnan(hi)):
        nan = torch.isnan(x)
        first = tuple(int(i) for i in nan.nonzero()[0])
        raise ValueError(f"{what}: the data holds {int(nan.sum())} NaN value(s) (first at index "
                         f"{first}); drop or repair those pixels first")
    if bool(lo < 0) or bool(hi > 1):
        raise ValueError(f"{what} needs intensities in [0, 1], got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]: for pixel data rescale "
                         "the data first; for real-valued data use a continuous likelihood "
                         "(--likelihood gaussian) without this transform (binarization 'none')")


def binarize(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with p = x: x (..., ) float in [0, 1] -> same shape
    and dtype, values in {0., 1.}.

    Raises:
        ValueError: x not floating point, holding NaN, or outside [0, 1].
    """
    _check_intensities(x, "binarize")
    return torch.bernoulli(x, generator=generator)


#: elements drawn per pass of :func:`binarize_chunked` (1 MiB of float32: in cache)
BINARIZE_CHUNK = 1 << 18


def binarize_chunked(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                     chunk: int = BINARIZE_CHUNK) -> torch.Tensor:
    """The same distribution as :func:`binarize` (x_i ~ Bernoulli(p_i), p = x), drawn as
    u_i < p_i with u_i ~ U[0, 1) in passes of ``chunk`` elements through small reused
    buffers: about 0.6x the CPU time of ``torch.bernoulli`` on a 60000-image set (no
    full-size temporaries). Another random stream than :func:`binarize` for the same
    generator: the per-epoch draws of dynamic binarisation use it, the fixed test and
    static draws keep :func:`binarize`'s.

    Args:
        x: (..., ) float in [0, 1] on the CPU.
        generator: a CPU ``torch.Generator`` (default: torch's global one).
        chunk: elements per pass (>= 1).

    Returns:
        a new tensor of x's shape and dtype, values in {0., 1.}.

    Raises:
        ValueError: x not floating point, holding NaN, or outside [0, 1]; chunk < 1.
    """
    _check_intensities(x, "binarize")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    flat = x.reshape(-1)
    n = flat.numel()
    out = torch.empty_like(flat)
    u = torch.empty(min(chunk, n), dtype=x.dtype)
    below = torch.empty(u.shape, dtype=torch.bool)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        torch.lt(u[:e - s].uniform_(generator=generator), flat[s:e], out=below[:e - s])
        out[s:e].copy_(below[:e - s])
    return out.view(x.shape)


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
        ValueError: x not floating point, holding NaN, outside [0, 1], or levels < 2.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    _check_intensities(x, "dequantize")
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return (k + u) / levels


def dequantize_test(x: torch.Tensor, levels: int, seed: int = 0) -> torch.Tensor:
    """The fixed dequantisation of a test set (one draw of u with ``seed``, default 0)."""
    return dequantize(x, levels, torch.Generator().manual_seed(seed))


class Binarizer:
    """The training loop's per-epoch data transform: binarise, dequantise or pass through.

    Modes: ``"dynamic"`` (a fresh Bernoulli draw every epoch from a seeded generator,
    :func:`binarize_chunked`),
    ``"static"`` (one fixed draw per data set, made with the seed), ``"none"`` (data
    unchanged), ``"dequantize"`` (fresh uniform dequantisation noise every epoch, see
    :func:`dequantize`; needs ``levels``, the number of discrete intensity levels).

    Its state (generator state and mode) is part of the training checkpoint
    (:meth:`state_dict` / :meth:`load_state_dict`). The static draw is cached *per data
    set*: it is reused only for the very tensor it was drawn from, unmodified, or one
    equal to it; other data of the same shape get their own draw (from the seed).

    Call: x (N, ...) float in [0, 1] -> (N, ...) same dtype and device.

    Raises:
        ValueError: unknown mode or levels < 2 (at construction); on a call, data that
            is not floating point, holds NaN or leaves [0, 1] (except mode ``"none"``).
    """

    def __init__(self, mode: str = "dynamic", seed: int = 0, levels: int = 256):
        if mode not in BINARIZATIONS:
            raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {mode!r}")
        if int(levels) != levels or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels}")
        self.mode = mode
        self.levels = int(levels)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._static: Optional[torch.Tensor] = None
        self._source: Optional[torch.Tensor] = None
        self._source_version = -1

    def __repr__(self) -> str:
        return f"Binarizer({self.mode!r}, seed={self.seed}, levels={self.levels})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The training data for the next epoch: x (N, ...) in [0, 1]."""
        if self.mode == "none":
            return x
        if self.mode == "dequantize":
            return dequantize(x, self.levels, self.generator)
        if self.mode == "static":
            if not self._is_source(x):
                g = torch.Generator().manual_seed(self.seed)
                self._static = binarize(x.cpu(), g).to(x.device)
                self._source, self._source_version = x, x._version
            return self._static
        return binarize_chunked(x.cpu(), self.generator).to(x.device)

    def _is_source(self, x: torch.Tensor) -> bool:
        """True when ``x`` holds the data the cached static draw was made from."""
        src = self._source
        if src is None:
            return False
        if x is src and x._version == self._source_version:  # same tensor, not modified
            return True
        if x.shape != src.shape or x.dtype != src.dtype or x.device != src.device:
            return False
        return x is not src and bool(torch.equal(x, src))

    def state_dict(self) -> dict:
        """``{"mode", "generator"}`` (uint8 generator state): weights_only-safe. The static
        draw is not stored: it is redrawn from the seed."""
        return {"mode": self.mode, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the saved mode differs from this transform's.
        """
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"the saved data transform is {state['mode']!r}, this one "
                             f"{self.mode!r}; resume with the same binarization")
        self.generator.set_state(state["generator"])
