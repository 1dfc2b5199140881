"""The site contract, checked in one place (lvm_pyro.inference.program): each case is a
user's program that broke some estimator before, with the error (or the result) it gets now."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from pyro.nn import PyroModule

from lvm_pyro.diagnostics import active_units, importance_diagnostics, mutual_information, to_datatree
from lvm_pyro.guides import LinearGaussianPosteriorGuide
from lvm_pyro.inference import (VIMCO, IWAE_ELBO, elbo_per_datapoint, log_marginal_likelihood,
                                log_weights)
from lvm_pyro.inference.iwae import SharedParameterWarning
from lvm_pyro.inference.program import accepted_keywords, program_kwargs
from lvm_pyro.models import GaussianMixtureModel, LinearGaussianModel
from lvm_pyro.sites import data_plate
from lvm_pyro.training import Trainer


# -- programs written as a user would ------------------------------------------------------
class UserModel(PyroModule):
    """forward(self, x): no num_data / idx."""

    def __init__(self, d=3):
        super().__init__()
        self.w = torch.nn.Linear(2, d)

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.w(z), 1.0).to_event(1), obs=x)


class UserGuide(PyroModule):
    def __init__(self, d=3):
        super().__init__()
        self.enc = torch.nn.Linear(d, 2)

    def forward(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.enc(x), 1.0).to_event(1))


def test_module_program_is_bound_by_its_forward_signature():
    model, guide = UserModel(), UserGuide()
    assert accepted_keywords(model) == frozenset()
    assert program_kwargs(guide, 10, torch.arange(3)) == {}
    x = torch.randn(6, 3)
    # the Trainer passes num_data / idx: a forward(self, x) module used to get them (TypeError)
    Trainer(model, guide, Trace_ELBO(), batch_size=3, binarization="none",
            progress=False).fit(x, 1)
    loss = IWAE_ELBO(2).loss(model, guide, x, num_data=6, idx=torch.arange(6))
    assert math.isfinite(loss)


def _subsampled_model(x):
    with pyro.plate("data", 100, subsample_size=40):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _subsampled_guide(x):
    with pyro.plate("data", 100, subsample_size=40):
        pyro.sample("z", dist.Normal(0.5 * x, 1.0))


def test_data_plate_subsample_must_be_len_x():
    x_all = torch.randn(100)
    with pytest.raises(ValueError, match=r"subsample of 40 datapoints but x has 100 rows"):
        log_weights(_subsampled_model, _subsampled_guide, x_all, 2)
    with pytest.raises(ValueError, match=r"subsample of 40 datapoints but x has 100 rows"):
        IWAE_ELBO(2).loss(_subsampled_model, _subsampled_guide, x_all)
    out = log_weights(_subsampled_model, _subsampled_guide, x_all[:40], 2)  # the minibatch works
    assert out.log_w.shape == (2, 40) and out.data_scale == pytest.approx(2.5)


def _left_indexing_model(x):
    """z[:, None, None, None]: broadcasts over the data plate only."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z[:, None, None, None].expand(x.shape), 1.0).to_event(3), obs=x)


def _right_indexing_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z[..., None, None, None].expand(z.shape + x.shape[1:]), 1.0)
                    .to_event(3), obs=x)


def _scalar_guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x.mean((1, 2, 3)), 0.8))


def test_program_that_does_not_broadcast_gets_the_fix_and_a_sequential_path():
    x = torch.randn(4, 1, 2, 2)
    with pytest.raises(ValueError, match=r"z\[\.\.\., None, None, None\]"):
        log_weights(_left_indexing_model, _scalar_guide, x, 3)
    with pytest.raises(ValueError, match="vectorize_particles=False"):
        IWAE_ELBO(3).loss(_left_indexing_model, _scalar_guide, x)
    # sequential particles: the same numbers as the broadcasting program, draw by draw
    for run in (lambda m: log_weights(m, _scalar_guide, x, 3, vectorize_particles=False).log_w,
                lambda m: log_marginal_likelihood(m, _scalar_guide, x, 5, vectorize_particles=False),
                lambda m: IWAE_ELBO(3, vectorize_particles=False).loss(m, _scalar_guide, x),
                lambda m: VIMCO(3, vectorize_particles=False).loss(m, _scalar_guide, x),
                lambda m: importance_diagnostics(m, _scalar_guide, x, 30,
                                                 vectorize_particles=False).khat):
        pyro.set_rng_seed(3)
        left = run(_left_indexing_model)
        pyro.set_rng_seed(3)
        right = run(_right_indexing_model)
        torch.testing.assert_close(torch.as_tensor(left), torch.as_tensor(right), rtol=0, atol=0)


