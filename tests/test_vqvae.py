"""VQ-VAE as a Pyro program: the engine's log weights hold no codebook / commitment term,
Pyro's Trace_ELBO adds them; the codes prior is pluggable; particles; exact resume with
EMA buffers; the discretised logistic likelihood against closed forms; the CLI run."""

import json
import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.guides import VQEncoderGuide
from lvm_pyro.inference import elbo_per_datapoint, log_marginal_likelihood, log_weights
from lvm_pyro.models import DiscretizedLogisticLikelihood, VQVAEModel, make_likelihood
from lvm_pyro.models.likelihoods import DiscretizedLogisticMixture
from lvm_pyro.nn import VectorQuantizer, VQConvDecoder, VQConvEncoder
from lvm_pyro.sites import QUANTIZED
from lvm_pyro.training import Trainer


def _vqvae(decay=0.9, codebook_size=16, num_mixtures=1, prior=None, seed=0):
    torch.manual_seed(seed)
    lik = DiscretizedLogisticLikelihood(num_mixtures=num_mixtures)
    q = VectorQuantizer(codebook_size, 4, decay=decay)
    enc = VQConvEncoder(1, 4, channels=8, res_channels=4, num_res_blocks=1)
    dec = VQConvDecoder(4, (lik.num_params, 1, 8, 8), channels=8, res_channels=4, num_res_blocks=1)
    return VQVAEModel(dec, q, (2, 2), (1, 8, 8), lik, prior=prior), VQEncoderGuide(enc, q)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 255


@pytest.mark.parametrize("decay", [None, 0.9])
def test_log_weights_leave_out_vq_terms_and_trace_elbo_adds_them(decay):
    model, guide = _vqvae(decay)
    x = _data()
    lw = log_weights(model, guide, x, num_particles=3)
    with torch.no_grad():
        out = guide.encode(x)
        rec = model.reconstruction_log_prob(x, out.quantized)  # (batch,)
    expected = rec - 4 * math.log(16)  # log p(x | z_q) + log p(codes), uniform prior
    assert lw.log_w.shape == (3, 6)
    assert torch.allclose(lw.log_w, expected.expand(3, 6), atol=1e-4)
    aux = (out.losses.codebook + out.losses.commitment).sum((-2, -1))
    assert float(aux.sum()) > 0  # so the check below can tell them apart
    loss = Trace_ELBO(max_plate_nesting=1).loss(model, guide, x)
    assert loss == pytest.approx(float((-expected + aux).sum()), rel=1e-5)
    # the deterministic guide: the importance-sampled log p(x) equals the ELBO
    lml = log_marginal_likelihood(model, guide, x, num_samples=4)
    assert torch.allclose(lml, expected, atol=1e-4)
    assert torch.allclose(elbo_per_datapoint(model, guide, x), expected, atol=1e-4)
    guide.quantizer.discard_pending()


def test_sites_contract():
    model, guide = _vqvae()
    x = _data()
    gt = poutine.trace(guide).get_trace(x)
    mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(x)
    codes = gt.nodes["codes"]["value"]
    assert codes.dtype == torch.int64 and codes.shape == (6, 2, 2)
    assert torch.equal(mt.nodes[QUANTIZED]["value"], model.quantizer.lookup_grid(codes))
    assert float(mt.nodes[QUANTIZED]["fn"].log_prob(mt.nodes[QUANTIZED]["value"]).sum()) == 0.0
    assert mt.nodes["codes"]["fn"].event_shape == (2, 2)
    for name in ("vq_codebook", "vq_commitment"):
        assert gt.nodes[name]["infer"]["lvm_auxiliary"] and gt.nodes[name]["infer"]["is_auxiliary"]
    guide.quantizer.discard_pending()


def test_straight_through_gradient_reaches_the_encoder():
    model, guide = _vqvae()
    x = _data()
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x)
    enc_grad = sum(float(p.grad.abs().sum()) for p in guide.encoder.parameters())
    dec_grad = sum(float(p.grad.abs().sum()) for p in model.decoder.parameters())
    assert enc_grad > 0 and dec_grad > 0
    guide.quantizer.discard_pending()


