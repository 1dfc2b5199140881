"""PSIS k-hat, importance ESS and log p(x) per datapoint (lvm_pyro.diagnostics.importance).

Oracles: for a N(0, 1) posterior and a N(0, s^2) proposal the weights' tail index is
k = 1 - s^2 (s < 1; bounded weights, k < 0, for s > 1), and the limit of ESS / S is
1 / E_q[(p/q)^2] = sqrt(2 - 1/s^2) / s (s^2 > 1/2). The model is written here, not taken
from lvm_pyro.models (DESIGN.md: estimators work on any program)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from lvm_pyro.diagnostics import (importance_diagnostics, importance_ess, khat_threshold,
                                  pareto_khat, summarize_khat)
from lvm_pyro.guides import LinearGaussianPosteriorGuide
from lvm_pyro.models import LinearGaussianModel
from lvm_pyro.sites import data_plate


def model(x):
    """p(z) = N(0, 1) and x independent of z, so p(z | x) = N(0, 1), p(x) = N(x; 0, 1)."""
    with data_plate(x):
        pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0), obs=x)


def proposal(s):
    def guide(x):
        with data_plate(x):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), s))
    return guide


X = torch.linspace(-1, 1, 40, dtype=torch.float64)  # 40 datapoints = 40 replicate fits
S = 2000


def test_khat_narrow_proposal_is_heavy_tailed():
    # true k = 0.75; the fit sees the pre-asymptotic tail and gives ~0.65 on average at
    # this S (measured 0.65 at S = 1000, 0.67 at S = 4000), clearly above 0.5. If the
    # sign convention of ArviZ's psislw were wrong this would be about -1.6.
    d = importance_diagnostics(model, proposal(0.5), X, num_samples=S)
    assert d.khat.shape == (40,) and d.ess.shape == (40,) and d.log_marginal.shape == (40,)
    assert float(d.khat.mean()) > 0.5
    assert float((d.khat > 0.5).double().mean()) >= 0.7


def test_khat_mild_proposal_matches_tail_index():
    # true k = 1 - 0.81 = 0.19. One k-hat has sd ~0.1 here, so the mean of 40 has sd
    # ~0.02; the pre-asymptotic bias measured +0.03..+0.06. Tolerance 0.1 = bias + 3 sd.
    d = importance_diagnostics(model, proposal(0.9), X, num_samples=S)
    assert abs(float(d.khat.mean()) - 0.19) < 0.1
    # relative ESS -> sqrt(2 - 1/s^2)/s = 0.9721; its sd over 40 points at S=2000 < 0.002
    expected = math.sqrt(2 - 1 / 0.81) / 0.9
    assert abs(float(d.ess.mean()) / S - expected) < 0.01


def test_khat_wide_proposal_is_negative():
    d = importance_diagnostics(model, proposal(1.5), X, num_samples=S)
    assert bool((d.khat < 0).all())
    expected = math.sqrt(2 - 1 / 2.25) / 1.5  # 0.8315
    assert abs(float(d.ess.mean()) / S - expected) < 0.01
    # log p(x_i) = log N(x_i; 0, 1); the weights have finite variance, the error of one
    # estimate is ~ sqrt(1/ESS - 1/S) ~ 0.01 nats
    exact = dist.Normal(0.0, 1.0).log_prob(X)
    assert torch.allclose(d.log_marginal, exact, atol=0.06)


def test_exact_posterior_guide_gives_minus_inf_and_full_ess(monkeypatch):
    from arviz_stats.base import array_stats

    def fail(*args, **kwargs):
        raise AssertionError("ArviZ must not be called for an exact guide")

    monkeypatch.setattr(array_stats, "psislw", fail)
    torch.manual_seed(0)
    W, b = torch.randn(6, 3), torch.randn(6)
    m = LinearGaussianModel(W, b, 0.5)
    x = m.marginal().sample((7,))
    d = importance_diagnostics(m, LinearGaussianPosteriorGuide(m), x, num_samples=100)
    assert bool((d.khat == -math.inf).all())
    assert bool((d.ess == 100).all())
    assert torch.allclose(d.log_marginal, m.log_prob(x).double(), atol=1e-4)
    s = d.summary()
    assert s["num_exact"] == 7 and s["above_0.5"] == 0 and s["khat_median"] is None


def test_biased_linear_gaussian_guide_is_flagged():
    torch.manual_seed(0)
    W, b = torch.randn(6, 2), torch.randn(6)
    m = LinearGaussianModel(W, b, 0.5)
    x = m.marginal().sample((10,))
    d = importance_diagnostics(m, LinearGaussianPosteriorGuide(m, scale_factor=0.5), x,
                               num_samples=1000)
    # a 2-d Gaussian proposal with half the posterior's scale: k = 1 - 0.25 = 0.75
    assert float(d.khat.mean()) > 0.5
    assert summarize_khat(d.khat, 1000)["above_0.5"] >= 7


def test_threshold_and_summary_counts():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(2 / 3)
    assert khat_threshold(10 ** 6) == 0.7
    k = torch.tensor([-math.inf, 0.1, 0.55, 0.6, 0.75, 1.2])
    s = summarize_khat(k, 1000)
    assert (s["num_exact"], s["above_0.5"], s["above_0.7"], s["above_threshold"]) == (1, 4, 2, 2)
    assert sum(s["histogram"]["counts"]) == 5


def test_ess_on_constructed_weights():
    lw = torch.zeros(50, 3, dtype=torch.float64)
    lw[:, 1] = torch.linspace(0, 1e-6, 50)  # within the exact tolerance
    lw[0, 2] = 100.0  # one draw carries all the weight
    ess = importance_ess(lw)
    assert ess[0] == 50 and ess[1] == 50
    assert float(ess[2]) == pytest.approx(1.0, abs=1e-9)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="num_samples"):
        importance_diagnostics(model, proposal(1.0), X, num_samples=10)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        pareto_khat(torch.full((30, 2), -math.inf))
    with pytest.raises(ValueError, match="shape"):
        pareto_khat(torch.zeros(30))


def test_point_mass_guide_is_rejected_not_called_exact():
    def delta_guide(x):
        with data_plate(x):
            pyro.sample("z", dist.Delta(torch.zeros_like(x)))

    with pytest.raises(ValueError, match="do not vary"):
        importance_diagnostics(model, delta_guide, X, num_samples=50)
