"""A family of small valid Pyro programs crossed with our objectives and the engine, in
the spirit of Pyro's valid-models tests (written for this library, not copied).

For each (program, objective) pair: the value per draw (same seed) and the gradient equal
those of the Pyro objective that is equal by definition (score-function gradients of
discrete latents: unbiased against the exact gradient by enumeration instead) (``IWAE_ELBO(1)``,
``KLWeighted_ELBO(beta=1)`` and the engine's per-datapoint ELBO vs ``Trace_ELBO``;
``FreeBits_ELBO(0)`` vs ``TraceMeanField_ELBO``; ``VIMCO(K)``'s value vs ``IWAE_ELBO(K)``'s),
or the program is refused with a ``ValueError`` (the library's own, whose message is
matched), never answered wrongly. The table of refusals is the one in
``docs/site_contract.md`` ("Supported program features").
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from lvm_pyro.inference import (VIMCO, FreeBits_ELBO, IWAE_ELBO, KLWeighted_ELBO,
                                elbo_per_datapoint, log_weights)
from lvm_pyro.sites import data_plate

B, D = 4, 2


def _x(seed=5):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


def _enc(x):
    """A guide's loc and scale from x through parameters (so gradients flow)."""
    a = pyro.param("A", 0.3 * torch.eye(D))
    s = pyro.param("s", torch.full((D,), 0.8), constraint=dist.constraints.positive)
    return x @ a, s


def _dec(z):
    w = pyro.param("W", torch.tensor([[1.0, -0.5], [0.2, 0.7]]))
    return z @ w


# -- the programs: name -> (model, guide, x, call kwargs, max_plate_nesting) --------------
def local():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(_dec(z), 1.0).to_event(1), obs=x)

    def guide(x):
        loc, s = _enc(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, s).to_event(1))

    return model, guide, _x(), {}, 1


def local_subsampled():
    """num_data = 10, the minibatch is 4 rows: the data plate scales by 10 / 4."""
    def model(x, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(_dec(z), 1.0).to_event(1), obs=x)

    def guide(x, num_data=None, idx=None):
        loc, s = _enc(x)
        with data_plate(x, num_data, idx):
            pyro.sample("z", dist.Normal(loc, s).to_event(1))

    return model, guide, _x(), {"num_data": 10, "idx": torch.tensor([1, 4, 6, 9])}, 1


def nested_plates():
    """A latent per (inner element, datapoint): batch dims (3, B)."""
    def model(x):
        with pyro.plate("data", len(x), dim=-1), pyro.plate("inner", 3, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + pyro.param("b", torch.tensor(0.1)), 1.0),
                        obs=x[:, 0].expand(3, len(x)))

    def guide(x):
        loc = pyro.param("m", torch.linspace(-0.5, 0.5, 3).unsqueeze(-1))
        with pyro.plate("data", len(x), dim=-1), pyro.plate("inner", 3, dim=-2):
            pyro.sample("z", dist.Normal(loc + 0.2 * x[:, 0], 0.9))

    return model, guide, _x(), {}, 2


def inner_subsampled():
    """An inner plate of 12 with a subsample of 6 inside the data plate (scale 2)."""
    obs = torch.randn(6, B, generator=torch.Generator().manual_seed(2))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("inner", 12, subsample_size=6, dim=-2):
                pyro.sample("obs", dist.Normal(z * pyro.param("c", torch.tensor(1.2)), 1.0), obs=obs)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.3)) * x[:, 0], 1.0))

    return model, guide, _x(), {}, 2


def discrete():
    """Bernoulli latents: score-function terms."""
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(torch.full((D,), 0.4)).to_event(1))
            pyro.sample("x", dist.Normal(_dec(z), 1.0).to_event(1), obs=x)

    def guide(x):
        logits = pyro.param("L", torch.tensor([0.3, -0.2])) + 0.5 * x
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    return model, guide, _x(), {}, 1


def masked():
    mask = torch.tensor([True, False, True, True])

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1).mask(mask))
            pyro.sample("x", dist.Normal(_dec(z), 1.0).to_event(1), obs=x)

    def guide(x):
        loc, s = _enc(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, s).to_event(1).mask(mask))

    return model, guide, _x(), {}, 1


