"""The lean trace path (LeanTrace_ELBO) against Pyro's Trace_ELBO on the same draws, its
fallback to the full path when a program's structure changes between steps, and the
Trainer's dispatch and fused optimiser."""

import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from lvm_pyro.inference import IWAE_ELBO, LeanTrace_ELBO
from lvm_pyro.inference.program import ProgramContractError
from lvm_pyro.inference.program import adapt_program
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def _zero(params):
    for p in params:
        p.grad = None


def _compare(model, guide, args_per_step, kwargs=None, exact=True):
    """Run Pyro's Trace_ELBO and LeanTrace_ELBO step by step on the same seeds; return the
    lean objective. Values and gradients must agree (bit for bit with ``exact``)."""
    kwargs = kwargs or {}
    lean = LeanTrace_ELBO()
    pyro_elbo = Trace_ELBO()
    for step, args in enumerate(args_per_step):
        pyro.set_rng_seed(step)
        ref_loss = pyro_elbo.loss_and_grads(model, guide, *args, **kwargs)
        params = [p for _, p in pyro.get_param_store().named_parameters()]
        ref = _grads(params)
        _zero(params)
        pyro.set_rng_seed(step)
        loss = lean.loss_and_grads(model, guide, *args, **kwargs)
        got = _grads(params)
        _zero(params)
        assert loss == ref_loss if exact else loss == pytest.approx(ref_loss, rel=1e-6)
        assert any(g is not None for g in ref)
        for r, g in zip(ref, got):
            assert (r is None) == (g is None)
            if r is not None:
                assert torch.equal(r, g) if exact else torch.allclose(r, g, rtol=1e-6, atol=1e-7)
    return lean


def test_vae_equals_trace_elbo_bit_for_bit():
    x = torch.bernoulli(torch.rand(3, 12, 1, 4, 4))
    model, guide = build_vae({"z_dim": 3, "hidden_dim": 8, "num_hidden": 1}, (1, 4, 4))
    m, g = adapt_program(model), adapt_program(guide)
    idx = torch.arange(12)
    _compare(m, g, [(xi,) for xi in x], {"num_data": 60, "idx": idx})


def test_score_function_sites_scale_and_mask_equal_trace_elbo():
    """A non-reparameterised guide site (score-function term), a subsampled inner plate,
    a mask and a poutine.scale: the full path's numbers, every step."""
    def model(x):
        w = pyro.param("w", torch.tensor(0.3))
        with pyro.plate("data", 10, subsample=torch.arange(4), dim=-2):
            z = pyro.sample("z", dist.Normal(w, 1.0))  # (4, 1)
            b = pyro.sample("b", dist.Bernoulli(0.4))
            with pyro.plate("inner", 6, subsample_size=3, dim=-1), \
                    poutine.mask(mask=x[:, :3] > 0):
                pyro.sample("x", dist.Normal(z + b, 1.0), obs=x[:, :3])

    def guide(x):
        loc = pyro.param("loc", torch.zeros(4, 1))
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", 10, subsample=torch.arange(4), dim=-2), poutine.scale(scale=0.5):
            pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("b", dist.Bernoulli(p))

    x = torch.randn(4, 6)
    lean = _compare(model, guide, [(x,)] * 3)
    assert not lean._structures  # a score-function term: never lean


