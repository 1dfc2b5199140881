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