def model_factor():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.factor("penalty", -0.5 * (z ** 2).sum(-1) * pyro.param("p", torch.tensor(0.3)))
            pyro.sample("x", dist.Normal(_dec(z), 1.0).to_event(1), obs=x)

    _, guide, x, kw, n = local()
    return model, guide, x, kw, n


def guide_factor():
    def guide(x):
        loc, s = _enc(x)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, s).to_event(1))
            pyro.factor("f", -(z ** 2).sum(-1), has_rsample=True)

    model, _, x, kw, n = local()
    return model, guide, x, kw, n


def guide_observed():
    """An observed (auxiliary) site in the guide: part of log q, as in Pyro."""
    target = torch.linspace(-1.0, 1.0, B)

    def guide(x):
        loc, s = _enc(x)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, s).to_event(1))
            pyro.sample("aux", dist.Normal(z.sum(-1), 2.0), obs=target, infer={"is_auxiliary": True})

    model, _, x, kw, n = local()
    return model, guide, x, kw, n


def matrix_event():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, 3), 1.0).to_event(2))
            pyro.sample("x", dist.Normal(_dec(z.mean(-1)), 1.0).to_event(1), obs=x)

    def guide(x):
        loc, s = _enc(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc.unsqueeze(-1).expand(*loc.shape, 3), 1.0).to_event(2))

    return model, guide, _x(), {}, 1


def empty_guide():
    def model(x):
        loc = pyro.param("loc", torch.tensor([0.2, -0.3]))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    return model, guide, _x(), {}, 1


def global_latent():
    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(g, 1.0).expand([len(x), D]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(pyro.param("gm", torch.tensor(0.1)), 1.0))

    return model, guide, _x(), {}, 1


def sequential_data():
    def model(x):
        for i in pyro.plate("data", len(x)):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i, 0])

    def guide(x):
        for i in pyro.plate("data", len(x)):
            pyro.sample(f"z_{i}", dist.Normal(pyro.param("m", torch.tensor(0.1)), 1.0))

    return model, guide, _x(), {}, 1


def shape_mismatch():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, 2), 1.0).to_event(2))
            pyro.sample("x", dist.Normal(z.sum((-1, -2)), 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(pyro.param("m", torch.zeros(2, 1)), 1.0).to_event(2))

    return model, guide, _x(), {}, 1


PROGRAMS = {f.__name__: f for f in (local, local_subsampled, nested_plates, inner_subsampled,
                                     discrete, masked, model_factor, guide_factor,
                                     guide_observed, matrix_event, empty_guide, global_latent,
                                     sequential_data, shape_mismatch)}

# -- what our objectives refuse: (program, objective) -> message pattern ------------------
OURS = ("iwae1", "iwae1_sequential", "kl_weighted_iwae1", "free_bits0", "engine", "vimco3")
REFUSED = {}
for _obj in OURS:
    REFUSED[("global_latent", _obj)] = "outside the 'data' plate"
    REFUSED[("sequential_data", _obj)] = r"with pyro.plate\('data', n\)"
    REFUSED[("shape_mismatch", _obj)] = "shapes disagree at latent site 'z'"
REFUSED[("discrete", "free_bits0")] = "not reparameterisable"
# a Pyro objective wrapped by ours keeps Pyro's support (and Pyro's own shape error)
REFUSED[("shape_mismatch", "kl_weighted_trace")] = "Model and guide shapes disagree"

# objective -> (ours, reference or None); each maps (model, guide, x, kw, nesting) -> loss
OBJECTIVES = {
    "iwae1": (lambda n: IWAE_ELBO(1), lambda n: Trace_ELBO(max_plate_nesting=n)),
    "iwae1_sequential": (lambda n: IWAE_ELBO(1, vectorize_particles=False),
                         lambda n: Trace_ELBO(max_plate_nesting=n)),
    "kl_weighted_iwae1": (lambda n: KLWeighted_ELBO(IWAE_ELBO(1)),
                          lambda n: Trace_ELBO(max_plate_nesting=n)),
    "kl_weighted_trace": (lambda n: KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=n)),
                          lambda n: Trace_ELBO(max_plate_nesting=n)),
    "free_bits0": (lambda n: FreeBits_ELBO(0), lambda n: TraceMeanField_ELBO(max_plate_nesting=n)),
    "vimco3": (lambda n: VIMCO(3), lambda n: IWAE_ELBO(3)),
}


