"""A small convolutional encoder of an image into a context vector."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ContextCNN"]


class ContextCNN(nn.Module):
    """(..., C, H, W) -> (..., context_dim): 3x3 conv, ReLU, 3x3 conv with stride 2,
    ReLU, linear. Any leading batch dims (flattened for the convolutions).

    Used as the conditioning network h(x) of a conditional flow (e.g. the dequantiser
    q(u | x) of Flow++, Ho et al. 2019, sec. 3.1).

    Args:
        in_shape: (C, H, W).
        context_dim: output size.
        hidden_channels: channels of both convolutions.

    Raises:
        ValueError: a shape that is not (C, H, W) or non-positive sizes; an input whose
            trailing dims differ from ``in_shape``.
    """

    def __init__(self, in_shape: Sequence[int], context_dim: int, hidden_channels: int = 16):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        if len(self.in_shape) != 3 or min(self.in_shape) < 1 or context_dim < 1 or hidden_channels < 1:
            raise ValueError(f"ContextCNN needs in_shape (C, H, W) and positive sizes, got "
                             f"{tuple(in_shape)}, context_dim={context_dim}, "
                             f"hidden_channels={hidden_channels}")
        c, h, w = self.in_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, hidden_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1), nn.ReLU())
        self.out = nn.Linear(hidden_channels * ((h + 1) // 2) * ((w + 1) // 2), context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-3:]) != self.in_shape:
            raise ValueError(f"ContextCNN expects (..., {self.in_shape}), got {tuple(x.shape)}")
        batch = x.shape[:-3]
        h = self.convs(x.reshape(-1, *self.in_shape))  # (prod(batch), hidden, ~H/2, ~W/2)
        return self.out(h.flatten(1)).reshape(*batch, -1)
