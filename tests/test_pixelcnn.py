"""Gated PixelCNN prior: causality (no blind spot) by Jacobians, normalisation and
sample / log_prob goodness of fit by enumeration, cached == naive sampling, the Pyro
distribution and the two-stage bound handler on a toy model written here."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit

from lvm_pyro.inference import log_weights
from lvm_pyro.models import GatedPixelCNNPrior
from lvm_pyro.models.codes_prior import ModuleCodesPrior
from lvm_pyro.models.pixelcnn_prior import CodesPrior
from lvm_pyro.nn.pixelcnn import GatedPixelCNN
from lvm_pyro.nn.pixelcnn_sampling import inverse_cdf, sample_cached, sample_naive
from lvm_pyro.sites import CODES, OBS, data_plate

#: significance level of every goodness-of-fit test here: a correct sampler fails a given
#: test with probability 1e-3 over seeds (the seeds are fixed, so the run is deterministic)
TEST_FAILURE_RATE = 1e-3


def _random_net(num_codes, channels=4, num_layers=2, kernel_size=3, num_classes=None,
                dtype=torch.float64, seed=0, sharpen=1.0, std=0.6):
    torch.manual_seed(seed)
    net = GatedPixelCNN(num_codes, channels, num_layers, kernel_size, num_classes).to(dtype)
    with torch.no_grad():  # default init is near uniform; spread weights so paths matter
        for p in net.parameters():
            p.normal_(0.0, std)
        net.head[3].weight.mul_(sharpen)
    return net


def _expected_dependency(height, width, i, j, reach):
    """Positions the output at (i, j) must depend on: rows i - reach .. i - 1 within
    columns j +- reach, and row i, columns j - reach .. j - 1."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[max(0, i - reach):i, max(0, j - reach):j + reach + 1] = True
    mask[i, max(0, j - reach):j] = True
    return mask


@pytest.mark.parametrize("num_layers,kernel_size,num_classes",
                         [(1, 3, None), (2, 3, None), (3, 3, 2), (2, 5, None), (1, 7, None)])
