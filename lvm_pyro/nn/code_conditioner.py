"""A conditioning map from a coarser grid of codes (VQ-VAE-2's top codes) at the
resolution of a finer grid: the spatial h of van den Oord et al. 2016, Eq. 5, for the
bottom prior of Razavi et al. 2019 (Sec. 3.2: the bottom prior is conditioned on the top
codes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CodeConditioner"]


class CodeConditioner(nn.Module):
    """Top code grid (B, h, w) int64 -> conditioning map (B, out_channels, f h, f w):
    an embedding, nearest-neighbour upsampling by ``factor`` and two 3x3 convolutions
    (unmasked: the top codes are given when the bottom codes are drawn).

    Args:
        num_codes: K_top, the top codebook size.
        out_channels: S, channels of the map.
        factor: f >= 1, the bottom grid's size over the top grid's.
        channels: hidden width (default ``out_channels``).

    Raises:
        ValueError: a size < 1; at call time, codes that are not a (B, h, w) integer grid in
            [0, K_top).
    """

    def __init__(self, num_codes: int, out_channels: int, factor: int = 2,
                 channels: int | None = None):
        super().__init__()
        channels = out_channels if channels is None else int(channels)
        if min(num_codes, out_channels, factor, channels) < 1:
            raise ValueError(f"num_codes, out_channels, factor and channels must be >= 1, got "
                             f"{num_codes}, {out_channels}, {factor}, {channels}")
        self.num_codes, self.out_channels, self.factor = int(num_codes), int(out_channels), int(factor)
        self.embed = nn.Embedding(num_codes, channels)
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
                                 nn.Conv2d(channels, out_channels, 3, 1, 1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3 or codes.dtype.is_floating_point:
            raise ValueError(f"CodeConditioner expects (batch, h, w) integer codes, got "
                             f"{tuple(codes.shape)} {codes.dtype}")
        e = self.embed(codes.long()).permute(0, 3, 1, 2)  # (B, C, h, w)
        if self.factor > 1:
            e = F.interpolate(e, scale_factor=self.factor, mode="nearest")  # (B, C, f h, f w)
        return self.net(e)
