"""PixelCNN-decoder VAE (PixelVAE) and the VLAE local decoder: the z-conditioned decoder is
causal in x and uses z (Jacobians), p(x | z) sums to one (enumeration), cached == naive
sampling given z and samples follow p(x | z) (goodness of fit), the engine's particle
folding agrees with a per-particle computation, and posterior collapse by construction: on
a pixel Markov chain the decoder models exactly, training ends with KL ~ 0 and no active
units, while the one-layer local decoder on images with a global factor keeps KL > 1 nat."""

import itertools
import math

import pyro
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

from lvm_pyro.data import pixel_markov_chain, template_images
from lvm_pyro.diagnostics import active_units, average_kl
from lvm_pyro.guides import AmortizedNormalGuide
from lvm_pyro.inference import IWAE_ELBO, elbo_per_datapoint, log_marginal_likelihood, log_weights
from lvm_pyro.models import PixelCNNDecoderVAE
from lvm_pyro.models.likelihoods import DiscretizedLogisticLikelihood
from lvm_pyro.nn import MLP
from lvm_pyro.nn.pixelcnn import GatedPixelCNN
from lvm_pyro.nn.pixelcnn_sampling import sample_cached, sample_naive

TEST_FAILURE_RATE = 1e-3  # significance of each goodness-of-fit test (fixed seeds)


