"""VQ-VAE-2's top-level prior: a class-conditional gated PixelCNN with causal
self-attention layers (PixelSNAIL-style; Razavi et al. 2019, Sec. 3.2; Chen et al. 2018)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..nn.attention_pixelcnn import AttentionPixelCNN
from .pixelcnn_prior import GatedPixelCNNPrior

__all__ = ["AttentionPixelCNNPrior"]


class AttentionPixelCNNPrior(GatedPixelCNNPrior):
    """Autoregressive prior over code grids whose conditionals see every earlier code::

        codes[i, j] | codes[<(i, j)], y ~ Categorical(logits = AttentionPixelCNN(codes, y)[:, i, j])

    the network a :class:`lvm_pyro.nn.AttentionPixelCNN` (gated layers, paper Eq. 2 and 4
    of van den Oord et al. 2016, with multi-head causal self-attention blocks over raster
    order). ``log_prob``, ``sample`` (naive or cached: the attention blocks keep a key /
    value cache), ``distribution`` and the stage-two Pyro program ``forward`` are those of
    :class:`GatedPixelCNNPrior`.

    Args:
        num_codes: K, the codebook size.
        grid_shape: (H, W), e.g. (8, 8) for VQ-VAE-2's top grid on 32x32 images.
        channels, num_layers, kernel_size, num_classes, head_dim: the gated network's
            (defaults 64, 4, 3, None, 2 * channels).
        attention_layers: gated layers followed by an attention block (default every
            second layer, see :class:`lvm_pyro.nn.AttentionPixelCNN`).
        num_heads: attention heads (``channels`` must be divisible by it; default 4).

    Raises:
        ValueError: sizes out of range, a grid dimension < 1, a bad attention layer index.
    """

    def __init__(self, num_codes: int, grid_shape: Sequence[int], channels: int = 64,
                 num_layers: int = 4, kernel_size: int = 3, num_classes: Optional[int] = None,
                 head_dim: Optional[int] = None,
                 attention_layers: Optional[Sequence[int]] = None, num_heads: int = 4):
        super().__init__(num_codes, grid_shape, channels, num_layers, kernel_size, num_classes,
                         head_dim)
        self.net = AttentionPixelCNN(num_codes, channels, num_layers, kernel_size, num_classes,
                                     head_dim, attention_layers, num_heads)
        self.hyperparameters.update(attention_layers=list(self.net.attention_layers),
                                    num_heads=int(num_heads))
