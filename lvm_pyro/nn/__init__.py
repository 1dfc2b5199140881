"""Plain torch networks (no Pyro): every module accepts any number of leading batch
dimensions, since vectorised particles add one."""

from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP

__all__ = ["MLP", "ConvEncoder", "ConvDecoder"]
