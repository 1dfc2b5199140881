"""VQ-VAE-2 (Razavi et al. 2019): the attention prior's causality by Jacobians, the
bottom prior's dependence on the top codes, cached == naive sampling (float64) for both
priors, normalisation and goodness of fit by enumeration on tiny grids, and the model's
log weights against a hand computation."""

import itertools
import math

import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit
from pyro.infer import Trace_ELBO

from lvm_pyro.guides import VQVAE2Guide
from lvm_pyro.inference import log_marginal_likelihood, log_weights
from lvm_pyro.models import (AttentionPixelCNNPrior, ConditionalPixelCNNPrior,
                             DiscretizedLogisticLikelihood, VQVAE2Model)
from lvm_pyro.models.codes_prior import ModuleCodesPrior
from lvm_pyro.nn import (AttentionPixelCNN, CausalSelfAttention, VectorQuantizer, VQVAE2Decoder,
                         VQVAE2Encoder)
from lvm_pyro.nn.pixelcnn import GatedPixelCNN
from lvm_pyro.nn.pixelcnn_sampling import sample_cached, sample_naive
from lvm_pyro.sites import CODES_BOTTOM, CODES_TOP, QUANTIZED_BOTTOM, QUANTIZED_TOP

#: significance level of the goodness-of-fit test (fixed seeds: deterministic run)
TEST_FAILURE_RATE = 1e-3


def _spread(module, std=0.5, seed=0):
    """Random weights far from the near-uniform default initialisation, so that every
    path of the network carries signal (float64)."""
    torch.manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def _all_grids(num_codes, height, width):
    grids = list(itertools.product(range(num_codes), repeat=height * width))
    return torch.tensor(grids, dtype=torch.long).reshape(-1, height, width)


# -- attention prior ----------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,attention_layers,num_heads,num_classes",
                         [(1, [0], 1, None), (2, [1], 2, 3), (3, [0, 2], 2, None)])
def test_attention_prior_is_causal_and_sees_every_earlier_position(
        num_layers, attention_layers, num_heads, num_classes):
    """Jacobian of the last features (the head is 1x1) w.r.t. the embedded input: the
    output at raster position p depends on exactly the positions q < p (attention removes
    the convolutional stack's finite receptive field; nothing at or after p)."""
    height, width = 4, 5
    net = _spread(AttentionPixelCNN(3, channels=4, num_layers=num_layers, num_classes=num_classes,
                                    attention_layers=attention_layers, num_heads=num_heads))
    e = torch.randn(1, 4, height, width, dtype=torch.float64)
    y = None if num_classes is None else torch.tensor([1])
    jac = torch.autograd.functional.jacobian(lambda t: net.features(t, y), e, vectorize=True)
    dep = (jac[0].abs().sum(dim=(0, 3, 4)) > 0).reshape(height * width, height * width)
    expected = torch.tril(torch.ones(height * width, height * width, dtype=torch.bool), -1)
    assert torch.equal(dep, expected), dep.int()


def test_gated_pixelcnn_alone_has_a_blind_spot_the_attention_removes():
    """Control for the test above: without attention, position (1, 0) cannot see (0, 4)
    (out of the one-layer receptive field), so the exact-set assertion can fail."""
    net = _spread(GatedPixelCNN(3, channels=4, num_layers=1))
    e = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: net.features(t), e, vectorize=True)
    dep = jac[0].abs().sum(dim=(0, 3, 4)) > 0  # (H, W, H, W)
    assert not dep[1, 0, 0, 4] and not dep[3, 4, 0, 0]


def test_attention_prior_log_prob_sums_to_one_and_samples_match():
    prior = AttentionPixelCNNPrior(2, (2, 3), channels=4, num_layers=2, num_heads=2)
    _spread(prior.net, std=0.8)
    grids = _all_grids(2, 2, 3)  # 64 grids
    with torch.no_grad():
        probs = prior.log_prob(grids).exp()
    assert abs(float(probs.sum()) - 1.0) < 1e-12
    assert 0.1 < float(probs.max()) < 0.9  # neither near uniform nor deterministic
    n = 20000
    samples = prior.sample(n, generator=torch.Generator().manual_seed(1))
    flat = samples.reshape(n, -1)
    index = (flat * 2 ** torch.arange(5, -1, -1)).sum(-1)
    counts = torch.bincount(index, minlength=64).double()
    keep = probs * n >= 20  # pool the rare grids into one bin
    p = torch.cat([probs[keep], probs[~keep].sum()[None]])
    c = torch.cat([counts[keep], counts[~keep].sum()[None]])
    assert multinomial_goodness_of_fit(p, c) > TEST_FAILURE_RATE


@pytest.mark.parametrize("num_classes,attention_layers,shape",
                         [(None, None, (4, 5)), (3, [0, 2], (3, 6))])
