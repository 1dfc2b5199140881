"""Simulation-based calibration (Talts et al. 2018) on the linear-Gaussian model: the exact
posterior guide passes, biased guides fail. Under uniform ranks the p-value is uniform,
so the exact-guide check (p > 0.01) has a 1% false-alarm rate; it is seeded."""

import pytest
import torch

from lvm_pyro.diagnostics import rank_uniformity_pvalue, simulation_based_calibration
from lvm_pyro.guides import LinearGaussianPosteriorGuide
from lvm_pyro.models import LinearGaussianModel


@pytest.fixture
def model():
    torch.manual_seed(0)
    return LinearGaussianModel(torch.randn(5, 2), torch.randn(5), 0.7)


def test_exact_guide_passes(model):
    r = simulation_based_calibration(model, LinearGaussianPosteriorGuide(model),
                                     torch.zeros(1000, 5))
    assert r.ranks.shape == (1000, 2)
    assert int(r.ranks.min()) >= 0 and int(r.ranks.max()) <= 99
    assert r.counts.shape == (10, 2) and int(r.counts.sum()) == 2000
    assert r.pvalue > 0.01


@pytest.mark.parametrize("loc_shift,scale_factor", [(0.3, 1.0), (0.0, 0.7), (0.0, 1.4)])
def test_biased_guides_fail(model, loc_shift, scale_factor):
    guide = LinearGaussianPosteriorGuide(model, loc_shift=loc_shift, scale_factor=scale_factor)
    r = simulation_based_calibration(model, guide, torch.zeros(1000, 5))
    assert r.pvalue < 1e-6
    if scale_factor < 1:  # too narrow: U-shaped ranks (mass in the outer bins)
        assert bool((r.counts[0] + r.counts[-1] > 2 * r.counts[4:6].sum(0)).all())


def test_rank_uniformity_pvalue_and_errors():
    ranks = torch.arange(100).repeat(10).reshape(-1, 1)  # perfectly uniform
    counts, p = rank_uniformity_pvalue(ranks, 99, 10)
    assert counts.flatten().tolist() == [100] * 10 and float(p) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiple of num_bins"):
        rank_uniformity_pvalue(ranks, 98, 10)


def test_sbc_with_a_discrete_latent_breaks_ties_and_passes_for_the_exact_guide():
    """z ~ Bernoulli(0.3), x | z ~ N(z, 1): the exact posterior guide must pass SBC
    (ranks of a discrete latent tie; ties are broken at random), a biased one fail."""
    import pyro
    import pyro.distributions as dist

    from lvm_pyro.diagnostics.mcmc_reference import nuts_reference
    from lvm_pyro.diagnostics.sbc import simulation_based_calibration

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.3 * torch.ones(len(x))))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def make_guide(shift):
        def guide(x):
            l1 = torch.log(torch.tensor(0.3)) + dist.Normal(1.0, 1.0).log_prob(x)
            l0 = torch.log(torch.tensor(0.7)) + dist.Normal(0.0, 1.0).log_prob(x)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Bernoulli(logits=l1 - l0 + shift))
        return guide

    pyro.set_rng_seed(0)
    good = simulation_based_calibration(model, make_guide(0.0), torch.zeros(2000))
    assert good.pvalue > 0.001  # stated false-alarm rate 0.1 %
    bad = simulation_based_calibration(model, make_guide(2.0), torch.zeros(2000))
    assert bad.pvalue < 1e-6
    with pytest.raises(ValueError, match="discrete"):
        nuts_reference(model, torch.zeros(1), num_samples=4, warmup_steps=0, num_chains=1)
