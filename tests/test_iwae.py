"""IWAE_ELBO against the linear-Gaussian closed form.

The model and guide are written here (not lvm_pyro's), with learnable parameters, so
that the ELBO, log p(x) and their gradients are available in closed form:

    z ~ N(0, I_k),  x | z ~ N(W z + b, s^2 I_d),     q(z | x) = N(A x + c, diag(exp(2 r)))

    ELBO(x) = E_q log N(x; W z + b, s^2) + E_q log N(z; 0, I) + H[q]
            = -d/2 log(2 pi s^2) - (|x - W mu - b|^2 + sum_ij W_ij^2 sigma_j^2) / (2 s^2)
              - k/2 log(2 pi) - (|mu|^2 + sum_j sigma_j^2) / 2 + sum_j r_j + k/2 (1 + log 2 pi)
    log p(x) = log N(x; b, W W^T + s^2 I)

Analytic gradients are autograd's gradients of these closed forms. Monte-Carlo
comparisons use many independent draws (each datapoint replicated ``reps`` times in one
vectorised call, ``calls`` calls) and a tolerance of 4 standard errors (plus 1e-8),
stated per test. Everything in float64.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.nn import PyroModule, PyroParam

from lvm_pyro.inference import BiasedGradientWarning, IWAE_ELBO
from lvm_pyro.sites import auxiliary_factor, data_plate

D64 = torch.float64
NAMES = ["W", "b", "A", "c", "r"]
MODEL_NAMES, GUIDE_NAMES = ["W", "b"], ["A", "c", "r"]


class LGModel(PyroModule):
    """z ~ N(0, I_k); x | z ~ N(W z + b, s^2 I_d) with learnable W, b."""

    def __init__(self, W, b, s):
        super().__init__()
        self.W = PyroParam(W.clone())
        self.b = PyroParam(b.clone())
        self.s = float(s)

    def forward(self, x, *, num_data=None, idx=None):
        k = self.W.shape[1]
        with data_plate(x, num_data, idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([k]).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)


class LGGuide(PyroModule):
    """q(z | x) = N(A x + c, diag(exp(2 r))) with learnable A, c, r."""

    def __init__(self, A, c, r):
        super().__init__()
        self.A = PyroParam(A.clone())
        self.c = PyroParam(c.clone())
        self.r = PyroParam(r.clone())

    def forward(self, x, *, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            return pyro.sample("z", dist.Normal(x @ self.A.T + self.c, self.r.exp()).to_event(1))


def _problem(d=3, k=2, s=0.7, exact=False, shift=0.0, widen=1.0, seed=0):
    """Model with W of orthogonal columns (so the exact posterior is diagonal) and a
    guide equal to the posterior, perturbed by ``shift`` (mean) and ``widen`` (scale)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=D64))
    W = Q * torch.tensor([1.5, 0.8], dtype=D64)[:k]
    b = torch.randn(d, generator=g, dtype=D64)
    cov = torch.linalg.inv(torch.eye(k, dtype=D64) + W.T @ W / s ** 2)  # diagonal
    A = cov @ W.T / s ** 2
    c = -A @ b
    r = 0.5 * torch.log(torch.diagonal(cov))
    if not exact:
        A = A + 0.3 * torch.randn(k, d, generator=g, dtype=D64)
        c = c + shift + 0.2 * torch.randn(k, generator=g, dtype=D64)
        r = r + math.log(widen)
    x = (torch.randn(4, k, generator=g, dtype=D64) @ W.T + b
         + s * torch.randn(4, d, generator=g, dtype=D64))
    model, guide = LGModel(W, b, s), LGGuide(A, c, r)
    _params(model, guide, x)  # create the parameters
    return model, guide, x


def _params(model, guide, x):
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(guide).get_trace(x)
        poutine.replay(model, trace=tr)(x)
    ps = pyro.get_param_store()
    return {n: ps.get_param(n).unconstrained() for n in NAMES}


