"""tc_decomposition (lvm_pyro.diagnostics.information): index-code MI, total correlation
and dimension-wise KL against exact values on M <= 50 points.

With the M rows of x the aggregate posterior is the finite mixture
q(z) = (1/M) sum_j N(z; m_j, diag s_j^2), and, for the prior N(0, I),

    MI   = H(q(z)) - (1/M) sum_j H(N(m_j, s_j^2))
    TC   = sum_d H(q(z_d)) - H(q(z))
    KL_d = -H(q(z_d)) + log(2 pi)/2 + E_q[z_d^2]/2,   E_q[z_d^2] = mean_j(m_jd^2 + s_jd^2)

with Gaussian entropies in closed form and the mixtures' entropies by quadrature on a
fine grid (midpoint rule over [-12, 12], error far below the Monte-Carlo tolerance).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from lvm_pyro.diagnostics import tc_decomposition
from lvm_pyro.sites import data_plate


def table_guide(locs, scales):
    """A guide that reads row i of x as the index of its posterior N(locs[i], scales[i])."""
    def guide(x):
        i = x[:, 0].long()
        with data_plate(x):
            pyro.sample("z", dist.Normal(locs[i], scales[i]).to_event(1))
    return guide


def std_model(x):
    with data_plate(x):
        pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))


def _mixture_entropy_1d(locs, scales, grid):
    dens = torch.exp(dist.Normal(locs, scales).log_prob(grid[:, None])).mean(-1)  # (G,)
    h = grid[1] - grid[0]
    return float(-(dens * torch.log(dens.clamp_min(1e-300))).sum() * h)


def _exact(locs, scales):
    g = torch.linspace(-12, 12, 601, dtype=torch.float64)
    g = g[:-1] + (g[1] - g[0]) / 2  # midpoints
    h = g[1] - g[0]
    z1, z2 = torch.meshgrid(g, g, indexing="ij")
    comp = (dist.Normal(locs[:, 0], scales[:, 0]).log_prob(z1[..., None])
            + dist.Normal(locs[:, 1], scales[:, 1]).log_prob(z2[..., None]))  # (G, G, M)
    log_q = torch.logsumexp(comp, -1) - math.log(len(locs))
    h_joint = float(-(log_q.exp() * log_q).sum() * h * h)
    h_comp = float((0.5 * math.log(2 * math.pi * math.e) * 2 + scales.log().sum(-1)).mean())
    h_d = [_mixture_entropy_1d(locs[:, d], scales[:, d], g) for d in range(2)]
    kl_d = [-h_d[d] + 0.5 * math.log(2 * math.pi) + 0.5 * float((locs[:, d] ** 2 + scales[:, d] ** 2).mean())
            for d in range(2)]
    return h_joint - h_comp, sum(h_d) - h_joint, kl_d


def _check(r, locs, scales):
    mi, tc, kl_d = _exact(locs, scales)
    assert r.average_kl_mc == pytest.approx(
        r.mutual_information + r.total_correlation + r.dimensionwise_kl, abs=1e-10)
    assert abs(r.mutual_information - mi) < 4 * r.mutual_information_se
    assert abs(r.total_correlation - tc) < 4 * r.total_correlation_se + 1e-9
    assert abs(r.dimensionwise_kl - sum(kl_d)) < 4 * r.dimensionwise_kl_se
    assert r.mutual_information <= math.log(len(locs)) + 1e-9
    return mi, tc, kl_d


def test_terms_match_exact_values_on_a_correlated_mixture():
    # 12 posteriors along the diagonal: strongly correlated aggregate posterior, TC > 0
    t = torch.linspace(-2, 2, 12, dtype=torch.float64)
    locs = torch.stack([t, 0.8 * t + 0.3], -1)
    scales = torch.tensor([0.3, 0.5], dtype=torch.float64).expand(12, 2)
    x = torch.arange(12, dtype=torch.float64).unsqueeze(-1)
    r = tc_decomposition(std_model, table_guide(locs, scales), x, num_samples=1000)
    mi, tc, kl_d = _check(r, locs, scales)
    assert tc > 0.3  # a case where the test can tell TC from 0 (exact ~0.7 nats)
    assert r.dimensionwise_kl_per_dim.shape == (2,)


def test_total_correlation_is_zero_when_the_aggregate_factorises():
    # posteriors on a 4 x 5 product grid with scales that depend on one coordinate each:
    # q(z) = q(z_1) q(z_2) exactly, so every draw's TC term is 0
    a, b = torch.tensor([-1.5, -0.2, 0.4, 2.0]), torch.tensor([-2.0, -1.0, 0.0, 1.5, 2.5])
    sa, sb = torch.tensor([0.3, 0.6, 0.4, 0.8]), torch.tensor([0.5, 0.2, 0.7, 0.3, 0.4])
    ia, ib = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    locs = torch.stack([a[ia.reshape(-1)], b[ib.reshape(-1)]], -1).double()
    scales = torch.stack([sa[ia.reshape(-1)], sb[ib.reshape(-1)]], -1).double()
    x = torch.arange(20, dtype=torch.float64).unsqueeze(-1)
    r = tc_decomposition(std_model, table_guide(locs, scales), x, num_samples=500)
    assert abs(r.total_correlation) < 1e-10 and r.total_correlation_se < 1e-10
    mi, tc, _ = _check(r, locs, scales)
    assert abs(tc) < 1e-6  # the quadrature agrees


def test_non_factorised_prior_is_refused():
    def corr_model(x):
        with data_plate(x):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                     torch.tensor([[1.0, 0.8], [0.8, 1.0]],
                                                                  dtype=torch.float64)))

    locs, scales = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    x = torch.arange(3, dtype=torch.float64).unsqueeze(-1)
    with pytest.raises(ValueError, match="does not factorise"):
        tc_decomposition(corr_model, table_guide(locs, scales), x)
    with pytest.raises(ValueError, match="at least 2"):
        tc_decomposition(std_model, table_guide(locs, scales), x[:1])
