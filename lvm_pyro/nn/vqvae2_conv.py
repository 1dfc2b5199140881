"""Encoder and decoder of a two-level VQ-VAE (VQ-VAE-2, Razavi et al. 2019, Sec. 3.1 and
Fig. 2a): the bottom features at 1 / 2^b of the image, the top at half of that; the
bottom encoder reads the quantised top grid, the decoder reads both. Any leading batch
dimensions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .vq_conv import ResidualStack, _check

__all__ = ["VQVAE2Encoder", "VQVAE2Decoder", "SingleLevelEncoder", "SingleLevelDecoder"]


def _flat(t: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, torch.Size]:
    batch = t.shape[:-event_dims]
    return t.reshape(-1, *t.shape[-event_dims:]), batch


def _check_pad(pad: int) -> int:
    if isinstance(pad, bool) or int(pad) != pad or pad < 0:
        raise ValueError(f"pad must be an integer >= 0 (zero pixels on each side), got {pad!r}")
    return int(pad)


def _check_downsample(bottom_downsample: int) -> None:
    if bottom_downsample < 1:
        raise ValueError(f"bottom_downsample must be >= 1 (stride-2 layers to the bottom grid), "
                         f"got {bottom_downsample}")


class VQVAE2Encoder(nn.Module):
    """Images (..., C, H, W) -> bottom features (..., channels, H / f, W / f), f =
    2^``bottom_downsample``; top encoder outputs (..., D, H / 2f, W / 2f); bottom encoder
    outputs (..., D, H / f, W / f) from the bottom features and the quantised top grid
    (upsampled by a transposed convolution).

    Args:
        in_channels: C.
        embedding_dim: D, channels of both z_e grids.
        channels, res_channels, num_res_blocks: widths, as
            :class:`lvm_pyro.nn.VQConvEncoder`.
        bottom_downsample: stride-2 convolutions from the image to the bottom grid
            (default 1: 32x32 images give a 16x16 bottom and an 8x8 top grid).
        pad: zero pixels added on each side of the image first (2: 28x28 Fashion-MNIST
            read as 32x32, Razavi et al. 2019's padded setting; the grids are those of the
            padded image). Default 0.

    Use ``h = features(x)``, ``z_e_top = top(h)``, then ``z_e_bottom = bottom(h, z_q_top)``.

    Raises:
        ValueError: bad widths; at call time, a wrong channel count or H, W not divisible
            by 2f.
    """

    def __init__(self, in_channels: int, embedding_dim: int, channels: int = 64,
                 res_channels: int = 32, num_res_blocks: int = 2, bottom_downsample: int = 1,
                 pad: int = 0):
        super().__init__()
        _check(channels, res_channels, num_res_blocks)
        _check_downsample(bottom_downsample)
        self.pad = _check_pad(pad)
        self.in_channels, self.embedding_dim = int(in_channels), int(embedding_dim)
        self.factor = 2 ** int(bottom_downsample)
        down: list[nn.Module] = []
        c_in = in_channels
        for _ in range(bottom_downsample):
            down += [nn.Conv2d(c_in, channels, 4, 2, 1), nn.ReLU()]
            c_in = channels
        self.features_net = nn.Sequential(*down, nn.Conv2d(channels, channels, 3, 1, 1),
                                          ResidualStack(channels, res_channels, num_res_blocks))
        self.top_net = nn.Sequential(
            nn.Conv2d(channels, channels, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            ResidualStack(channels, res_channels, num_res_blocks),
            nn.Conv2d(channels, embedding_dim, 1))
        self.top_up = nn.ConvTranspose2d(embedding_dim, channels, 4, 2, 1)
        self.bottom_net = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, 1, 1), nn.ReLU(),
                                        nn.Conv2d(channels, embedding_dim, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) -> (..., channels, H / f, W / f)."""
        f2, p = 2 * self.factor, 2 * self.pad
        if (x.dim() < 4 or x.shape[-3] != self.in_channels or (x.shape[-2] + p) % f2
                or (x.shape[-1] + p) % f2):
            raise ValueError(f"VQVAE2Encoder expects (..., {self.in_channels}, H, W) with H + "
                             f"{p}, W + {p} divisible by {f2}, got {tuple(x.shape)}")
        flat, batch = _flat(x, 3)
        if self.pad:
            flat = nn.functional.pad(flat, (self.pad,) * 4)  # (B', C, H + 2p, W + 2p)
        h = self.features_net(flat)
        return h.reshape(*batch, *h.shape[-3:])

    def top(self, h: torch.Tensor) -> torch.Tensor:
        """Top z_e: bottom features (..., channels, h, w) -> (..., D, h / 2, w / 2)."""
        flat, batch = _flat(h, 3)
        z = self.top_net(flat)
        return z.reshape(*batch, *z.shape[-3:])

    def bottom(self, h: torch.Tensor, z_q_top: torch.Tensor) -> torch.Tensor:
        """Bottom z_e from features h (..., channels, h, w) and the quantised top grid
        z_q_top (..., D, h / 2, w / 2): (..., D, h, w)."""
        batch = torch.broadcast_shapes(h.shape[:-3], z_q_top.shape[:-3])
        hf = h.expand(*batch, *h.shape[-3:]).reshape(-1, *h.shape[-3:])
        zf = z_q_top.expand(*batch, *z_q_top.shape[-3:]).reshape(-1, *z_q_top.shape[-3:])
        up = self.top_up(zf)  # (B', channels, h, w)
        if up.shape[-2:] != hf.shape[-2:]:
            raise ValueError(f"z_q_top of spatial shape {tuple(z_q_top.shape[-2:])} does not "
                             f"upsample to the bottom grid {tuple(h.shape[-2:])}")
        z = self.bottom_net(torch.cat([hf, up], dim=1))
        return z.reshape(*batch, *z.shape[-3:])


