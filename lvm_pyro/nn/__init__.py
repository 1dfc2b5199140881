"""Plain torch networks (no Pyro): every module accepts any number of leading batch
dimensions, since vectorised particles add one."""

from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP
from .quantizer import CodebookUsage, QuantizerOutput, VectorQuantizer, codebook_usage
from .vq_conv import VQConvDecoder, VQConvEncoder

__all__ = [
    "CodebookUsage", "ConvDecoder", "ConvEncoder", "MLP", "QuantizerOutput", "VQConvDecoder",
    "VQConvEncoder", "VectorQuantizer", "codebook_usage",
]