def _spread(module, seed=0, std=0.5):
    """Default init is near uniform; spread the weights so every path matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def _expected_dependency(height, width, i, j, reach):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[max(0, i - reach):i, max(0, j - reach):j + reach + 1] = True
    mask[i, max(0, j - reach):j] = True
    return mask


@pytest.mark.parametrize("num_layers,kernel_size", [(1, 3), (2, 3), (1, 5), (3, 3)])
def test_conditioned_network_is_causal_in_x_and_uses_z(num_layers, kernel_size):
    """Jacobians of the last features: w.r.t. the embedded image exactly the causal window
    (no blind spot, nothing at or after the position); w.r.t. z non-zero everywhere."""
    height, width, z_dim = 7, 8, 3
    net = _spread(GatedPixelCNN(3, 3, num_layers, kernel_size, cond_dim=z_dim).double())
    reach = (kernel_size // 2) * num_layers
    e = torch.randn(1, 3, height, width, dtype=torch.float64)
    z = torch.randn(1, z_dim, dtype=torch.float64)
    jac_x = torch.autograd.functional.jacobian(lambda t: net.features(t, z), e, vectorize=True)
    dep = jac_x[0].abs().sum(dim=(0, 3, 4)) > 0  # (H_out, W_out, H_in, W_in)
    for i in range(height):
        for j in range(width):
            assert torch.equal(dep[i, j], _expected_dependency(height, width, i, j, reach)), (i, j)
    jac_z = torch.autograd.functional.jacobian(lambda t: net.features(e, t), z, vectorize=True)
    assert bool((jac_z[0].abs().sum(dim=(0, 3, 4)) > 0).all())  # every position sees z


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_decoder_params_causal_by_changing_one_pixel(likelihood):
    """Model level: changing pixel p leaves the parameters of every pixel up to p (raster
    order) bit-identical, and changes some later one."""
    model = PixelCNNDecoderVAE(2, (1, 5, 6), likelihood, channels=4, num_layers=2).double()
    _spread(model.net, std=0.3)
    g = torch.Generator().manual_seed(0)
    if likelihood == "bernoulli":
        x = torch.randint(0, 2, (1, 1, 5, 6), generator=g).double()
    else:
        x = torch.randint(0, 256, (1, 1, 5, 6), generator=g).double() / 255
    z = torch.randn(1, 2, dtype=torch.float64)
    with torch.no_grad():
        base = model.decoder_params(x, z)  # (1, P, 1, H, W)
        for p in [0, 7, 14, 29]:
            i, j = divmod(p, 6)
            x2 = x.clone()
            x2[0, 0, i, j] = 1 - x2[0, 0, i, j] if likelihood == "bernoulli" else (x2[0, 0, i, j] + 0.5) % 1
            x2 = (x2 * 255).round() / 255 if likelihood != "bernoulli" else x2
            changed = (model.decoder_params(x2, z) != base).flatten(1, 2).any(0)  # (H, W)
            assert not changed.flatten()[:p + 1].any(), p
            if p < 29:
                assert changed.flatten()[p + 1:].any(), p


def test_log_likelihood_gradient_wrt_z_is_nonzero():
    model = PixelCNNDecoderVAE(4, (1, 6, 6), channels=8, num_layers=2)
    x = pixel_markov_chain(5, 6, 6, seed=1).images
    z = torch.randn(5, 4, requires_grad=True)
    model.conditional(x, z).log_prob(x).sum().backward()
    assert z.grad.shape == (5, 4)
    assert bool((z.grad.abs().sum(-1) > 0).all())


def _all_binary_images(height, width):
    grid = list(itertools.product((0.0, 1.0), repeat=height * width))
    return torch.tensor(grid, dtype=torch.float64).reshape(-1, 1, height, width)


def test_conditional_sums_to_one_bernoulli_and_discretized_logistic():
    """sum_x p(x | z) = 1 over every image, for a few z (enumeration)."""
    model = PixelCNNDecoderVAE(2, (1, 2, 3), channels=4, num_layers=2).double()
    _spread(model.net)
    images = _all_binary_images(2, 3)  # (64, 1, 2, 3)
    z = torch.randn(3, 1, 2, dtype=torch.float64)  # broadcast against the 64 images
    with torch.no_grad():
        total = model.conditional(images, z).log_prob(images).exp().sum(-1)  # (3,)
    assert torch.allclose(total, torch.ones(3, dtype=torch.float64), atol=1e-12)
    lik = DiscretizedLogisticLikelihood(num_levels=3)
    dl = PixelCNNDecoderVAE(2, (1, 2, 2), lik, channels=4, num_layers=2).double()
    _spread(dl.net)
    levels = torch.tensor(list(itertools.product((0.0, 0.5, 1.0), repeat=4)),
                          dtype=torch.float64).reshape(-1, 1, 2, 2)  # 81 images
    with torch.no_grad():
        total = dl.conditional(levels, z).log_prob(levels).exp().sum(-1)
    assert torch.allclose(total, torch.ones(3, dtype=torch.float64), atol=1e-10)


def test_cached_sampling_given_z_equals_naive():
    """The samplers of the PixelCNN prior, conditioned on z, unchanged: same draws given
    the same uniforms (float64), on the network and through the model."""
    net = _spread(GatedPixelCNN(4, 5, 3, 3, cond_dim=3).double(), std=0.3)
    u = torch.rand(4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 3, dtype=torch.float64)
    naive, cached = sample_naive(net, u, z), sample_cached(net, u, z)
    assert torch.equal(naive.codes, cached.codes)
    assert torch.allclose(naive.logits, cached.logits, rtol=0, atol=1e-12)
    assert len(torch.unique(cached.codes)) > 1
    model = PixelCNNDecoderVAE(3, (1, 5, 6), channels=5, num_layers=3).double()
    _spread(model.net, std=0.3)
    a = model.sample_x(z, uniforms=u, method="cached")
    b = model.sample_x(z, uniforms=u, method="naive")
    assert a.shape == (4, 1, 5, 6) and torch.equal(a, b)
    other = model.sample_x(-3 * z, uniforms=u)  # the draws depend on z
    assert not torch.equal(a, other)


def _gof(log_p, samples, images):
    index = {tuple(im.flatten().tolist()): k for k, im in enumerate(images)}
    counts = torch.zeros(len(images), dtype=torch.float64)
    for s in samples:
        counts[index[tuple(s.flatten().tolist())]] += 1
    probs, n = log_p.exp(), len(samples)
    small = probs * n < 20  # pool bins with expected count below 20
    p = torch.cat([probs[~small], probs[small].sum()[None]])
    c = torch.cat([counts[~small], counts[small].sum()[None]])
    if p[-1] * n < 20:  # pooled bin still too small: drop it (truncated test)
        return multinomial_goodness_of_fit(p[:-1], c[:-1], total_count=n)
    return multinomial_goodness_of_fit(p, c)


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_samples_given_z_follow_the_conditional(likelihood):
    """Pearson chi-square of 20000 draws x ~ p(x | z) for one z against the enumerated
    p(x | z); the same test rejects draws made for another z."""
    if likelihood == "bernoulli":
        model = PixelCNNDecoderVAE(2, (1, 2, 2), channels=4, num_layers=2).double()
        images = _all_binary_images(2, 2)  # 16
    else:
        model = PixelCNNDecoderVAE(2, (1, 2, 2), DiscretizedLogisticLikelihood(num_levels=3),
                                   channels=4, num_layers=2).double()
        images = torch.tensor(list(itertools.product((0.0, 0.5, 1.0), repeat=4)),
                              dtype=torch.float64).reshape(-1, 1, 2, 2)  # 81
    _spread(model.net, std=0.4)
    if likelihood != "bernoulli":
        with torch.no_grad():  # location mid-range, scale below the bin width
            model.net.head[3].bias.copy_(torch.tensor([0.5, -2.0]))
    z = torch.tensor([[0.8, -1.2]], dtype=torch.float64)
    with torch.no_grad():
        log_p = model.conditional(images, z).log_prob(images)
    assert 2.0 / len(images) < float(log_p.exp().max()) < 0.9  # neither uniform nor peaked
    g = torch.Generator().manual_seed(0)
    draws = model.sample_x(z.expand(20000, 2), generator=g)
    assert _gof(log_p, draws, images) > TEST_FAILURE_RATE
    wrong = model.sample_x(-2 * z.expand(20000, 2), generator=g)
    assert _gof(log_p, wrong, images) < TEST_FAILURE_RATE


def _pair(z_dim=3, shape=(1, 6, 6), **kwargs):
    model = PixelCNNDecoderVAE(z_dim, shape, channels=4, num_layers=2, **kwargs)
    guide = AmortizedNormalGuide(MLP(shape, (16,), (2, z_dim)), z_dim)
    return model, guide


def test_engine_folds_particles_like_a_per_particle_loop():
    """log_weights with K particles (decoder chunked to 4 images a call) equals
    log p(z_k) + log p(x | z_k) - log q(z_k | x) computed one particle at a time."""
    model, guide = _pair(max_batch=4)
    x = pixel_markov_chain(5, 6, 6, seed=2).images
    with torch.no_grad():
        out = log_weights(model, guide, x, 3)
    z = out.guide_trace.nodes["z"]["value"]  # (3, 5, z_dim)
    assert out.log_w.shape == (3, 5) and z.shape == (3, 5, 3)
    loc, scale = guide.loc_scale(x)
    q = torch.distributions.Normal(loc, scale)
    with torch.no_grad():
        for k in range(3):
            expected = (torch.distributions.Normal(0.0, 1.0).log_prob(z[k]).sum(-1)
                        + model.conditional(x, z[k]).log_prob(x) - q.log_prob(z[k]).sum(-1))
            assert torch.allclose(out.log_w[k], expected, atol=1e-4)


def test_estimators_run_unchanged():
    """log_marginal_likelihood (chunked particles), elbo_per_datapoint and IWAE_ELBO on
    the model; IS estimate >= the ELBO on average, both finite."""
    model, guide = _pair()
    x = pixel_markov_chain(6, 6, 6, seed=3).images
    pyro.set_rng_seed(0)
    log_px = log_marginal_likelihood(model, guide, x, num_samples=40, chunk_size=16)
    elbo = elbo_per_datapoint(model, guide, x, num_samples=40)
    assert log_px.shape == elbo.shape == (6,)
    assert bool(torch.isfinite(log_px).all()) and float(log_px.mean()) >= float(elbo.mean())
    loss = IWAE_ELBO(num_particles=4).loss(model, guide, x)
    assert math.isfinite(loss) and loss > 0


@pytest.mark.parametrize("num_layers,kernel_size,reach,pixels",
                         [(1, 3, 1, 4), (2, 3, 2, 12), (1, 5, 2, 12), (5, 3, 5, 60)])
def test_receptive_field_in_pixels(num_layers, kernel_size, reach, pixels):
    """The property counts the pixels the interior conditional depends on (checked against
    the dependency mask of the Jacobian test)."""
    model = PixelCNNDecoderVAE(2, (1, 16, 16), num_layers=num_layers, kernel_size=kernel_size,
                               channels=2)
    assert model.receptive_radius == reach and model.receptive_field == pixels
    assert int(_expected_dependency(16, 16, 8, 8, reach).sum()) == pixels
    assert not model.covers_image
    assert PixelCNNDecoderVAE(2, (1, 8, 8), num_layers=4, kernel_size=5, channels=2).covers_image


def test_argument_and_input_errors():
    with pytest.raises(ValueError, match="one image channel"):
        PixelCNNDecoderVAE(2, (3, 8, 8))
    with pytest.raises(ValueError, match="likelihood"):
        PixelCNNDecoderVAE(2, (1, 8, 8), "gaussian")
    with pytest.raises(ValueError, match="z_dim"):
        PixelCNNDecoderVAE(0, (1, 8, 8))
    with pytest.raises(ValueError, match="not both"):
        GatedPixelCNN(3, num_classes=2, cond_dim=2)
    with pytest.raises(ValueError, match="cond_dim"):
        GatedPixelCNN(3, cond_dim=0)
    with pytest.raises(ValueError, match="num_outputs"):
        GatedPixelCNN(3, num_outputs=0)
    model, guide = _pair()
    with pytest.raises(ValueError, match="binary"):
        model(torch.full((2, 1, 6, 6), 0.5))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 1, 5, 6))
    with pytest.raises(ValueError, match="conditioned on a vector"):
        model.net(torch.zeros(1, 6, 6, dtype=torch.long))
    dl = PixelCNNDecoderVAE(2, (1, 4, 4), "discretized_logistic", channels=2, num_layers=1)
    with pytest.raises(ValueError, match="naive"):
        dl.sample_x(torch.zeros(1, 2), method="cached")
    assert dl.sample(2).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="z must be"):
        model.sample_x(torch.zeros(2, 5))


# -- posterior collapse, deterministic by construction (fixed seeds) ---------------------
def _train(model, guide, x, steps, lr=3e-3, seed=0):
    """Plain ELBO (analytic KL), Adam, minibatches of 100."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, Adam({"lr": lr}), TraceMeanField_ELBO())
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (100,), generator=g)
        svi.step(x[idx], num_data=len(x), idx=idx)


