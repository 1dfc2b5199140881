"""Importance sampling: the ESS formula on known weights, unbiasedness of the weight
average on the linear-Gaussian model, zero variance with the exact posterior, and the
failure of the prior as proposal in 100 latent dimensions."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from lvm_pyro.guides import LinearGaussianPosteriorGuide
from lvm_pyro.inference import (effective_sample_size, fixed_normal_proposal,
                                importance_estimate, logmeanexp, prior_proposal,
                                repeated_importance_estimates)
from lvm_pyro.models import LinearGaussianModel
from lvm_pyro.sites import data_plate


def _linear_gaussian(d, k, seed=0, noise_scale=0.7):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=gen, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    return LinearGaussianModel(W, b, noise_scale)


def test_ess_formula_on_known_weights():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0]],
                     dtype=torch.float64)
    ess = effective_sample_size(w.log(), dim=1)
    expected = torch.tensor([4.0, 1.0, 36.0 / 14.0], dtype=torch.float64)
    assert torch.allclose(ess, expected, rtol=1e-12)
    # invariant to a common factor, stable for weights of 1e-400 (log -921 nats)
    assert torch.allclose(effective_sample_size(w.log() - 921.0, dim=1), expected, rtol=1e-12)
    # dim 0 is the sample dimension by default
    assert torch.allclose(effective_sample_size(w.log().T), expected, rtol=1e-12)


class _UserModel:
    """A user's own conjugate model, not one of ours: z ~ N(0, 1), x | z ~ N(2 z, 0.5^2),
    so p(x) = N(0, 4.25)."""

    def __call__(self, x, *, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(2.0 * z, 0.5), obs=x)


def test_prior_proposal_on_a_user_model_recovers_log_px():
    model = _UserModel()
    x = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    exact = dist.Normal(0.0, math.sqrt(4.25)).log_prob(x)
    est = importance_estimate(model, prior_proposal(model), x, 20000, keep_log_w=True)
    # with a 1-D latent the prior is a usable proposal
    assert torch.allclose(est.log_px, exact, atol=0.05)
    assert bool((est.ess_fraction > 0.1).all())
    # log w = log p(x | z): the prior terms cancel exactly
    z = est.log_w  # (K, 3) log weights
    assert z.shape == (20000, 3)
    assert torch.allclose(logmeanexp(est.log_w), est.log_px, rtol=1e-12)
    assert torch.allclose(effective_sample_size(est.log_w), est.ess, rtol=1e-10)


def test_weight_average_is_unbiased_on_linear_gaussian():
    """E_q[w] = p(x): the mean of the weights (not of log w) is unbiased. Check
    mean(w) / p(x) = 1 within 4 standard errors, for a deliberately poor proposal."""
    model = _linear_gaussian(3, 2)
    x = model.marginal().sample((4,))
    exact = model.log_prob(x)  # (4,)
    guide = LinearGaussianPosteriorGuide(model, loc_shift=0.3, scale_factor=1.4)
    est = importance_estimate(model, guide, x, 100000, keep_log_w=True, chunk_size=25000)
    ratio = torch.exp(est.log_w - exact)  # (K, 4) w_k / p(x)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(ratio.shape[0])
    assert bool(((mean - 1.0).abs() < 4 * se).all()), (mean, se)
    assert bool((se < 0.02).all())
    # ... while log of the average is biased low in expectation, it is close here
    assert bool((est.log_px - exact).abs().max() < 0.05)


def test_exact_posterior_has_zero_variance_and_full_ess():
    model = _linear_gaussian(5, 3)
    x = model.marginal().sample((6,))
    rep = repeated_importance_estimates(model, LinearGaussianPosteriorGuide(model), x,
                                        num_samples=50, num_repeats=4)
    assert rep.log_px.shape == (4, 6) and rep.ess.shape == (4, 6)
    assert torch.allclose(rep.mean, model.log_prob(x), atol=1e-9)
    assert bool((rep.std < 1e-9).all())
    assert torch.allclose(rep.ess, torch.full_like(rep.ess, 50.0), rtol=1e-9)


@pytest.fixture(scope="module")
def lg100():
    """100-dim latent, 200-dim x: a posterior far narrower than the prior."""
    torch.manual_seed(1)
    model = _linear_gaussian(200, 100, seed=1, noise_scale=1.0)
    x = model.marginal().sample((8,))
    return model, x, model.log_prob(x)


def test_prior_proposal_fails_in_100_dimensions(lg100):
    model, x, exact = lg100
    prior = importance_estimate(model, prior_proposal(model), x, 1000)
    # failure detected: one weight carries everything, the estimate is far too low
    assert bool((prior.ess < 1.5).all()), prior.ess
    assert bool((prior.log_px < exact - 100.0).all())
    # a fixed (x-independent) Gaussian fails as well
    fixed = importance_estimate(model, fixed_normal_proposal(0.0, 0.3, z_dim=100), x, 1000)
    assert bool((fixed.ess < 1.5).all())
    assert bool((fixed.log_px < exact - 20.0).all())
    # the exact posterior: every weight equals p(x)
    post = importance_estimate(model, LinearGaussianPosteriorGuide(model), x, 1000)
    assert torch.allclose(post.log_px, exact, atol=1e-8)
    assert torch.allclose(post.ess, torch.full_like(post.ess, 1000.0), rtol=1e-8)
    # a near-posterior proposal (covariance inflated by 5% per axis) still works
    near = importance_estimate(model, LinearGaussianPosteriorGuide(model, scale_factor=1.05),
                               x, 1000)
    assert bool((near.ess_fraction > 0.05).all()), near.ess_fraction
    assert bool(((near.log_px - exact).abs() < 0.5).all())


def test_spread_over_repeats_is_large_for_the_prior(lg100):
    model, x, exact = lg100
    rep = repeated_importance_estimates(model, prior_proposal(model), x[:2], 200, 5)
    near = repeated_importance_estimates(
        model, LinearGaussianPosteriorGuide(model, scale_factor=1.05), x[:2], 200, 5)
    assert bool((rep.std > 10 * near.std).all())


def test_argument_errors():
    model = _linear_gaussian(3, 2)
    x = model.marginal().sample((2,))
    with pytest.raises(ValueError, match="num_samples"):
        importance_estimate(model, prior_proposal(model), x, 0)
    with pytest.raises(ValueError, match="num_repeats"):
        repeated_importance_estimates(model, prior_proposal(model), x, 10, 0)
    with pytest.raises(ValueError, match="z_dim"):
        fixed_normal_proposal(0.0, 1.0)
    with pytest.raises(ValueError, match="scale"):
        fixed_normal_proposal(torch.zeros(2), -1.0)
