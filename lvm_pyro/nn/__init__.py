"""Plain torch networks (no Pyro): every module accepts any number of leading batch
dimensions, since vectorised particles add one."""

from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP

__all__ = ["MLP", "ConvEncoder", "ConvDecoder"]
from .quantizer import CodebookUsage, QuantizerOutput, VectorQuantizer, codebook_usage  # noqa: E402
from .vq_conv import VQConvDecoder, VQConvEncoder  # noqa: E402

__all__ += ["VectorQuantizer", "QuantizerOutput", "CodebookUsage", "codebook_usage",
            "VQConvEncoder", "VQConvDecoder"]
from .coupling_net import CouplingConvNet  # noqa: E402
from .flow_layers import ChannelSubset, Squeeze2d  # noqa: E402

__all__ += ["CouplingConvNet", "Squeeze2d", "ChannelSubset"]
from .context_cnn import ContextCNN  # noqa: E402

__all__ += ["ContextCNN"]
