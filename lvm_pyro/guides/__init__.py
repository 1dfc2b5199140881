"""Guides q(z | x) as Pyro programs, sharing network blocks with models only via
:mod:`lvm_pyro.nn`."""

from .amortized_normal import AmortizedNormalGuide
from .composite import CompositeGuide
from .empty import EmptyGuide
from .linear_gaussian import LinearGaussianPosteriorGuide
from .local_normal import LocalNormalGuide
from .sigmoid_belief_net import InputBaseline, SigmoidBeliefNetGuide
from .variational_dequantizer import UniformDequantizer, VariationalDequantizer
from .vqvae import VQEncoderGuide
from .vqvae2 import VQVAE2Encoding, VQVAE2Guide

__all__ = [
    "AmortizedNormalGuide", "CompositeGuide", "EmptyGuide", "InputBaseline",
    "LinearGaussianPosteriorGuide", "LocalNormalGuide", "SigmoidBeliefNetGuide",
    "UniformDequantizer", "VQEncoderGuide", "VQVAE2Encoding", "VQVAE2Guide",
    "VariationalDequantizer",
]
