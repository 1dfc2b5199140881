"""Controlled capacity (Burgess et al. 2018, eq. 8): the schedule C_t at given steps, the
objective equal to -E log p(x|z) + N gamma |KL-bar - C_t| on a model whose KL is known in
closed form (values and gradients), C = 0 with gamma = 1 is TraceMeanField_ELBO, the step
counter and its checkpoint state, and the config / CLI option."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from lvm_pyro.cli import build_parser
from lvm_pyro.inference import Capacity_ELBO, CapacitySchedule, KLWeighted_ELBO
from lvm_pyro.inference.schedules import schedule_from_dict, schedule_to_dict
from lvm_pyro.sites import data_plate
from lvm_pyro.training.builders import build_objective
from lvm_pyro.training.config import ConfigError, RunConfig, TraceConfig, config_from_namespace

Z, D, B, N = 3, 4, 6, 60  # latent size, data size, minibatch, data-set size
G = torch.Generator().manual_seed(0)
A = 0.5 * torch.randn(D, Z, generator=G, dtype=torch.float64)
W = torch.randn(D, Z, generator=G, dtype=torch.float64)
X = torch.randn(B, D, generator=G, dtype=torch.float64)
IDX = torch.arange(B)


def flat_model(x, num_data=None, idx=None):
    """z ~ N(0, I); x ~ N(0, I) whatever z: log p(x | z) is a known constant per draw."""
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(x.new_zeros(D), 1.0).to_event(1), obs=x)


def linear_model(x, num_data=None, idx=None):
    """z ~ N(0, I), x | z ~ N(W z, 0.5^2 I)."""
    with data_plate(x, num_data, idx):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, 0.5).to_event(1), obs=x)


def guide(x, num_data=None, idx=None):
    a = pyro.param("a", A.clone())
    raw = pyro.param("raw", torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64))
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(x @ a, torch.nn.functional.softplus(raw)).to_event(1))


def closed_form_kl_bar(a, raw):
    """mean_i KL(q(z | x_i) || N(0, I)) in closed form, differentiable in (a, raw)."""
    loc, scale = X @ a, torch.nn.functional.softplus(raw).expand(B, Z)
    return (0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).sum(-1).mean()


def _params():
    store = pyro.get_param_store()
    return [store.get_param(n).unconstrained() for n in ("a", "raw")]


def _loss_and_grads(elbo, model, seed=3):
    pyro.set_rng_seed(seed)
    guide(X)  # create the parameters
    for p in _params():
        p.grad = None
    loss = elbo.loss_and_grads(model, guide, X, num_data=N, idx=IDX)
    return loss, [p.grad.clone() for p in _params()]


def test_capacity_schedule_values_at_given_steps():
    c = CapacitySchedule(25.0, 100)
    assert [c(t) for t in (0, 1, 50, 99, 100, 101, 10 ** 6)] == pytest.approx(
        [0.0, 0.25, 12.5, 24.75, 25.0, 25.0, 25.0], abs=1e-12)
    assert CapacitySchedule(7.0, 0)(0) == 7.0 and c.value == 25.0
    assert schedule_from_dict(schedule_to_dict(c)) == c
    for bad in (dict(capacity_max=-1.0), dict(capacity_max=float("inf")),
                dict(capacity_steps=-1), dict(capacity_steps=2.5)):
        with pytest.raises(ValueError, match="capacity_"):
            CapacitySchedule(**bad)
    with pytest.raises(ValueError, match="step t"):
        c(-1)


@pytest.mark.parametrize("capacity", [0.5, 3.0, 40.0])  # below, near and above the KL
def test_objective_is_gamma_abs_kl_minus_capacity_on_a_known_kl(capacity):
    """loss = -(N/B) sum_i log N(x_i; 0, I) + N gamma |KL-bar - C|, and its gradient is
    N gamma sign(KL-bar - C) dKL-bar (autograd of the closed form)."""
    gamma = 7.0
    loss, grads = _loss_and_grads(Capacity_ELBO(capacity, weight=gamma, max_plate_nesting=1),
                                  flat_model)
    a, raw = (p.detach().clone().requires_grad_() for p in _params())
    kl = closed_form_kl_bar(a, raw)
    log_px = dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).log_prob(X).sum()
    expect = -(N / B) * log_px + N * gamma * (kl - capacity).abs()
    assert 0.5 < float(kl.detach()) < 40.0  # the capacities lie on both sides of the KL
    assert loss == pytest.approx(float(expect.detach()), rel=1e-10)
    expect.backward()
    torch.testing.assert_close(grads[0], a.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[1], raw.grad, rtol=1e-9, atol=1e-12)


def test_zero_capacity_unit_weight_is_trace_mean_field():
    l0, g0 = _loss_and_grads(TraceMeanField_ELBO(max_plate_nesting=1), linear_model)
    l1, g1 = _loss_and_grads(Capacity_ELBO(0.0, weight=1.0, max_plate_nesting=1), linear_model)
    assert l1 == pytest.approx(l0, rel=1e-10)
    for x, y in zip(g0, g1):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_capacity_follows_its_schedule_over_steps_and_checkpoints():
    elbo = Capacity_ELBO(CapacitySchedule(10.0, 4), weight=2.0, max_plate_nesting=1)
    assert elbo.current_capacity == 0.0
    pyro.set_rng_seed(0)
    guide(X)
    kl = float(closed_form_kl_bar(*(p.detach() for p in _params())))
    log_px = float(dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).log_prob(X).sum())
    for t in range(3):
        assert elbo.step == t and elbo.current_capacity == pytest.approx(2.5 * t)
        before = elbo.loss(flat_model, guide, X, num_data=N, idx=IDX)  # loss does not step
        assert before == pytest.approx(-(N / B) * log_px + N * 2.0 * abs(kl - 2.5 * t), rel=1e-10)
        elbo.loss_and_grads(flat_model, guide, X, num_data=N, idx=IDX)  # no optimiser: same KL
    state = elbo.state_dict()
    assert state == {"step": 3, "schedule": {"type": "CapacitySchedule", "capacity_max": 10.0,
                                             "capacity_steps": 4}}
    other = Capacity_ELBO(CapacitySchedule(10.0, 4), weight=2.0)
    other.load_state_dict(state)
    assert other.current_capacity == 7.5
    with pytest.raises(ValueError, match="differs"):
        Capacity_ELBO(CapacitySchedule(10.0, 5)).load_state_dict(state)


def test_bad_arguments_and_scaled_latents_raise():
    with pytest.raises(ValueError, match="weight"):
        Capacity_ELBO(1.0, weight=0.0)
    with pytest.raises(ValueError, match="capacity must be"):
        Capacity_ELBO("25")
    with pytest.raises(ValueError, match="capacity_max"):
        Capacity_ELBO(-1.0)
    scaled = KLWeighted_ELBO(Capacity_ELBO(1.0, max_plate_nesting=1), beta=2.0)
    pyro.set_rng_seed(0)
    with pytest.raises(ValueError, match="carries a scale"):
        scaled.loss(flat_model, guide, X, num_data=N, idx=IDX)


def test_config_and_cli_build_the_capacity_objective():
    argv = ["fit", "--capacity-max", "25", "--capacity-steps", "100", "--capacity-weight", "500"]
    cfg = config_from_namespace(build_parser().parse_args(argv))
    assert cfg.objective == TraceConfig(capacity_max=25.0, capacity_steps=100,
                                        capacity_weight=500.0)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip
    elbo = build_objective(cfg, num_data=1000)
    assert isinstance(elbo, Capacity_ELBO) and elbo.weight == 500.0
    assert elbo.schedule == CapacitySchedule(25.0, 100)
    assert not isinstance(build_objective(TraceConfig()), Capacity_ELBO)  # off by default
    with pytest.raises(ConfigError, match="capacity_steps applies only"):
        TraceConfig(capacity_steps=10)
    with pytest.raises(ConfigError, match="capacity_max replaces the KL weighting"):
        TraceConfig(capacity_max=25.0, beta=4.0)
    with pytest.raises(ConfigError, match="capacity_max replaces the KL weighting"):
        TraceConfig(capacity_max=25.0, free_bits=0.5)
    with pytest.raises(ConfigError, match="capacity_weight must be a finite number > 0"):
        TraceConfig(capacity_max=25.0, capacity_weight=-1.0)
    with pytest.raises(ConfigError, match="capacity_max must be >= 0"):
        TraceConfig(capacity_max=-1.0)
