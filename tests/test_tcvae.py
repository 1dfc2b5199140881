"""TCVAE_ELBO (Chen et al. 2018) on a linear-Gaussian model written here.

Oracles: Trace_ELBO on the same draw (alpha = beta = gamma = 1 telescopes to the ELBO);
exact enumeration of every ordered minibatch for the stratified estimator's unbiasedness;
a guide that ignores x (q(z) = q(z | x) exactly) and well-separated posteriors
(q(z_i) = q(z_i | x_i) / N), where the terms have closed forms; scipy's normal density
for the B x B matrix.
"""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from scipy.stats import norm

from lvm_pyro.inference import TCVAE_ELBO, log_importance_weight_matrix
from lvm_pyro.sites import data_plate

D_X, D_Z = 3, 2


def model(x, num_data=None, idx=None):
    w = pyro.param("w", torch.tensor([[1.0, -0.5], [0.3, 0.8], [0.0, 1.2]], dtype=x.dtype))
    with data_plate(x, num_data, idx):
        z = pyro.sample("z", dist.Normal(torch.zeros(D_Z, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T, 0.5).to_event(1), obs=x)


def guide(x, num_data=None, idx=None):
    a = pyro.param("a", torch.tensor([[0.5, 0.1, 0.0], [-0.2, 0.4, 0.6]], dtype=x.dtype))
    s = pyro.param("s", torch.tensor([0.4, 0.7], dtype=x.dtype),
                   constraint=dist.constraints.positive)
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(x @ a.T, s).to_event(1))


def const_guide(x, num_data=None, idx=None):
    m = pyro.param("m", torch.tensor([0.3, -1.0], dtype=x.dtype))
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(m.expand(len(x), D_Z), torch.tensor([0.5, 2.0], dtype=x.dtype)).to_event(1))


def sharp_guide(x, num_data=None, idx=None):
    # posteriors 1000 standard deviations apart: q(z_i | x_j) ~ 0 for j != i
    with data_plate(x, num_data, idx):
        loc = torch.arange(len(x), dtype=x.dtype).unsqueeze(-1).expand(len(x), D_Z) * 10.0
        pyro.sample("z", dist.Normal(loc, 0.01).to_event(1))


def _data(n=8):
    return torch.randn(n, D_X, dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_unit_weights_equal_trace_elbo_value_and_gradients(estimator):
    x, n = _data(), 40
    idx = torch.tensor([3, 7, 11, 12, 20, 25, 30, 39])
    tc = TCVAE_ELBO(n, alpha=1, beta=1, gamma=1, estimator=estimator, max_plate_nesting=1)
    ref = Trace_ELBO(max_plate_nesting=1)
    grads = []
    for elbo in (tc, ref):
        pyro.set_rng_seed(3)
        loss = elbo.loss_and_grads(model, guide, x, num_data=n, idx=idx)
        params = dict(pyro.get_param_store().named_parameters())  # unconstrained
        grads.append((loss, {k: p.grad.clone() for k, p in params.items()}))
        for p in params.values():
            p.grad = None
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-10)
    for k in grads[1][1]:
        assert torch.allclose(grads[0][1][k], grads[1][1][k], rtol=1e-9, atol=1e-12), k
    # and the terms telescope: MI + TC + dim-wise KL = log q(z|x) - log p(z), per draw
    f = tc.forward(model, guide, x, num_data=n, idx=idx)
    total = f.mutual_information + f.total_correlation + f.dimensionwise_kl
    assert torch.allclose(total, f.log_q_cond - f.log_prior, atol=1e-12)
    assert torch.allclose(f.objective, f.log_w, atol=1e-12)


