"""Seven kinds of valid programs on which our objectives and engine used to disagree with
Pyro's ELBOs (or crash): each now equals the Pyro objective that is equal by definition,
per draw, or is refused with the library's own ValueError."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from lvm_pyro.inference import (VIMCO, FreeBits_ELBO, IWAE_ELBO, KLWeighted_ELBO,
                                elbo_per_datapoint)


def _seeded(fn, seed=0):
    pyro.set_rng_seed(seed)
    return fn()


def test_inner_subsampled_plate_keeps_its_scale():
    """data plate of 3, inner plate 12 with a subsample of 6: Trace_ELBO scales the
    likelihood by 12 / 6; so must IWAE_ELBO(1) and the engine."""
    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("inner", 12, subsample_size=6, dim=-2):
                pyro.sample("obs", dist.Normal(z, 1.0), obs=x.T)

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = _seeded(lambda: torch.randn(3, 6))
    ref = _seeded(lambda: Trace_ELBO(max_plate_nesting=2).loss(model, guide, x))
    # the guide is the prior: the loss is 2 * sum of -log N(x | z, 1) on the draw
    pyro.set_rng_seed(0)
    z = dist.Normal(0.0, 1.0).sample((3,))
    _ = torch.randperm(12)  # noqa: F841 (the inner plate's draw, after z)
    by_hand = -2.0 * float(dist.Normal(z, 1.0).log_prob(x.T).sum())
    assert ref == pytest.approx(by_hand, rel=1e-6)
    assert _seeded(lambda: IWAE_ELBO(1).loss(model, guide, x)) == pytest.approx(ref, rel=1e-6)
    engine = _seeded(lambda: -float(elbo_per_datapoint(model, guide, x).sum()))
    assert engine == pytest.approx(ref, rel=1e-6)


def _factor_model(x):
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_guide_factor_counts_in_log_q():
    def guide(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.factor("f", -z ** 2, has_rsample=True)

    x = torch.zeros(3)
    ref = _seeded(lambda: Trace_ELBO(max_plate_nesting=1).loss(_factor_model, guide, x))
    assert ref == pytest.approx(-0.8471, abs=1e-4)
    assert _seeded(lambda: TraceMeanField_ELBO(max_plate_nesting=1).loss(_factor_model, guide, x)) \
        == pytest.approx(ref, abs=1e-5)
    for ours in (IWAE_ELBO(1), FreeBits_ELBO(0), KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1))):
        assert _seeded(lambda: ours.loss(_factor_model, guide, x)) == pytest.approx(ref, abs=1e-5)

    def unmarked(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.factor("f", -z ** 2)

    with pytest.raises(ValueError, match="has_rsample=True"):
        IWAE_ELBO(1).loss(_factor_model, unmarked, x)


def test_model_and_guide_shapes_are_checked_before_anything_is_computed():
    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, 2), 1.0).to_event(2))
            pyro.sample("x", dist.Normal(z.sum((-1, -2)), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(torch.zeros(2, 1), 1.0).to_event(2))

    x = torch.zeros(3)
    with pytest.raises(ValueError, match="Model and guide shapes disagree"):
        Trace_ELBO(max_plate_nesting=1).loss(model, guide, x)
    for ours in (IWAE_ELBO(1), VIMCO(3), FreeBits_ELBO(0)):
        with pytest.raises(ValueError, match=r"shapes disagree at latent site 'z': event shape "
                                             r"\(1, 2\) in the model vs \(2, 1\)"):
            ours.loss(model, guide, x)


@pytest.mark.parametrize("gradient", ["dreg", "stl"])
def test_dreg_and_stl_with_an_empty_guide_are_the_standard_path(gradient):
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.3))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([0.1, -0.4, 1.2])
    results = {}
    for g in ("standard", gradient):
        pyro.clear_param_store()
        loss = _seeded(lambda: IWAE_ELBO(2 if g != "stl" else 1, gradient=g)
                       .loss_and_grads(model, guide, x))
        results[g] = (loss, pyro.param("loc").unconstrained().grad.clone())
    assert results[gradient][0] == pytest.approx(results["standard"][0], abs=1e-6)
    torch.testing.assert_close(results[gradient][1], results["standard"][1])
    # the fully observed model: -log N(x | loc, 1) summed, gradient sum(loc - x)
    torch.testing.assert_close(results[gradient][1], (0.3 - x).sum(), rtol=1e-6, atol=1e-6)


def test_wrapper_exposes_exactly_the_wrapped_methods():
    assert not hasattr(TraceGraph_ELBO(), "differentiable_loss")
    assert not hasattr(KLWeighted_ELBO(TraceGraph_ELBO()), "differentiable_loss")
    assert hasattr(KLWeighted_ELBO(Trace_ELBO()), "differentiable_loss")
    x = torch.zeros(3)

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.2, 1.0))

    a = _seeded(lambda: KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1))
                .differentiable_loss(_factor_model, guide, x))
    b = _seeded(lambda: Trace_ELBO(max_plate_nesting=1).differentiable_loss(_factor_model, guide, x))
    assert float(a) == pytest.approx(float(b), abs=1e-6)


@pytest.mark.parametrize("model_mask,guide_mask", [
    (False, False),  # the whole latent masked out (crashed before)
    (torch.tensor([True, True, False]), torch.tensor([True, False, True])),
])
def test_free_bits_on_a_masked_latent_equals_trace_mean_field(model_mask, guide_mask):
    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(model_mask))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("q", torch.tensor(0.7))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(loc, 1.0).mask(guide_mask))

    x = torch.tensor([0.5, -1.0, 2.0])
    ref = _seeded(lambda: TraceMeanField_ELBO(max_plate_nesting=1).loss(model, guide, x))
    ours = _seeded(lambda: FreeBits_ELBO(0).loss(model, guide, x))
    assert ours == pytest.approx(ref, abs=1e-5)


def test_sequential_data_plate_is_refused_naming_the_vectorised_form():
    def model(x):
        for i in pyro.plate("data", 3):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])

    def guide(x):
        for i in pyro.plate("data", 3):
            pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))

    x = torch.zeros(3)
    for ours in (IWAE_ELBO(1), VIMCO(2), FreeBits_ELBO(0)):
        with pytest.raises(ValueError, match=r"with pyro.plate\('data', n\)"):
            ours.loss(model, guide, x)
    with pytest.raises(ValueError, match="sequential 'data' plate"):
        elbo_per_datapoint(model, guide, x)