def analytic_elbo(model, guide, x):
    """Closed-form ELBO per datapoint (batch,) as a function of the parameters."""
    p = _params(model, guide, x)
    W, b, A, c, r = (p[n] for n in NAMES)
    s, (d, k) = model.s, W.shape
    mu, var = x @ A.T + c, torch.exp(2 * r)
    ll = (-0.5 * d * math.log(2 * math.pi * s ** 2)
          - (((x - mu @ W.T - b) ** 2).sum(-1) + (W ** 2 * var).sum()) / (2 * s ** 2))
    prior = -0.5 * k * math.log(2 * math.pi) - 0.5 * ((mu ** 2).sum(-1) + var.sum())
    entropy = r.sum() + 0.5 * k * (1 + math.log(2 * math.pi))
    return ll + prior + entropy


def analytic_log_px(model, guide, x):
    p = _params(model, guide, x)
    W, b = p["W"], p["b"]
    cov = W @ W.T + model.s ** 2 * torch.eye(W.shape[0], dtype=D64)
    return dist.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def analytic_grad(fn, model, guide, x):
    """Gradient of the *loss* -sum_i fn(x_i) with respect to every parameter."""
    p = _params(model, guide, x)
    gs = torch.autograd.grad(-fn(model, guide, x).sum(), [p[n] for n in NAMES], allow_unused=True)
    return {n: (torch.zeros_like(p[n]) if g is None else g) for n, g in zip(NAMES, gs)}


def grad_draws(elbo, model, guide, x, reps=1000, calls=40):
    """Mean and standard error over ``calls`` of the loss gradient for x, each call
    averaging ``reps`` independent estimates (x replicated in the data plate)."""
    p = _params(model, guide, x)
    xr = x.repeat(reps, 1)
    draws = {n: [] for n in NAMES}
    for _ in range(calls):
        for t in p.values():
            t.grad = None
        elbo.loss_and_grads(model, guide, xr)
        for n, t in p.items():
            draws[n].append((torch.zeros_like(t) if t.grad is None else t.grad.clone()) / reps)
    for t in p.values():
        t.grad = None
    mean = {n: torch.stack(v).mean(0) for n, v in draws.items()}
    se = {n: torch.stack(v).std(0) / math.sqrt(calls) for n, v in draws.items()}
    return mean, se


def assert_close_mc(mean, se, target, names, nse=4.0, target_se=None):
    for n in names:
        tol = nse * (se[n] if target_se is None else (se[n] ** 2 + target_se[n] ** 2).sqrt()) + 1e-8
        err = (mean[n] - target[n]).abs()
        assert bool((err <= tol).all()), f"{n}: |mean - target| {err} > tol {tol}"


def bound_estimates(model, guide, x, K, reps):
    """Per-datapoint Monte-Carlo mean and s.e. of the K-sample bound estimate."""
    f = IWAE_ELBO(K).forward(model, guide, x.repeat(reps, 1))
    b = IWAE_ELBO.bound(f.log_w).detach().reshape(reps, len(x))
    return b.mean(0), b.std(0) / math.sqrt(reps)


# ------------------------------------------------------------------------------------
# construction
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"num_particles": 0}, {"num_particles": 2.5},
                                {"gradient": "reinforce"}, {"max_plate_nesting": 0}])
def test_bad_arguments_raise(kw):
    with pytest.raises(ValueError):
        IWAE_ELBO(**kw)


def test_stl_warns_when_biased():
    with pytest.warns(BiasedGradientWarning, match="biased"):
        IWAE_ELBO(num_particles=5, gradient="stl")
    IWAE_ELBO(num_particles=1, gradient="stl")  # unbiased at K = 1: no warning (errors in tests)


# ------------------------------------------------------------------------------------
# the bound's value
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 7])
def test_exact_posterior_gives_log_px_exactly(K):
    model, guide, x = _problem(exact=True)
    loss = IWAE_ELBO(K).loss(model, guide, x)
    assert loss == pytest.approx(-float(analytic_log_px(model, guide, x).detach().sum()), abs=1e-9)


