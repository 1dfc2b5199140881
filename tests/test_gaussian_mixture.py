"""GaussianMixtureModel: exact enumeration against a hand-written marginal, recovery of a
known mixture with our training loop, and agreement with scikit-learn's EM."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from sklearn.mixture import GaussianMixture

from lvm_pyro.data import three_clusters
from lvm_pyro.guides import EmptyGuide
from lvm_pyro.inference import log_weights
from lvm_pyro.models import GaussianMixtureModel
from lvm_pyro.training import Trainer


def _hand_log_px(x, weights, locs, covs):
    """log sum_k w_k N(x; mu_k, Sigma_k), written out in numpy (the oracle)."""
    x, weights, locs, covs = (np.asarray(a, dtype=np.float64) for a in (x, weights, locs, covs))
    out = []
    for xi in x:
        terms = []
        for w, mu, cov in zip(weights, locs, covs):
            r = xi - mu
            quad = r @ np.linalg.solve(cov, r)
            logdet = np.log(np.linalg.det(cov))
            terms.append(math.log(w) - 0.5 * (len(xi) * math.log(2 * math.pi) + logdet + quad))
        m = max(terms)
        out.append(m + math.log(sum(math.exp(t - m) for t in terms)))
    return np.array(out)


def _tiny_model(covariance):
    locs = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    model = GaussianMixtureModel(2, 2, covariance, init_locs=locs,
                                 init_weights=torch.tensor([0.3, 0.7]), init_scale=0.8).double()
    if covariance == "full":
        model.scale_tril = torch.tensor([[[0.8, 0.0], [0.3, 0.5]], [[1.2, 0.0], [-0.4, 0.7]]],
                                        dtype=torch.float64)
    else:
        model.scale = torch.tensor([[0.8, 0.5], [1.2, 0.7]], dtype=torch.float64)
    return model


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_trace_enum_loss_is_exact_negative_log_likelihood(covariance):
    model = _tiny_model(covariance)
    x = torch.tensor([[0.1, 0.9], [1.5, -0.5], [3.0, 3.0], [-2.0, 0.0], [1.0, 0.0]],
                     dtype=torch.float64)
    with torch.no_grad():
        weights = model.weights.numpy()
        covs = model.covariances().numpy()
        locs = model.locs.numpy()
    hand = _hand_log_px(x.numpy(), weights, locs, covs)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.loss(model, EmptyGuide(), x)
    assert loss == pytest.approx(-hand.sum(), rel=1e-10)
    np.testing.assert_allclose(model.log_prob(x).detach().numpy(), hand, rtol=1e-10)
    # a minibatch of the data set: the data plate scales the loss by N / B
    idx = torch.tensor([1, 3])
    loss_b = elbo.loss(model, EmptyGuide(), x[idx], num_data=10, idx=idx)
    assert loss_b == pytest.approx(-hand[[1, 3]].sum() * 10 / 2, rel=1e-10)
    # responsibilities are the exact posterior over z
    post = model.posterior(x).detach().numpy()
    np.testing.assert_allclose(post.sum(1), 1.0, rtol=1e-12)


@pytest.fixture(scope="module")
def fitted():
    """A three-component full-covariance mixture fitted by Trainer + TraceEnum_ELBO."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = three_clusters(1500, seed=1)
    model = GaussianMixtureModel.init_from_data(data.x, 3, "full", seed=0)
    trainer = Trainer(model, EmptyGuide(), TraceEnum_ELBO(max_plate_nesting=1), lr=0.05,
                      batch_size=len(data.x), binarization="none", progress=False)
    history = trainer.fit(data.x, 800)
    pyro.clear_param_store()
    return data, model, history


def _match(est_locs, true_locs):
    """Permutation of estimated components closest to the true ones (3! brute force)."""
    import itertools
    best = min(itertools.permutations(range(3)),
               key=lambda p: float((est_locs[list(p)] - true_locs).norm()))
    return list(best)


def test_fit_recovers_known_mixture(fitted):
    data, model, history = fitted
    with torch.no_grad():
        locs, weights, covs = model.locs.double(), model.weights.double(), model.covariances().double()
    perm = _match(locs, data.locs)
    assert torch.allclose(locs[perm], data.locs, atol=0.15)
    assert torch.allclose(weights[perm], data.weights, atol=0.03)
    assert torch.allclose(covs[perm], data.covariances, atol=0.2)
    # the reported training loss is -mean log p(x) of the final parameters' predecessor
    with torch.no_grad():
        nll = -model.log_prob(data.x).double().mean().item()
    assert history[-1]["loss"] == pytest.approx(nll, abs=1e-3)


def test_fit_agrees_with_scikit_learn_em(fitted):
    data, model, _ = fitted
    x64 = data.x.double().numpy()
    em = GaussianMixture(3, covariance_type="full", tol=1e-10, max_iter=2000,
                         reg_covar=1e-9, random_state=0).fit(x64)
    with torch.no_grad():
        ours = model.double().log_prob(data.x.double()).mean().item()
    assert abs(ours - em.score(x64)) < 0.01


def test_sample_matches_the_mixture_moments():
    model = _tiny_model("full")
    torch.manual_seed(0)
    x, z = model.sample(40000)
    assert x.shape == (40000, 2) and z.shape == (40000,)
    with torch.no_grad():
        w = model.weights
        mean = (w[:, None] * model.locs).sum(0)
    freq = torch.bincount(z, minlength=2).double() / len(z)
    assert torch.allclose(freq, w.detach(), atol=0.01)
    # 5 standard errors on the mean of each coordinate
    se = x.std(0) / math.sqrt(len(x))
    assert bool(((x.mean(0) - mean).abs() < 5 * se).all())
    # the per-component samples match the component means
    for k in range(2):
        assert torch.allclose(x[z == k].mean(0), model.locs[k].detach(), atol=0.05)


def test_three_clusters_is_seeded():
    a, b, c = three_clusters(100, 3), three_clusters(100, 3), three_clusters(100, 4)
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.x, c.x)
    assert a.x.dtype == torch.float32 and a.x.shape == (100, 2)
    with pytest.raises(ValueError, match="num_data"):
        three_clusters(0)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixtureModel(3, 2, "spherical")
    with pytest.raises(ValueError, match="num_components"):
        GaussianMixtureModel(0, 2)
    with pytest.raises(ValueError, match="init_locs"):
        GaussianMixtureModel(3, 2, init_locs=torch.zeros(2, 2))
    model = GaussianMixtureModel(3, 2)
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        model.log_prob(torch.zeros(4, 3))
    # importance weights need a proposal for z: the engine refuses an empty guide
    with pytest.raises(ValueError, match="no site of the same name"):
        log_weights(model, EmptyGuide(), torch.zeros(4, 2), 2)
