"""Guides q(z | x) as Pyro programs, sharing network blocks with models only via
:mod:`lvm_pyro.nn`."""

from .amortized_normal import AmortizedNormalGuide
from .linear_gaussian import LinearGaussianPosteriorGuide
from .local_normal import LocalNormalGuide
from .empty import EmptyGuide

__all__ = ["AmortizedNormalGuide", "LinearGaussianPosteriorGuide"]

__all__ += ["LocalNormalGuide", "EmptyGuide"]
from .vqvae import VQEncoderGuide  # noqa: E402

__all__ += ["VQEncoderGuide"]
from .sigmoid_belief_net import InputBaseline, SigmoidBeliefNetGuide  # noqa: E402

__all__ += ["SigmoidBeliefNetGuide", "InputBaseline"]
from .variational_dequantizer import UniformDequantizer, VariationalDequantizer  # noqa: E402
from .composite import CompositeGuide  # noqa: E402

__all__ += ["VariationalDequantizer", "UniformDequantizer", "CompositeGuide"]