def _exact_discrete_loss():
    """-ELBO of the ``discrete`` program by enumerating z in {0, 1}^2 per datapoint."""
    x = _x()
    L, W = pyro.param("L"), pyro.param("W")
    combos = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (4, D)
    q = dist.Bernoulli(logits=(L + 0.5 * x).unsqueeze(1))  # (B, 1, D)
    log_q = q.log_prob(combos).sum(-1)  # (B, 4)
    log_p = (dist.Bernoulli(torch.full((D,), 0.4)).log_prob(combos).sum(-1)
             + dist.Normal(combos @ W, 1.0).log_prob(x.unsqueeze(1)).sum(-1))  # (B, 4)
    return -(log_q.exp() * (log_p - log_q)).sum()


def _check_unbiased_gradient(objective, model, guide, groups=12, copies=400):
    """Score-function gradients (discrete latents) equal Pyro's only in expectation
    (Trace_ELBO drops the zero-mean term -grad log q(z) at K = 1; IWAE keeps it, since at
    K > 1 its mean is not zero): the mean over groups x copies of independent draws is
    within 4.5 standard errors of the exact gradient by enumeration."""
    names = ["L", "W"]
    exact = torch.autograd.grad(_exact_discrete_loss(), [pyro.param(n).unconstrained() for n in names])
    xr = _x().repeat(copies, 1)  # every copy of a datapoint draws its own z
    est = []
    for _ in range(groups):
        loss = objective.differentiable_loss(model, guide, xr)
        est.append(torch.cat([g.flatten() / copies for g in torch.autograd.grad(
            loss, [pyro.param(n).unconstrained() for n in names])]))
    est = torch.stack(est)
    mean, se = est.mean(0), est.std(0) / groups ** 0.5
    exact = torch.cat([g.flatten() for g in exact])
    assert bool(((mean - exact).abs() <= 4.5 * se + 1e-4).all()), (mean, exact, se)


def _params():
    return {k: v.unconstrained() for k, v in pyro.get_param_store().items()}


def _value_and_grads(objective, model, guide, x, kw):
    pyro.set_rng_seed(0)
    loss = objective.differentiable_loss(model, guide, x, **kw)
    params = _params()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True) if \
        loss.requires_grad else [None] * len(params)
    return float(loss.detach()), {k: (torch.zeros_like(p) if g is None else g)
                         for (k, p), g in zip(params.items(), grads)}


@pytest.mark.parametrize("objective", list(OBJECTIVES) + ["engine"])
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_program_family(program, objective):
    model, guide, x, kw, nesting = PROGRAMS[program]()
    refusal = REFUSED.get((program, objective))
    if objective == "engine":
        def run():
            pyro.set_rng_seed(0)
            out = log_weights(model, guide, x, 1, **kw)
            return -out.data_scale * float(out.log_w[0].detach().sum()), float(
                -out.data_scale * elbo_per_datapoint(model, guide, x, 1, **kw).sum())
        if refusal:
            with pytest.raises(ValueError, match=refusal):
                run()
            return
        pyro.set_rng_seed(0)
        ref = Trace_ELBO(max_plate_nesting=nesting).loss(model, guide, x, **kw)
        value, via_elbo = run()
        assert value == pytest.approx(ref, rel=1e-5, abs=1e-5)
        return
    make_ours, make_ref = OBJECTIVES[objective]
    ours = make_ours(nesting)
    if refusal:
        with pytest.raises(ValueError, match=refusal):
            pyro.set_rng_seed(0)
            ours.loss(model, guide, x, **kw)
        return
    if objective == "vimco3":  # the value is the IWAE bound of the same draws
        pyro.set_rng_seed(0)
        a = ours.loss(model, guide, x, **kw)
        pyro.set_rng_seed(0)
        b = make_ref(nesting).loss(model, guide, x, **kw)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
        return
    ref_value, ref_grads = _value_and_grads(make_ref(nesting), model, guide, x, kw)
    value, grads = _value_and_grads(ours, model, guide, x, kw)
    assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-5)
    pyro.set_rng_seed(0)
    assert ours.loss(model, guide, x, **kw) == pytest.approx(ref_value, rel=1e-5, abs=1e-5)
    if program == "discrete":
        _check_unbiased_gradient(ours, model, guide)
        return
    assert set(grads) == set(ref_grads)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5, msg=k)
