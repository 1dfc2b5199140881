"""Small image classifiers (plain torch) for judging and measuring generated samples:
classifier-based rejection (Razavi et al. 2019, Sec. 3.3) and the feature space of
precision / recall (Kynkaanniemi et al. 2019)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["SmallCNNClassifier", "CLASSIFIER_ARCHS"]

#: the two architectures: "a" (3x3 convolutions, max-pooling, a 128-d feature layer) and
#: "b" (5x5 convolutions, average pooling, a 64-d feature layer)
CLASSIFIER_ARCHS = ("a", "b")


class SmallCNNClassifier(nn.Module):
    """A small CNN: images (..., C, H, W) -> logits (..., num_classes); ``features`` gives
    the penultimate layer (..., feature_dim).

    Architectures (both end in adaptive pooling, so any H, W >= 4 works):

    * ``"a"``: conv3x3(32) ReLU, conv3x3(32) ReLU, max-pool 2, conv3x3(64) ReLU, adaptive
      average pool 4x4, linear 128 ReLU (features), linear num_classes;
    * ``"b"``: conv5x5(16) ReLU, max-pool 2, conv5x5(32) ReLU, adaptive average pool 2x2,
      linear 64 ReLU (features), linear num_classes.

    Args:
        in_shape: (C, H, W) of one image.
        num_classes: C_out >= 2.
        arch: ``"a"`` or ``"b"``.

    Raises:
        ValueError: an unknown ``arch``, ``num_classes < 2``, a shape that is not
            (C, H, W) with H, W >= 4; at call time, images of another shape.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, arch: str = "a"):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if arch not in CLASSIFIER_ARCHS:
            raise ValueError(f"arch must be one of {', '.join(CLASSIFIER_ARCHS)}, got {arch!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if len(in_shape) != 3 or min(in_shape[1:]) < 4:
            raise ValueError(f"in_shape must be (C, H, W) with H, W >= 4, got {in_shape}")
        self.in_shape, self.num_classes, self.arch = in_shape, int(num_classes), arch
        c = in_shape[0]
        if arch == "a":
            self.body = nn.Sequential(
                nn.Conv2d(c, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
                nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU())
            self.feature_dim = 128
        else:
            self.body = nn.Sequential(
                nn.Conv2d(c, 16, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 5, 1, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                nn.Linear(32 * 4, 64), nn.ReLU())
            self.feature_dim = 64
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) -> (..., feature_dim), the penultimate layer."""
        if x.dim() < 4 or tuple(x.shape[-3:]) != self.in_shape:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(f"SmallCNNClassifier expects (..., {shape}) images, got "
                             f"{tuple(x.shape)}")
        batch = x.shape[:-3]
        out = self.body(x.reshape(-1, *self.in_shape))
        return out.reshape(*batch, self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) -> (..., num_classes) logits."""
        return self.head(self.features(x))
