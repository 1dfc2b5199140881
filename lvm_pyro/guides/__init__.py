"""Guides q(z | x) as Pyro programs, sharing network blocks with models only via
:mod:`lvm_pyro.nn`."""

from .amortized_normal import AmortizedNormalGuide
from .linear_gaussian import LinearGaussianPosteriorGuide

__all__ = ["AmortizedNormalGuide", "LinearGaussianPosteriorGuide"]
