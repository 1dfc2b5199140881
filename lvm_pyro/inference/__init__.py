"""Objectives, estimators and evaluation, all on the per-datapoint log-weight engine.

Nothing here imports :mod:`lvm_pyro.models`: every function works on any model / guide
pair that follows the site names of :mod:`lvm_pyro.sites`.

Handlers and baselines (``LatentScaleMessenger``, ``ScoreFunctionMessenger``,
``MLPBaseline``, VIMCO's ``leave_one_out_baselines`` ...) are imported from their modules.
"""

from .amortization import AmortizationGap, amortization_gap, fit_local_guide
from .discretized import DiscretizedDensity, discretize_observation, discretized_log_likelihood
from .evaluation import (BitsPerDimOffset, ELBOParts, NLLReport, NLLSummary, bits_per_dim,
                         bits_per_dim_offset, elbo_parts, elbo_per_datapoint, iter_log_weights,
                         log_marginal_likelihood, logmeanexp, nll_report, summarize_nll)
from .gradient_stats import GradientStats, gradient_statistics, parameter_groups
from .importance import (ImportanceEstimate, RepeatedEstimates, effective_sample_size,
                         fixed_normal_proposal, importance_estimate, prior_proposal,
                         repeated_importance_estimates)
from .iwae import BiasedGradientWarning, IWAE_ELBO
from .kl import per_dimension_kl
from .kl_weighting import Capacity_ELBO, FreeBits_ELBO, KLWeighted_ELBO
from .lean_trace import LeanTrace_ELBO
from .log_weights import LogWeights, guess_max_plate_nesting, log_weights
from .schedules import (CapacitySchedule, ConstantSchedule, CyclicalSchedule, LinearWarmup,
                        Schedule)
from .score_function import ScoreFunctionGuide, score_function
from .tcvae import TCVAEForward, TCVAE_ELBO, TC_ESTIMATORS, log_importance_weight_matrix
from .vimco import VIMCO

__all__ = [
    "AmortizationGap", "BiasedGradientWarning", "BitsPerDimOffset", "CapacitySchedule",
    "Capacity_ELBO", "ConstantSchedule", "CyclicalSchedule", "DiscretizedDensity", "ELBOParts",
    "FreeBits_ELBO", "GradientStats", "IWAE_ELBO", "ImportanceEstimate", "KLWeighted_ELBO",
    "LeanTrace_ELBO", "LinearWarmup", "LogWeights", "NLLReport",
    "NLLSummary", "RepeatedEstimates", "Schedule", "ScoreFunctionGuide", "TCVAEForward",
    "TCVAE_ELBO", "TC_ESTIMATORS", "VIMCO", "amortization_gap", "bits_per_dim",
    "bits_per_dim_offset", "discretize_observation", "discretized_log_likelihood",
    "effective_sample_size", "elbo_parts", "elbo_per_datapoint",
    "fit_local_guide", "fixed_normal_proposal", "gradient_statistics", "guess_max_plate_nesting",
    "importance_estimate", "iter_log_weights", "log_importance_weight_matrix",
    "log_marginal_likelihood", "log_weights", "logmeanexp", "nll_report", "parameter_groups",
    "per_dimension_kl", "prior_proposal", "repeated_importance_estimates", "score_function",
    "summarize_nll",
]