def test_k1_equals_trace_elbo_and_single_point_equals_renyi():
    model, guide, x = _problem(shift=0.5)
    pyro.set_rng_seed(3)
    ours = IWAE_ELBO(1, max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(3)
    assert ours == pytest.approx(Trace_ELBO(max_plate_nesting=1).loss(model, guide, x), abs=1e-10)
    pyro.set_rng_seed(4)
    ours = IWAE_ELBO(6, max_plate_nesting=1).loss(model, guide, x[:1])
    pyro.set_rng_seed(4)
    renyi = RenyiELBO(alpha=0, num_particles=6, vectorize_particles=True,
                      max_plate_nesting=1).loss(model, guide, x[:1])
    assert ours == pytest.approx(renyi, abs=1e-10)


def test_bound_nondecreasing_in_k_and_below_log_px():
    """L_K per datapoint for K = 1, 2, 8, 64 (20000 replicates each): each is at least
    the previous minus 4 s.e., at most log p(x) plus 4 s.e., and the gap shrinks
    markedly (L_64 - L_1 > 10 s.e.)."""
    model, guide, x = _problem(shift=0.8, widen=1.5)
    log_px = analytic_log_px(model, guide, x).detach()
    prev = None
    for K in (1, 2, 8, 64):
        m, se = bound_estimates(model, guide, x, K, reps=20000 if K < 64 else 4000)
        assert bool((m <= log_px + 4 * se).all()), (K, m, log_px)
        if prev is not None:
            assert bool((m >= prev[0] - 4 * (se ** 2 + prev[1] ** 2).sqrt()).all()), (K, m, prev[0])
        if K == 1:
            first = (m, se)
            # K = 1 is the ELBO: compare with the closed form
            assert torch.allclose(m, analytic_elbo(model, guide, x).detach(), atol=4 * float(se.max()))
        prev = (m, se)
    assert bool((prev[0] - first[0] > 10 * (prev[1] ** 2 + first[1] ** 2).sqrt()).all())


def test_batch_is_sum_of_per_datapoint_bounds_not_bound_of_summed_weights():
    """Oracle: z from the guide trace, log w re-derived from torch.distributions
    densities by hand; the loss is -sum_i logmeanexp_k log w_ik (to 1e-9), not
    -logmeanexp_k sum_i log w_ik (the bound of the summed weights) on the same draw. In
    expectation E[loss(batch)] = sum_i E[loss(x_i)] (4 s.e.; 4000 and 400 replicates)."""
    model, guide, x = _problem(shift=0.5, widen=1.3)
    K = 5
    elbo = IWAE_ELBO(K, max_plate_nesting=1)
    pyro.set_rng_seed(11)
    f = elbo.forward(model, guide, x)
    pyro.set_rng_seed(11)
    loss = elbo.loss(model, guide, x)
    z = f.guide_trace.nodes["z"]["value"].detach()  # (K, batch, k)
    p = _params(model, guide, x)
    with torch.no_grad():
        lp = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
              + dist.Normal(z @ p["W"].T + p["b"], model.s).log_prob(x).sum(-1))
        lq = dist.Normal(x @ p["A"].T + p["c"], p["r"].exp()).log_prob(z).sum(-1)
    log_w = lp - lq  # (K, batch)
    torch.testing.assert_close(f.log_w.detach(), log_w, rtol=0, atol=1e-10)
    per_point = torch.logsumexp(log_w, 0) - math.log(K)
    assert loss == pytest.approx(-float(per_point.sum()), abs=1e-9)
    summed = float(torch.logsumexp(log_w.sum(1), 0) - math.log(K))
    assert abs(loss + summed) > 1e-2
    m, se = bound_estimates(model, guide, x, K, reps=4000)
    batch_losses = torch.tensor([elbo.loss(model, guide, x) for _ in range(400)], dtype=D64)
    assert float(batch_losses.mean()) == pytest.approx(
        -float(m.sum()), abs=4 * float((batch_losses.std() ** 2 / 400 + (se ** 2).sum()).sqrt()))