def test_attention_cached_sampling_equals_naive_float64(num_classes, attention_layers, shape):
    net = _spread(AttentionPixelCNN(5, channels=6, num_layers=3, num_classes=num_classes,
                                    attention_layers=attention_layers, num_heads=2), std=0.4)
    u = torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = None if num_classes is None else torch.tensor([0, 2, 1, 2])
    naive, cached = sample_naive(net, u, y), sample_cached(net, u, y)
    assert torch.equal(naive.codes, cached.codes)
    assert torch.allclose(naive.logits, cached.logits, rtol=0, atol=1e-12)
    assert len(torch.unique(cached.codes)) > 1


def test_attention_step_equals_forward():
    """The key / value cache alone: one position at a time equals the full pass."""
    block = _spread(CausalSelfAttention(4, num_heads=2))
    h, e = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    full = block(h, e).flatten(2)  # (B, C, T)
    cache, e_flat = {}, e.flatten(2)
    for t in range(9):
        e_prev = e_flat[:, :, t - 1] if t else torch.zeros(2, 4, dtype=torch.float64)
        out = block.step(h.flatten(2)[:, :, t], e_prev, cache, t, 3, 3)
        assert torch.allclose(out, full[:, :, t], atol=1e-12)


# -- bottom prior -------------------------------------------------------------------------

def _bottom_prior(num_classes=None):
    prior = ConditionalPixelCNNPrior(3, (4, 4), context_codes=2, context_shape=(2, 2),
                                     channels=4, num_layers=2, num_classes=num_classes)
    return _spread(prior, std=0.5)