def test_sequential_particles_are_exact_with_the_exact_posterior():
    g = torch.Generator().manual_seed(1)
    model = LinearGaussianModel(torch.randn(4, 2, generator=g, dtype=torch.float64),
                                torch.zeros(4, dtype=torch.float64), 0.5)
    x = model.marginal().sample((5,))
    guide = LinearGaussianPosteriorGuide(model)
    est = log_marginal_likelihood(model, guide, x, 4, vectorize_particles=False)
    torch.testing.assert_close(est, model.log_prob(x), rtol=0, atol=1e-9)
    loss = IWAE_ELBO(3, vectorize_particles=False).loss(model, guide, x)
    assert loss == pytest.approx(-float(model.log_prob(x).sum()), abs=1e-8)


def test_guide_latent_of_another_shape_is_refused_before_the_decoder_runs():
    w = torch.randn(3, 4)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    x = torch.randn(5, 4)
    for call in (lambda: log_weights(model, guide, x, 2),
                 lambda: IWAE_ELBO(2).loss(model, guide, x),
                 lambda: log_marginal_likelihood(model, guide, x, 4)):
        with pytest.raises(ValueError, match=r"shapes disagree at latent site 'z'.*\(3,\).*\(2,\)"):
            call()


def _normal_model(x, num_data=None, idx=None):
    with data_plate(x, num_data, idx):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def test_point_mass_guide_is_refused_by_log_marginal_likelihood():
    x = torch.randn(5, 2)

    def delta_guide(x, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            pyro.sample("z", dist.Delta(0.5 * x, event_dim=1))

    for guide in (delta_guide, AutoDelta(_normal_model)):
        with pytest.raises(ValueError, match="point mass"):
            log_marginal_likelihood(_normal_model, guide, x, 10)


def test_dreg_and_stl_name_parameters_shared_by_model_and_guide():
    net = torch.nn.Linear(2, 2)

    def model(x):
        pyro.module("shared", net)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("shared", net)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(net(x), 1.0).to_event(1))

    x = torch.randn(4, 2)
    for gradient in ("dreg", "stl"):
        with pytest.warns(SharedParameterWarning, match=r"shared\$\$\$weight"):
            IWAE_ELBO(1, gradient=gradient).loss_and_grads(model, guide, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IWAE_ELBO(2).loss_and_grads(model, guide, x)  # the standard gradient: nothing to say


def test_autonormal_with_local_latents_works_and_packed_autoguides_are_named():
    x = torch.randn(6, 2)
    guide = AutoNormal(_normal_model)
    Trace_ELBO().loss(_normal_model, guide, x)  # set up on these rows
    d = importance_diagnostics(_normal_model, guide, x, num_samples=30)
    assert d.khat.shape == (6,) and bool(torch.isfinite(d.log_marginal).all())
    # AutoNormal's "z" is a Delta at its auxiliary "z_unconstrained" draw: not a point mass,
    # and its density is in log q: at the exact posterior N(x / 2, 1 / 2) every weight is
    # log p(x) = log N(x; 0, 2 I)
    store = pyro.get_param_store()
    store["AutoNormal.locs.z"] = x / 2
    store["AutoNormal.scales.z"] = torch.full((6, 2), 0.5 ** 0.5)
    exact = dist.Normal(0.0, 2 ** 0.5).log_prob(x).sum(-1)
    torch.testing.assert_close(log_marginal_likelihood(_normal_model, guide, x, 10), exact,
                               rtol=0, atol=1e-5)
    assert set(to_datatree(_normal_model, guide, x, 30)["posterior"].data_vars) == {"z", "z_unconstrained"}
    # minibatches: the autoguide's own plate would draw other rows than idx
    idx = torch.tensor([1, 3, 4])
    with pytest.raises(ValueError, match="draws its own subsample"):
        IWAE_ELBO(2).loss(_normal_model, AutoNormal(_normal_model), x[idx], num_data=6, idx=idx)
    pyro.clear_param_store()
    mb = AutoNormal(_normal_model, create_plates=lambda x, num_data=None, idx=None:
                    pyro.plate("data", num_data, subsample=idx))
    assert math.isfinite(IWAE_ELBO(2).loss(_normal_model, mb, x[idx], num_data=6, idx=idx))
    packed = AutoDiagonalNormal(_normal_model)
    Trace_ELBO().loss(_normal_model, packed, x)
    with pytest.raises(ValueError, match="use AutoNormal"):
        log_marginal_likelihood(_normal_model, packed, x, 10)


def _hier_model(x):
    with pyro.plate("data", len(x)):
        z1 = pyro.sample("z1", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        z2 = pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z2, 1.0).to_event(1), obs=x)