def test_renyi_alpha0_agrees_on_full_batch_but_scales_inside_logmeanexp_when_subsampled():
    """Pyro's RenyiELBO(alpha=0) keeps plate dims common to all sites, so on a full batch
    (every site in the data plate) it equals ours on the same draw; with a subsampled
    plate it takes logmeanexp_k((N/B) log w_ik) (the scale inside), ours
    (N/B) logmeanexp_k(log w_ik). Both checked to 1e-9."""
    model, guide, x = _problem(shift=0.5, widen=1.3)
    K = 5

    def renyi():
        return RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)

    elbo = IWAE_ELBO(K, max_plate_nesting=1)
    pyro.set_rng_seed(4)
    ours = elbo.loss(model, guide, x)
    pyro.set_rng_seed(4)
    assert ours == pytest.approx(renyi().loss(model, guide, x), abs=1e-9)
    idx = torch.tensor([0, 2])
    pyro.set_rng_seed(6)
    f = elbo.forward(model, guide, x[idx], num_data=4, idx=idx)
    pyro.set_rng_seed(6)
    ours = elbo.loss(model, guide, x[idx], num_data=4, idx=idx)
    pyro.set_rng_seed(6)
    theirs = renyi().loss(model, guide, x[idx], num_data=4, idx=idx)
    lw = f.log_w.detach()
    assert ours == pytest.approx(-2.0 * float((torch.logsumexp(lw, 0) - math.log(K)).sum()), abs=1e-9)
    assert theirs == pytest.approx(-float((torch.logsumexp(2.0 * lw, 0) - math.log(K)).sum()), abs=1e-9)
    assert abs(ours - theirs) > 1e-2


def test_subsampled_plate_scales_by_n_over_b():
    """Same draw: loss(x[idx], num_data=N, idx) = (N/B) loss(x[idx]) exactly. Exact
    posterior guide: the mean of the subsampled loss over all C(4, 2) minibatches is
    -sum_i log p(x_i) over the whole data set (1e-9)."""
    model, guide, x = _problem(shift=0.4)
    elbo = IWAE_ELBO(3, max_plate_nesting=1)
    idx = torch.tensor([2, 0])
    pyro.set_rng_seed(5)
    scaled = elbo.loss(model, guide, x[idx], num_data=4, idx=idx)
    pyro.set_rng_seed(5)
    plain = elbo.loss(model, guide, x[idx])
    assert scaled == pytest.approx(2.0 * plain, rel=1e-12)
    pyro.clear_param_store()
    model, guide, x = _problem(exact=True)
    losses = [elbo.loss(model, guide, x[list(s)], num_data=4, idx=torch.tensor(s))
              for s in itertools.combinations(range(4), 2)]
    assert sum(losses) / len(losses) == pytest.approx(
        -float(analytic_log_px(model, guide, x).detach().sum()), abs=1e-9)


def test_extra_scale_raises():
    model, guide, x = _problem()
    with pytest.raises(ValueError, match="scale"):
        IWAE_ELBO(2).loss(poutine.scale(model, 0.5), poutine.scale(guide, 0.5), x)


# ------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("gradient", ["standard", "stl", "dreg"])
def test_k1_gradients_match_analytic_elbo_gradient(gradient):
    """K = 1: every estimator's mean over 40 x 1000 draws is within 4 s.e. of the
    closed-form ELBO gradient, for all five parameters."""
    model, guide, x = _problem(shift=0.6, widen=1.4)
    target = analytic_grad(analytic_elbo, model, guide, x)
    mean, se = grad_draws(IWAE_ELBO(1, gradient=gradient), model, guide, x)
    assert_close_mc(mean, se, target, NAMES)


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_exact_posterior_gradients_are_fisher_identity(gradient):
    """q = p(z | x): the IWAE gradient (any K) is grad log p(x) for the model
    (E_q grad log p(x, z) = grad log p(x)) and 0 for the guide (L_K is maximal there).
    Means of 40 x 1000 draws within 4 s.e.; DReG's guide gradient is exactly 0."""
    model, guide, x = _problem(exact=True)
    target = analytic_grad(analytic_log_px, model, guide, x)
    mean, se = grad_draws(IWAE_ELBO(5, gradient=gradient), model, guide, x)
    assert_close_mc(mean, se, target, NAMES)
    if gradient == "dreg":
        for n in GUIDE_NAMES:
            assert float(mean[n].abs().max()) < 1e-10
            assert float(se[n].abs().max()) < 1e-10
    else:  # the standard estimator is right on average but noisy at the optimum
        assert min(float(se[n].abs().max()) for n in GUIDE_NAMES) > 1e-6


