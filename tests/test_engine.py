"""The log-weight engine and log p(x) estimates against the linear-Gaussian closed form."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from lvm_pyro.guides import LinearGaussianPosteriorGuide
from lvm_pyro.inference import elbo_per_datapoint, log_marginal_likelihood, log_weights
from lvm_pyro.models import LinearGaussianModel
from lvm_pyro.sites import auxiliary_factor, data_plate


def make_lg(d=5, k=3, s=0.7, seed=1):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    model = LinearGaussianModel(W, b, s)
    x = model.marginal().sample((40,))
    return model, x


def test_exact_posterior_gives_exact_log_px_with_zero_variance():
    model, x = make_lg()
    guide = LinearGaussianPosteriorGuide(model)
    exact = model.log_prob(x)
    for K in (1, 7):
        est = log_marginal_likelihood(model, guide, x, num_samples=K)
        assert est.shape == (40,)
        torch.testing.assert_close(est, exact, rtol=0, atol=1e-9)
    lw = log_weights(model, guide, x, 50).log_w
    assert lw.shape == (50, 40)
    assert float(lw.std(0).max()) < 1e-9


def test_other_guide_is_below_and_rises_with_K():
    model, x = make_lg()
    guide = LinearGaussianPosteriorGuide(model, loc_shift=0.5, scale_factor=1.5)
    exact = model.log_prob(x)
    reps = 30
    means = {}
    for K in (1, 10, 100):
        est = torch.stack([log_marginal_likelihood(model, guide, x, num_samples=K) for _ in range(reps)])
        means[K] = est.mean(0)  # (40,)
        se = est.std(0) / math.sqrt(reps)
        # a lower bound in expectation: below log p(x) within 4 standard errors
        assert bool((means[K] <= exact + 4 * se + 1e-9).all())
    gap = {K: float((exact - means[K]).mean()) for K in means}
    assert gap[1] > gap[10] > gap[100] > -0.01, gap
    elbo = torch.stack([elbo_per_datapoint(model, guide, x, num_samples=20) for _ in range(10)]).mean(0)
    torch.testing.assert_close(elbo.mean(), means[1].mean(), atol=0.1, rtol=0)  # ELBO = L_1
    assert float(elbo.mean()) < float(means[100].mean()) < float(exact.mean())


def test_chunking_matches_single_pass():
    model, x = make_lg()
    guide = LinearGaussianPosteriorGuide(model)
    a = log_marginal_likelihood(model, guide, x, num_samples=10, chunk_size=3)
    b = log_marginal_likelihood(model, guide, x, num_samples=10)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    # a biased guide: the chunked running logsumexp equals the logmeanexp of one pass
    guide = LinearGaussianPosteriorGuide(model, loc_shift=0.3)
    pyro.set_rng_seed(3)
    a = log_marginal_likelihood(model, guide, x, num_samples=12, chunk_size=12)
    pyro.set_rng_seed(3)
    lw = log_weights(model, guide, x, 12).log_w
    torch.testing.assert_close(a, torch.logsumexp(lw, 0) - math.log(12))


def test_user_program_taking_only_x():
    """A plain Pyro model / guide written here, signature f(x), no kwargs."""
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))  # the exact posterior

    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    est = log_marginal_likelihood(model, guide, x, num_samples=4)
    exact = dist.Normal(torch.zeros(3, dtype=torch.float64), math.sqrt(2.0)).log_prob(x)
    torch.testing.assert_close(est, exact, atol=1e-12, rtol=0)


def test_batch_is_per_datapoint_and_subsample_scale_is_reported():
    model, x = make_lg()
    guide = LinearGaussianPosteriorGuide(model, loc_shift=0.2)
    pyro.set_rng_seed(0)
    out = log_weights(model, guide, x[:8], 5, num_data=40, idx=torch.arange(8))
    assert out.log_w.shape == (5, 8)
    assert out.data_scale == pytest.approx(5.0)
    # each column depends only on its own datapoint: recompute with the same z draws
    z = out.guide_trace.nodes["z"]["value"]  # (5, 8, k)
    loc, cov = model.posterior(x[:8])
    q = dist.MultivariateNormal(loc + 0.2, covariance_matrix=cov).log_prob(z)
    p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(z @ model.W.T + model.b, 0.7).log_prob(x[:8]).sum(-1)
    torch.testing.assert_close(out.log_w, p - q)


def test_auxiliary_factor_is_left_out_and_scale_is_rejected():
    model, x = make_lg()
    guide = LinearGaussianPosteriorGuide(model)

    def user_model(x, extra):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(z @ model.W.T + model.b, 0.7).to_event(1), obs=x)
            extra(torch.ones(x.shape[:1], dtype=x.dtype))

    def model_aux(x):
        user_model(x, lambda o: auxiliary_factor("commitment", -100.0 * o))

    torch.testing.assert_close(log_marginal_likelihood(model_aux, guide, x, 2), model.log_prob(x))

    def model_factor(x):  # a user's own pyro.factor IS part of p(x, z)
        user_model(x, lambda o: pyro.factor("extra", -1.5 * o))

    torch.testing.assert_close(log_marginal_likelihood(model_factor, guide, x, 2), model.log_prob(x) - 1.5)

    scaled = pyro.poutine.scale(model, scale=2.0)
    with pytest.raises(ValueError, match="scale"):
        log_weights(scaled, guide, x, 2)


def test_clear_errors_for_global_latent_and_missing_guide_site():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="outside the 'data' plate"):
        log_weights(model, guide, torch.zeros(3), 2)

    def model2(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="no site of the same name in the guide"):
        log_weights(model2, lambda x: None, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="num_samples"):
        log_marginal_likelihood(model2, lambda x: None, torch.zeros(3), 0)


def test_very_negative_log_weights_stay_finite():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z, 0.01), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))

    x = torch.full((4,), 15.0)  # log p(x | z) ~ -1e6 for every prior draw
    est = log_marginal_likelihood(model, guide, x, num_samples=1000, chunk_size=100)
    assert bool(torch.isfinite(est).all()) and float(est.max()) < -1000