def test_stratified_weights_are_unbiased_by_exact_enumeration():
    # q(z) = (1/N) sum_n q(z | x_n) with N = 5 fixed Gaussians; average the estimate
    # sum_j W_pj q(z | x_batch[j]) over every ordered batch of B = 3 containing n* at
    # position p: uniform without replacement, so the average must be q(z) exactly.
    rng = np.random.default_rng(0)
    N, B = 5, 3
    locs, scales = rng.normal(size=(N, 2)), rng.uniform(0.5, 1.5, size=(N, 2))
    z = np.array([0.3, -0.4])
    dens = norm.pdf(z, locs, scales).prod(-1)  # (N,) q(z | x_n)
    w = log_importance_weight_matrix(B, N, "mss").exp().numpy()
    assert np.allclose(w.sum(1), 1.0)
    for star in range(N):
        estimates = []
        for batch in itertools.permutations(range(N), B):
            if star in batch:
                p = batch.index(star)
                estimates.append(sum(w[p, j] * dens[b] for j, b in enumerate(batch)))
        assert np.mean(estimates) == pytest.approx(dens.mean(), rel=1e-12)
    # the authors' released matrix (strides of B: column 0 gets 1/N, column 1 the stratum
    # weight, then W[B-2, 0] is overwritten) fails the same check
    m = B - 1
    ref = np.full((B, B), 1 / m)
    ref.reshape(-1)[::m + 1] = 1 / N
    ref.reshape(-1)[1::m + 1] = (N - m) / (N * m)
    ref[m - 1, 0] = (N - m) / (N * m)
    worst = max(abs(np.mean([sum(ref[b.index(star), j] * dens[v] for j, v in enumerate(b))
                             for b in itertools.permutations(range(N), B) if star in b])
                    / dens.mean() - 1) for star in range(N))
    assert worst > 0.1  # 19 % too high for n* = 0 here
    # the weighted estimator's average is not q(z): (q* + (B-1) mean_other) / (N B)
    w_mws = log_importance_weight_matrix(B, N, "mws").exp().numpy()
    assert np.allclose(w_mws, 1 / (N * B))


def test_aggregate_matrix_against_scipy():
    x, n = _data(6), 50
    for estimator in ("mss", "mws"):
        f = TCVAE_ELBO(n, estimator=estimator).forward(model, guide, x, num_data=n)
        site = f.guide_trace.nodes["z"]
        z = site["value"][0].detach().numpy()  # (B, D)
        loc = site["fn"].base_dist.loc.expand(site["value"].shape)[0].detach().numpy()
        sc = site["fn"].base_dist.scale.expand(site["value"].shape)[0].detach().numpy()
        w = log_importance_weight_matrix(6, n, estimator).exp().numpy()
        per_dim = norm.pdf(z[:, None, :], loc[None], sc[None])  # (i, j, D)
        agg = np.log((w * per_dim.prod(-1)).sum(1))
        marg = np.log((w[..., None] * per_dim).sum(1)).sum(-1)
        assert np.allclose(f.log_q_agg[0].detach().numpy(), agg, rtol=1e-10)
        assert np.allclose(f.log_q_marginals[0].detach().numpy(), marg, rtol=1e-10)