class VQVAE2Decoder(nn.Module):
    """Quantised grids z_q_top (..., D, h / 2, w / 2) and z_q_bottom (..., D, h, w) ->
    likelihood parameters (..., *out_shape), out_shape = (P, C, f h, f w) or (C, f h, f w),
    f = 2^``bottom_downsample``: the top grid upsampled by a transposed convolution,
    concatenated with the bottom grid, a residual stack, then transposed convolutions.

    Args:
        embedding_dim: D.
        out_shape: event shape of the output.
        channels, res_channels, num_res_blocks, bottom_downsample, pad: as
            :class:`VQVAE2Encoder`; with ``pad`` the decoder produces the padded image and
            crops ``pad`` pixels off each side, so ``out_shape`` is the unpadded event.

    Raises:
        ValueError: bad widths; at call time, shapes that do not fit.
    """

    def __init__(self, embedding_dim: int, out_shape: Sequence[int], channels: int = 64,
                 res_channels: int = 32, num_res_blocks: int = 2, bottom_downsample: int = 1,
                 pad: int = 0):
        super().__init__()
        _check(channels, res_channels, num_res_blocks)
        _check_downsample(bottom_downsample)
        self.pad = _check_pad(pad)
        self.embedding_dim = int(embedding_dim)
        self.out_shape = tuple(int(s) for s in out_shape)
        out_c = 1
        for s in self.out_shape[:-2]:
            out_c *= s
        self.top_up = nn.ConvTranspose2d(embedding_dim, embedding_dim, 4, 2, 1)
        up: list[nn.Module] = []
        for _ in range(bottom_downsample - 1):
            up += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.ReLU()]
        self.net = nn.Sequential(
            nn.Conv2d(2 * embedding_dim, channels, 3, 1, 1),
            ResidualStack(channels, res_channels, num_res_blocks), *up,
            nn.ConvTranspose2d(channels, out_c, 4, 2, 1))

    def forward(self, z_top: torch.Tensor, z_bottom: torch.Tensor) -> torch.Tensor:
        d = self.embedding_dim
        if z_top.dim() < 4 or z_bottom.dim() < 4 or z_top.shape[-3] != d or z_bottom.shape[-3] != d:
            raise ValueError(f"VQVAE2Decoder expects (..., {d}, h, w) grids, got "
                             f"{tuple(z_top.shape)} and {tuple(z_bottom.shape)}")
        batch = torch.broadcast_shapes(z_top.shape[:-3], z_bottom.shape[:-3])
        zt = z_top.expand(*batch, *z_top.shape[-3:]).reshape(-1, *z_top.shape[-3:])
        zb = z_bottom.expand(*batch, *z_bottom.shape[-3:]).reshape(-1, *z_bottom.shape[-3:])
        up = self.top_up(zt)
        if up.shape[-2:] != zb.shape[-2:]:
            raise ValueError(f"the top grid {tuple(z_top.shape[-2:])} must be half the bottom "
                             f"grid {tuple(z_bottom.shape[-2:])}")
        out = self.net(torch.cat([up, zb], dim=1))  # (B', P C, H + 2 pad, W + 2 pad)
        if self.pad:
            out = out[..., self.pad:-self.pad, self.pad:-self.pad]
        if tuple(out.shape[-2:]) != self.out_shape[-2:]:
            raise ValueError(f"decoder produced {tuple(out.shape[-2:])} pixels but out_shape "
                             f"asks for {self.out_shape[-2:]}")
        return out.reshape(*batch, *self.out_shape)


