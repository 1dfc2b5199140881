"""Objectives, estimators and evaluation, all on the per-datapoint log-weight engine.

Nothing here imports :mod:`lvm_pyro.models`: every function works on any model / guide
pair that follows the site names of :mod:`lvm_pyro.sites`.
"""

from .evaluation import (NLLSummary, bits_per_dim, elbo_per_datapoint, log_marginal_likelihood,
                         logmeanexp, summarize_nll)
from .log_weights import LogWeights, guess_max_plate_nesting, log_weights

__all__ = ["log_weights", "LogWeights", "guess_max_plate_nesting", "log_marginal_likelihood",
           "elbo_per_datapoint", "NLLSummary", "summarize_nll", "bits_per_dim", "logmeanexp"]
