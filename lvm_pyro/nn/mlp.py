"""Multi-layer perceptron over arbitrary leading batch dimensions."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Module):
    """Fully connected network mapping (..., *in_shape) to (..., *out_shape).

    The trailing ``len(in_shape)`` dims are flattened; any number of leading batch
    dims (e.g. (num_particles, batch)) pass through unchanged.

    Args:
        in_shape: event shape of the input, e.g. ``(1, 28, 28)`` or ``(z_dim,)``.
        hidden_dims: widths of the hidden layers, e.g. ``(200, 200)`` (IWAE paper).
        out_shape: event shape of the output.
        activation: ``"tanh"`` | ``"relu"`` | ``"elu"`` | ``"gelu"``.

    Raises:
        ValueError: empty shapes, non-positive widths, unknown activation.
    """

    def __init__(self, in_shape: Sequence[int], hidden_dims: Sequence[int],
                 out_shape: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if not self.in_shape or not self.out_shape:
            raise ValueError("in_shape and out_shape must be non-empty")
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims must be positive, got {tuple(hidden_dims)}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        dims = [math.prod(self.in_shape), *hidden_dims, math.prod(self.out_shape)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.in_shape)
        if tuple(x.shape[x.dim() - n:]) != self.in_shape:
            raise ValueError(f"MLP expects inputs (..., {self.in_shape}), got {tuple(x.shape)}")
        batch = x.shape[:x.dim() - n]
        h = self.net(x.reshape(*batch, -1))  # (..., prod(out_shape))
        return h.reshape(*batch, *self.out_shape)
