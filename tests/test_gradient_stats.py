"""gradient_statistics against a brute-force loop, and the SNR behaviour of the IWAE
estimators (Rainforth et al. 2018; Tucker et al. 2018) on the linear-Gaussian model of
tests/test_iwae.py (written there, with learnable parameters)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.inference import IWAE_ELBO, gradient_statistics, parameter_groups
from test_iwae import GUIDE_NAMES, MODEL_NAMES, NAMES, _params, _problem


def test_groups_are_guide_and_model_parameters():
    model, guide, x = _problem()
    groups = parameter_groups(model, guide, x)
    assert sorted(groups["encoder"]) == sorted(GUIDE_NAMES)
    assert sorted(groups["decoder"]) == sorted(MODEL_NAMES)


def test_statistics_match_brute_force_loop_and_restore_grads():
    """Mean, unbiased variance and |mean| / sd equal those of the stacked gradients of
    the same 30 draws (same seed) to 1e-10; parameters' .grad is restored."""
    model, guide, x = _problem(shift=0.5)
    p = _params(model, guide, x)
    p["b"].grad = torch.full_like(p["b"], 7.0)
    elbo = IWAE_ELBO(4, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    stats = gradient_statistics(elbo, model, guide, x, num_draws=30)
    torch.testing.assert_close(p["b"].grad, torch.full_like(p["b"], 7.0))
    assert p["A"].grad is None
    pyro.set_rng_seed(3)
    draws = {n: [] for n in NAMES}
    for _ in range(30):
        for t in p.values():
            t.grad = None
        elbo.loss_and_grads(model, guide, x)
        for n in NAMES:
            draws[n].append(p[n].grad.double().clone())
    for n in NAMES:
        g = torch.stack(draws[n])
        torch.testing.assert_close(stats.mean[n], g.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(stats.variance[n], g.var(0), rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(stats.snr[n], g.mean(0).abs() / g.std(0), rtol=1e-6, atol=1e-10)
    assert stats.num_draws == 30
    s = stats.summary()
    assert s["encoder"]["num_elements"] == 2 * 3 + 2 + 2
    enc = torch.cat([stats.snr[n].flatten() for n in GUIDE_NAMES])
    assert s["encoder"]["snr_mean"] == pytest.approx(float(enc.mean()), rel=1e-12)


def test_zero_variance_estimator_and_unused_parameter_and_bad_input():
    """At the exact posterior DReG's guide gradient is 0 on every draw (variance below
    1e-20); a guide parameter the objective ignores has SNR 0/0 = nan, left out of the
    group reduction."""
    model, guide, x = _problem(exact=True)
    stats = gradient_statistics(IWAE_ELBO(3, gradient="dreg"), model, guide, x, num_draws=5)
    assert all(float(stats.variance[n].max()) < 1e-20 for n in GUIDE_NAMES)
    assert float(min(stats.variance[n].min() for n in MODEL_NAMES)) > 1e-8

    def guide_unused(x, **kw):
        pyro.param("unused", torch.zeros(2, dtype=torch.float64))
        return guide(x, **kw)

    pyro.set_rng_seed(0)
    stats = gradient_statistics(IWAE_ELBO(3), model, guide_unused, x, num_draws=5)
    assert "unused" in stats.groups["encoder"]
    assert bool(torch.isnan(stats.snr["unused"]).all())
    assert math.isfinite(stats.group_snr("encoder"))
    with pytest.raises(ValueError, match="num_draws"):
        gradient_statistics(Trace_ELBO(), model, guide, x, num_draws=1)
    with pytest.raises(ValueError, match="reduce"):
        stats.group_snr("decoder", reduce="max")


def test_encoder_snr_falls_with_k_for_standard_but_not_for_dreg():
    """Perturbed guide, 100 draws each: the standard estimator's encoder SNR (mean over
    elements) at K = 64 is below half its K = 1 value (Rainforth et al.: O(1/sqrt(K)));
    DReG's at K = 64 is at least 0.8 x its K = 1 value and above the standard one's."""
    model, guide, x = _problem(shift=0.6, widen=1.4)
    snr = {}
    for g in ("standard", "dreg"):
        for K in (1, 64):
            stats = gradient_statistics(IWAE_ELBO(K, gradient=g), model, guide, x, num_draws=100)
            snr[g, K] = stats.group_snr("encoder")
    assert snr["standard", 64] < 0.5 * snr["standard", 1], snr
    assert snr["dreg", 64] > 0.8 * snr["dreg", 1], snr
    assert snr["dreg", 64] > 2 * snr["standard", 64], snr