class SingleLevelEncoder(nn.Module):
    """The one-level ablation of :class:`VQVAE2Encoder`: the same feature stack to the
    bottom grid, then a 3x3 convolution, ReLU and a 1x1 convolution to D channels, without
    a top level: images (..., C, H, W) -> z_e (..., D, (H + 2 pad) / f, (W + 2 pad) / f),
    f = 2^``bottom_downsample``. With :class:`SingleLevelDecoder` and a
    :class:`lvm_pyro.models.VQVAEModel` it is a one-level VQ-VAE on VQ-VAE-2's bottom grid
    (to compare one level with two at equal code bits).

    Args:
        in_channels, embedding_dim, channels, res_channels, num_res_blocks,
        bottom_downsample, pad: as :class:`VQVAE2Encoder`.

    Raises:
        ValueError: bad widths; at call time, a wrong channel count or a padded size not
            divisible by f.
    """

    def __init__(self, in_channels: int, embedding_dim: int, channels: int = 64,
                 res_channels: int = 32, num_res_blocks: int = 2, bottom_downsample: int = 1,
                 pad: int = 0):
        super().__init__()
        _check(channels, res_channels, num_res_blocks)
        _check_downsample(bottom_downsample)
        self.pad = _check_pad(pad)
        self.in_channels, self.embedding_dim = int(in_channels), int(embedding_dim)
        self.factor = 2 ** int(bottom_downsample)
        down: list[nn.Module] = []
        c_in = in_channels
        for _ in range(bottom_downsample):
            down += [nn.Conv2d(c_in, channels, 4, 2, 1), nn.ReLU()]
            c_in = channels
        self.net = nn.Sequential(*down, nn.Conv2d(channels, channels, 3, 1, 1),
                                 ResidualStack(channels, res_channels, num_res_blocks),
                                 nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
                                 nn.Conv2d(channels, embedding_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, p = self.factor, 2 * self.pad
        if (x.dim() < 4 or x.shape[-3] != self.in_channels or (x.shape[-2] + p) % f
                or (x.shape[-1] + p) % f):
            raise ValueError(f"SingleLevelEncoder expects (..., {self.in_channels}, H, W) with "
                             f"H + {p}, W + {p} divisible by {f}, got {tuple(x.shape)}")
        flat, batch = _flat(x, 3)
        if self.pad:
            flat = nn.functional.pad(flat, (self.pad,) * 4)
        z = self.net(flat)
        return z.reshape(*batch, *z.shape[-3:])


class SingleLevelDecoder(nn.Module):
    """The one-level ablation of :class:`VQVAE2Decoder`: z_q (..., D, h, w) -> likelihood
    parameters (..., *out_shape) through a 3x3 convolution, a residual stack and
    transposed convolutions (the decoder without the top grid), cropping ``pad``.

    Args:
        embedding_dim, out_shape, channels, res_channels, num_res_blocks,
        bottom_downsample, pad: as :class:`VQVAE2Decoder`.

    Raises:
        ValueError: bad widths; at call time, shapes that do not fit.
    """

    def __init__(self, embedding_dim: int, out_shape: Sequence[int], channels: int = 64,
                 res_channels: int = 32, num_res_blocks: int = 2, bottom_downsample: int = 1,
                 pad: int = 0):
        super().__init__()
        _check(channels, res_channels, num_res_blocks)
        _check_downsample(bottom_downsample)
        self.pad = _check_pad(pad)
        self.embedding_dim = int(embedding_dim)
        self.out_shape = tuple(int(s) for s in out_shape)
        out_c = 1
        for s in self.out_shape[:-2]:
            out_c *= s
        up: list[nn.Module] = []
        for _ in range(bottom_downsample - 1):
            up += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.ReLU()]
        self.net = nn.Sequential(
            nn.Conv2d(embedding_dim, channels, 3, 1, 1),
            ResidualStack(channels, res_channels, num_res_blocks), *up,
            nn.ConvTranspose2d(channels, out_c, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() < 4 or z.shape[-3] != self.embedding_dim:
            raise ValueError(f"SingleLevelDecoder expects (..., {self.embedding_dim}, h, w), got "
                             f"{tuple(z.shape)}")
        flat, batch = _flat(z, 3)
        out = self.net(flat)
        if self.pad:
            out = out[..., self.pad:-self.pad, self.pad:-self.pad]
        if tuple(out.shape[-2:]) != self.out_shape[-2:]:
            raise ValueError(f"decoder produced {tuple(out.shape[-2:])} pixels but out_shape "
                             f"asks for {self.out_shape[-2:]}")
        return out.reshape(*batch, *self.out_shape)
