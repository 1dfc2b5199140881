"""Generative models p(x, z) as Pyro programs (site names: :mod:`lvm_pyro.sites`)."""

from .attention_prior import AttentionPixelCNNPrior
from .class_mixture import ClassMixturePrior
from .codes_prior import ModuleCodesPrior
from .conditional_prior import ConditionalPixelCNNPrior
from .dequantization import DequantizedModel
from .flow import FlowModel, PixelFlowDensity
from .gaussian_mixture import GaussianMixtureModel
from .likelihoods import (BernoulliLikelihood, DiscretizedLogisticLikelihood, GaussianLikelihood,
                          Likelihood, make_likelihood)
from .linear_gaussian import LinearGaussianModel
from .pixelcnn_prior import GatedPixelCNNPrior
from .pixelcnn_vae import PixelCNNDecoderVAE
from .sigmoid_belief_net import SigmoidBeliefNetModel
from .vae import VAEModel
from .vqvae import VQVAEModel
from .vqvae2 import VQVAE2Model

__all__ = [
    "AttentionPixelCNNPrior", "BernoulliLikelihood", "ClassMixturePrior", "ConditionalPixelCNNPrior",
    "DequantizedModel", "DiscretizedLogisticLikelihood", "FlowModel", "GatedPixelCNNPrior",
    "GaussianLikelihood", "GaussianMixtureModel", "Likelihood", "LinearGaussianModel",
    "ModuleCodesPrior", "PixelCNNDecoderVAE", "PixelFlowDensity", "SigmoidBeliefNetModel",
    "VAEModel", "VQVAE2Model", "VQVAEModel", "make_likelihood",
]
