"""The discretised likelihood of a pixel-factorised density (each pixel's density
integrated over its bin, Theis et al. 2016 sec. 3.1) against numerical integration, and
its place above the dequantisation bounds of the same density.

The test model is linear-Gaussian with a 1-D latent and D = 2 pixels,
y_d | z ~ N(a_d z + b_d, s_d), so P(k | z) is a product of 1-D bin integrals and the
marginal P(k) is the integral of the bivariate normal N(b, a a^T + diag(s^2)) over the
2-D bin: both are computed here by midpoint rules, with no CDF.
"""

import math

import mpmath
import pyro
import pyro.distributions as dist
import pytest
import torch

from lvm_pyro.guides import CompositeGuide, UniformDequantizer
from lvm_pyro.inference import log_weights
from lvm_pyro.inference.discretized import (DiscretizedDensity, discretize_observation,
                                            discretized_log_likelihood)
from lvm_pyro.models import DequantizedModel

L = 4
A = torch.tensor([0.15, -0.1], dtype=torch.float64)
B = torch.tensor([0.45, 0.6], dtype=torch.float64)
S = torch.tensor([0.12, 0.2], dtype=torch.float64)
# levels: an interior bin, both end bins, and bins far from the mean
K_DATA = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 2]])


def density_model(x, *, num_data=None, idx=None):
    """z ~ N(0, 1); y | z ~ N(a z + b, s) per pixel, event (2,)."""
    with pyro.plate("data", num_data or len(x), subsample=idx):
        z = pyro.sample("z", dist.Normal(_zero(x), 1.0))
        loc = A * z[..., None] + B  # (..., batch, 2)
        pyro.sample("x", dist.Normal(loc, S).to_event(1), obs=x)


def _zero(x):
    return torch.zeros((), dtype=x.dtype if torch.is_floating_point(x) else torch.float64)


def prior_guide(x, *, num_data=None, idx=None):
    with pyro.plate("data", num_data or len(x), subsample=idx):
        pyro.sample("z", dist.Normal(_zero(x), 1.0))


def posterior_like_guide(x, *, num_data=None, idx=None):
    """N(m(k), 0.8): m the precision-weighted z that puts each pixel's mean at its bin
    centre (close to the posterior mean; prior precision 1)."""
    k = torch.round(x * (L - 1)) if torch.is_floating_point(x) else x.double()
    z_d = ((k + 0.5) / L - B) / A  # (batch, 2)
    w = A ** 2 / S ** 2
    m = (z_d * w).sum(-1) / (1 + w.sum())  # (batch,)
    with pyro.plate("data", num_data or len(x), subsample=idx):
        pyro.sample("z", dist.Normal(m, 0.8))


def midpoint(f, lo, hi, n):
    """Midpoint rule of f over [lo, hi) with n points, f vectorised (float64)."""
    h = (hi - lo) / n
    t = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    return f(t).sum(-1) * h


