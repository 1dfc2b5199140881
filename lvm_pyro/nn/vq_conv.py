"""Spatial convolutional encoder / decoder of VQ-VAE (van den Oord et al. 2017, section
4.1: two stride-2 4x4 convolutions and two residual 3x3 blocks; the decoder mirrors it
with transposed convolutions), over arbitrary leading batch dimensions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["VQConvEncoder", "VQConvDecoder", "ResidualStack"]


class ResidualStack(nn.Module):
    """``num_blocks`` blocks x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU:
    (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, res_channels: int, num_blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, res_channels, 3, 1, 1), nn.ReLU(),
                          nn.Conv2d(res_channels, channels, 1))
            for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return torch.relu(x)


def _check(channels: int, res_channels: int, num_res_blocks: int) -> None:
    if channels < 1 or res_channels < 1:
        raise ValueError(f"channels and res_channels must be >= 1, got {channels}, {res_channels}")
    if num_res_blocks < 0:
        raise ValueError(f"num_res_blocks must be >= 0, got {num_res_blocks}")


class VQConvEncoder(nn.Module):
    """(..., C, H, W) images -> (..., embedding_dim, H/4, W/4) encoder outputs z_e.

    Args:
        in_channels: C.
        embedding_dim: D, channels of z_e.
        channels: width of the convolutions.
        res_channels: hidden width inside each residual block.
        num_res_blocks: residual blocks after the two stride-2 convolutions.

    Raises:
        ValueError: bad widths; at call time, H or W not divisible by 4.
    """

    def __init__(self, in_channels: int, embedding_dim: int, channels: int = 64,
                 res_channels: int = 32, num_res_blocks: int = 2):
        super().__init__()
        _check(channels, res_channels, num_res_blocks)
        self.in_channels, self.embedding_dim = int(in_channels), int(embedding_dim)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            ResidualStack(channels, res_channels, num_res_blocks),
            nn.Conv2d(channels, embedding_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[-3] != self.in_channels or x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"VQConvEncoder expects (..., {self.in_channels}, H, W) with H, W "
                             f"divisible by 4, got {tuple(x.shape)}")
        batch = x.shape[:-3]
        h = self.net(x.reshape(-1, *x.shape[-3:]))  # (B', D, H/4, W/4)
        return h.reshape(*batch, *h.shape[-3:])


class VQConvDecoder(nn.Module):
    """(..., embedding_dim, h, w) quantised latents -> (..., *out_shape) likelihood
    parameters, out_shape = (P, C, 4h, 4w) (P likelihood parameters folded into the
    output channels) or (C, 4h, 4w).

    Args:
        embedding_dim: D.
        out_shape: event shape of the output; the last two dims must be 4h, 4w.
        channels, res_channels, num_res_blocks: as :class:`VQConvEncoder`.
    """

    def __init__(self, embedding_dim: int, out_shape: Sequence[int], channels: int = 64,
                 res_channels: int = 32, num_res_blocks: int = 2):
        super().__init__()
        _check(channels, res_channels, num_res_blocks)
        self.embedding_dim = int(embedding_dim)
        self.out_shape = tuple(int(s) for s in out_shape)
        out_c = 1
        for s in self.out_shape[:-2]:
            out_c *= s
        self.net = nn.Sequential(
            nn.Conv2d(embedding_dim, channels, 3, 1, 1),
            ResidualStack(channels, res_channels, num_res_blocks),
            nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(channels // 2, out_c, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() < 4 or z.shape[-3] != self.embedding_dim:
            raise ValueError(f"VQConvDecoder expects (..., {self.embedding_dim}, h, w), got "
                             f"{tuple(z.shape)}")
        batch = z.shape[:-3]
        h = self.net(z.reshape(-1, *z.shape[-3:]))  # (B', P*C, 4h, 4w)
        if tuple(h.shape[-2:]) != self.out_shape[-2:]:
            raise ValueError(f"decoder produced {tuple(h.shape[-2:])} pixels but out_shape asks "
                             f"for {self.out_shape[-2:]}; the latent grid must be 1/4 of it")
        return h.reshape(*batch, *self.out_shape)
