"""Plain torch networks (no Pyro): every module accepts any number of leading batch
dimensions, since vectorised particles add one."""

from .context_cnn import ContextCNN
from .conv import ConvDecoder, ConvEncoder
from .coupling_net import CouplingConvNet
from .flow_layers import ChannelSubset, Squeeze2d
from .mlp import MLP
from .quantizer import CodebookUsage, QuantizerOutput, VectorQuantizer, codebook_usage
from .vq_conv import VQConvDecoder, VQConvEncoder

__all__ = [
    "ChannelSubset", "CodebookUsage", "ContextCNN", "ConvDecoder", "ConvEncoder",
    "CouplingConvNet", "MLP", "QuantizerOutput", "Squeeze2d", "VQConvDecoder", "VQConvEncoder",
    "VectorQuantizer", "codebook_usage",
]
