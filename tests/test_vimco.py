"""VIMCO: exact unbiasedness by enumerating every particle tuple, the leave-one-out
baselines against their definition, and the value against the IWAE bound."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.poutine.messenger import Messenger

from lvm_pyro.inference import VIMCO, log_weights
from lvm_pyro.inference.vimco import leave_one_out_baselines, vimco_surrogate
from lvm_pyro.sites import data_plate

D_Z, D_X, K = 3, 2, 4


def _params():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: (0.7 * torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
    return {"prior_logits": r(D_Z), "W": r(D_Z, D_X), "c": r(D_X), "A": r(D_X, D_Z), "a": r(D_Z)}


def _model(x, num_data=None, idx=None):
    """z ~ Bernoulli(sigmoid(prior_logits))^3, x | z ~ N(z W + c, 1): a user's model."""
    prior_logits = pyro.param("prior_logits", INIT["prior_logits"])
    W, c = pyro.param("W", INIT["W"]), pyro.param("c", INIT["c"])
    with data_plate(x, num_data, idx):
        z = pyro.sample("z", dist.Bernoulli(logits=prior_logits).expand([D_Z]).to_event(1))
        pyro.sample("x", dist.Normal(z @ W + c, 1.0).to_event(1), obs=x)


def _guide(x, num_data=None, idx=None):
    """q(z | x) = Bernoulli(sigmoid(x A + a))^3 (amortised, non-reparameterisable)."""
    A, a = pyro.param("A", INIT["A"]), pyro.param("a", INIT["a"])
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Bernoulli(logits=x @ A + a).to_event(1))


INIT = _params()
X = torch.tensor([[0.3, -1.2], [1.5, 0.4]], dtype=torch.float64)  # two datapoints


class _FixValues(Messenger):
    """Put given values at guide sites without marking them observed (like replay)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        if msg["name"] in self.values and not msg["is_observed"]:
            msg["value"] = self.values[msg["name"]]


def _all_tuples():
    """(K, T, D_Z) float64: every one of the T = 8^K tuples of K particles."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D_Z)), dtype=torch.float64)  # (8, 3)
    idx = torch.tensor(list(itertools.product(range(len(states)), repeat=K)))  # (T, K)
    return states[idx].permute(1, 0, 2)  # (K, T, 3)


def _hand_log_w(p, x, z):
    """log p(x, z) - log q(z | x) by hand: x (T, D_X), z (K, T, D_Z) -> (K, T)."""
    prior = dist.Bernoulli(logits=p["prior_logits"]).log_prob(z).sum(-1)
    lik = dist.Normal(z @ p["W"] + p["c"], 1.0).log_prob(x).sum(-1)
    q = dist.Bernoulli(logits=x @ p["A"] + p["a"]).log_prob(z).sum(-1)
    return prior + lik - q, q


def test_vimco_unbiased_exactly_by_enumeration():
    """E over all 8^4 particle tuples of the VIMCO gradient == grad L_K exactly (float64)."""
    Z = _all_tuples()  # (K, T, 3)
    T = Z.shape[1]
    xs = X.repeat_interleave(T, dim=0)  # (2T, D_X): datapoint i, tuple t at row i*T + t
    Zs = Z.repeat(1, X.shape[0], 1)  # (K, 2T, 3)
    vimco = VIMCO(num_particles=K, max_plate_nesting=1)
    fixed_guide = lambda x, num_data=None, idx=None: _FixValues({"z": Zs})(_guide)(x)  # noqa: E731
    f = vimco.forward(_model, fixed_guide, xs)
    assert f.log_w.shape == (K, 2 * T) and f.log_q_score is not None
    store = pyro.get_param_store()
    names = sorted(INIT)
    params = [store.get_param(n).unconstrained() for n in names]

    # exact: L_K = sum_i sum_t P(t | x_i) logmeanexp_k log w, differentiated through P too
    p = dict(zip(names, params))
    log_w, log_q = _hand_log_w(p, xs, Zs)
    torch.testing.assert_close(f.log_w, log_w, rtol=0, atol=1e-12)  # engine == hand formula
    prob = log_q.sum(0).exp()  # (2T,) P(tuple | x)
    assert torch.allclose(prob.reshape(2, T).sum(1), torch.ones(2, dtype=torch.float64))
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    exact = torch.autograd.grad((prob * bound).sum(), params, retain_graph=True)

    # expected VIMCO estimate: sum_t P(t) * grad surrogate_t (P held fixed)
    surrogate = vimco_surrogate(f.log_w, f.log_q_score)  # (2T,)
    expected = torch.autograd.grad((prob.detach() * surrogate).sum(), params, retain_graph=True)
    for n, e, g in zip(names, exact, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11, msg=f"param {n}")

    # the check can fail: a baseline that uses particle k itself (b_k = L-hat) is biased
    biased = torch.autograd.grad((prob.detach() * bound).sum(), params)
    gap = max(float((b - e).abs().max()) for b, e in zip(biased, exact))
    assert gap > 1e-2


def test_leave_one_out_baselines_match_definition():
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    b = leave_one_out_baselines(log_w)
    for k in range(5):
        others = torch.cat([log_w[:k], log_w[k + 1:]])
        geo = others.mean(0)
        expect = torch.log((others.exp().sum(0) + geo.exp()) / 5)
        torch.testing.assert_close(b[k], expect)
    with pytest.raises(ValueError, match="K >= 2"):
        leave_one_out_baselines(log_w[:1])


def test_value_is_iwae_bound_and_scaled_outside_logmeanexp():
    pyro.set_rng_seed(3)
    vimco = VIMCO(num_particles=6, max_plate_nesting=1)
    x = X.repeat(3, 1)  # batch 6
    pyro.set_rng_seed(3)
    loss = vimco.loss(_model, _guide, x, num_data=60, idx=torch.arange(6))
    pyro.set_rng_seed(3)
    lw = log_weights(_model, _guide, x, 6, num_data=60, idx=torch.arange(6), max_plate_nesting=1)
    expect = -lw.data_scale * float((torch.logsumexp(lw.log_w.detach(), 0) - math.log(6)).sum())
    assert lw.data_scale == 10.0
    assert loss == pytest.approx(expect, rel=1e-10)
    pyro.set_rng_seed(3)
    dl = vimco.differentiable_loss(_model, _guide, x, num_data=60, idx=torch.arange(6))
    assert float(dl.detach()) == pytest.approx(expect, rel=1e-10)
    pyro.set_rng_seed(3)
    assert vimco.loss_and_grads(_model, _guide, x, num_data=60, idx=torch.arange(6)) == pytest.approx(expect, rel=1e-10)
    assert pyro.get_param_store().get_param("A").unconstrained().grad is not None


def test_vimco_rejects_bad_input():
    with pytest.raises(ValueError, match="num_particles >= 2"):
        VIMCO(num_particles=1)
    scaled = pyro.poutine.scale(_model, scale=2.0)
    with pytest.raises(ValueError, match="scale"):
        VIMCO(num_particles=2).loss(lambda x: scaled(x), lambda x: pyro.poutine.scale(_guide, scale=2.0)(x), X)