def test_dreg_and_standard_agree_in_expectation_and_stl_is_biased_at_k_gt_1():
    """K = 8, perturbed guide: DReG's and the standard estimator's mean gradients agree
    within 4 combined s.e. (40 x 1000 draws each); STL's guide gradient differs from the
    standard one by more than 8 combined s.e. in at least one element (its bias)."""
    model, guide, x = _problem(shift=0.6, widen=1.4)
    K = 8
    m_std, se_std = grad_draws(IWAE_ELBO(K), model, guide, x)
    m_dreg, se_dreg = grad_draws(IWAE_ELBO(K, gradient="dreg"), model, guide, x)
    assert_close_mc(m_dreg, se_dreg, m_std, NAMES, target_se=se_std)
    with pytest.warns(BiasedGradientWarning):
        stl = IWAE_ELBO(K, gradient="stl")
    m_stl, se_stl = grad_draws(stl, model, guide, x)
    z = max(float(((m_stl[n] - m_std[n]).abs() / (se_stl[n] ** 2 + se_std[n] ** 2).sqrt()).max())
            for n in GUIDE_NAMES)
    assert z > 8.0, z
    # DReG has lower variance for the guide than the standard estimator
    assert sum(float(se_dreg[n].sum()) for n in GUIDE_NAMES) < sum(float(se_std[n].sum()) for n in GUIDE_NAMES)


@pytest.mark.parametrize("gradient,K", [("dreg", 6), ("stl", 1)])
def test_model_gradients_equal_standard_on_the_same_draw(gradient, K):
    """The model's parameters get exactly the standard gradient (1e-10) from DReG and
    STL on the same draw (STL at K = 1, where it is unbiased and silent)."""
    model, guide, x = _problem(shift=0.6, widen=1.4)
    p = _params(model, guide, x)
    grads = {}
    for g in ("standard", gradient):
        for t in p.values():
            t.grad = None
        pyro.set_rng_seed(9)
        IWAE_ELBO(K, gradient=g, max_plate_nesting=1).loss_and_grads(model, guide, x)
        grads[g] = {n: p[n].grad.clone() for n in NAMES}
    for n in MODEL_NAMES:
        torch.testing.assert_close(grads[gradient][n], grads["standard"][n], rtol=1e-10, atol=1e-10)
    assert any(not torch.allclose(grads[gradient][n], grads["standard"][n]) for n in GUIDE_NAMES)


@pytest.mark.parametrize("gradient", ["standard", "dreg", "stl"])
def test_differentiable_loss_matches_loss_and_grads(gradient):
    model, guide, x = _problem(shift=0.3)
    elbo = IWAE_ELBO(4 if gradient != "stl" else 1, gradient=gradient, max_plate_nesting=1)
    p = _params(model, guide, x)
    pyro.set_rng_seed(2)
    value = elbo.loss_and_grads(model, guide, x)
    ref = {n: p[n].grad.clone() for n in NAMES}
    for t in p.values():
        t.grad = None
    pyro.set_rng_seed(2)
    loss = elbo.differentiable_loss(model, guide, x)
    assert float(loss.detach()) == pytest.approx(value, abs=1e-10)
    grads = torch.autograd.grad(loss, [p[n] for n in NAMES])
    for n, g in zip(NAMES, grads):
        torch.testing.assert_close(g, ref[n], rtol=1e-9, atol=1e-10)
    pyro.set_rng_seed(2)
    assert elbo.loss(model, guide, x) == pytest.approx(value, abs=1e-10)