def _hier_guide(x):
    with pyro.plate("data", len(x)):
        z1 = pyro.sample("z1", dist.Normal(0.5 * x, 1.0).to_event(1))
        pyro.sample("z2", dist.Normal(z1, 0.5).to_event(1))


def test_diagnostics_refuse_a_latent_with_a_latent_parent_and_keep_root_latents():
    x = torch.randn(20, 2)
    for call in (lambda: active_units(_hier_guide, x, latent="z2"),
                 lambda: mutual_information(_hier_guide, x, latent="z2")):
        with pytest.raises(ValueError, match=r"depends on the guide's latent\(s\) \['z1'\]"):
            call()
    # the root latent: q(z1 | x) = N(x / 2, 1) exactly, so Var_x(E[z1]) = Var(x) / 4
    au = active_units(_hier_guide, x, latent="z1")
    torch.testing.assert_close(au.variance, (0.5 * x).double().var(0), rtol=1e-6, atol=0)
    dt = to_datatree(_hier_model, _hier_guide, x[:4], 30, latent="z1")
    assert set(dt["posterior"].data_vars) == {"z1", "z2"}
    assert dt["posterior"]["z2"].shape == (1, 30, 4, 2)


def test_two_gaussian_mixtures_do_not_share_parameters_silently():
    x = torch.randn(5, 2)
    a = GaussianMixtureModel(2, 2, seed=0)
    b = GaussianMixtureModel(2, 2, seed=1)
    from pyro.infer import TraceEnum_ELBO

    from lvm_pyro.guides import EmptyGuide
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert elbo.loss(a, EmptyGuide(), x) == pytest.approx(-float(a.log_prob(x).sum().detach()), rel=1e-6)
    with pytest.raises(ValueError, match="another GaussianMixtureModel holds"):
        elbo.loss(b, EmptyGuide(), x)
    c = GaussianMixtureModel(2, 2, seed=1, name="second")  # its own names: its own parameters
    assert elbo.loss(c, EmptyGuide(), x) == pytest.approx(-float(c.log_prob(x).sum().detach()), rel=1e-6)


def test_a_second_vae_is_not_trained_through_the_first_ones_param_store_entries():
    """Pyro keeps the first registration of "encoder$$$net.0.weight": the second VAE's
    Trainer used to step the first VAE's tensors (its own weights never changed)."""
    from lvm_pyro.training.builders import build_vae
    x = torch.rand(20, 1, 8, 8)
    first = build_vae({"z_dim": 2}, (1, 8, 8))
    Trainer(*first, Trace_ELBO(), batch_size=10, progress=False).fit(x, 1)
    model, guide = build_vae({"z_dim": 2}, (1, 8, 8))
    with pytest.raises(ValueError, match=r"call pyro.clear_param_store\(\)"):
        Trainer(model, guide, Trace_ELBO(), batch_size=10, progress=False).fit(x, 1)
    pyro.clear_param_store()
    before = [p.detach().clone() for p in guide.parameters()]
    Trainer(model, guide, Trace_ELBO(), batch_size=10, progress=False).fit(x, 1)
    assert all(not torch.equal(a, b) for a, b in zip(before, guide.parameters()))


