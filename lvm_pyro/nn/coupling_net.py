"""Convolutional hypernetwork of an affine coupling layer over image channels."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CouplingConvNet"]


class CouplingConvNet(nn.Module):
    """Shift and log-scale of an image affine coupling (RealNVP, Dinh et al. 2017,
    eq. 7-8; Glow's zero-initialised last layer, Kingma & Dhariwal 2018, sec. 3.3).

    The interface of Pyro's ``AffineCoupling(split_dim, hypernet, dim=-3)``: the
    conditioning half arrives flattened, (..., in_channels * H * W), and the result is
    ``(shift, log_scale)``, each (..., out_channels * H * W). Any leading batch dims.
    The last convolution starts at zero, so a new coupling is the identity.

    Args:
        in_channels: channels of the conditioning half.
        out_channels: channels of the transformed half.
        height, width: spatial size H, W.
        hidden_channels: width of the 3x3 -> 1x1 -> 3x3 convolution stack.

    Raises:
        ValueError: non-positive sizes; an input whose last dim is not in_channels*H*W.
    """

    def __init__(self, in_channels: int, out_channels: int, height: int, width: int,
                 hidden_channels: int = 32):
        super().__init__()
        if min(in_channels, out_channels, height, width, hidden_channels) < 1:
            raise ValueError("CouplingConvNet sizes must be positive, got "
                             f"{(in_channels, out_channels, height, width, hidden_channels)}")
        self.in_shape = (int(in_channels), int(height), int(width))
        self.out_channels = int(out_channels)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1), nn.ReLU(),
            nn.Conv2d(hidden_channels, 2 * out_channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.in_shape
        if x1.shape[-1] != c * h * w:
            raise ValueError(f"CouplingConvNet expects (..., {c * h * w}), got {tuple(x1.shape)}")
        batch = x1.shape[:-1]
        out = self.net(x1.reshape(-1, c, h, w))  # (prod(batch), 2 * out, h, w)
        shift, log_scale = out.chunk(2, dim=1)
        return shift.reshape(*batch, -1), log_scale.reshape(*batch, -1)