@pytest.mark.parametrize("gradient", ["standard", "dreg", "stl"])
def test_very_negative_log_weights_give_finite_bound_and_gradients(gradient):
    """float32, log w about -1000 (data 5 units from the model's mean, noise 0.1):
    the bound is finite and close to the mean log weight, gradients are finite."""
    torch.manual_seed(0)
    model = LGModel(torch.tensor([[1.0], [0.5]]), torch.zeros(2), 0.1)
    guide = LGGuide(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1))
    x = torch.full((3, 2), 5.0)
    elbo = IWAE_ELBO(16, gradient=gradient) if gradient != "stl" else IWAE_ELBO(1, gradient="stl")
    f = elbo.forward(model, guide, x)
    assert float(f.log_w.detach().max()) < -500
    value = elbo.loss_and_grads(model, guide, x)
    assert math.isfinite(value) and value > 1000
    for n in NAMES:
        g = pyro.get_param_store().get_param(n).unconstrained().grad
        assert g is not None and bool(torch.isfinite(g).all()), n


# ------------------------------------------------------------------------------------
# non-reparameterisable sites: score-function term (standard), error (dreg / stl)
# ------------------------------------------------------------------------------------

def _bernoulli_programs():
    """z ~ Bernoulli(0.3), x | z ~ N(2z - 1 + m, 1) (learnable m); q(z | x) =
    Bernoulli(sigmoid(a x + c)) (learnable a, c)."""

    def model(x, *, num_data=None, idx=None):
        m = pyro.param("m", torch.tensor(0.2, dtype=D64))
        with data_plate(x, num_data, idx):
            z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.3, dtype=D64)))
            pyro.sample("x", dist.Normal(2 * z - 1 + m, 1.0), obs=x)

    def guide(x, *, num_data=None, idx=None):
        a = pyro.param("a", torch.tensor(0.5, dtype=D64))
        c = pyro.param("c", torch.tensor(-0.2, dtype=D64))
        with data_plate(x, num_data, idx):
            pyro.sample("z", dist.Bernoulli(logits=a * x + c))

    return model, guide


def test_standard_score_function_gradient_matches_enumeration():
    """Discrete z, K = 2: the exact L_2 and its gradient by enumerating all 4 particle
    pairs; the standard estimator (pathwise + score-function term) agrees within 4 s.e.
    (20 calls x 2000 replicates)."""
    model, guide = _bernoulli_programs()
    x = torch.tensor([0.7, -1.2], dtype=D64)
    K = 2
    elbo = IWAE_ELBO(K)
    elbo.loss(model, guide, x)
    ps = pyro.get_param_store()
    names = ["m", "a", "c"]
    p = {n: ps.get_param(n).unconstrained() for n in names}

    def exact_bound():
        m, a, c = p["m"], p["a"], p["c"]
        total = 0.0
        for zs in itertools.product([0.0, 1.0], repeat=K):
            z = torch.tensor(zs, dtype=D64)[:, None]  # (K, 1)
            lq = dist.Bernoulli(logits=a * x + c).log_prob(z.expand(K, len(x)))  # (K, B)
            lp = (dist.Bernoulli(torch.tensor(0.3, dtype=D64)).log_prob(z)
                  + dist.Normal(2 * z - 1 + m, 1.0).log_prob(x))
            prob = lq.sum(0).exp()  # (B,) probability of this particle tuple
            total = total + prob * (torch.logsumexp(lp - lq, 0) - math.log(K))
        return total.sum()

    target = dict(zip(names, torch.autograd.grad(-exact_bound(), [p[n] for n in names])))
    reps, calls = 2000, 20
    xr = x.repeat(reps)
    draws = {n: [] for n in names}
    for _ in range(calls):
        for t in p.values():
            t.grad = None
        elbo.loss_and_grads(model, guide, xr)
        for n in names:
            draws[n].append(p[n].grad.clone() / reps)
    mean = {n: torch.stack(v).mean(0) for n, v in draws.items()}
    se = {n: torch.stack(v).std(0) / math.sqrt(calls) for n, v in draws.items()}
    assert_close_mc(mean, se, target, names)
    loss_mean = sum(elbo.loss(model, guide, xr) for _ in range(10)) / (10 * reps)
    assert loss_mean == pytest.approx(-float(exact_bound().detach()), abs=0.02)


