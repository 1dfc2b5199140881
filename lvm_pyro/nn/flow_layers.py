"""Bijections for multi-scale image flows that Pyro and torch do not provide.

Both are ``torch.distributions.Transform`` subclasses on image events (..., C, H, W)
(``event_dim = 3``) and compose with Pyro's transforms (RealNVP, Dinh et al. 2017,
sec. 3.6: squeezing and factoring out half of the dimensions at each scale):

* :class:`Squeeze2d`: each 2x2 spatial block becomes 4 channels; a permutation of the
  entries, so its log |det J| is exactly 0.
* :class:`ChannelSubset`: applies an inner bijection to the first ``num_channels``
  channels and the identity to the rest (the "factored-out" half of a multi-scale
  flow); its log |det J| is the inner one's.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints
from torch.distributions.transforms import Transform

__all__ = ["Squeeze2d", "ChannelSubset"]

_IMAGE = constraints.independent(constraints.real, 3)


class Squeeze2d(Transform):
    """(..., C, H, W) -> (..., 4C, H/2, W/2): the 2x2 block at (2i, 2j) goes to channels
    4c + 2a + b at (i, j) (RealNVP's squeeze, Dinh et al. 2017, fig. 3).

    Volume preserving: ``log_abs_det_jacobian`` is 0 (shape ``x.shape[:-3]``).

    Raises:
        ValueError: on a call with H or W odd, or fewer than 3 dims.
    """

    domain = _IMAGE
    codomain = _IMAGE
    bijective = True

    def __init__(self, cache_size: int = 1):
        super().__init__(cache_size=cache_size)

    def with_cache(self, cache_size=1):
        return self if self._cache_size == cache_size else Squeeze2d(cache_size)

    def __eq__(self, other):
        return isinstance(other, Squeeze2d)

    @staticmethod
    def _check(shape) -> None:
        if len(shape) < 3 or shape[-1] % 2 or shape[-2] % 2:
            raise ValueError(f"Squeeze2d needs (..., C, H, W) with even H and W, got {tuple(shape)}")

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x.shape)
        *batch, c, h, w = x.shape
        x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)
        n = len(batch)
        x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # (..., c, 2, 2, h/2, w/2)
        return x.reshape(*batch, 4 * c, h // 2, w // 2)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        *batch, c4, h, w = y.shape
        if c4 % 4:
            raise ValueError(f"Squeeze2d inverse needs a multiple of 4 channels, got {c4}")
        n = len(batch)
        y = y.reshape(*batch, c4 // 4, 2, 2, h, w)
        y = y.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # (..., c, h, 2, w, 2)
        return y.reshape(*batch, c4 // 4, 2 * h, 2 * w)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-3])

    def forward_shape(self, shape):
        self._check(shape)
        return torch.Size((*shape[:-3], 4 * shape[-3], shape[-2] // 2, shape[-1] // 2))

    def inverse_shape(self, shape):
        return torch.Size((*shape[:-3], shape[-3] // 4, 2 * shape[-2], 2 * shape[-1]))


class ChannelSubset(Transform):
    """Apply ``inner`` (a bijection on (..., num_channels, H, W), event_dim 3, shape
    preserving) to the first ``num_channels`` channels of (..., C, H, W); the remaining
    C - num_channels channels pass unchanged (they were factored out at this scale).

    ``log_abs_det_jacobian`` returns ``inner``'s, shape ``x.shape[:-3]``.

    Raises:
        ValueError: ``num_channels < 1``; on a call with fewer than ``num_channels + 1``
            channels.
    """

    domain = _IMAGE
    codomain = _IMAGE
    bijective = True

    def __init__(self, inner: Transform, num_channels: int, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.inner = inner
        self.num_channels = int(num_channels)
        self._saved = None  # (x, log|det J|) of the last evaluation

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return ChannelSubset(self.inner, self.num_channels, cache_size)

    def _split(self, x: torch.Tensor):
        if x.dim() < 3 or x.shape[-3] <= self.num_channels:
            raise ValueError(f"ChannelSubset({self.num_channels}) needs (..., C, H, W) with C > "
                             f"{self.num_channels}, got {tuple(x.shape)}")
        return x.split([self.num_channels, x.shape[-3] - self.num_channels], dim=-3)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._split(x)
        y1 = self.inner(x1)
        self._saved = (x, self.inner.log_abs_det_jacobian(x1, y1))
        return torch.cat([y1, x2], dim=-3)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._split(y)
        x1 = self.inner.inv(y1)
        x = torch.cat([x1, y2], dim=-3)
        self._saved = (x, self.inner.log_abs_det_jacobian(x1, y1))
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._saved is not None and self._saved[0] is x:
            return self._saved[1]
        x1, _ = self._split(x)
        return self.inner.log_abs_det_jacobian(x1, self.inner(x1))