def normal_pdf(y, loc, scale):
    return torch.exp(-0.5 * ((y - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


def exact_log_p_given_z(k, z):
    """log P(k | z) by numerical integration of each pixel's density over its bin."""
    out = 0.0
    for d in range(2):
        lo, hi = k[d] / L, (k[d] + 1) / L
        mass = midpoint(lambda y: normal_pdf(y, A[d] * z + B[d], S[d]), lo, hi, 4000)
        out = out + math.log(float(mass))
    return out


def exact_log_p(k):
    """log P(k): the 2-D integral of the marginal N(b, a a^T + diag(s^2)) over the bin."""
    cov = torch.outer(A, A) + torch.diag(S ** 2)
    mvn = torch.distributions.MultivariateNormal(B, cov)
    n = 600
    h = 1.0 / (L * n)
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * h
    y0, y1 = torch.meshgrid(k[0] / L + t, k[1] / L + t, indexing="ij")
    return float(torch.logsumexp(mvn.log_prob(torch.stack([y0, y1], -1)).flatten(), 0)
                 + 2 * math.log(h))


def test_log_weight_is_the_exact_bin_integral_given_z():
    x = K_DATA.double() / (L - 1)  # the library's grid encoding of the levels
    out = log_weights(discretize_observation(density_model, L), prior_guide, x, 3)
    z = out.guide_trace.nodes["z"]["value"]  # (3, batch)
    # the guide is the prior: log w = log P(k | z) exactly
    for i, k in enumerate(K_DATA.tolist()):
        for j in range(3):
            want = exact_log_p_given_z(k, float(z[j, i]))
            assert float(out.log_w[j, i]) == pytest.approx(want, abs=1e-6)
    # integer levels give the same weights (same draws under the same seed)
    pyro.set_rng_seed(3)
    w_int = log_weights(discretize_observation(density_model, L), prior_guide, K_DATA, 3,
                        max_plate_nesting=1).log_w
    pyro.set_rng_seed(3)
    w_grid = log_weights(discretize_observation(density_model, L), prior_guide,
                         K_DATA.double() / (L - 1), 3, max_plate_nesting=1).log_w
    assert torch.allclose(w_int.double(), w_grid, atol=1e-12)


def test_importance_sampled_bound_matches_the_integrated_marginal():
    x = K_DATA.double() / (L - 1)
    got = discretized_log_likelihood(density_model, posterior_like_guide, x, L, num_samples=20000)
    want = torch.tensor([exact_log_p(k) for k in K_DATA.tolist()], dtype=torch.float64)
    assert got.shape == (4,) and got.dtype == torch.float64
    # K = 20000 with a guide close to the posterior: within 0.01 nats of log P(k)
    assert torch.allclose(got, want, atol=0.01), (got, want)


def test_discretized_density_is_stable_far_in_the_tails():
    loc = torch.tensor([0.9, 0.05, 0.5], dtype=torch.float64)
    scale = torch.tensor([0.005, 0.004, 0.3], dtype=torch.float64)
    k = torch.tensor([0.0, 255.0, 128.0], dtype=torch.float64)
    d = DiscretizedDensity(dist.Normal(loc, scale), 256)
    got = d.log_prob(k)
    mpmath.mp.dps = 60
    for i in range(3):
        lo = (float(k[i]) / 256 - float(loc[i])) / float(scale[i])
        hi = ((float(k[i]) + 1) / 256 - float(loc[i])) / float(scale[i])
        if lo > 0:  # above the mean: the same mass as the mirrored bin below it
            lo, hi = -hi, -lo
        want = float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))
        assert float(got[i]) == pytest.approx(want, rel=1e-9), (i, float(got[i]), want)
    assert float(got[0]) < -1e4 and torch.isfinite(got).all()  # ~180 sds: no -inf
    # float32 keeps finite values too
    assert torch.isfinite(DiscretizedDensity(dist.Normal(loc.float(), scale.float()), 256)
                          .log_prob(k.float())).all()


def test_levels_probabilities_sum_to_the_mass_inside_the_unit_interval():
    loc = torch.tensor([0.3, 1.1], dtype=torch.float64)
    scale = torch.tensor([0.2, 0.05], dtype=torch.float64)
    d = DiscretizedDensity(dist.Normal(loc, scale), 8)
    levels = torch.arange(8, dtype=torch.float64)[:, None].expand(8, 2)
    total = d.log_prob(levels).exp().sum(0)
    n = torch.distributions.Normal(loc, scale)
    assert torch.allclose(total, n.cdf(torch.ones(2, dtype=torch.float64)) - n.cdf(
        torch.zeros(2, dtype=torch.float64)), atol=1e-12)
    # a non-Normal base goes through its cdf
    u = DiscretizedDensity(dist.Uniform(torch.zeros(2), torch.ones(2)).to_event(1), 4)
    assert float(u.log_prob(torch.tensor([1.0, 3.0]))) == pytest.approx(2 * math.log(0.25))


def test_discretized_bound_is_above_the_uniform_dequantisation_bound():
    """Same density, K = 1: E_u log p_v(k + u | z) <= log P(k | z) for every z (Jensen),
    so the discretised ELBO is above the uniform-dequantisation ELBO (in expectation);
    here by a margin far beyond Monte-Carlo error, since the pixels' sds are comparable
    to the bin width."""
    x = K_DATA.double() / (L - 1)
    n = 4000
    disc = log_weights(discretize_observation(density_model, L), posterior_like_guide, x, n).log_w
    uni = log_weights(DequantizedModel(density_model, L),
                      CompositeGuide(UniformDequantizer(), posterior_like_guide), x, n).log_w
    gap = disc.mean(0) - uni.mean(0)
    se = ((disc.var(0) + uni.var(0)) / n).sqrt()
    assert (gap > 5 * se).all() and (gap > 0.02).all(), (gap, se)


def test_bad_inputs_are_clear_errors():
    def full_cov_model(x, *, num_data=None, idx=None):
        with pyro.plate("data", num_data or len(x), subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            loc = B * torch.ones_like(z)[..., None]
            pyro.sample("x", dist.MultivariateNormal(loc, torch.eye(2, dtype=x.dtype)), obs=x)

    def no_obs(x, *, num_data=None, idx=None):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))

    x = K_DATA.double() / (L - 1)
    with pytest.raises(ValueError, match="factorises over pixels"):
        discretized_log_likelihood(full_cov_model, prior_guide, x, L, num_samples=2)
    with pytest.raises(ValueError, match="no observed site 'x'"):
        discretized_log_likelihood(no_obs, prior_guide, x, L, num_samples=2)
    with pytest.raises(ValueError, match="grid"):
        discretized_log_likelihood(density_model, prior_guide, x + 0.1, L, num_samples=2)
    with pytest.raises(ValueError, match="num_levels"):
        discretize_observation(density_model, 1)