@pytest.mark.parametrize("gradient", ["dreg", "stl"])
def test_non_reparameterisable_site_raises_for_dreg_and_stl(gradient):
    model, guide = _bernoulli_programs()
    elbo = IWAE_ELBO(1, gradient=gradient)
    with pytest.raises(ValueError, match="reparameterisable"):
        elbo.loss_and_grads(model, guide, torch.tensor([0.5, 1.0], dtype=D64))


# ------------------------------------------------------------------------------------
# auxiliary factors, user programs, SVI
# ------------------------------------------------------------------------------------

def test_auxiliary_factors_enter_objective_not_weights():
    """A guide with auxiliary_factor(-lam |mu_i|^2) per datapoint: the loss is
    -(bound + (N/B) sum_i -lam |mu_i|^2) on the same draw, the log weights are those
    without the factor, and the factor's gradient reaches the guide parameters."""
    model, guide, x = _problem(shift=0.3)
    lam = 0.25

    def guide_aux(x, *, num_data=None, idx=None):  # the same q, plus the factor
        with data_plate(x, num_data, idx):
            mu = x @ pyro.param("A").T + pyro.param("c")
            z = pyro.sample("z", dist.Normal(mu, pyro.param("r").exp()).to_event(1))
            auxiliary_factor("penalty", -lam * (mu ** 2).sum(-1))
        return z

    idx = torch.tensor([0, 1, 2])
    for gradient in ("standard", "dreg"):
        elbo = IWAE_ELBO(3, gradient=gradient, max_plate_nesting=1)
        pyro.set_rng_seed(1)
        with_aux = elbo.forward(model, guide_aux, x[idx], num_data=4, idx=idx)
        pyro.set_rng_seed(1)
        without = elbo.forward(model, guide, x[idx], num_data=4, idx=idx)
        torch.testing.assert_close(with_aux.log_w, without.log_w)
        p = _params(model, guide, x)
        with torch.no_grad():
            penalty = -lam * ((x[idx] @ p["A"].T + p["c"]) ** 2).sum()
        assert float(with_aux.auxiliary.detach()) == pytest.approx(4 / 3 * float(penalty), rel=1e-10)
        pyro.set_rng_seed(1)
        loss = elbo.loss(model, guide_aux, x[idx], num_data=4, idx=idx)
        pyro.set_rng_seed(1)
        base = elbo.loss(model, guide, x[idx], num_data=4, idx=idx)
        assert loss == pytest.approx(base - 4 / 3 * float(penalty), rel=1e-10)
        # gradient of the factor: difference of the two estimators on the same draw
        grads = []
        for g in (guide_aux, guide):
            for t in p.values():
                t.grad = None
            pyro.set_rng_seed(1)
            elbo.loss_and_grads(model, g, x[idx], num_data=4, idx=idx)
            grads.append(p["c"].grad.clone())
        c = p["c"].detach().requires_grad_()
        pen = -lam * ((x[idx] @ p["A"].detach().T + c) ** 2).sum() * 4 / 3
        (expected,) = torch.autograd.grad(-pen, c)
        torch.testing.assert_close(grads[0] - grads[1], expected, rtol=1e-8, atol=1e-10)


def test_user_program_with_extra_arguments_and_no_plate_keywords():
    """A program f(x, offset) without num_data / idx: extra positional arguments are
    passed through; the value equals the closed form at the exact posterior."""
    model, guide, x = _problem(exact=True)

    def m2(x, offset):
        return model(x - offset)

    def g2(x, offset):
        return guide(x - offset)

    loss = IWAE_ELBO(3).loss(m2, g2, x + 1.0, 1.0)
    assert loss == pytest.approx(-float(analytic_log_px(model, guide, x).detach().sum()), abs=1e-9)


def test_svi_training_raises_the_bound():
    """pyro.infer.SVI with IWAE_ELBO(5, dreg): 300 Adam steps from a poor guide raise the
    estimated bound L_5 (2000 replicates) by more than 0.5 nats in total."""
    model, guide, x = _problem(shift=1.0, widen=2.0)
    before = bound_estimates(model, guide, x, 5, 2000)[0].sum()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), IWAE_ELBO(5, gradient="dreg"))
    for _ in range(300):
        svi.step(x)
    after = bound_estimates(model, guide, x, 5, 2000)[0].sum()
    assert float(after - before) > 0.5
    assert float(after) <= float(analytic_log_px(model, guide, x).detach().sum()) + 0.05


