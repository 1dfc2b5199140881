"""Small convolutional encoder / decoder for images, over arbitrary leading batch dims."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ConvEncoder", "ConvDecoder"]


def _flatten_batch(x: torch.Tensor, event_dims: int):
    batch = x.shape[:x.dim() - event_dims]
    return x.reshape(-1, *x.shape[x.dim() - event_dims:]), batch


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions then a linear layer: (..., C, H, W) -> (..., *out_shape).

    Args:
        in_shape: (C, H, W) with H and W divisible by 4.
        out_shape: event shape of the output, e.g. ``(2, z_dim)``.
        channels: width of the two conv layers.
        hidden_dim: width of the linear layer before the output.

    Raises:
        ValueError: H or W not divisible by 4.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
                 channels: int = 32, hidden_dim: int = 256):
        super().__init__()
        c, h, w = in_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvEncoder needs H and W divisible by 4, got {h}x{w}")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        out = 1
        for s in self.out_shape:
            out *= s
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * (h // 4) * (w // 4), hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, batch = _flatten_batch(x, 3)  # (B', C, H, W)
        return self.net(flat).reshape(*batch, *self.out_shape)


class ConvDecoder(nn.Module):
    """Linear layer then two stride-2 transposed convolutions:
    (..., z_dim) -> (..., *out_shape) with out_shape = (P, C, H, W) or (C, H, W).

    Args:
        z_dim: latent size.
        out_shape: event shape; the last three dims are (C', H, W), H and W divisible
            by 4; leading dims (e.g. P likelihood parameters) are folded into channels.
        channels, hidden_dim: widths.
    """

    def __init__(self, z_dim: int, out_shape: Sequence[int], channels: int = 32,
                 hidden_dim: int = 256):
        super().__init__()
        self.out_shape = tuple(out_shape)
        h, w = self.out_shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(f"ConvDecoder needs H and W divisible by 4, got {h}x{w}")
        out_c = 1
        for s in self.out_shape[:-2]:
            out_c *= s
        self.channels, self.h4, self.w4 = channels, h // 4, w // 4
        self.fc = nn.Sequential(nn.Linear(z_dim, hidden_dim), nn.ReLU(),
                                nn.Linear(hidden_dim, channels * self.h4 * self.w4), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(channels, out_c, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat, batch = _flatten_batch(z, 1)  # (B', z_dim)
        h = self.fc(flat).reshape(-1, self.channels, self.h4, self.w4)
        return self.deconv(h).reshape(*batch, *self.out_shape)
