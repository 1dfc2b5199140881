"""ReparamNormal and StandardNormal against torch's Normal: the same draws, the same
log densities to float rounding, the same gradients of a reparameterised ELBO, and
Normal's own computation whenever the shortcut does not apply."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from lvm_pyro.distributions import ReparamNormal, StandardNormal


def _params(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 4, generator=g, dtype=dtype).requires_grad_()
    scale = (torch.rand(3, 4, generator=g, dtype=dtype) + 0.2).requires_grad_()
    return loc, scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparam_normal_scores_its_own_draw_like_normal(dtype):
    loc, scale = _params(dtype)
    q, ref = ReparamNormal(loc, scale).expand([5, 3, 4]), dist.Normal(loc, scale).expand([5, 3, 4])
    assert isinstance(q, ReparamNormal) and isinstance(q, dist.Normal)
    torch.manual_seed(1)
    z = q.rsample()
    torch.manual_seed(1)
    z_ref = ref.rsample()
    assert torch.equal(z, z_ref)  # the same draws
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    lq, lq_ref = q.log_prob(z), ref.log_prob(z_ref)
    assert torch.allclose(lq, lq_ref, atol=tol, rtol=0)
    # the pathwise gradient of a reparameterised ELBO term: log p(z) - log q(z)
    f = (StandardNormal((4,), dtype=dtype).log_prob(z) - lq).sum()
    f_ref = (dist.Normal(0.0, 1.0).log_prob(z_ref) - lq_ref).sum()
    g = torch.autograd.grad(f, [loc, scale])
    g_ref = torch.autograd.grad(f_ref, [loc, scale])
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=10 * tol, rtol=0)


def test_reparam_normal_uses_normals_log_prob_on_any_other_value():
    loc, scale = _params()
    q = ReparamNormal(loc, scale)
    z = q.rsample()
    other = z.detach().clone()
    assert torch.equal(q.log_prob(other), dist.Normal(loc, scale).log_prob(other))
    z2 = q.rsample((2,))  # only the latest draw is its own
    assert torch.equal(q.log_prob(z.detach()), dist.Normal(loc, scale).log_prob(z.detach()))
    with torch.no_grad():
        z2.add_(1.0)  # modified in place: no longer the draw eps describes
    assert torch.equal(q.log_prob(z2), dist.Normal(loc, scale).log_prob(z2))
    # a replayed value in a Pyro trace (the draw of another run): Normal's path
    def guide():
        return pyro.sample("z", ReparamNormal(loc, scale).to_event(1))
    tr = poutine.trace(guide).get_trace()
    replayed = poutine.trace(poutine.replay(guide, trace=tr)).get_trace()
    v = replayed.nodes["z"]["value"]
    assert torch.equal(replayed.nodes["z"]["fn"].log_prob(v),
                       dist.Normal(loc, scale).to_event(1).log_prob(v))


def test_standard_normal_matches_normal_0_1():
    z = torch.randn(6, 3, 4, dtype=torch.float64)
    p = StandardNormal((4,), dtype=torch.float64)
    assert torch.allclose(p.log_prob(z), dist.Normal(0.0, 1.0).log_prob(z), atol=1e-14, rtol=0)
    assert p.log_prob(z).shape == (6, 3, 4)
    assert p.to_event(1).log_prob(z).shape == (6, 3)
    e = p.expand([3, 4])
    assert isinstance(e, StandardNormal) and e.batch_shape == (3, 4)
    assert e.log_prob(torch.zeros(4, dtype=torch.float64)).shape == (3, 4)  # broadcast up
    assert e.rsample((2,)).shape == (2, 3, 4)
    loc, scale = _params(torch.float64)
    kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), StandardNormal((3, 4), dtype=torch.float64))
    assert torch.allclose(kl, torch.distributions.kl_divergence(dist.Normal(loc, scale),
                                                                dist.Normal(0.0, 1.0).expand([3, 4])))


def test_vae_elbo_value_and_gradients_unchanged():
    """The VAE's ELBO with the two subclasses equals the same program with torch's Normal
    (same draws): values to rounding, gradients to rounding."""
    pyro.clear_param_store()
    x = torch.bernoulli(torch.full((7, 5), 0.4), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(5, 4), torch.nn.Linear(2, 5)

    def programs(normal, prior):
        def model(x):
            pyro.module("dec", dec)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", prior.to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

        def guide(x):
            pyro.module("enc", enc)
            h = enc(x)
            with pyro.plate("data", len(x)):
                pyro.sample("z", normal(h[:, :2], torch.nn.functional.softplus(h[:, 2:])).to_event(1))
        return model, guide

    out = []
    for normal, prior in ((ReparamNormal, StandardNormal((2,))),
                          (dist.Normal, dist.Normal(torch.zeros(()), 1.0).expand([2]))):
        model, guide = programs(normal, prior)
        pyro.set_rng_seed(3)
        loss = Trace_ELBO().differentiable_loss(model, guide, x)
        grads = torch.autograd.grad(loss, list(enc.parameters()) + list(dec.parameters()))
        out.append((loss, grads))
    (a, ga), (b, gb) = out
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, atol=1e-5, rtol=1e-5)