def test_cli_fit_iwae_records_objective_in_metrics(tmp_path):
    """`lvm-pyro fit --elbo iwae --num-particles 3 --gradient dreg` trains (digits, one
    epoch) and metrics.json records the objective through the config."""
    import json

    from lvm_pyro.cli import main

    rc = main(["fit", "--elbo", "iwae", "--num-particles", "3", "--gradient", "dreg",
               "--epochs", "1", "--num-samples", "5", "--num-test", "10", "--no-progress",
               "--out", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: m["config"][k] for k in ("elbo", "num_particles", "gradient")} == \
        {"elbo": "iwae", "num_particles": 3, "gradient": "dreg"}
    assert math.isfinite(m["test_nll"]) and math.isfinite(m["train_curve"][0]["loss"])


def _hierarchical_programs():
    """z1 ~ N(0, I_2), z2 | z1 ~ N(z1, I_2), x | z2 ~ N(W z2 + b, 0.7^2 I_3);
    q(z1 | x) = N(A x + c, e^r), q(z2 | z1) = N(a z1 + e, e^u): the guide's second site
    depends on the reparameterised first one."""
    g = torch.Generator().manual_seed(1)
    init = {"W": torch.randn(3, 2, generator=g, dtype=D64), "b": torch.randn(3, generator=g, dtype=D64),
            "A": 0.3 * torch.randn(2, 3, generator=g, dtype=D64), "c": torch.zeros(2, dtype=D64),
            "r": torch.full((2,), -0.3, dtype=D64), "a": torch.full((2,), 0.8, dtype=D64),
            "e": torch.full((2,), 0.1, dtype=D64), "u": torch.full((2,), -0.5, dtype=D64)}

    def model(x, *, num_data=None, idx=None):
        W, b = pyro.param("W", init["W"]), pyro.param("b", init["b"])
        with data_plate(x, num_data, idx):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z2 @ W.T + b, 0.7).to_event(1), obs=x)

    def guide(x, *, num_data=None, idx=None):
        p = {n: pyro.param(n, init[n]) for n in "Acraeu"}
        with data_plate(x, num_data, idx):
            z1 = pyro.sample("z1", dist.Normal(x @ p["A"].T + p["c"], p["r"].exp()).to_event(1))
            pyro.sample("z2", dist.Normal(p["a"] * z1 + p["e"], p["u"].exp()).to_event(1))

    x = torch.randn(3, 3, generator=g, dtype=D64)
    return model, guide, x, list(init)


@pytest.mark.parametrize("gradient,K", [("stl", 1), ("dreg", 1), ("dreg", 4)])
def test_hierarchical_guide_rescoring_keeps_the_path_through_upstream_latents(gradient, K):
    """With a guide q(z1 | x) q(z2 | z1), STL (K = 1) and DReG (K = 1, 4) mean gradients
    agree with the standard estimator's within 4 combined s.e. (40 x 1000 draws each).
    Re-scoring with every tensor of q(z2 | z1) detached (dropping d/dz1 of its mean)
    biases DReG at K > 1."""
    model, guide, x, names = _hierarchical_programs()
    IWAE_ELBO(1).loss(model, guide, x)
    ps = pyro.get_param_store()
    p = {n: ps.get_param(n).unconstrained() for n in names}

    def draws(elbo, reps=1000, calls=40):
        xr = x.repeat(reps, 1)
        out = {n: [] for n in names}
        for _ in range(calls):
            for t in p.values():
                t.grad = None
            elbo.loss_and_grads(model, guide, xr)
            for n in names:
                out[n].append(p[n].grad.clone() / reps)
        return ({n: torch.stack(v).mean(0) for n, v in out.items()},
                {n: torch.stack(v).std(0) / math.sqrt(calls) for n, v in out.items()})

    m_std, se_std = draws(IWAE_ELBO(K))
    m, se = draws(IWAE_ELBO(K, gradient=gradient))
    assert_close_mc(m, se, m_std, names, target_se=se_std)