class _IndependentCodesPrior(torch.nn.Module):
    """A user's toy prior: independent categorical codes with fixed logits."""

    def __init__(self, k):
        super().__init__()
        self.logits = torch.linspace(-1, 1, k)

    def log_prob(self, codes):
        return torch.log_softmax(self.logits, 0)[codes].sum((-2, -1))

    def sample(self, n):
        return torch.distributions.Categorical(logits=self.logits).sample((n, 2, 2))


def test_pluggable_codes_prior():
    prior = _IndependentCodesPrior(16)
    model, guide = _vqvae(prior=prior)
    x = _data()
    lw = log_weights(model, guide, x, num_particles=2).log_w
    with torch.no_grad():
        out = guide.encode(x)
        expected = model.reconstruction_log_prob(x, out.quantized) + prior.log_prob(out.indices)
    assert torch.allclose(lw, expected.expand(2, 6), atol=1e-4)
    assert model.sample(3).shape == (3, 1, 8, 8)
    model.prior = None  # back to uniform
    lw = log_weights(model, guide, x, num_particles=1).log_w
    assert torch.allclose(lw[0], expected - prior.log_prob(out.indices) - 4 * math.log(16), atol=1e-4)
    guide.quantizer.discard_pending()


def test_model_runs_alone_and_decodes():
    model, _ = _vqvae()
    x = _data(4)
    tr = poutine.trace(poutine.uncondition(model)).get_trace(x)
    assert tr.nodes["x"]["value"].shape == (4, 1, 8, 8)
    s = model.sample(5)
    assert s.shape == (5, 1, 8, 8) and float(s.min()) >= 0 and float(s.max()) <= 1
    draws = model.decode_codes(torch.zeros(2, 2, 2, dtype=torch.int64), mean=False)
    assert torch.allclose(draws * 255, torch.round(draws * 255), atol=1e-4)
    with pytest.raises(ValueError, match="discretized_logistic needs values on the grid"):
        model(torch.full((2, 1, 8, 8), 0.5))


def test_exact_resume_with_ema_codebook(tmp_path):
    x = _data(40, seed=1)

    def run(epochs, resume, path):
        pyro.clear_param_store()
        model, guide = _vqvae(decay=0.9)
        guide.quantizer.dead_code_threshold = 0.5
        tr = Trainer(model, guide, Trace_ELBO(max_plate_nesting=1), batch_size=10,
                     binarization="none", checkpoint_path=path, progress=False, seed=3)
        tr.fit(x, epochs, resume=resume)
        return guide.quantizer.codebook.clone(), {k: v.detach().clone() for k, v in
                                                  pyro.get_param_store().named_parameters()}

    full_cb, full_params = run(2, False, tmp_path / "a.pt")
    run(1, False, tmp_path / "b.pt")
    res_cb, res_params = run(2, True, tmp_path / "b.pt")
    assert torch.equal(full_cb, res_cb)
    assert all(torch.equal(full_params[k], res_params[k]) for k in full_params)


# -- discretised logistic ------------------------------------------------------------------
def _brute_force_pmf(logits, loc, log_scale, levels):
    """float64 numpy: P(level k) = sum_m pi_m (F(k + 1/2) - F(k - 1/2)) with the open ends."""
    from scipy.special import expit, softmax

    lo, mu, s = logits.numpy(), loc.numpy(), np.exp(log_scale.numpy())
    pi = softmax(lo, axis=-1)
    edges = (np.arange(levels + 1) - 0.5) / (levels - 1)  # (L + 1,)
    cdf = expit((edges[:, None, None] - mu[None]) / s[None])  # (L + 1, B, M)
    cdf[0], cdf[-1] = 0.0, 1.0
    return ((cdf[1:] - cdf[:-1]) * pi[None]).sum(-1)  # (L, B)


@pytest.mark.parametrize("m,levels", [(1, 256), (3, 256), (2, 17)])
def test_discretized_logistic_pmf_matches_brute_force_and_sums_to_one(m, levels):
    g = torch.Generator().manual_seed(m)
    logits = torch.randn(5, m, generator=g, dtype=torch.float64)
    loc = torch.rand(5, m, generator=g, dtype=torch.float64) * 1.4 - 0.2
    log_scale = torch.tensor([-6.5, -4.0, -2.0, 0.0, 1.0], dtype=torch.float64)[:, None].expand(5, m)
    d = DiscretizedLogisticMixture(logits, loc, log_scale, levels)
    grid = (torch.arange(levels, dtype=torch.float64) / (levels - 1))[:, None].expand(levels, 5)
    pmf = d.log_prob(grid).exp()  # (L, 5)
    assert torch.allclose(pmf.sum(0), torch.ones(5, dtype=torch.float64), atol=1e-10)
    ref = _brute_force_pmf(logits, loc, log_scale, levels)
    assert np.allclose(pmf.numpy(), ref, atol=1e-12, rtol=1e-7)
    assert torch.allclose(d.mean, (pmf * grid).sum(0), atol=1e-10)


