"""Guide draws as an ArviZ DataTree (lvm_pyro.diagnostics.to_datatree): the groups, dims
and coords that ArviZ functions need, checked by calling them."""

import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import arviz as az  # noqa: E402

from lvm_pyro.diagnostics import draws_to_datatree, to_datatree  # noqa: E402
from lvm_pyro.guides import LinearGaussianPosteriorGuide  # noqa: E402
from lvm_pyro.models import LinearGaussianModel  # noqa: E402


@pytest.fixture
def pair():
    torch.manual_seed(1)
    m = LinearGaussianModel(torch.randn(5, 2), torch.randn(5), 0.6)
    x = m.marginal().sample((4,))
    return m, LinearGaussianPosteriorGuide(m, scale_factor=0.8), x


def test_groups_dims_coords(pair):
    m, guide, x = pair
    dt = to_datatree(m, guide, x, num_samples=300, datapoint_index=[10, 11, 12, 13])
    assert {"posterior", "observed_data", "sample_stats", "importance"} <= set(dt.children)
    assert "log_likelihood" not in dt.children  # deliberately: draws differ per datapoint
    z = dt["posterior"]["z"]
    assert z.dims == ("chain", "draw", "datapoint", "z_dim")
    assert z.shape == (1, 300, 4, 2)
    assert list(dt["posterior"]["datapoint"].values) == [10, 11, 12, 13]
    assert list(dt["posterior"]["z_dim"].values) == [0, 1]
    assert dt["observed_data"]["x"].dims == ("datapoint", "x_dim")
    np.testing.assert_allclose(dt["observed_data"]["x"].values, x.numpy())
    lw = dt["sample_stats"]["log_weight"]
    assert lw.dims == ("chain", "draw", "datapoint")
    # the importance group is computed from exactly these log weights
    lme = torch.logsumexp(torch.from_numpy(lw.values[0]), 0) - math.log(300)
    np.testing.assert_allclose(dt["importance"]["log_marginal"].values, lme.numpy(), rtol=1e-12)
    assert dt["importance"]["khat"].dims == ("datapoint",)


def test_arviz_functions_run_on_it(pair):
    m, guide, x = pair
    dt = to_datatree(m, guide, x, num_samples=400)
    s = az.summary(dt, var_names=["z"])
    assert len(s) == 4 * 2
    loc, cov = m.posterior(x)
    means = dt["posterior"]["z"].mean(("chain", "draw")).values  # (datapoint, z_dim)
    sd = 0.8 * cov.diag().sqrt().numpy()
    assert np.all(np.abs(means - loc.numpy()) < 5 * sd / math.sqrt(400))
    ess = az.ess(dt)["z"]
    assert ess.dims == ("datapoint", "z_dim")
    assert float(ess.min()) > 100  # independent draws: bulk ESS near 400
    pc = az.plot_dist(dt, var_names=["z"], coords={"datapoint": [0, 1]})
    pc.savefig("/dev/null", format="png")
    pc = az.plot_forest(dt, var_names=["z"])
    pc.savefig("/dev/null", format="png")


def test_image_dims_and_chains():
    z = torch.randn(3, 50, 2, 4)  # (chains, draws, datapoint, z_dim)
    x = torch.rand(2, 1, 5, 5)
    dt = draws_to_datatree(z, x=x, num_chains=3)
    assert dt["observed_data"]["x"].dims == ("datapoint", "channel", "height", "width")
    assert dt["posterior"]["z"].shape == (3, 50, 2, 4)
    r = az.rhat(dt)["z"]
    assert r.shape == (2, 4) and bool(np.all(np.abs(r.values - 1) < 0.1))
    z2 = torch.randn(20, 2, 3, 4)  # array-valued latent
    assert draws_to_datatree(z2)["posterior"]["z"].dims[-2:] == ("z_dim_0", "z_dim_1")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="rows"):
        draws_to_datatree(torch.randn(10, 3, 2), x=torch.rand(4, 5))
    with pytest.raises(ValueError, match="log_w"):
        draws_to_datatree(torch.randn(10, 3, 2), log_w=torch.randn(9, 3))
    with pytest.raises(ValueError, match="datapoint_index"):
        draws_to_datatree(torch.randn(10, 3, 2), datapoint_index=[1, 2])
