"""Generative models p(x, z) as Pyro programs (site names: :mod:`lvm_pyro.sites`)."""

from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .linear_gaussian import LinearGaussianModel
from .vae import VAEModel
from .gaussian_mixture import GaussianMixtureModel

__all__ = ["VAEModel", "LinearGaussianModel", "Likelihood", "BernoulliLikelihood",
           "GaussianLikelihood", "make_likelihood"]

__all__ += ["GaussianMixtureModel"]
from .pixelcnn_prior import GatedPixelCNNPrior  # noqa: E402

__all__ += ["GatedPixelCNNPrior"]
from .likelihoods import DiscretizedLogisticLikelihood  # noqa: E402
from .vqvae import VQVAEModel  # noqa: E402

__all__ += ["VQVAEModel", "DiscretizedLogisticLikelihood"]
from .sigmoid_belief_net import SigmoidBeliefNetModel  # noqa: E402

__all__ += ["SigmoidBeliefNetModel"]
from .pixelcnn_vae import PixelCNNDecoderVAE  # noqa: E402

__all__ += ["PixelCNNDecoderVAE"]
