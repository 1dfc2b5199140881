"""NUTS reference posteriors (lvm_pyro.diagnostics.nuts_reference) against the exact
posterior of the linear-Gaussian model, and the guide comparison built on them.
Sizes are tiny (NUTS in Pyro costs a few ms per leapfrog step on this machine)."""

import math

import pytest
import torch
from scipy.stats import norm

from lvm_pyro.diagnostics import compare_to_reference, energy_distance, nuts_reference
from lvm_pyro.guides import LinearGaussianPosteriorGuide
from lvm_pyro.models import LinearGaussianModel


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(3)
    W = torch.tensor([[1.0, 0.2], [0.3, -0.8], [0.5, 0.5], [-0.4, 0.9]])
    m = LinearGaussianModel(W, torch.zeros(4), 0.8)
    x = m.marginal().sample((1,))
    # a deliberately poor preconditioner: shifted by 1 and twice as wide. The whitening
    # is an affine change of variables, so NUTS must still sample the exact posterior.
    guide = LinearGaussianPosteriorGuide(m, loc_shift=1.0, scale_factor=2.0)
    ref = nuts_reference(m, x, guide=guide, num_samples=150, warmup_steps=80, num_chains=2,
                         seed=0)
    return m, x, ref


def test_nuts_recovers_exact_posterior(problem):
    m, x, ref = problem
    assert ref.samples.shape == (2, 150, 1, 2)
    loc, cov = m.posterior(x)
    sd = cov.diag().sqrt()
    pooled = ref.samples.reshape(300, 1, 2).double()
    ess = ref.ess_bulk  # (datapoint, z_dim), ArviZ bulk ESS of the 2 chains
    assert float(ess.min()) > 50
    # moments within Monte-Carlo error: mean error sd / sqrt(ESS); sd's relative error
    # ~ 1 / sqrt(2 ESS); 4 standard errors each
    assert bool(((pooled.mean(0) - loc).abs() < 4 * sd / ess.sqrt()).all())
    assert bool(((pooled.std(0) / sd - 1).abs() < 4 / (2 * ess).sqrt()).all())
    assert float(ref.rhat.max()) < 1.05
    assert int(ref.divergences.sum()) == 0
    dt = ref.datatree
    assert dt["posterior"]["z"].dims == ("chain", "draw", "datapoint", "z_dim")
    assert dt["sample_stats"]["diverging"].dims == ("chain", "draw", "datapoint")


def test_guide_comparison_separates_exact_from_biased(problem):
    m, x, ref = problem
    exact = compare_to_reference(m, LinearGaussianPosteriorGuide(m), x, ref, num_samples=400)
    biased = compare_to_reference(m, LinearGaussianPosteriorGuide(m, loc_shift=0.5,
                                                                  scale_factor=0.5),
                                  x, ref, num_samples=400)
    with pytest.raises(TypeError, match=r"\(model, guide, x, reference\)"):  # the old order
        compare_to_reference(ref, m, LinearGaussianPosteriorGuide(m), x)
    _, cov = m.posterior(x)
    assert bool((exact.mean_error.abs() < 0.5).all())
    assert bool(((exact.sd_ratio - 1).abs() < 0.25).all())
    # biased: mean off by 0.5 / sd posterior sds, half the scale
    expect = 0.5 / cov.diag().sqrt()
    assert bool(((biased.mean_error - expect).abs() < 0.5).all())
    assert bool(((biased.sd_ratio - 0.5).abs() < 0.15).all())
    assert bool((biased.energy_distance > 5 * exact.energy_distance.abs().clamp_min(0.01)).all())
    assert biased.guide_datatree["posterior"]["z"].shape == (1, 400, 1, 2)


def test_energy_distance_closed_form():
    # 1-d: X ~ N(0,1), Y ~ N(d,1): 2 E|X-Y| - E|X-X'| - E|Y-Y'| with X - Y ~ N(-d, 2)
    # One estimate at n = 1000 has sd ~0.054 here (measured), the mean of 10 ~0.017.
    g = torch.Generator().manual_seed(0)
    d = 1.0
    s = math.sqrt(2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-d * d / 4) + d * (1 - 2 * norm.cdf(-d / s))
    truth = 2 * e_xy - 2 * 2 / math.sqrt(math.pi)  # 0.5418
    est = [energy_distance(torch.randn(1000, 1, generator=g),
                           torch.randn(1000, 1, generator=g) + d) for _ in range(10)]
    null = [energy_distance(torch.randn(1000, 1, generator=g), torch.randn(1000, 1, generator=g))
            for _ in range(10)]
    assert sum(est) / 10 == pytest.approx(truth, abs=0.07)
    assert abs(sum(null) / 10) < 0.02


def test_bad_arguments_raise(problem):
    m, x, _ = problem
    with pytest.raises(ValueError, match="num_chains"):
        nuts_reference(m, x, num_chains=0)
    with pytest.raises(ValueError, match="num_samples"):
        nuts_reference(m, x, num_samples=2)


@pytest.mark.slow
def test_nuts_without_preconditioning():
    torch.manual_seed(4)
    m = LinearGaussianModel(torch.randn(4, 2), torch.zeros(4), 0.8)
    x = m.marginal().sample((1,))
    ref = nuts_reference(m, x, num_samples=300, warmup_steps=200, num_chains=2)
    loc, cov = m.posterior(x)
    pooled = ref.samples.reshape(600, 1, 2).double()
    sd = cov.diag().sqrt()
    assert bool(((pooled.mean(0) - loc).abs() < 4 * sd / ref.ess_bulk.sqrt()).all())
    assert float(ref.rhat.max()) < 1.05