def test_bottom_prior_depends_on_the_top_codes():
    prior = _bottom_prior()
    codes = torch.randint(0, 3, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    top = torch.zeros(1, 2, 2, dtype=torch.long)
    top2 = top.clone()
    top2[0, 1, 1] = 1  # covers bottom positions (2..3, 2..3) after 2x upsampling
    with torch.no_grad():
        a, b = prior.logits(codes, top), prior.logits(codes, top2)
        lp_a, lp_b = prior.log_prob(codes, context=top), prior.log_prob(codes, context=top2)
    changed = (a - b).abs().amax(dim=1)[0] > 1e-9  # (4, 4)
    assert changed[2:, 2:].all()  # the positions under the changed top code
    assert float((lp_a - lp_b).abs()) > 1e-6


def test_bottom_prior_normalised_given_the_top_codes():
    prior = ConditionalPixelCNNPrior(2, (2, 2), context_codes=3, context_shape=(1, 1),
                                     channels=4, num_layers=2, num_classes=2)
    _spread(prior, std=0.8)
    grids = _all_grids(2, 2, 2)
    for top, y in ((0, 0), (2, 1)):
        context = torch.full((len(grids), 1, 1), top)
        with torch.no_grad():
            total = prior.log_prob(grids, torch.tensor(y), context=context).exp().sum()
        assert abs(float(total) - 1.0) < 1e-12


@pytest.mark.parametrize("num_classes", [None, 2])
def test_bottom_cached_sampling_equals_naive_float64(num_classes):
    prior = _bottom_prior(num_classes)
    top = torch.randint(0, 2, (5, 2, 2), generator=torch.Generator().manual_seed(3))
    u = torch.rand(5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = None if num_classes is None else torch.tensor([0, 1, 1, 0, 1])
    naive = prior.sample(5, y, context=top, method="naive", uniforms=u)
    cached = prior.sample(5, y, context=top, method="cached", uniforms=u)
    assert torch.equal(naive, cached) and len(torch.unique(cached)) > 1
    # and the draws change with the top codes (same uniforms)
    other = prior.sample(5, y, context=1 - top, uniforms=u)
    assert not torch.equal(other, cached)


def test_spatially_conditioned_sampler_errors():
    net = GatedPixelCNN(3, channels=4, num_layers=1, cond_channels=2)
    u = torch.rand(2, 3, 3)
    with pytest.raises(ValueError, match="spatially conditioned"):
        sample_cached(net, u)
    with pytest.raises(ValueError, match="spatially conditioned"):
        sample_naive(net, u, s=torch.zeros(2, 5, 3, 3))
    with pytest.raises(ValueError, match="spatial map"):
        net(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no spatial conditioning"):
        sample_cached(GatedPixelCNN(3, channels=4, num_layers=1), u, s=torch.zeros(2, 2, 3, 3))
    with pytest.raises(ValueError, match="cond_channels"):
        GatedPixelCNN(3, cond_channels=0)


def test_prior_argument_errors():
    with pytest.raises(ValueError, match="whole multiple"):
        ConditionalPixelCNNPrior(3, (4, 5), 2, (2, 2))
    with pytest.raises(ValueError, match="attention_layers"):
        AttentionPixelCNNPrior(3, (2, 2), channels=4, num_layers=2, attention_layers=[2])
    with pytest.raises(ValueError, match="divisible"):
        AttentionPixelCNNPrior(3, (2, 2), channels=6, num_heads=4)
    prior = _bottom_prior()
    with pytest.raises(ValueError, match="pass context"):
        prior.log_prob(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        prior.log_prob(torch.zeros(1, 4, 4, dtype=torch.long), context=torch.full((1, 2, 2), 2))


# -- the model ------------------------------------------------------------------------------

K_TOP, K_BOTTOM = 5, 7


def _vqvae2(prior_top=None, prior_bottom=None):
    torch.manual_seed(0)
    lik = DiscretizedLogisticLikelihood()
    qt, qb = VectorQuantizer(K_TOP, 3, decay=0.9), VectorQuantizer(K_BOTTOM, 3, decay=None)
    enc = VQVAE2Encoder(1, 3, channels=8, res_channels=4, num_res_blocks=1)
    dec = VQVAE2Decoder(3, (lik.num_params, 1, 8, 8), channels=8, res_channels=4, num_res_blocks=1)
    model = VQVAE2Model(dec, qt, qb, (2, 2), (4, 4), (1, 8, 8), lik, prior_top, prior_bottom)
    return model, VQVAE2Guide(enc, qt, qb)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 255


def test_log_weights_equal_the_hand_computed_two_level_bound():
    model, guide = _vqvae2()
    x = _data()
    lw = log_weights(model, guide, x, num_particles=3).log_w
    with torch.no_grad():
        out = guide.encode(x)
        # the decoder by hand on the codebook rows of the guide's codes
        params = model.decoder(model.quantizer_top.lookup_grid(out.top.indices),
                               model.quantizer_bottom.lookup_grid(out.bottom.indices))
        rec = model.likelihood(params, 3).log_prob(x)  # (batch,)
    expected = rec - 4 * math.log(K_TOP) - 16 * math.log(K_BOTTOM)
    assert lw.shape == (3, 6)
    assert torch.allclose(lw, expected.expand(3, 6), atol=1e-4)
    assert model.code_bits == pytest.approx(4 * math.log2(K_TOP) + 16 * math.log2(K_BOTTOM))
    # Trace_ELBO adds both levels' auxiliary terms; the engine leaves them out
    aux = sum(q.losses.codebook.sum((-2, -1)) + q.losses.commitment.sum((-2, -1))
              for q in (out.top, out.bottom))
    assert float(aux.sum()) > 0
    loss = Trace_ELBO(max_plate_nesting=1).loss(model, guide, x)
    assert loss == pytest.approx(float((-expected + aux).sum()), rel=1e-5)
    lml = log_marginal_likelihood(model, guide, x, num_samples=2)
    assert torch.allclose(lml, expected, atol=1e-4)
    guide.quantizer_top.discard_pending()


def test_log_weights_with_learned_priors_add_both_priors():
    prior_top = AttentionPixelCNNPrior(K_TOP, (2, 2), channels=4, num_layers=2, num_heads=2)
    prior_bottom = ConditionalPixelCNNPrior(K_BOTTOM, (4, 4), K_TOP, (2, 2), channels=4,
                                            num_layers=2)
    model, guide = _vqvae2(prior_top, prior_bottom)
    x = _data()
    lw = log_weights(model, guide, x, num_particles=2).log_w
    with torch.no_grad():
        out = guide.encode(x)
        rec = model.reconstruction_log_prob(x, out.top.quantized, out.bottom.quantized)
        lp_top = prior_top.log_prob(out.top.indices)
        lp_bottom = prior_bottom.log_prob(out.bottom.indices, context=out.top.indices)
    expected = rec + lp_top + lp_bottom
    assert torch.allclose(lw, expected.expand(2, 6), atol=1e-4)
    # the uniform priors differ: the priors really are in the weight
    assert float((lp_bottom + 16 * math.log(K_BOTTOM)).abs().max()) > 1e-3
    assert model.sample(3).shape == (3, 1, 8, 8)
    guide.quantizer_top.discard_pending()


def test_sites_and_gradients():
    model, guide = _vqvae2()
    x = _data()
    gt = poutine.trace(guide).get_trace(x)
    mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(x)
    assert gt.nodes[CODES_TOP]["value"].shape == (6, 2, 2)
    assert gt.nodes[CODES_BOTTOM]["value"].shape == (6, 4, 4)
    assert mt.nodes[CODES_TOP]["fn"].event_shape == (2, 2)
    assert mt.nodes[CODES_BOTTOM]["fn"].event_shape == (4, 4)
    for site, q, codes in ((QUANTIZED_TOP, model.quantizer_top, CODES_TOP),
                           (QUANTIZED_BOTTOM, model.quantizer_bottom, CODES_BOTTOM)):
        assert torch.equal(mt.nodes[site]["value"], q.lookup_grid(gt.nodes[codes]["value"]))
    for name in ("vq_codebook_top", "vq_commitment_top", "vq_codebook_bottom",
                 "vq_commitment_bottom"):
        assert gt.nodes[name]["infer"]["lvm_auxiliary"]
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x)
    enc = guide.encoder
    for part in (enc.features_net, enc.top_net, enc.bottom_net, model.decoder):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None) > 0
    assert model.quantizer_bottom.codebook.grad.abs().sum() > 0  # loss-trained codebook
    guide.quantizer_top.discard_pending()


def test_model_errors():
    lik = DiscretizedLogisticLikelihood()
    dec = VQVAE2Decoder(3, (lik.num_params, 1, 8, 8), channels=8)
    with pytest.raises(ValueError, match="embedding_dim"):
        VQVAE2Model(dec, VectorQuantizer(4, 3), VectorQuantizer(4, 2), (2, 2), (4, 4),
                    (1, 8, 8), lik)
    with pytest.raises(ValueError, match="top_shape"):
        VQVAE2Model(dec, VectorQuantizer(4, 3), VectorQuantizer(4, 3), (2,), (4, 4),
                    (1, 8, 8), lik)
    model, _ = _vqvae2()
    with pytest.raises(ValueError, match="expects x"):
        model(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        VQVAE2Encoder(1, 3).features(torch.zeros(1, 1, 6, 6))


def test_codes_prior_with_context_broadcasts():
    prior = _bottom_prior()
    top = torch.randint(0, 2, (3, 2, 2), generator=torch.Generator().manual_seed(0))
    d = ModuleCodesPrior(prior, (4, 4), 3, context=top)
    assert d.batch_shape == (3,)
    codes = torch.randint(0, 3, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lp = d.log_prob(codes)  # (2, 3)
        ref = torch.stack([prior.log_prob(c, context=top) for c in codes])
    assert torch.allclose(lp, ref, atol=1e-12)
    assert d.expand((4, 3)).sample().shape == (4, 3, 4, 4)


def test_training_on_digits_lowers_the_loss_and_fits_the_priors():
    """A few Adam steps of Trace_ELBO on 8x8 digits (17 levels; bottom 4x4, top 2x2
    codes) lower the loss; then the two priors, fitted by their stage-two programs on the
    guide's codes, beat the uniform rate, so the bound with learned priors is tighter."""
    import pyro
    from pyro.infer import SVI
    from pyro.optim import Adam

    from lvm_pyro.data import load_dataset

    x = load_dataset("digits").images[:64]
    torch.manual_seed(0)
    lik = DiscretizedLogisticLikelihood(num_levels=17)
    qt, qb = VectorQuantizer(8, 4), VectorQuantizer(8, 4)
    enc = VQVAE2Encoder(1, 4, channels=16, res_channels=8, num_res_blocks=1)
    dec = VQVAE2Decoder(4, (lik.num_params, 1, 8, 8), channels=16, res_channels=8,
                        num_res_blocks=1)
    model = VQVAE2Model(dec, qt, qb, (2, 2), (4, 4), (1, 8, 8), lik)
    guide = VQVAE2Guide(enc, qt, qb)
    svi = SVI(model, guide, Adam({"lr": 3e-3}), Trace_ELBO(max_plate_nesting=1))
    losses = [svi.step(x) / len(x) for _ in range(30)]
    print("loss per digit, first / last 5 steps:", sum(losses[:5]) / 5, sum(losses[-5:]) / 5)
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    model.eval(), guide.eval()
    with torch.no_grad():
        out = guide.encode(x)
    top, bottom = out.top.indices, out.bottom.indices
    prior_top = AttentionPixelCNNPrior(8, (2, 2), channels=8, num_layers=2, num_heads=2)
    prior_bottom = ConditionalPixelCNNPrior(8, (4, 4), 8, (2, 2), channels=8, num_layers=2)
    for prior, kw in ((prior_top, {}), (prior_bottom, {"top_codes": top})):
        pyro.clear_param_store()
        codes = top if prior is prior_top else bottom
        svi = SVI(prior, lambda *args, **kwargs: None, Adam({"lr": 1e-2}), Trace_ELBO(max_plate_nesting=1))
        for _ in range(40):
            svi.step(codes, **kw)
    with torch.no_grad():
        uniform = log_weights(model, guide, x, num_particles=1).log_w[0]
        model.prior_top, model.prior_bottom = prior_top, prior_bottom
        learned = log_weights(model, guide, x, num_particles=1).log_w[0]
    gain = float((learned - uniform).mean())
    print("bound gain from the priors (nats per digit):", gain, "of", model.code_bits * math.log(2))
    assert gain > 0.2 * model.code_bits * math.log(2)
