"""KL weighting: beta = 1 is the plain objective, beta and the warm-up schedule scale the
closed-form KL exactly, free bits follows sum_j max(lambda, E_batch KL_j), and free
bits refuses non-factorised or non-reparameterisable sites."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from lvm_pyro.inference.kl import per_dimension_kl
from lvm_pyro.inference.kl_weighting import FreeBits_ELBO, KLWeighted_ELBO, LatentScaleMessenger
from lvm_pyro.inference.schedules import LinearWarmup
from lvm_pyro.sites import data_plate

Z, D = 3, 4
G = torch.Generator().manual_seed(0)
W = torch.randn(D, Z, generator=G, dtype=torch.float64)
A = 0.5 * torch.randn(D, Z, generator=G, dtype=torch.float64)
X = torch.randn(6, D, generator=G, dtype=torch.float64)
N = 60  # data-set size: the minibatch of 6 is scaled by 10


def model(x, num_data=None, idx=None):
    """z ~ N(0, I_3), x | z ~ N(W z, 0.5^2 I_4): a user's model."""
    with data_plate(x, num_data, idx):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, 0.5).to_event(1), obs=x)


def guide(x, num_data=None, idx=None):
    """q(z | x) = N(x A_loc, diag(softplus(raw))^2)."""
    a = pyro.param("a", A.clone())
    raw = pyro.param("raw", torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64))
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(x @ a, torch.nn.functional.softplus(raw)).to_event(1))


def kl_per_dim():
    """(batch, Z) closed-form KL(q(z_j | x_i) || N(0, 1)) at the current parameters."""
    store = pyro.get_param_store()
    loc = X @ store["a"]
    scale = torch.nn.functional.softplus(store["raw"]).expand_as(loc)
    return (0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).detach()


def _run(elbo, seed=7, grads=False):
    pyro.set_rng_seed(seed)
    kw = dict(num_data=N, idx=torch.arange(6))
    if not grads:
        return elbo.loss(model, guide, X, **kw)
    store = pyro.get_param_store()
    for n in ("a", "raw"):
        if n in store:
            store.get_param(n).unconstrained().grad = None
    loss = elbo.loss_and_grads(model, guide, X, **kw)
    return loss, [store.get_param(n).unconstrained().grad.clone() for n in ("a", "raw")]


