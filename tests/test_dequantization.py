"""Dequantisation (Theis et al. 2016; Ho et al. 2019; Hoogeboom et al. 2020) against
exact integration over known discrete distributions.

The test density p_y is constant on half-bins: for level k (per dimension, L levels)
and half-cell h in {0, 1}^D of the bin, p_v(k + u) = P(k) 2^D w[k, h(u)]. So
int p_v(k + u) du = P(k) exactly, the posterior over the noise is
p(u | k) = 2^D w[k, h(u)], and the uniform bound has the closed form
log P(k) + 2^-D sum_h log(2^D w[k, h]).
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import constraints

from lvm_pyro.data import to_levels
from lvm_pyro.guides import (AmortizedNormalGuide, CompositeGuide, UniformDequantizer,
                             VariationalDequantizer)
from lvm_pyro.inference import log_marginal_likelihood, log_weights
from lvm_pyro.models import DequantizedModel, GaussianLikelihood, VAEModel
from lvm_pyro.nn import MLP

L = 3
HALF = torch.tensor([[0.25, 0.75], [0.7, 0.3], [0.8, 0.2]], dtype=torch.float64)  # (L, 2)


class HalfBinDensity(dist.TorchDistribution):
    """Density over y in [0, 1)^D, constant on each half-bin: event shape (D,)."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, log_P, log_w, batch_shape=torch.Size()):
        self.log_P, self.log_w, self.D = log_P, log_w, log_P.dim()
        super().__init__(torch.Size(batch_shape), torch.Size([self.D]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return HalfBinDensity(self.log_P, self.log_w, batch_shape)

    def log_prob(self, y):
        v = y * L
        k = torch.floor(v).long().clamp(0, L - 1)
        h = torch.floor(2 * (v - k)).long().clamp(0, 1)
        ks = tuple(k[..., d] for d in range(self.D))
        hs = tuple(h[..., d] for d in range(self.D))
        # density of y = v / L: L^D times the density of v
        return self.D * math.log(L) + self.log_P[ks] + self.D * math.log(2) + self.log_w[ks + hs]


class Problem:
    def __init__(self, D):
        self.D = D
        if D == 1:
            P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
            w = HALF
        else:  # a non-product table; half-bins along u_1 with weights set by (k_1, k_2)
            P = torch.softmax(torch.tensor([[0.3, -1.0, 0.8], [1.2, 0.1, -0.4], [-0.7, 0.5, 0.0]],
                                           dtype=torch.float64).flatten(), 0).reshape(L, L)
            half = torch.stack([HALF, HALF[[2, 0, 1]], HALF.flip(-1)], 1)  # (L, L, 2)
            w = half[..., None].expand(L, L, 2, 2) / 2  # uniform along u_2
        self.log_P, self.w = P.log(), w
        self.x = torch.tensor(list(itertools.product(range(L), repeat=D)))  # (L^D, D) int64

        def density(x):
            with pyro.plate("data", len(x)):
                pyro.sample("x", HalfBinDensity(self.log_P, self.w.log()), obs=x)

        self.model = DequantizedModel(density, num_levels=L)

    def log_P_of(self, x):  # (n,)
        return self.log_P[tuple(x[:, d] for d in range(self.D))]

    def log_p_v(self, x, u):  # x (n, D) levels, u (n, D) -> (n,) log p_v(x + u)
        h = torch.floor(2 * u).long()
        idx = tuple(x[:, d] for d in range(self.D)) + tuple(h[:, d] for d in range(self.D))
        return self.log_P_of(x) + self.D * math.log(2) + self.w.log()[idx]

    def uniform_bound(self, x):  # closed form, (n,)
        ks = tuple(x[:, d] for d in range(self.D))
        w = self.w[ks].reshape(len(x), -1)  # (n, 2^D)
        return self.log_P_of(x) + (2.0 ** -self.D * (self.D * math.log(2) + w.log())).sum(-1)

    def posterior_draws(self, x, n):  # exact u ~ p(u | k): (len(x) * n, D), x repeated
        ks = tuple(x[:, d] for d in range(self.D))
        w = self.w[ks].reshape(len(x), -1)
        cell = torch.multinomial(w, n, replacement=True).reshape(-1)
        bits = torch.stack([(cell >> (self.D - 1 - d)) & 1 for d in range(self.D)], -1)
        return (bits.double() + torch.rand(len(cell), self.D, dtype=torch.float64)) / 2


def grid(D, M):
    g = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    return torch.cartesian_prod(*([g] * D)).reshape(-1, D)


@torch.no_grad()
def exact_bound(q, prob, M):
    """int q(u | k) [log p_v(k + u) - log q(u | k)] du by the midpoint rule, and the
    mass int q, per level k."""
    U = grid(prob.D, M)
    bounds, masses = [], []
    for k in prob.x:
        xk = k.expand(len(U), prob.D)
        lq = q.distribution(xk).log_prob(U)
        qu = lq.exp() / len(U)
        bounds.append((qu * (prob.log_p_v(xk, U) - lq)).sum())
        masses.append(qu.sum())
    return torch.stack(bounds), torch.stack(masses)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("D", [1, 2])
def test_uniform_bound_equals_closed_form(D):
    prob = Problem(D)
    closed = prob.uniform_bound(prob.x)
    assert bool((closed < prob.log_P_of(prob.x)).all())
    # exact integration over u through the model's own trace (grid aligned with the
    # half-bins: the midpoint rule is exact for a piecewise-constant integrand)
    U = grid(D, 8)
    for k, c in zip(prob.x, closed):
        xk = k.expand(len(U), D)
        tr = poutine.trace(poutine.condition(prob.model, data={"u": U})).get_trace(xk)
        log_px = tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"])  # log p_v(k + u)
        assert torch.allclose(log_px, prob.log_p_v(xk, U), atol=1e-12)
        assert abs(float(log_px.mean()) - float(c)) < 1e-12
    # the engine with the uniform guide: log w = log p_v(k + u), mean within 5 s.e.
    lw = log_weights(prob.model, UniformDequantizer(), prob.x, 4000).log_w  # (4000, L^D)
    se = lw.std(0) / math.sqrt(len(lw))
    assert bool(((lw.mean(0) - closed).abs() < 5 * se + 1e-12).all())


def fit_by_maximum_likelihood(q, prob, steps, lr=0.03, n=128):
    """Fit q(u | k) to exact draws of p(u | k) (a forward-KL fit: the half-bin density is
    piecewise constant, so pathwise gradients of the ELBO would miss its jumps)."""
    xs = prob.x.repeat_interleave(n, 0)
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = -q.distribution(xs).log_prob(prob.posterior_draws(prob.x, n)).mean()
        loss.backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("D", [1, 2])
def test_variational_bound_beats_uniform_and_reaches_log_P(D):
    prob = Problem(D)
    q = VariationalDequantizer((D,), num_levels=L, context_dim=8, hidden_dims=(32,),
                               num_autoregressive=0, count_bins=16)
    fit_by_maximum_likelihood(q, prob, steps=250)
    log_P, uniform = prob.log_P_of(prob.x), prob.uniform_bound(prob.x)
    bound, mass = exact_bound(q, prob, M=2000 if D == 1 else 200)
    assert bool(((mass - 1).abs() < 2e-3).all()), mass  # the quadrature resolves q
    assert bool((bound > uniform).all())
    assert bool((bound < log_P + 2e-3).all())  # a lower bound, up to quadrature error
    assert bool((log_P - bound < 0.01).all()), log_P - bound
    # the engine's per-datapoint ELBO (Monte Carlo over q) agrees with the integral
    lw = log_weights(prob.model, q, prob.x, 4000).log_w
    se = lw.std(0) / math.sqrt(len(lw))
    assert bool(((lw.mean(0) - bound).abs() < 5 * se + 2e-3).all())
    # and the importance-weighted bound (Hoogeboom et al. 2020) is tighter still
    iw = log_marginal_likelihood(prob.model, q, prob.x, num_samples=1000)
    assert bool((iw > bound - 5 * se).all()) and bool(((iw - log_P).abs() < 0.01).all())


def test_samples_lie_in_the_unit_cube():
    torch.set_default_dtype(torch.float32)
    q = VariationalDequantizer((2, 3), num_levels=256, num_autoregressive=2)
    with torch.no_grad():  # sharpen every spline
        for p in q.parameters():
            p.mul_(5.0)
    x = torch.randint(0, 256, (64, 2, 3))
    u = q(x)
    assert u.shape == (64, 2, 3) and u.dtype == torch.float32
    assert bool((u >= 0).all()) and bool((u < 1).all())
    lw = log_weights(DequantizedModel(_gauss, 256), q, x, 8).log_w
    assert bool(torch.isfinite(lw).all())
    # base draws far in the tails still land inside [0, 1) (the sigmoid is clipped)
    d = q.distribution(x[:3])
    e = torch.tensor([-1e4, -60.0, -20.0, 20.0, 60.0, 1e4]).expand(3, 6)
    for t in d.transforms:
        e = t(e)
    assert bool((e >= 0).all()) and bool((e < 1).all()) and bool((e.amax() > 0.999))


def test_dequantizer_draws_stay_finite_when_the_uniform_draw_is_zero(monkeypatch):
    """torch's uniform_ returns exactly 0 with probability 2^-24 per float32 element
    (about once per evaluation of a Fashion-MNIST test set with K = 16); the logistic
    base must not turn it into -inf, which the autoregressive layer spreads as NaN to
    every later pixel (it crashed a K = 16 evaluation of a trained flow)."""
    q = VariationalDequantizer((4, 4), num_levels=256, autoregressive="affine")
    x = torch.randint(0, 256, (5, 4, 4))
    real_uniform = torch.Tensor.uniform_

    def extreme_uniform(self, a=0.0, b=1.0, *, generator=None):
        real_uniform(self, a, b, generator=generator)
        self.view(-1)[::2] = a  # the lowest value the sampler can return
        return self

    monkeypatch.setattr(torch.Tensor, "uniform_", extreme_uniform)
    u = q(x)
    assert bool(torch.isfinite(u).all()) and bool((u >= 0).all()) and bool((u < 1).all())
    lw = log_weights(DequantizedModel(_gauss, 256), q, x, 3).log_w
    assert bool(torch.isfinite(lw).all())


def _gauss(y):
    with pyro.plate("data", len(y)):
        pyro.sample("x", dist.Normal(torch.zeros_like(y[0]) + 0.5, 0.3).to_event(2), obs=y)


def _flow_parts(q, x):
    d = q.distribution(x)
    return d.base_dist, d.transforms


@pytest.mark.parametrize("autoregressive", ["spline", "affine"])
def test_dequantizer_log_det_and_log_q_against_jacrev(autoregressive):
    q = VariationalDequantizer((3,), num_levels=4, num_autoregressive=2,
                               autoregressive=autoregressive, context_dim=4, hidden_dims=(8,))
    x = torch.tensor([[0, 2, 3]])
    base, transforms = _flow_parts(q, x)

    def forward(e):  # (3,) -> (3,), no caches involved
        h = e.unsqueeze(0)
        for t in transforms:
            h = t._call(h)
        return h.squeeze(0)

    e = torch.tensor([-1.3, 0.4, 2.1])
    u = forward(e)
    jac = torch.func.jacrev(forward)(e)  # (3, 3)
    log_det = torch.linalg.slogdet(jac).logabsdet
    # the flow's own log |det| summed over its parts
    h, total = e.unsqueeze(0), 0.0
    for t in transforms:
        out = t(h)
        total = total + t.log_abs_det_jacobian(h, out).sum()  # batch of one event
        h = out
    assert abs(float(total.detach()) - float(log_det.detach())) < 1e-9
    # log q(u | x) = log p_e(e) - log |det du/de| (change of variables)
    expected = base.log_prob(e.unsqueeze(0)) - log_det
    assert torch.allclose(q.distribution(x).log_prob(u.clone().unsqueeze(0)), expected, atol=1e-8)


@pytest.mark.parametrize("autoregressive", ["spline", "affine"])
def test_dequantizer_is_invertible(autoregressive):
    q = VariationalDequantizer((2, 2), num_levels=8, num_autoregressive=2,
                               autoregressive=autoregressive)
    x = torch.randint(0, 8, (16, 2, 2))
    d = q.distribution(x)
    e = d.base_dist.sample()  # (16, 4)
    u = e
    for t in d.transforms:
        u = t._call(u)
    back = u.clone()  # no cache: invert every layer
    for t in reversed(d.transforms):
        back = t._inverse(back)
    assert (back - e).abs().max() < 1e-5


def test_to_levels_and_bad_inputs():
    assert torch.equal(to_levels(torch.tensor([0.0, 0.5, 1.0]), 3), torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(to_levels(torch.tensor([0, 2]), 3), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="grid"):
        to_levels(torch.tensor([0.3]), 3)
    with pytest.raises(ValueError, match="integer levels"):
        to_levels(torch.tensor([3]), 3)
    prob = Problem(1)
    with pytest.raises(ValueError, match="grid"):
        prob.model(torch.tensor([[0.1]]))

    def no_obs(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed site 'x'"):
        DequantizedModel(no_obs, 3)(prob.x)

    def wrong_event(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1), obs=torch.zeros(len(x), 2))

    with pytest.raises(ValueError, match="event shape"):
        DequantizedModel(wrong_event, 3)(prob.x)
    with pytest.raises(ValueError, match="expects x of shape"):
        VariationalDequantizer((2,), num_levels=3)(prob.x)
    with pytest.raises(ValueError, match="autoregressive"):
        VariationalDequantizer((2,), autoregressive="made")
    with pytest.raises(ValueError, match="num_levels"):
        DequantizedModel(no_obs, 1)


def test_dequantized_vae_log_weight_against_hand_computation():
    """u and z as latents of one composite guide: the engine's log weight equals
    log N(z) + log N((k + u) / L; decoder(z)) - D log L - log q(z | x) - log q(u | x)."""
    shape, z_dim, levels = (1, 2, 2), 3, 4
    decoder = MLP((z_dim,), [8], (2, *shape))
    model = DequantizedModel(VAEModel(decoder, z_dim, shape, GaussianLikelihood()), levels)
    q_u = VariationalDequantizer(shape, num_levels=levels, autoregressive="affine")
    q_z = AmortizedNormalGuide(MLP(shape, [8], (2, z_dim)), z_dim)
    guide = CompositeGuide(q_u, q_z)
    x = torch.randint(0, levels, (5, *shape)).double() / (levels - 1)
    out = log_weights(model, guide, x, 7)
    u = out.guide_trace.nodes["u"]["value"]  # (7, 5, 1, 2, 2)
    z = out.guide_trace.nodes["z"]["value"]  # (7, 5, 3)
    k = torch.round(x * (levels - 1))
    y = (k + u) / levels
    params = decoder(z)
    loc, scale = params[..., 0, :, :, :], torch.nn.functional.softplus(params[..., 1, :, :, :]) + 1e-3
    log_py = torch.distributions.Normal(loc, scale).log_prob(y).sum((-3, -2, -1))
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    zl, zs = q_z.loc_scale(x)
    log_qz = torch.distributions.Normal(zl, zs).log_prob(z).sum(-1)
    log_qu = q_u.distribution(x).log_prob(u.clone())  # scored afresh (inverted)
    expected = log_pz + log_py - 4 * math.log(levels) - log_qz - log_qu
    assert torch.allclose(out.log_w, expected, atol=1e-8)
    # a minibatch of a larger data set: one "data" subsample site, scale N / B
    sub = log_weights(model, guide, x, 2, num_data=50, idx=torch.arange(10, 15))
    assert sub.data_scale == 10.0 and sub.log_w.shape == (2, 5)
    assert [n for n, s in sub.model_trace.nodes.items() if s["type"] == "sample"].count("data") == 1
    # both guides' parameters reach the param store under distinct names
    pyro.clear_param_store()
    pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x).backward()
    names = list(pyro.get_param_store().keys())
    assert any(n.startswith("parts.0.") for n in names) and any(n.startswith("parts.1.") for n in names)


class RampDensity(dist.TorchDistribution):
    """1-D density linear inside each bin: p_v(k + u) = P(k) (1 + c_k (u - 1/2))."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, log_P, slope, batch_shape=torch.Size()):
        self.log_P, self.slope = log_P, slope
        super().__init__(torch.Size(batch_shape), torch.Size([1]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return RampDensity(self.log_P, self.slope, batch_shape)

    def log_prob(self, y):
        v = y[..., 0] * L
        k = torch.floor(v).long().clamp(0, L - 1)
        return math.log(L) + self.log_P[k] + torch.log1p(self.slope[k] * (v - k - 0.5))


@pytest.mark.slow
def test_trace_elbo_training_reaches_log_P_for_a_smooth_in_bin_density():
    """Reverse-KL training through Pyro's Trace_ELBO (pathwise gradients through u and the
    density, valid here since p is smooth inside each bin) closes the gap to < 0.01."""
    log_P = torch.tensor([0.5, 0.3, 0.2]).log()
    slope = torch.tensor([1.5, -1.2, 0.8])

    def density(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", RampDensity(log_P, slope), obs=x)

    model = DequantizedModel(density, num_levels=L)
    x = torch.arange(L)[:, None]
    # uniform bound, closed form: int_0^1 log(1 + c (u - 1/2)) du = (b log b - a log a) / c - 1
    a, b = 1 - slope / 2, 1 + slope / 2
    uniform = log_P + (b * b.log() - a * a.log()) / slope - 1
    lw = log_weights(model, UniformDequantizer(), x, 4000).log_w
    assert bool(((lw.mean(0) - uniform).abs() < 5 * lw.std(0) / math.sqrt(4000)).all())

    q = VariationalDequantizer((1,), num_levels=L, context_dim=8, hidden_dims=(32,))
    steps = 150
    svi = pyro.infer.SVI(model, q, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / steps)}),
                         pyro.infer.Trace_ELBO(num_particles=64, vectorize_particles=True,
                                               max_plate_nesting=1))
    for _ in range(steps):
        svi.step(x)
    U = grid(1, 4000)
    with torch.no_grad():
        for k in range(L):
            lq = q.distribution(torch.full((len(U), 1), k)).log_prob(U)
            lp = log_P[k] + torch.log1p(slope[k] * (U[:, 0] - 0.5))
            bound = (lq.exp() * (lp - lq)).mean()
            assert abs(float(lq.exp().mean()) - 1) < 1e-3
            assert uniform[k] < bound < log_P[k] + 1e-4
            assert log_P[k] - bound < 0.01


@pytest.mark.parametrize("context", ["mlp", "cnn"])
def test_cached_and_fresh_log_q_agree_on_images(context):
    """log q of a draw, from Pyro's transform caches (one pass) and re-scored by inverting
    every layer, agree: the guide's log weights do not depend on the cache."""
    q = VariationalDequantizer((1, 4, 4), num_levels=256, context=context,
                               autoregressive="affine", num_autoregressive=2)
    x = torch.randint(0, 256, (6, 1, 4, 4))
    d = q.distribution(x)
    u = d.rsample()
    assert u.shape == (6, 1, 4, 4) and bool((u >= 0).all()) and bool((u < 1).all())
    cached = d.log_prob(u)
    fresh = q.distribution(x).log_prob(u.clone())
    assert torch.allclose(cached, fresh, atol=1e-8)
    with pytest.raises(ValueError, match="context"):
        VariationalDequantizer((4,), context="cnn")