def test_dtype_follows_the_input_or_is_a_clear_error():
    from lvm_pyro.training.builders import build_vae
    x = (torch.rand(4, 1, 8, 8) > 0.5).double()
    model, guide = build_vae({"z_dim": 2}, (1, 8, 8))
    with pytest.raises(ValueError, match=r"x is torch.float64 but the guide's parameters are torch.float32"):
        log_marginal_likelihood(model, guide, x, 3)
    with pytest.raises(ValueError, match=r"x is torch.float64 but the guide's parameters"):
        Trainer(model, guide, Trace_ELBO(), batch_size=2, progress=False).fit(x, 1)
    model.double(), guide.double()
    assert log_marginal_likelihood(model, guide, x, 3).dtype == torch.float64
    assert elbo_per_datapoint(model, guide, x, 2).dtype == torch.float64
    gmm = GaussianMixtureModel(2, 2)
    with pytest.raises(ValueError, match="x is torch.float64 but the model's parameters are torch.float32"):
        gmm.log_prob(torch.randn(3, 2, dtype=torch.float64))
    gmm64 = GaussianMixtureModel.init_from_data(torch.randn(9, 2, dtype=torch.float64), 2, name="g64")
    assert gmm64.log_prob(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64


def test_the_contract_is_checked_once_per_pair_not_every_step(monkeypatch):
    """No per-step work: the checked discovery run happens on the first call only, also
    under KLWeighted_ELBO, which wraps the programs afresh at every step."""
    import lvm_pyro.inference.kl_weighting as kl_module
    import lvm_pyro.inference.particle_elbo as particle_module
    from lvm_pyro.inference import FreeBits_ELBO, KLWeighted_ELBO
    from lvm_pyro.inference.program import discover

    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return discover(*args, **kwargs)

    monkeypatch.setattr(kl_module, "discover", counting)
    monkeypatch.setattr(particle_module, "discover", counting)
    x = torch.randn(4, 2)
    for objective in (IWAE_ELBO(2), VIMCO(2), FreeBits_ELBO(0.1),
                      KLWeighted_ELBO(FreeBits_ELBO(0.1), beta=0.5, kl_warmup_steps=3),
                      KLWeighted_ELBO(IWAE_ELBO(2))):
        calls.clear()
        for _ in range(4):
            objective.loss_and_grads(_normal_model, _diag_guide, x)
        assert len(calls) == 1, objective


def _diag_guide(x, num_data=None, idx=None):
    loc = pyro.param("g_loc", torch.zeros(2))
    with data_plate(x, num_data, idx):
        pyro.sample("z", dist.Normal(loc + 0.5 * x, 1.0).to_event(1))


def test_latent_parents_are_found_without_provenance_tracking(monkeypatch):
    """A guide that Pyro's provenance tracking cannot run still has its parents named
    (each earlier latent redrawn, the latent's density compared)."""
    import pyro.infer.inspect as inspect_module

    from lvm_pyro.inference.program import guide_parents

    def broken(*args, **kwargs):
        raise NotImplementedError("no provenance for this op")

    monkeypatch.setattr(inspect_module, "get_dependencies", broken)
    x = torch.randn(6, 2)
    assert guide_parents(_hier_guide, x, "z2") == ["z1"]
    assert guide_parents(_hier_guide, x, "z1") == []


def test_unregistered_guide_module_is_named_not_blamed_on_another_instance():
    """A function model registering its decoder with pyro.module and a guide module that
    forgets to: the Trainer names the guide's unregistered tensors (they would keep their
    initial values), instead of claiming the decoder belongs to another instance."""
    import torch.nn as nn
    from lvm_pyro.sites import data_plate
    from lvm_pyro.training.loop import UnregisteredParameterWarning

    dec = nn.Linear(2, 4)

    class Guide(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 4)

        def forward(self, x, num_data=None, idx=None):
            h = self.enc(x)
            with data_plate(x, num_data, idx):
                pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))

    def model(x, num_data=None, idx=None):
        pyro.module("dec", dec)
        with data_plate(x, num_data, idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 1.0).to_event(1), obs=x)

    guide = Guide()
    with pytest.warns(UnregisteredParameterWarning, match=r"guide\.enc\.weight \(4, 4\)"):
        Trainer(model, guide, Trace_ELBO(), batch_size=10, progress=False,
                binarization="none").fit(torch.randn(50, 4), 1)


def test_empty_data_is_one_clear_error_for_the_estimators():
    g = torch.Generator().manual_seed(0)
    lg = LinearGaussianModel(torch.randn(3, 2, generator=g), torch.zeros(3), 0.5)
    guide = LinearGaussianPosteriorGuide(lg)
    with pytest.raises(ValueError, match="x holds no datapoints"):
        log_marginal_likelihood(lg, guide, torch.zeros(0, 3), 4)
    with pytest.raises(ValueError, match="x holds no datapoints"):
        IWAE_ELBO(2).loss(lg, guide, torch.zeros(0, 3))