def test_pixelcnn_decoder_collapses_on_a_pixel_markov_chain():
    """Data a two-layer PixelCNN represents exactly (each pixel copies its left / upper
    neighbour, flipped w.p. 0.1): the best ELBO has q(z | x) = p(z). After 200 steps the
    average KL is below 0.05 nats, no unit is active, and the ELBO is within 1 nat of the
    exact mean log p(x) of the images (the decoder alone models the data)."""
    data = pixel_markov_chain(1000, 8, 8, flip=0.1, seed=0)
    z_dim = 4
    model = PixelCNNDecoderVAE(z_dim, (1, 8, 8), channels=8, num_layers=2)
    guide = AmortizedNormalGuide(MLP((1, 8, 8), (64,), (2, z_dim)), z_dim)
    assert average_kl(model, guide, data.images).mean() > 0.2  # informative at the start
    _train(model, guide, data.images, steps=200)
    kl = float(average_kl(model, guide, data.images).mean())
    units = active_units(guide, data.images)
    elbo = float(elbo_per_datapoint(model, guide, data.images, num_samples=4).mean())
    assert kl < 0.05, kl
    assert units.num_active == 0, units.variance
    assert -elbo < float(-data.log_px.mean()) + 1.0, (elbo, data.entropy)  # exact NLL + 1 nat


def test_local_decoder_keeps_the_global_factor_in_z():
    """VLAE-style local decoder (one 3x3 layer: 4 earlier pixels) on images of one of 8
    gray templates plus binarisation noise (global factor of entropy log 8): z carries
    more than 1 nat after 200 steps."""
    data = template_images(1000, num_templates=8, seed=0)
    z_dim = 4
    model = PixelCNNDecoderVAE(z_dim, (1, 8, 8), channels=8, num_layers=1, kernel_size=3)
    guide = AmortizedNormalGuide(MLP((1, 8, 8), (64,), (2, z_dim)), z_dim)
    assert model.receptive_field == 4
    _train(model, guide, data.images, steps=200)
    kl = float(average_kl(model, guide, data.images).mean())
    units = active_units(guide, data.images)
    assert kl > 1.0, kl
    assert units.num_active >= 1
