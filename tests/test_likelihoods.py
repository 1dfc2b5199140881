"""The likelihoods' distributions against Pyro's own construction (an independent oracle):
``IndependentBernoulli`` equals ``Bernoulli(logits).to_event(n)`` bit for bit in value and
gradient, and the Gaussian likelihood equals ``Normal(loc, softplus(raw) + min).to_event(n)``."""

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from lvm_pyro.models.likelihoods import BernoulliLikelihood, GaussianLikelihood, IndependentBernoulli


def _grad(fn, params):
    p = params.clone().requires_grad_(True)
    out = fn(p)
    (g,) = torch.autograd.grad(out.sum(), p)
    return out.detach(), g


@pytest.mark.parametrize("event_ndim", [0, 1, 3])
def test_bernoulli_likelihood_equals_pyro_bernoulli(event_ndim):
    g = torch.Generator().manual_seed(0)
    event = (1, 4, 5)[3 - event_ndim:] if event_ndim else ()
    params = torch.randn(3, 2, 1, *event, generator=g) * 4  # (K, B, P=1, *event)
    x = torch.bernoulli(torch.full((2, *event), 0.5), generator=g)

    def ours(p):
        return BernoulliLikelihood().dist(p, event_ndim).log_prob(x)

    def pyros(p):
        return dist.Bernoulli(logits=p[:, :, 0]).to_event(event_ndim).log_prob(x)

    (a, ga), (b, gb) = _grad(ours, params), _grad(pyros, params)
    assert a.shape == b.shape == (3, 2)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    d = BernoulliLikelihood().dist(params, event_ndim)
    assert d.event_shape == torch.Size(event) and d.batch_shape == (3, 2)
    if event_ndim:
        assert isinstance(d, IndependentBernoulli)


def test_independent_bernoulli_broadcasts_values_and_expands():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, generator=g)
    d = IndependentBernoulli(dist.Bernoulli(logits=logits), 1)
    values = torch.bernoulli(torch.full((4, 2, 6), 0.3), generator=g)  # more batch dims than logits
    ref = dist.Bernoulli(logits=logits).to_event(1)
    assert torch.equal(d.log_prob(values), ref.log_prob(values))
    e = d.expand((5, 2))
    assert isinstance(e, IndependentBernoulli) and e.batch_shape == (5, 2)
    assert torch.equal(e.log_prob(values[0]), ref.expand((5, 2)).log_prob(values[0]))
    masked = d.mask(torch.tensor([True, False]))
    assert masked.log_prob(values[0])[1] == 0


def test_independent_bernoulli_validates_support_when_asked():
    d = IndependentBernoulli(dist.Bernoulli(logits=torch.zeros(3)), 1, validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0.0, 0.5, 1.0]))


def test_gaussian_likelihood_equals_pyro_normal():
    g = torch.Generator().manual_seed(2)
    params = torch.randn(3, 2, 2, 4, 5, generator=g)
    x = torch.randn(2, 4, 5, generator=g)
    lik = GaussianLikelihood(min_scale=1e-3)

    def ours(p):
        return lik.dist(p, 2).log_prob(x)

    def reference(p):
        scale = F.softplus(p[:, :, 1]) + 1e-3
        return dist.Normal(p[:, :, 0], scale).to_event(2).log_prob(x)

    (a, ga), (b, gb) = _grad(ours, params), _grad(reference, params)
    assert torch.equal(a, b) and torch.allclose(ga, gb, rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.5, 1e-45, 1 - 2 ** -24, float("nan"), float("inf"),
                                   -float("inf"), 2.0, -1e-38, 1e30])
def test_bernoulli_support_check_refuses_every_non_binary_value(value):
    from lvm_pyro.models.likelihoods import BernoulliLikelihood

    x = torch.zeros(4, 6)
    x[2, 3] = value  # one bad entry among binary ones (denormal, near 1, NaN, inf, huge)
    with pytest.raises(ValueError, match="binary data"):
        BernoulliLikelihood().check_support(x)
    BernoulliLikelihood().check_support(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # binary: fine
    BernoulliLikelihood().check_support(torch.tensor([[0, 1]], dtype=torch.uint8))
