"""LocalNormalGuide: per-datapoint parameters indexed by the loop's idx (checked against
the exact posterior of a linear-Gaussian model), and non-amortised optimisation with the
decoder fixed reaching at least the amortised ELBO (the amortisation gap)."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.data import binarize_test, load_dataset
from lvm_pyro.guides import LocalNormalGuide
from lvm_pyro.inference import amortization_gap, fit_local_guide
from lvm_pyro.models import LinearGaussianModel
from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_elbo, build_vae


def _diagonal_posterior_model(d=6, k=3):
    """Linear-Gaussian model with orthogonal columns of W, so p(z | x) is a diagonal
    Gaussian and the best LocalNormalGuide is the exact posterior."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    W = q * torch.tensor([0.5, 1.5, 3.0], dtype=torch.float64)
    return LinearGaussianModel(W, torch.zeros(d, dtype=torch.float64), 0.8)


def test_minibatch_training_with_idx_finds_each_posterior():
    model = _diagonal_posterior_model()
    torch.manual_seed(0)
    x = model.marginal().sample((40,))
    guide = LocalNormalGuide(40, 3).double()
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    # 320 + 160 minibatch steps of 10 rows; a lower learning rate at the end quiets Adam
    for lr, epochs in [(0.05, 80), (0.005, 40)]:
        Trainer(model, guide, elbo, lr=lr, batch_size=10, binarization="none",
                progress=False).fit(x, epochs)
    loc, cov = model.posterior(x)
    sd = cov.diagonal().sqrt()  # (3,) the posterior is diagonal by construction
    assert torch.allclose(cov, torch.diag_embed(cov.diagonal()), atol=1e-12)
    with torch.no_grad():
        assert float(((guide.loc - loc).abs() / sd).max()) < 0.3
        assert float((guide.scale / sd - 1.0).abs().max()) < 0.2
        # rows are bound to datapoints: shuffled rows are far off
        assert float(((guide.loc.flip(0) - loc).abs() / sd).max()) > 1.0


def test_idx_selects_rows_and_none_uses_all():
    guide = LocalNormalGuide(5, 2, init_loc=torch.arange(10.0).reshape(5, 2),
                             init_scale=1e-6, name="rows_test")
    x = torch.zeros(5, 3)
    z = guide(x)  # idx None: all rows, in order
    assert torch.allclose(z, torch.arange(10.0).reshape(5, 2), atol=1e-4)
    idx = torch.tensor([4, 1])
    z = guide(x[:2], num_data=5, idx=idx)
    assert torch.allclose(z, torch.tensor([[8.0, 9.0], [2.0, 3.0]]), atol=1e-4)
    loc, scale = guide.loc_scale(x[:2], idx)
    assert torch.allclose(loc, torch.tensor([[8.0, 9.0], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="pass idx"):
        guide(x[:2])
    with pytest.raises(ValueError, match="idx must lie"):
        guide(x[:2], idx=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="num_data"):
        guide(x[:2], num_data=7, idx=idx)
    with pytest.raises(ValueError, match="broadcast"):
        LocalNormalGuide(5, 2, init_loc=torch.zeros(4, 2), name="bad")
    with pytest.raises(ValueError, match="init_scale"):
        LocalNormalGuide(5, 2, init_scale=0.0, name="bad2")
    # a second guide of another size under the same name would silently share the store
    with pytest.raises(ValueError, match="another name"):
        LocalNormalGuide(6, 2, name="rows_test")


@pytest.fixture(scope="module")
def small_vae():
    """A small VAE trained briefly on 500 digits (Bernoulli, dynamic binarisation)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x_train = load_dataset("digits", "train").images[:500]
    model, guide = build_vae({"z_dim": 4, "hidden_dim": 64, "num_hidden": 1}, x_train.shape[1:])
    Trainer(model, guide, build_elbo({"elbo": "trace"}), lr=3e-3, batch_size=50,
            binarization="dynamic", progress=False).fit(x_train, 15)
    x_test = binarize_test(load_dataset("digits", "test").images[:40], seed=0)
    pyro.clear_param_store()
    return model, guide, x_test


def test_local_optimisation_reaches_the_amortised_elbo_with_decoder_fixed(small_vae):
    model, guide, x = small_vae
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    local = LocalNormalGuide(len(x), 4, name="gap_test")  # starts at the prior, not the encoder
    gap = amortization_gap(model, guide, local, x, num_steps=300, lr=0.05, num_particles=4,
                           num_samples=200, iwae_num_samples=500)
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k]), f"decoder parameter {k} changed"
    assert gap.elbo_local.mean() >= gap.elbo_amortized.mean()
    # per datapoint too, up to the Monte-Carlo error of the two ELBO estimates
    assert bool((gap.amortization_gap > -0.3).all())
    # the IWAE reference lies above both ELBOs (on average)
    assert gap.log_px.mean() >= gap.elbo_local.mean()
    assert torch.allclose(gap.inference_gap, gap.amortization_gap + gap.approximation_gap)
    assert gap.losses[-1] < gap.losses[0]


def test_fit_local_guide_rejects_a_guide_without_parameters(small_vae):
    model, _, x = small_vae

    def no_params(x, *, num_data=None, idx=None):
        return None

    with pytest.raises(ValueError, match="no parameters"):
        fit_local_guide(model, no_params, x, num_steps=1)
    with pytest.raises(ValueError, match="lr"):
        fit_local_guide(model, LocalNormalGuide(len(x), 4, name="e"), x, lr=0.0)