def test_causality_and_no_blind_spot(num_layers, kernel_size, num_classes):
    height, width = 9, 10
    net = _random_net(3, channels=3, num_layers=num_layers, kernel_size=kernel_size,
                      num_classes=num_classes)
    reach = (kernel_size // 2) * num_layers
    assert net.receptive_radius == reach
    e = torch.randn(1, 3, height, width, dtype=torch.float64)
    y = None if num_classes is None else torch.tensor([1])
    # Jacobians of the last features (the head is 1x1 and its ReLUs could zero a
    # gradient by chance) and of the logits: (C or K, H, W) outputs x (C, H, W) inputs
    jac_f = torch.autograd.functional.jacobian(lambda t: net.features(t, y), e, vectorize=True)
    jac_l = torch.autograd.functional.jacobian(lambda t: net.forward_embedded(t, y), e, vectorize=True)
    # jac[0]: (C_out, H, W, 1, C_in, H, W) -> (H_out, W_out, H_in, W_in)
    dep_f = jac_f[0].abs().sum(dim=(0, 3, 4)) > 0
    dep_l = jac_l[0].abs().sum(dim=(0, 3, 4)) > 0
    for i in range(height):
        for j in range(width):
            expected = _expected_dependency(height, width, i, j, reach)
            assert torch.equal(dep_f[i, j], expected), (i, j, dep_f[i, j].int(), expected.int())
            assert not (dep_l[i, j] & ~expected).any(), (i, j)  # logits: causal


def _all_grids(num_codes, height, width):
    grids = list(itertools.product(range(num_codes), repeat=height * width))
    return torch.tensor(grids, dtype=torch.long).reshape(-1, height, width)


def test_log_prob_sums_to_one_over_all_grids():
    prior = GatedPixelCNNPrior(3, (2, 2), channels=4, num_layers=2).double()
    prior.net.load_state_dict(_random_net(3, sharpen=3.0).state_dict())
    grids = _all_grids(3, 2, 2)  # 81 grids
    with torch.no_grad():
        total = prior.log_prob(grids).exp().sum()
    assert abs(float(total) - 1.0) < 1e-12


def _grid_index(codes, num_codes):
    flat = codes.reshape(len(codes), -1)
    weights = num_codes ** torch.arange(flat.shape[1] - 1, -1, -1)
    return (flat * weights).sum(-1)


def _gof(prior, samples, grids):
    """Pearson chi-square of sample counts against exp(log_prob) over every grid; bins
    with expected count below 20 are pooled into one."""
    with torch.no_grad():
        probs = prior.log_prob(grids).exp()
    counts = torch.bincount(_grid_index(samples, prior.num_codes), minlength=len(grids)).double()
    n = len(samples)
    small = probs * n < 20
    p = torch.cat([probs[~small], probs[small].sum()[None]])
    c = torch.cat([counts[~small], counts[small].sum()[None]])
    if p[-1] * n < 20:  # pooled bin still too small: drop it (truncated test)
        return multinomial_goodness_of_fit(p[:-1], c[:-1], total_count=n)
    return multinomial_goodness_of_fit(p, c)


@pytest.fixture(scope="module")
def tiny_prior():
    """2 x 3 grid, 2 codes (64 grids), peaked and strongly dependent."""
    prior = GatedPixelCNNPrior(2, (2, 3), channels=4, num_layers=2).double()
    prior.net.load_state_dict(_random_net(2, sharpen=3.0, seed=0).state_dict())
    return prior


@pytest.mark.parametrize("method", ["cached", "naive"])
def test_sample_matches_log_prob(tiny_prior, method):
    grids = _all_grids(2, 2, 3)
    with torch.no_grad():
        probs = tiny_prior.log_prob(grids).exp()
    assert 0.2 < float(probs.max()) < 0.9  # neither near uniform nor near deterministic
    samples = tiny_prior.sample(20000, method=method, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (20000, 2, 3) and samples.dtype == torch.long
    assert _gof(tiny_prior, samples, grids) > TEST_FAILURE_RATE


def test_gof_rejects_a_sampler_that_ignores_context(tiny_prior):
    """The same test fails for a wrong sampler: each position drawn from its logits at
    an all-zero context (the marginal structure is lost)."""
    grids = _all_grids(2, 2, 3)
    net = tiny_prior.net
    with torch.no_grad():
        logits = net(torch.zeros(1, 2, 3, dtype=torch.long))[0]  # (K, H, W)
    g = torch.Generator().manual_seed(1)
    u = torch.rand(20000, 2, 3, generator=g, dtype=torch.float64)
    wrong = torch.stack([torch.stack([inverse_cdf(logits[:, i, j].expand(20000, -1), u[:, i, j])
                                      for j in range(3)], -1) for i in range(2)], -2)
    assert _gof(tiny_prior, wrong, grids) < TEST_FAILURE_RATE


@pytest.mark.parametrize("num_layers,kernel_size,num_classes,shape",
                         [(3, 3, None, (6, 7)), (2, 5, 3, (5, 5)), (4, 3, None, (4, 9))])
def test_cached_sampling_equals_naive_float64(num_layers, kernel_size, num_classes, shape):
    net = _random_net(5, channels=6, num_layers=num_layers, kernel_size=kernel_size,
                      num_classes=num_classes, std=0.3, sharpen=3.0)
    u = torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = None if num_classes is None else torch.tensor([0, 2, 1, 2])
    naive, cached = sample_naive(net, u, y), sample_cached(net, u, y)
    assert torch.equal(naive.codes, cached.codes)
    assert torch.allclose(naive.logits, cached.logits, rtol=0, atol=1e-12)
    assert len(torch.unique(cached.codes)) > 1


def test_cached_sampling_equals_naive_float32():
    """Default (PyTorch) initialisation, the benchmark's shape at a smaller width."""
    torch.manual_seed(0)
    net = GatedPixelCNN(64, channels=16, num_layers=5)
    u = torch.rand(8, 7, 7, generator=torch.Generator().manual_seed(0))
    naive, cached = sample_naive(net, u), sample_cached(net, u)
    assert torch.equal(naive.codes, cached.codes)
    assert float((naive.logits - cached.logits).abs().max()) < 1e-5
    with torch.no_grad():
        assert float((net(cached.codes) - cached.logits).abs().max()) < 1e-5


def test_sampler_input_errors():
    net = _random_net(3, num_classes=2)
    u = torch.rand(2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="y of shape"):
        sample_cached(net, u)
    with pytest.raises(ValueError, match="dtype"):
        sample_naive(net, u.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_samples, H, W"):
        sample_cached(net, u[0], torch.tensor([0, 1]))


def test_network_argument_errors():
    with pytest.raises(ValueError, match="kernel_size"):
        GatedPixelCNN(4, kernel_size=4)
    with pytest.raises(ValueError, match="num_codes"):
        GatedPixelCNN(1)
    with pytest.raises(ValueError, match="grid_shape"):
        GatedPixelCNNPrior(4, (0, 3))


def test_prior_log_prob_shapes_and_errors():
    prior = GatedPixelCNNPrior(4, (3, 3), channels=4, num_layers=2)
    codes = torch.randint(0, 4, (2, 5, 3, 3))
    lp = prior.log_prob(codes)
    assert lp.shape == (2, 5)
    assert torch.allclose(lp[1, 2], prior.log_prob(codes[1, 2:3])[0])
    with pytest.raises(ValueError, match="integer"):
        prior.log_prob(codes.float())
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        prior.log_prob(codes + 1)
    with pytest.raises(ValueError, match="shape"):
        prior.log_prob(codes[..., :2])
    with pytest.raises(ValueError, match="method"):
        prior.sample(2, method="fast")
    cond = GatedPixelCNNPrior(4, (3, 3), channels=4, num_layers=2, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        cond.log_prob(codes)
    with pytest.raises(ValueError, match="class-conditional"):
        cond.sample(2)
    assert cond.sample(3, y=torch.tensor([0, 1, 2])).shape == (3, 3, 3)


def test_pyro_program_and_distribution():
    """The stage-two program's trace scores log_prob; the distribution expands over
    plates and samples in range."""
    prior = GatedPixelCNNPrior(4, (3, 3), channels=4, num_layers=2)
    codes = torch.randint(0, 4, (5, 3, 3))
    tr = poutine.trace(prior).get_trace(codes, num_data=5)
    assert torch.allclose(tr.log_prob_sum(), prior.log_prob(codes).sum())
    assert any(k.startswith("net$$$") for k in pyro.get_param_store().keys())
    d = prior.distribution().expand([2, 5])
    assert isinstance(d, ModuleCodesPrior) and d.event_shape == (3, 3)
    s = d.sample()
    assert s.shape == (2, 5, 3, 3) and int(s.min()) >= 0 and int(s.max()) < 4
    assert d.log_prob(s).shape == (2, 5)
    assert bool(d.support.check(s).all())


def test_two_stage_bound_handler_on_a_toy_model():
    """A toy VQ-like model written here: uniform codes, x | codes ~ N(mean of a table,
    1); guide a point mass at given codes. Under CodesPrior the engine's log weight is
    log p(x | codes) + log p_prior(codes)."""
    num_codes, grid = 3, (2, 2)
    table = torch.tensor([-1.0, 0.5, 2.0])

    def model(x, *, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            logits = torch.zeros(num_codes)
            c = pyro.sample(CODES, dist.Categorical(logits=logits).expand(list(grid)).to_event(2))
            pyro.sample(OBS, dist.Normal(table[c], 1.0).to_event(2), obs=x)

    fixed = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])

    def guide(x, *, num_data=None, idx=None):
        with data_plate(x, num_data, idx):
            pyro.sample(CODES, dist.Delta(fixed.expand(*x.shape[:0], *fixed.shape), event_dim=2))

    prior = GatedPixelCNNPrior(num_codes, grid, channels=4, num_layers=2)
    x = torch.randn(2, *grid)
    lw_uniform = log_weights(model, guide, x, 1).log_w
    lw_prior = log_weights(CodesPrior(prior)(model), guide, x, 3).log_w
    log_px_given_z = dist.Normal(table[fixed], 1.0).log_prob(x).sum((-2, -1))
    assert torch.allclose(lw_uniform[0], log_px_given_z - 4 * math.log(3), atol=1e-5)
    expected = log_px_given_z + prior.log_prob(fixed)
    assert lw_prior.shape == (3, 2)
    assert torch.allclose(lw_prior, expected.expand(3, 2), atol=1e-5)


def test_stage_two_training_reaches_the_entropy():
    """Maximum likelihood through the generic Trainer (prior as a Pyro program observing
    "codes", empty guide) on grids that copy their first code: H(codes) = log 4 nats per
    grid, against 9 log 4 = 12.5 for the uniform prior."""
    from pyro.infer import Trace_ELBO

    from lvm_pyro.guides.empty import EmptyGuide
    from lvm_pyro.training import Trainer

    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (512,), generator=g)
    codes = first[:, None, None].expand(512, 3, 3).clone()
    prior = GatedPixelCNNPrior(4, (3, 3), channels=8, num_layers=2)
    trainer = Trainer(prior, EmptyGuide(), Trace_ELBO(max_plate_nesting=1), lr=1e-2,
                      batch_size=64, binarization="none", progress=False)
    history = trainer.fit(codes, 15)
    with torch.no_grad():
        nll = float(-prior.log_prob(codes).mean())
    assert abs(history[-1]["loss"] - nll) < 0.5  # the loop's loss is -log p per grid
    assert nll < math.log(4) + 0.1, nll
    samples = prior.sample(200, generator=torch.Generator().manual_seed(0))
    assert bool((samples == samples[:, :1, :1]).float().mean() > 0.95)


# -- integration with the VQ-VAE (lvm_pyro.models.VQVAEModel, lvm_pyro.guides.VQEncoderGuide)
def _tiny_vqvae():
    from lvm_pyro.training.builders import build_vqvae

    cfg = {"data": "digits", "codebook_size": 8, "embedding_dim": 4, "channels": 8,
           "likelihood": "discretized_logistic", "decay": 0.99}
    model, guide = build_vqvae(cfg, (1, 8, 8))
    model.eval()
    guide.eval()
    return model, guide


def test_two_stage_bound_on_the_vqvae():
    """The engine's weight under CodesPrior, the weight with the model's own ``prior``
    slot, and log p(x | z_q) + log p_prior(codes) computed by hand agree; with the
    uniform prior the weight is log p(x | z_q) - h w log K."""
    from lvm_pyro.training.prior_stage import encode_codes, two_stage_bound

    model, guide = _tiny_vqvae()
    x = torch.randint(0, 17, (6, 1, 8, 8)).float() / 16
    prior = GatedPixelCNNPrior(8, (2, 2), channels=4, num_layers=2)
    with torch.no_grad():
        out = guide.encode(x)
        rec = model.reconstruction_log_prob(x, out.quantized)
        by_hand = rec + prior.log_prob(out.indices)
        bound = two_stage_bound(model, guide, prior, x)
        uniform = log_weights(model, guide, x, 1).log_w[0]
        model.prior = prior
        slot = log_weights(model, guide, x, 1).log_w[0]
        model.prior = None
    assert torch.equal(encode_codes(guide, x), out.indices)
    assert torch.allclose(bound, by_hand, atol=1e-4)
    assert torch.allclose(slot, by_hand, atol=1e-4)
    assert torch.allclose(uniform, rec - 4 * math.log(8), atol=1e-4)


def test_fit_prior_and_sample_commands(tmp_path, capsys):
    """fit (1 epoch, digits) -> fit-prior -> sample: files written, and the bound's
    parts add up: two-stage NLL = reconstruction NLL + prior NLL (same codes)."""
    import json

    from lvm_pyro.cli import main

    run = tmp_path / "run"
    assert main(["fit", "--model", "vqvae", "--data", "digits", "--likelihood",
                 "discretized_logistic", "--binarization", "none", "--num-samples", "1",
                 "--epochs", "1", "--codebook-size", "16", "--channels", "8",
                 "--num-test", "50", "--out", str(run), "--no-progress"]) == 0
    assert main(["fit-prior", str(run), "--epochs", "1", "--channels", "8", "--num-layers", "2",
                 "--num-train", "200", "--num-samples", "16", "--no-progress"]) == 0
    m = json.loads((run / "prior_metrics.json").read_text())
    # without --num-test, the test points of the run's own evaluation (fit's --num-test 50)
    assert json.loads((run / "metrics.json").read_text())["num_test_points"] == 50
    assert m["grid_shape"] == [2, 2] and m["codebook_size"] == 16 and m["num_test_points"] == 50
    assert abs(m["two_stage_nll"] - (m["reconstruction_nll"] + m["prior_nll"])) < 1e-3
    assert m["uniform_bits_per_code"] == 4.0
    assert abs(m["prior_bits_per_code"] * 4 * math.log(2) - m["prior_nll"]) < 1e-6
    assert main(["sample", str(run), "--num-samples", "16"]) == 0
    assert (run / "sample" / "prior_samples.png").exists()
    assert (run / "sample" / "prior_vs_reconstructions.png").exists()
    assert main(["fit-prior", str(tmp_path / "missing")]) == 2
    # trained further: the prior is stale; fit-prior names --force, sample says why no
    # prior samples were drawn
    assert main(["fit", "--model", "vqvae", "--data", "digits", "--likelihood",
                 "discretized_logistic", "--binarization", "none", "--num-samples", "1",
                 "--epochs", "2", "--codebook-size", "16", "--channels", "8",
                 "--num-test", "50", "--out", str(run), "--no-progress", "--resume"]) == 0
    capsys.readouterr()
    assert main(["fit-prior", str(run), "--resume", "--no-progress"]) == 2
    assert "earlier training" in capsys.readouterr().err
    assert main(["sample", str(run), "--num-samples", "4", "--out", str(tmp_path / "s2")]) == 0
    assert "fit-prior" in capsys.readouterr().err and not (tmp_path / "s2" / "prior_samples.png").exists()