def test_structure_change_falls_back_to_the_full_path_and_revalidates(monkeypatch):
    """A program whose sites change between steps (a latent appears, changes shape,
    disappears): every changed step takes the full path, equal steps the lean one, and
    the numbers equal Trace_ELBO's throughout."""
    layout = {"extra": False, "dim": 2}

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(layout["dim"]), 1.0).to_event(1))
            if layout["extra"]:
                z = z + pyro.sample("u", dist.Normal(x.new_zeros(layout["dim"]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc[:layout["dim"]] * x[:, None], 1.0).to_event(1))
            if layout["extra"]:
                pyro.sample("u", dist.Normal(loc[:layout["dim"]], 1.0).to_event(1))

    full_calls = []
    original = LeanTrace_ELBO._differentiable_loss_particle

    def spy(self, mt, gt):
        full_calls.append(step)
        return original(self, mt, gt)

    monkeypatch.setattr(LeanTrace_ELBO, "_differentiable_loss_particle", spy)
    lean, pyro_elbo = LeanTrace_ELBO(), Trace_ELBO()
    x = torch.randn(5)
    plan = [(False, 2), (False, 2), (True, 2), (True, 2), (True, 3), (True, 3), (False, 2)]
    for step, (extra, dim) in enumerate(plan):
        layout.update(extra=extra, dim=dim)
        pyro.set_rng_seed(step)
        ref_loss = pyro_elbo.loss_and_grads(model, guide, x)
        loc = pyro.param("loc").unconstrained()
        ref, loc.grad = loc.grad.clone(), None
        pyro.set_rng_seed(step)
        assert lean.loss_and_grads(model, guide, x) == ref_loss
        assert torch.equal(loc.grad, ref)
        loc.grad = None
    assert full_calls == [0, 2, 4, 6]  # first step and each change; the rest lean

    # a change that breaks the model / guide match is checked (Pyro's warning) on the
    # full path
    def bad_guide(x):
        pyro.param("loc", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            if not layout["extra"]:
                pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    layout.update(extra=False, dim=2)
    lean.loss_and_grads(model, bad_guide, x)  # matches: checked once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lean.loss_and_grads(model, bad_guide, x)  # the same structure: lean, no checks
    layout.update(extra=True)
    with pytest.warns(UserWarning, match="in model but not guide"):
        lean.loss_and_grads(model, bad_guide, x)


def test_differentiable_loss_equals_trace_elbo():
    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(loc, 1.0))

    x = torch.randn(3)
    lean = LeanTrace_ELBO()
    for step in range(2):
        pyro.set_rng_seed(step)
        ref = Trace_ELBO().differentiable_loss(model, guide, x)
        (gr,) = torch.autograd.grad(ref, [pyro.param("loc").unconstrained()])
        pyro.set_rng_seed(step)
        got = lean.differentiable_loss(model, guide, x)
        (gg,) = torch.autograd.grad(got, [pyro.param("loc").unconstrained()])
        assert float(got.detach()) == float(ref.detach())
        assert torch.equal(gr, gg)


def _fit(fused, objective=None, epochs=2):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # the same initial weights
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    model, guide = build_vae({"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}, (1, 4, 4))
    t = Trainer(model, guide, Trace_ELBO(), batch_size=10, progress=False,
                fused_optimizer=fused, divergence_tolerance=None)
    if objective == "pyro":
        t._objective = t.elbo
    t.fit(x, epochs)
    return t, {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_trainer_dispatches_trace_elbo_to_the_lean_path_with_the_same_numbers():
    t, lean = _fit(False)
    assert isinstance(t._objective, LeanTrace_ELBO)
    t_ref, ref = _fit(False, objective="pyro")
    assert t.history[-1]["loss"] == t_ref.history[-1]["loss"]
    for k in ref:
        assert torch.equal(lean[k], ref[k]), k


def test_fused_adam_matches_the_default_adam_to_rounding():
    t, fused = _fit(True)
    assert t.optimizer.defaults["fused"]
    t_ref, ref = _fit(False)
    assert not t_ref.optimizer.defaults["fused"]
    for k in ref:
        assert torch.allclose(fused[k], ref[k], rtol=1e-5, atol=1e-6), k


def test_fused_adam_refused_for_unsupported_parameters_falls_back():
    from lvm_pyro.training.loop import make_adam

    p = nn.Parameter(torch.zeros(3))
    assert make_adam([p], 1e-3).defaults["fused"]
    assert not make_adam([p], 1e-3, fused=False).defaults["fused"]


class _FullIWAE(IWAE_ELBO):
    """IWAE_ELBO on the full trace path (poutine.trace), as before the lean path."""

    def _passes(self, *args, record=False, **kwargs):
        return super()._passes(*args, record=False, **kwargs)


def test_iwae_lean_path_equals_the_full_trace_path_bit_for_bit():
    x = torch.bernoulli(torch.rand(3, 12, 1, 4, 4))
    model, guide = build_vae({"z_dim": 3, "hidden_dim": 8, "num_hidden": 1}, (1, 4, 4))
    lean, full = IWAE_ELBO(num_particles=5), _FullIWAE(num_particles=5)
    params = None
    for step, xb in enumerate(x):
        out = []
        for elbo in (full, lean):
            pyro.set_rng_seed(step)
            loss = elbo.loss_and_grads(model, guide, xb, num_data=60, idx=torch.arange(12))
            params = [p for _, p in pyro.get_param_store().named_parameters()]
            out.append((loss, _grads(params)))
            _zero(params)
        (l0, g0), (l1, g1) = out
        assert l0 == l1
        assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert lean._structures and not full._structures


def test_iwae_structure_change_is_checked_again(monkeypatch):
    """A site that appears between steps sends the lean path back to the contract check;
    a change that breaks the contract (a model latent the guide lacks) is refused."""
    import lvm_pyro.inference.particle_elbo as particle_elbo

    layout = {"extra": False, "guide_extra": False}

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            if layout["extra"]:
                z = z + pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + x, 1.0))
            if layout["guide_extra"]:
                pyro.sample("u", dist.Normal(loc, 1.0))

    checks = []
    original = particle_elbo.discover

    def spy(*args, **kwargs):
        checks.append(step)
        return original(*args, **kwargs)

    monkeypatch.setattr(particle_elbo, "discover", spy)
    elbo, full = IWAE_ELBO(num_particles=3), _FullIWAE(num_particles=3)
    x = torch.randn(4)
    for step, extra in enumerate([False, False, True, True, False]):
        layout.update(extra=extra, guide_extra=extra)
        pyro.set_rng_seed(step)
        ref = full.loss(model, guide, x)
        pyro.set_rng_seed(step)
        assert elbo.loss(model, guide, x) == ref
    # full's own first check at 0; the lean one's at 0 and at each change (2, 4)
    assert checks == [0, 0, 2, 4]
    layout.update(extra=True, guide_extra=False)
    with pytest.raises(ProgramContractError, match="'u' has no site"):
        elbo.loss(model, guide, x)