def test_beta_one_reproduces_trace_elbo_values_and_gradients():
    _run(Trace_ELBO(max_plate_nesting=1))  # create the parameters
    l0, g0 = _run(Trace_ELBO(max_plate_nesting=1), grads=True)
    l1, g1 = _run(KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1), beta=1.0), grads=True)
    assert l1 == pytest.approx(l0, rel=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_beta_scales_the_closed_form_kl():
    """loss_beta = -E log p(x|z) + beta * KL: with the same draw, the difference of two
    betas is (beta2 - beta1) * (N/B) sum_i KL_i."""
    mf = lambda: TraceMeanField_ELBO(max_plate_nesting=1)  # noqa: E731
    _run(mf())
    kl_total = (N / 6) * float(kl_per_dim().sum())
    l1 = _run(KLWeighted_ELBO(mf(), beta=1.0))
    l4 = _run(KLWeighted_ELBO(mf(), beta=4.0))
    l0 = _run(KLWeighted_ELBO(mf(), beta=0.0))
    assert l4 - l1 == pytest.approx(3 * kl_total, rel=1e-9)
    assert l1 - l0 == pytest.approx(kl_total, rel=1e-9)
    with pytest.raises(ValueError, match="beta"):
        KLWeighted_ELBO(mf(), beta=-1.0)


def test_warmup_schedule_formula_and_objective_follow_the_step():
    assert [LinearWarmup(1.0, 4)(t) for t in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert LinearWarmup(1.0, 0)(5) == 1.0
    assert LinearWarmup(2.0, 6)(3) == 1.0
    with pytest.raises(ValueError, match="step"):
        LinearWarmup(1.0, 4)(-1)

    mf = lambda: TraceMeanField_ELBO(max_plate_nesting=1)  # noqa: E731
    _run(mf())
    elbo = KLWeighted_ELBO(mf(), beta=2.0, kl_warmup_steps=4)
    reference = KLWeighted_ELBO(mf(), beta=0.0)
    for t in range(6):  # parameters do not change (no optimiser): compare loss per step
        assert elbo.step == t
        assert elbo.current_beta == pytest.approx(2.0 * min(1.0, t / 4))
        kl_total = (N / 6) * float(kl_per_dim().sum())
        diff = _run(elbo) - _run(reference)
        assert diff == pytest.approx(elbo.current_beta * kl_total, rel=1e-9, abs=1e-9)
        _run(elbo, grads=True)  # a training step advances t (gradients only, no update)
    elbo.load_state_dict({**elbo.state_dict(), "step": 2})  # t is state, restored exactly
    assert elbo.current_beta == pytest.approx(1.0)


def test_latent_scale_leaves_observations_alone():
    with LatentScaleMessenger(0.25):
        tr = pyro.poutine.trace(model).get_trace(X)
    assert tr.nodes["z"]["scale"] == 0.25 and tr.nodes["x"]["scale"] == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        LatentScaleMessenger(-0.1)


def test_free_bits_zero_is_trace_mean_field():
    _run(TraceMeanField_ELBO(max_plate_nesting=1))
    l0, g0 = _run(TraceMeanField_ELBO(max_plate_nesting=1), grads=True)
    l1, g1 = _run(FreeBits_ELBO(0.0, max_plate_nesting=1), grads=True)
    assert l1 == pytest.approx(l0, rel=1e-10)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_free_bits_follows_its_formula():
    """loss_lambda - loss_0 = N * sum_j (max(lambda, mean_i KL_ij) - mean_i KL_ij), with
    lambda between the per-dimension means so that some dimensions are clamped."""
    _run(TraceMeanField_ELBO(max_plate_nesting=1))
    m = kl_per_dim().mean(0)  # (Z,)
    lam = float(m.sort().values[1])  # clamps the smallest dimension, not the largest
    assert float(m.min()) < lam < float(m.max())
    base = _run(FreeBits_ELBO(0.0, max_plate_nesting=1))
    fb = _run(FreeBits_ELBO(lam, max_plate_nesting=1))
    expect = N * float((m.clamp_min(lam) - m).sum())
    assert expect > 0
    assert fb - base == pytest.approx(expect, rel=1e-9)
    # beta composes: the clamped KL term is multiplied by beta
    fb2 = _run(KLWeighted_ELBO(FreeBits_ELBO(lam, max_plate_nesting=1), beta=2.0))
    fb0 = _run(KLWeighted_ELBO(FreeBits_ELBO(lam, max_plate_nesting=1), beta=0.0))
    assert fb2 - fb0 == pytest.approx(2 * N * float(m.clamp_min(lam).sum()), rel=1e-9)


def test_per_dimension_kl_monte_carlo_when_no_closed_form():
    q = dist.Normal(torch.zeros(2, 3), torch.ones(2, 3)).to_event(1)
    p = dist.StudentT(3.0, torch.zeros(3), torch.ones(3)).to_event(1)
    v = q.sample()
    kl, analytic = per_dimension_kl(q, p, v)
    assert not analytic and kl.shape == (2, 3)
    torch.testing.assert_close(kl, q.base_dist.log_prob(v) - p.base_dist.log_prob(v))
    kl, analytic = per_dimension_kl(q, dist.Normal(0.0, 1.0).expand([3]).to_event(1), v)
    assert analytic
    torch.testing.assert_close(kl, torch.zeros(2, 3))


def test_free_bits_rejects_non_factorised_and_score_function_sites():
    def mvn_guide(x, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            pyro.sample("z", dist.MultivariateNormal(x.new_zeros(Z), torch.eye(Z, dtype=x.dtype)))

    with pytest.raises(ValueError, match="factorised.*'z'|'z'.*factorised"):
        FreeBits_ELBO(0.5).loss(model, mvn_guide, X)

    def bern_model(x):
        with data_plate(x):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((Z,), 0.5)).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, 1.0).to_event(1), obs=x)

    def bern_guide(x):
        with data_plate(x):
            pyro.sample("z", dist.Bernoulli(x.new_full((Z,), 0.3)).to_event(1))

    with pytest.raises(ValueError, match="reparameterisable"):
        FreeBits_ELBO(0.5).loss(bern_model, bern_guide, X)
    with pytest.raises(ValueError, match="free_bits"):
        FreeBits_ELBO(-1.0)


def test_beta_works_with_tracegraph():
    """Score-function objectives take the weighting too (same draw, beta = 1)."""
    _run(Trace_ELBO(max_plate_nesting=1))
    l0 = _run(TraceGraph_ELBO(max_plate_nesting=1))
    l1 = _run(KLWeighted_ELBO(TraceGraph_ELBO(max_plate_nesting=1), beta=1.0))
    assert l1 == pytest.approx(l0, rel=1e-12)
