"""Objectives, estimators and evaluation, all on the per-datapoint log-weight engine.

Nothing here imports :mod:`lvm_pyro.models`: every function works on any model / guide
pair that follows the site names of :mod:`lvm_pyro.sites`.
"""

from .evaluation import (iter_log_weights, NLLSummary, bits_per_dim, elbo_per_datapoint, log_marginal_likelihood,
                         logmeanexp, summarize_nll)
from .log_weights import LogWeights, guess_max_plate_nesting, log_weights
from .iwae import BiasedGradientWarning, IWAE_ELBO
from .gradient_stats import GradientStats, gradient_statistics, parameter_groups
from .importance import (ImportanceEstimate, RepeatedEstimates, effective_sample_size,
                         fixed_normal_proposal, importance_estimate, prior_proposal,
                         repeated_importance_estimates)
from .amortization import AmortizationGap, amortization_gap, fit_local_guide

__all__ = ["iter_log_weights", "log_weights", "LogWeights", "guess_max_plate_nesting", "log_marginal_likelihood",
           "elbo_per_datapoint", "NLLSummary", "summarize_nll", "bits_per_dim", "logmeanexp"]
__all__ += ["IWAE_ELBO", "BiasedGradientWarning", "GradientStats", "gradient_statistics",
            "parameter_groups"]

__all__ += ["effective_sample_size", "ImportanceEstimate", "importance_estimate",
            "RepeatedEstimates", "repeated_importance_estimates", "prior_proposal",
            "fixed_normal_proposal", "AmortizationGap", "amortization_gap", "fit_local_guide"]
from .score_function import (MLPBaseline, ScoreFunctionDistribution, ScoreFunctionGuide,
                             ScoreFunctionMessenger, score_function)
from .vimco import VIMCO, leave_one_out_baselines

__all__ += ["ScoreFunctionDistribution", "ScoreFunctionMessenger", "ScoreFunctionGuide",
            "MLPBaseline", "score_function", "VIMCO", "leave_one_out_baselines"]
from .kl_weighting import (FreeBits_ELBO, KLWeighted_ELBO, LatentScaleMessenger, beta_schedule,
                           kl_warmup_factor, per_dimension_kl, scale_latents)

__all__ += ["KLWeighted_ELBO", "FreeBits_ELBO", "LatentScaleMessenger", "scale_latents",
            "kl_warmup_factor", "beta_schedule", "per_dimension_kl"]
from .tcvae import TC_ESTIMATORS, TCVAE_ELBO, TCVAEForward, log_importance_weight_matrix

__all__ += ["TCVAE_ELBO", "TCVAEForward", "TC_ESTIMATORS", "log_importance_weight_matrix"]