def test_guide_ignoring_x_has_exact_terms():
    # q(z | x_j) identical for all j: q(z) = q(z | x) and q(z) = prod_d q(z_d) exactly
    x, n = _data(), 100
    f = TCVAE_ELBO(n, estimator="mss").forward(model, const_guide, x, num_data=n)
    assert torch.allclose(f.mutual_information, torch.zeros(1, 8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(f.total_correlation, torch.zeros(1, 8, dtype=torch.float64), atol=1e-12)
    # so alpha and beta do not matter and gamma = 1 gives the ELBO on the same draw
    pyro.set_rng_seed(1)
    a = TCVAE_ELBO(n, alpha=7.0, beta=30.0, max_plate_nesting=1).loss(model, const_guide, x, num_data=n)
    pyro.set_rng_seed(1)
    b = Trace_ELBO(max_plate_nesting=1).loss(model, const_guide, x, num_data=n)
    assert a == pytest.approx(b, rel=1e-10)
    # the weighted estimator is off by log N (joint) and D log N (marginals)
    g = TCVAE_ELBO(n, estimator="mws").forward(model, const_guide, x, num_data=n)
    assert torch.allclose(g.mutual_information, torch.full((1, 8), math.log(n * 8), dtype=torch.float64) - math.log(8), atol=1e-10)
    assert torch.allclose(g.total_correlation, torch.full((1, 8), (D_Z - 1) * math.log(n), dtype=torch.float64), atol=1e-10)


def test_separated_posteriors_give_mi_log_n():
    # q(z_i) = q(z_i | x_i) / N (other components vanish): MI term log N for "mss"; "mws"
    # gives log(N B) (its own-point weight is 1 / (N B))
    x, n = _data(), 64
    mss = TCVAE_ELBO(n, estimator="mss").forward(model, sharp_guide, x, num_data=n)
    mws = TCVAE_ELBO(n, estimator="mws").forward(model, sharp_guide, x, num_data=n)
    assert torch.allclose(mss.mutual_information, torch.full((1, 8), math.log(n), dtype=torch.float64), atol=1e-9)
    assert torch.allclose(mws.mutual_information, torch.full((1, 8), math.log(n * 8), dtype=torch.float64), atol=1e-9)
    # and the TC term: log q(z) - sum_d log q(z_d) = (D - 1) log N
    assert torch.allclose(mss.total_correlation, torch.full((1, 8), (D_Z - 1) * math.log(n), dtype=torch.float64), atol=1e-9)


def test_particles_and_beta_change_only_their_terms():
    x, n = _data(), 40
    pyro.set_rng_seed(5)
    f = TCVAE_ELBO(n, beta=6.0, num_particles=3).forward(model, guide, x, num_data=n)
    assert f.objective.shape == (3, 8)
    expected = f.log_w - 5.0 * f.total_correlation
    assert torch.allclose(f.objective, expected, atol=1e-12)
    pyro.set_rng_seed(5)
    loss = TCVAE_ELBO(n, beta=6.0, num_particles=3).loss(model, guide, x, num_data=n)
    assert loss == pytest.approx(-float(n / 8 * f.objective.detach().mean(0).sum()), rel=1e-10)


def test_bad_programs_and_arguments_are_refused():
    x = _data()

    def laplace_guide(x, num_data=None, idx=None):
        with data_plate(x):
            pyro.sample("z", dist.Laplace(torch.zeros(len(x), D_Z, dtype=x.dtype), 1.0).to_event(1))

    def mvn_guide(x, num_data=None, idx=None):
        with data_plate(x):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(len(x), D_Z, dtype=x.dtype),
                                                     torch.eye(D_Z, dtype=x.dtype)))

    with pytest.raises(ValueError, match="Gaussian"):
        TCVAE_ELBO(100).loss(model, laplace_guide, x)
    with pytest.raises(ValueError, match="factorised"):
        TCVAE_ELBO(100).loss(model, mvn_guide, x)
    with pytest.raises(ValueError, match="at least 2"):
        TCVAE_ELBO(100).loss(model, guide, x[:1])
    with pytest.raises(ValueError, match="smaller than the batch"):
        TCVAE_ELBO(4).loss(model, guide, x)
    with pytest.raises(ValueError, match="differs"):
        TCVAE_ELBO(100).loss(model, guide, x, num_data=50)
    with pytest.raises(ValueError, match="latent site 'w'"):
        TCVAE_ELBO(100, latent="w").loss(model, guide, x)
    for kwargs in ({"num_data": 0}, {"num_data": 10, "beta": -1}, {"num_data": 10, "alpha": float("nan")},
                   {"num_data": 10, "estimator": "naive"}):
        with pytest.raises(ValueError):
            TCVAE_ELBO(**kwargs)


def test_library_vae_trains_on_dsprites_and_is_scored():
    # the library's VAE (MLP encoder / decoder, Bernoulli likelihood) with TCVAE_ELBO in
    # SVI on 256 procedural dSprites images; then the decomposition and the metrics run on
    # its codes (values not asserted: a few steps train nothing)
    from pyro.infer import SVI
    from pyro.optim import Adam

    from lvm_pyro.data.dsprites import render_dsprites
    from lvm_pyro.diagnostics import disentanglement_metrics, guide_codes, tc_decomposition
    from lvm_pyro.guides import AmortizedNormalGuide
    from lvm_pyro.models import VAEModel, make_likelihood
    from lvm_pyro.nn import MLP

    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([3, 6, 10, 16, 16])
    factors = (torch.rand(256, 5, generator=gen) * sizes).long()
    x = render_dsprites(factors).float()  # (256, 1, 32, 32)
    lik = make_likelihood("bernoulli")
    model = VAEModel(MLP((4,), [64], (lik.num_params, 1, 32, 32)), 4, (1, 32, 32), lik)
    guide = AmortizedNormalGuide(MLP((1, 32, 32), [64], (2, 4)), 4)
    elbo = TCVAE_ELBO(len(x), beta=6.0)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), elbo)
    losses = [svi.step(x[i:i + 64], num_data=len(x), idx=torch.arange(i, i + 64))
              for i in range(0, 256, 64)]
    assert all(math.isfinite(v) for v in losses)
    r = tc_decomposition(model, guide, x[:40], num_samples=4)
    assert r.average_kl_mc == pytest.approx(
        r.mutual_information + r.total_correlation + r.dimensionwise_kl, abs=1e-9)
    codes = guide_codes(guide, x, batch_size=100)
    assert codes.shape == (256, 4) and codes.dtype == torch.float64
    m = disentanglement_metrics(codes, factors, num_train=120, num_test=60, batch_size=16,
                                num_variance_estimate=200)
    assert all(0.0 <= v <= 1.0 for v in m.values())
