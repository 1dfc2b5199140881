"""Score-function gradients: at K = 1 the likelihood-ratio estimator (with and without
baselines) and the pathwise one agree in expectation with the analytic ELBO gradient of
a linear-Gaussian model written here; the baselines lower the variance."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from lvm_pyro.inference import ScoreFunctionGuide
from lvm_pyro.inference.score_function import (MLPBaseline, ScoreFunctionDistribution,
                                               ScoreFunctionMessenger)
from lvm_pyro.sites import data_plate

K_Z, D_X, S = 2, 3, 0.8  # latent size, data size, noise scale
W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], dtype=torch.float64)  # (D_X, K_Z)
B_OFF = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
X0 = torch.tensor([2.5, -2.0, 1.5], dtype=torch.float64)
LOC0 = torch.tensor([0.2, -0.3], dtype=torch.float64)
LOG_SCALE0 = torch.tensor([-0.4, -0.1], dtype=torch.float64)
BATCH = 200  # copies of X0: each call is the sum of BATCH independent one-sample draws


def model(x, num_data=None, idx=None):
    """z ~ N(0, I), x | z ~ N(W z + b, S^2 I)."""
    with data_plate(x, num_data, idx):
        z = pyro.sample("z", dist.Normal(x.new_zeros(K_Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B_OFF, S).to_event(1), obs=x)


def guide(x, num_data=None, idx=None):
    """q(z) = N(loc, diag(exp(log_scale))^2), the same for every datapoint."""
    loc = pyro.param("loc", LOC0.clone())
    log_scale = pyro.param("log_scale", LOG_SCALE0.clone())
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def analytic_elbo_grad():
    """d ELBO(x0) / d (loc, log_scale) in closed form (float64)."""
    loc, log_scale = LOC0.clone().requires_grad_(), LOG_SCALE0.clone().requires_grad_()
    var = (2 * log_scale).exp()
    resid = X0 - W @ loc - B_OFF
    e_lik = (-0.5 * D_X * math.log(2 * math.pi * S ** 2)
             - (resid.square().sum() + (W.square().sum(0) * var).sum()) / (2 * S ** 2))
    e_prior = -0.5 * K_Z * math.log(2 * math.pi) - 0.5 * (loc.square().sum() + var.sum())
    entropy = (0.5 * math.log(2 * math.pi * math.e) + log_scale).sum()
    g = torch.autograd.grad(e_lik + e_prior + entropy, (loc, log_scale))
    return torch.cat(g)


def draws(elbo, guide_fn, num_calls):
    """(num_calls, 4) gradients of the ELBO (not the loss) w.r.t. (loc, log_scale),
    each the sum over BATCH independent one-sample estimates."""
    x = X0.expand(BATCH, D_X)
    out = []
    store = pyro.get_param_store()
    for _ in range(num_calls):
        for n in ("loc", "log_scale"):
            if n in store:
                store.get_param(n).unconstrained().grad = None
        elbo.loss_and_grads(model, guide_fn, x)
        out.append(-torch.cat([store.get_param(n).unconstrained().grad for n in ("loc", "log_scale")]))
    return torch.stack(out)


def _check_mean(g, exact, z=5.0):
    """Mean of per-draw gradients within z standard errors of the exact gradient."""
    per_draw_mean = g.mean(0) / BATCH
    se = g.std(0) / BATCH / math.sqrt(len(g))
    assert bool(((per_draw_mean - exact).abs() < z * se + 1e-9).all()), (per_draw_mean, exact, se)


def test_estimators_agree_with_analytic_elbo_gradient_at_k1():
    exact = analytic_elbo_grad()
    pathwise = draws(Trace_ELBO(max_plate_nesting=1), guide, 50)
    score = draws(TraceGraph_ELBO(max_plate_nesting=1), ScoreFunctionGuide(guide), 100)
    _check_mean(pathwise, exact)
    _check_mean(score, exact)
    # the check has power: the score-function estimate is noisy but its error bars are
    # tight enough to tell a wrong gradient (e.g. the gradient without the entropy term)
    per_draw_se = score.std(0) / BATCH / math.sqrt(len(score))
    assert float(per_draw_se[2:].max()) < 0.5  # d entropy / d log_scale = 1 per coordinate


def test_baselines_lower_variance_and_stay_unbiased():
    """Variance of the score-function estimate (summed over the 4 guide coordinates):
    the moving-average baseline and a learned baseline fitted to the downstream cost must
    each cut it by more than 4x (measured 7.0x and 7.2x with seed 0, 7.0-8.7x over seeds
    0-2; each variance is estimated from 100 draws, relative sd ~ 15%); both means stay
    within 5 standard errors of the exact gradient (largest |z| seen over seeds 0-2: 2.8)."""
    exact = analytic_elbo_grad()
    plain = draws(TraceGraph_ELBO(max_plate_nesting=1), ScoreFunctionGuide(guide), 100)
    avg_guide = ScoreFunctionGuide(guide, baseline="decaying_avg", baseline_beta=0.9)
    avg = draws(TraceGraph_ELBO(max_plate_nesting=1), avg_guide, 150)[50:]  # burn-in
    _check_mean(avg, exact)
    var_plain, var_avg = float(plain.var(0).sum()), float(avg.var(0).sum())
    assert var_avg < var_plain / 4, (var_plain, var_avg)

    # learned baseline: fit b_psi to the downstream cost with the guide held fixed
    net = MLPBaseline((D_X,), (), output_scale=10.0).double()
    learned = ScoreFunctionGuide(guide, baseline=net)
    elbo = TraceGraph_ELBO(max_plate_nesting=1)
    x = X0.expand(BATCH, D_X)
    elbo.loss(model, learned, x)  # registers the baseline's parameters
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        elbo.loss_and_grads(model, learned, x)
        opt.step()
    fitted = draws(elbo, learned, 100)
    _check_mean(fitted, exact)
    assert float(fitted.var(0).sum()) < var_plain / 4, (var_plain, float(fitted.var(0).sum()))


def test_score_function_distribution_hides_rsample_only():
    base = dist.Normal(torch.zeros(3, requires_grad=True), 1.0).to_event(1)
    d = ScoreFunctionDistribution(base)
    assert base.has_rsample and not d.has_rsample
    v = d()
    assert not v.requires_grad
    torch.testing.assert_close(d.log_prob(v), base.log_prob(v))
    e = d.expand((4,))
    assert isinstance(e, ScoreFunctionDistribution) and e.batch_shape == (4,)
    assert e.event_shape == (3,) and not e.has_rsample


def test_messenger_affects_only_named_latent_sites():
    def prog():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(a + b, 1.0), obs=torch.tensor(0.0))

    with ScoreFunctionMessenger(sites=["a"], baseline="decaying_avg"):
        tr = pyro.poutine.trace(prog).get_trace()
    assert isinstance(tr.nodes["a"]["fn"], ScoreFunctionDistribution)
    assert tr.nodes["a"]["infer"]["baseline"]["use_decaying_avg_baseline"]
    assert not isinstance(tr.nodes["b"]["fn"], ScoreFunctionDistribution)
    assert not isinstance(tr.nodes["x"]["fn"], ScoreFunctionDistribution)


def test_bad_baseline_arguments():
    with pytest.raises(ValueError, match="baseline must be"):
        ScoreFunctionGuide(guide, baseline="moving")
    with pytest.raises(ValueError, match="baseline_beta"):
        ScoreFunctionGuide(guide, baseline="decaying_avg", baseline_beta=1.0)
    with pytest.raises(ValueError, match="baseline_input"):
        ScoreFunctionMessenger(baseline=MLPBaseline((3,)))
