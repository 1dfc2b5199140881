"""Plain torch networks (no Pyro): every module accepts any number of leading batch
dimensions, since vectorised particles add one."""

from .attention_pixelcnn import AttentionPixelCNN, CausalSelfAttention
from .classifier import CLASSIFIER_ARCHS, SmallCNNClassifier
from .code_conditioner import CodeConditioner
from .context_cnn import ContextCNN
from .conv import ConvDecoder, ConvEncoder
from .coupling_net import CouplingConvNet
from .flow_layers import ChannelSubset, Squeeze2d
from .mlp import MLP
from .quantizer import CodebookUsage, QuantizerOutput, VectorQuantizer, codebook_usage
from .vq_conv import VQConvDecoder, VQConvEncoder
from .vqvae2_conv import SingleLevelDecoder, SingleLevelEncoder, VQVAE2Decoder, VQVAE2Encoder

__all__ = [
    "AttentionPixelCNN", "CLASSIFIER_ARCHS", "CausalSelfAttention", "ChannelSubset",
    "CodeConditioner", "CodebookUsage", "ContextCNN", "ConvDecoder", "ConvEncoder",
    "CouplingConvNet", "MLP", "QuantizerOutput", "SingleLevelDecoder", "SingleLevelEncoder",
    "SmallCNNClassifier", "Squeeze2d", "VQConvDecoder", "VQConvEncoder", "VQVAE2Decoder",
    "VQVAE2Encoder", "VectorQuantizer", "codebook_usage",
]