def test_discretized_logistic_is_stable_in_the_tails():
    d = DiscretizedLogisticMixture(torch.zeros(3, 1), torch.tensor([[0.5], [0.0], [1.0]]),
                                   torch.full((3, 1), -7.0))
    lp = d.log_prob(torch.tensor([1.0, 1.0, 0.0]))  # ~0.5 / 1 / 1 away at s = e^-7
    assert torch.isfinite(lp).all() and (lp < -100).all()
    # at the bin centre with the likelihood's floor s = e^-8: log(sigma(h/s) - sigma(-h/s))
    sharp = DiscretizedLogisticMixture(torch.zeros(1, 1, dtype=torch.float64),
                                       torch.tensor([[100 / 255]], dtype=torch.float64),
                                       torch.full((1, 1), -8.0, dtype=torch.float64))
    r = (0.5 / 255) / math.exp(-8.0)
    closed = math.log(1 / (1 + math.exp(-r)) - 1 / (1 + math.exp(r)))
    assert float(sharp.log_prob(torch.tensor([100 / 255], dtype=torch.float64))) == pytest.approx(closed, rel=1e-9)
    assert DiscretizedLogisticLikelihood().min_log_scale == -8.0


def test_discretized_logistic_samples_follow_the_pmf():
    # chi-square goodness of fit over 17 levels (16 dof), seeded: the 0.999 quantile
    # 39.25 fails a correct sampler with probability 1e-3
    d = DiscretizedLogisticMixture(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.3, 0.7]]),
                                   torch.tensor([[-2.0, -2.5]]), 17)
    torch.manual_seed(0)
    s = d.sample((20000,)).squeeze(-1)
    counts = torch.bincount(torch.round(s * 16).long(), minlength=17).double()
    p = d.log_prob((torch.arange(17) / 16.0)[:, None]).exp().squeeze(-1).double()
    chi2 = float(((counts - 20000 * p) ** 2 / (20000 * p)).sum())
    assert chi2 < 39.25


def test_discretized_logistic_likelihood_parameters_and_support():
    lik = make_likelihood("discretized_logistic", num_mixtures=3)
    assert lik.discrete and lik.num_params == 9
    params = torch.randn(2, 9, 1, 4, 4)
    x = torch.randint(0, 256, (2, 1, 4, 4)).float() / 255
    assert lik(params, 3).log_prob(x).shape == (2,)
    assert lik.mean(params, 3).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="needs 9 parameters"):
        lik(torch.randn(2, 2, 1, 4, 4), 3)
    with pytest.raises(ValueError, match="float intensities"):
        lik.check_support(torch.zeros(2, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="on the grid"):
        lik.check_support(torch.full((2,), 0.3 / 255))
    with pytest.raises(ValueError, match="num_mixtures"):
        make_likelihood("discretized_logistic", num_mixtures=0)


def test_cli_fit_vqvae_writes_usage_and_reconstruction_metrics(tmp_path):
    from lvm_pyro.cli import main

    out = tmp_path / "run"
    rc = main(["fit", "--model", "vqvae", "--likelihood", "discretized_logistic",
               "--binarization", "none", "--epochs", "1", "--num-samples", "1",
               "--num-test", "30", "--codebook-size", "32", "--embedding-dim", "4",
               "--channels", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("perplexity", "dead_codes", "restarted_codes"):
        assert key in m["train_curve"][0]
    assert m["bits_per_dim_offset_nats"] == 0.0
    # test NLL bound = reconstruction term + h w log K (uniform prior, point-mass guide)
    assert m["test_nll"] == pytest.approx(m["test_reconstruction_nll"] + 4 * math.log(32), rel=1e-4)
    assert 1.0 <= m["test_perplexity"] <= 32
    assert (out / "reconstructions.png").exists() and (out / "samples.png").exists()
