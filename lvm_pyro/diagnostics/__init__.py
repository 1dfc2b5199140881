"""Posterior diagnostics of any model / guide pair, on the per-datapoint log-weight engine
(:func:`lvm_pyro.inference.log_weights`) and ArviZ 1.x.

* :func:`importance_diagnostics` -- PSIS k-hat, importance ESS, log p(x) per datapoint
  (Yao et al. 2018; Vehtari et al. 2024).
* :func:`to_datatree` -- guide draws, observations and log weights as an
  ``xarray.DataTree`` for ``az.summary`` and ArviZ plots.
* :func:`nuts_reference`, :func:`compare_to_reference` -- NUTS on p(z | x) with the model
  fixed, R-hat / ESS via ArviZ, and the guide against it.
* :func:`kl_per_dimension`, :func:`active_units`, :func:`mutual_information`,
  :func:`kl_decomposition` -- how much information z carries (Burda et al. 2015;
  Hoffman & Johnson 2016; He et al. 2019).
* :func:`simulation_based_calibration` -- rank test of the amortised guide (Talts et al.
  2018).
* :func:`classifier_rejection`, :func:`precision_recall`, :func:`class_coverage` -- judge
  class-conditional samples with classifiers (Razavi et al. 2019; Kynkaanniemi et al. 2019).

A diagnostic that does not apply to a model raises :class:`NotApplicableError`.
The command ``lvm-pyro diagnose RUN_DIR`` (:mod:`lvm_pyro.training.diagnose`) runs them
all on a trained run; ``docs/diagnostics.md`` explains how to read them.
"""

from .arviz_convert import draws_to_datatree, to_datatree
from .disentanglement import (DCIResult, METRIC_KEYS, MIGResult, beta_vae_score,
                              dci_from_importance, dci_scores, disentanglement_metrics,
                              factor_vae_score, guide_codes, mig_score, sap_score)
from .errors import NotApplicableError
from .importance import (EXACT_TOL, ImportanceDiagnostics, importance_diagnostics, importance_ess,
                         khat_threshold, pareto_khat, sample_log_weights, summarize_khat)
from .information import (ACTIVE_UNIT_THRESHOLD, ActiveUnits, KLDecomposition, MutualInformation,
                          TCDecomposition, active_units, average_kl, kl_decomposition,
                          kl_per_dimension, mutual_information, tc_decomposition)
from .mcmc_reference import (GuideComparison, MCMCReference, compare_to_reference, energy_distance,
                             nuts_reference)
from .rejection import RejectionResult, classifier_rejection
from .sample_quality import PrecisionRecall, class_coverage, precision_recall
from .sbc import SBCResult, rank_uniformity_pvalue, simulation_based_calibration

__all__ = [
    "ACTIVE_UNIT_THRESHOLD", "ActiveUnits", "DCIResult", "EXACT_TOL", "GuideComparison",
    "ImportanceDiagnostics", "KLDecomposition", "MCMCReference", "METRIC_KEYS", "MIGResult",
    "MutualInformation", "NotApplicableError", "PrecisionRecall", "RejectionResult", "SBCResult",
    "TCDecomposition", "active_units", "average_kl", "beta_vae_score", "class_coverage",
    "classifier_rejection", "compare_to_reference", "dci_from_importance", "dci_scores",
    "disentanglement_metrics", "draws_to_datatree", "energy_distance", "factor_vae_score",
    "guide_codes", "importance_diagnostics", "importance_ess", "khat_threshold",
    "kl_decomposition", "kl_per_dimension", "mig_score", "mutual_information", "nuts_reference",
    "pareto_khat", "precision_recall", "rank_uniformity_pvalue", "sample_log_weights",
    "sap_score", "simulation_based_calibration", "summarize_khat", "tc_decomposition",
    "to_datatree",
]
