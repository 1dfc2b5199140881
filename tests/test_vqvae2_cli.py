"""VQ-VAE-2 at the edge: ``lvm-pyro fit --model vqvae2``, ``fit-prior`` on both levels
(the class-mixture two-stage bound against a hand computation from the prior modules),
``fit-prior`` refusing to overwrite without ``--force``, ``sample`` drawing top then
bottom, ``fit-classifier`` and ``sample --classifier-threshold P`` (the reported
acceptance rate against the classifier's own probabilities); the class-mixture prior
(normalised, equal to the sum over classes), the padded nets and the classifiers."""

import itertools
import json
import math

import pytest
import torch

from lvm_pyro.cli import main
from lvm_pyro.models import AttentionPixelCNNPrior, ClassMixturePrior, ConditionalPixelCNNPrior
from lvm_pyro.nn import (SingleLevelDecoder, SingleLevelEncoder, SmallCNNClassifier,
                         VQVAE2Decoder, VQVAE2Encoder)
from lvm_pyro.training.config import ConfigError, RunConfig, VQVAE2Config

TINY_FIT = ["--model", "vqvae2", "--data", "digits", "--epochs", "1", "--channels", "8",
            "--num-res-blocks", "1", "--embedding-dim", "4", "--codebook-size-top", "8",
            "--codebook-size-bottom", "8", "--num-samples", "1", "--num-test", "40",
            "--no-progress"]
TINY_PRIOR = ["--epochs", "1", "--channels", "8", "--num-layers", "2", "--num-train", "300",
              "--num-test", "30", "--num-samples", "10", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny digits run with both priors and both classifiers (shared by the tests)."""
    run = tmp_path_factory.mktemp("vqvae2") / "run"
    assert main(["fit", *TINY_FIT, "--out", str(run)]) == 0
    assert main(["fit-prior", str(run), *TINY_PRIOR]) == 0
    assert main(["fit-classifier", str(run), "--epochs", "1", "--num-train", "400"]) == 0
    return run


def test_fit_reports_both_codebooks(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"] == "vqvae2" and cfg["codebook_size_top"] == 8
    assert m["code_grid_top"] == [2, 2] and m["code_grid_bottom"] == [4, 4]
    assert m["code_bits"] == 4 * 3 + 16 * 3
    # the uniform-prior bound fit reports = reconstruction + uniform code cost
    assert m["test_nll"] == pytest.approx(m["test_reconstruction_nll"] + 60 * math.log(2), rel=1e-5)
    for level in ("top", "bottom"):
        assert 1.0 <= m[f"test_perplexity_{level}"] <= 8.0
        assert f"perplexity_{level}" in m["train_curve"][0]


def test_fit_prior_bound_is_the_class_mixture_bound(run_dir):
    """The engine's bound with the mixture priors equals, per test point,
    log p(x | z_q) + log (1/C) sum_y p_t(c_t | y) p_b(c_b | c_t, y), computed here from the
    prior modules and the guide's codes; the conditional bound uses the true label."""
    from lvm_pyro.training.prior_stage2 import encode_two_levels, load_vqvae2_priors
    from lvm_pyro.training.run import load_run, load_run_data, prepare_data

    m = json.loads((run_dir / "prior_metrics.json").read_text())
    assert m["class_conditional"] and m["num_classes"] == 10
    assert m["grid_shape_top"] == [2, 2] and m["grid_shape_bottom"] == [4, 4]
    model, guide, config, _ = load_run(run_dir)
    model.eval(), guide.eval()
    top, bottom = load_vqvae2_priors(run_dir)
    assert isinstance(top, AttentionPixelCNNPrior) and isinstance(bottom, ConditionalPixelCNNPrior)
    x = prepare_data(config, "test")[:30]
    y = torch.as_tensor(load_run_data(config, "test").labels)[:30].long()
    with torch.no_grad():
        ct, cb = encode_two_levels(guide, x)
        out = guide.encode(x)
        rec = model.reconstruction_log_prob(x, out.top.quantized, out.bottom.quantized)
        per_class = torch.stack([top.log_prob(ct, torch.full((30,), k)) + bottom.log_prob(
            cb, torch.full((30,), k), context=ct) for k in range(10)])  # (10, 30)
        mix = torch.logsumexp(per_class, 0) - math.log(10)
        cond = per_class.gather(0, y[None])[0]
    assert m["two_stage_nll"] == pytest.approx(float(-(rec + mix).double().mean()), rel=1e-5)
    assert m["conditional_two_stage_nll"] == pytest.approx(float(-(rec + cond).double().mean()),
                                                           rel=1e-5)
    assert m["reconstruction_nll"] == pytest.approx(float(-rec.double().mean()), rel=1e-5)
    # bits/code of both levels add up to the prior's part of the bound
    prior_bits = m["prior_bits_per_code_top"] * 4 + m["prior_bits_per_code_bottom"] * 16
    prior_nats = prior_bits * math.log(2)
    assert m["two_stage_nll"] == pytest.approx(m["reconstruction_nll"] + prior_nats, rel=1e-5)


def test_fit_prior_refuses_to_overwrite_without_force(run_dir, capsys):
    """Before: a second fit-prior silently replaced the fitted prior."""
    before = (run_dir / "prior_checkpoint.pt").stat().st_mtime_ns
    assert main(["fit-prior", str(run_dir), *TINY_PRIOR]) == 2
    err = capsys.readouterr().err
    assert "already holds a fitted prior" in err and "--force" in err
    assert (run_dir / "prior_checkpoint.pt").stat().st_mtime_ns == before
    assert main(["fit-prior", str(run_dir), *TINY_PRIOR, "--force", "--resume"]) == 2


def test_fit_prior_force_replaces_a_one_level_prior(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--model", "vqvae", "--data", "digits", "--epochs", "1", "--channels", "4",
                 "--codebook-size", "4", "--embedding-dim", "2", "--num-samples", "1",
                 "--num-test", "20", "--out", str(run), "--no-progress"]) == 0
    prior = ["--epochs", "1", "--channels", "4", "--num-layers", "1", "--num-train", "50",
             "--num-test", "10", "--num-samples", "4", "--no-progress"]
    assert main(["fit-prior", str(run), *prior]) == 0
    assert main(["fit-prior", str(run), *prior]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["fit-prior", str(run), *prior, "--force"]) == 0


def test_sample_draws_top_then_bottom_and_rejects_by_classifier(run_dir, capsys):
    """``sample --classifier-threshold P``: the reported acceptance rate is the fraction of
    the same draws (same seed) whose rejection-classifier probability of the intended
    class is >= P; P = 0 keeps all."""
    from lvm_pyro.training.classifiers import load_classifier
    from lvm_pyro.training.prior_stage2 import load_vqvae2_priors
    from lvm_pyro.training.rejection_sampling import class_conditional_samples
    from lvm_pyro.training.run import load_run

    out = run_dir / "s"
    assert main(["sample", str(run_dir), "--num-samples", "30", "--out", str(out),
                 "--classifier-threshold", "0.3", "--seed", "3"]) == 0
    assert "acceptance rate" in capsys.readouterr().out
    assert (out / "prior_samples.png").exists() and (out / "rejection_all_samples.png").exists()
    m = json.loads((out / "rejection.json").read_text())
    model, _, _, _ = load_run(run_dir)
    model.eval()
    top, bottom = load_vqvae2_priors(run_dir)
    y = torch.arange(30) % 10
    images = class_conditional_samples(model, top, bottom, y,
                                       generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        p = torch.softmax(load_classifier(run_dir, "rejection")(images).double(), -1)[
            torch.arange(30), y]
    assert m["num_samples"] == 30 and m["num_kept"] == int((p >= 0.3).sum())
    assert m["acceptance_rate"] == pytest.approx(float((p >= 0.3).double().mean()))
    assert m["mean_probability"] == pytest.approx(float(p.mean()), rel=1e-6)
    assert main(["sample", str(run_dir), "--num-samples", "20", "--out", str(out),
                 "--classifier-threshold", "0"]) == 0
    assert json.loads((out / "rejection.json").read_text())["acceptance_rate"] == 1.0
    assert main(["sample", str(run_dir), "--classifier-threshold", "1.5"]) == 2


def test_classifier_commands_report_accuracy_and_refuse_overwrite(run_dir, capsys):
    m = json.loads((run_dir / "classifier_metrics.json").read_text())
    assert m["rejection"]["arch"] == "a" and m["evaluation"]["arch"] == "b"
    assert m["rejection"]["seed"] != m["evaluation"]["seed"]
    assert m["rejection"]["test_accuracy"] > 0.2  # ten classes: chance is 0.1
    assert main(["fit-classifier", str(run_dir), "--epochs", "1"]) == 2
    assert "--force" in capsys.readouterr().err


def test_sample_with_threshold_needs_a_vqvae2_run_with_a_classifier(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", *TINY_FIT, "--out", str(run)]) == 0
    assert main(["sample", str(run), "--classifier-threshold", "0.5"]) == 2
    assert "fit-prior" in capsys.readouterr().err
    assert not (run / "sample").exists()  # refused before drawing any picture


def test_fit_classifier_refuses_a_run_that_is_not_vqvae2(tmp_path, capsys):
    run = tmp_path / "vae"
    assert main(["fit", "--model", "vae", "--data", "digits", "--epochs", "1", "--num-test", "20",
                 "--num-samples", "2", "--no-progress", "--out", str(run)]) == 0
    assert main(["fit-classifier", str(run), "--epochs", "1", "--num-train", "50"]) == 2
    err = capsys.readouterr().err
    assert "vae run" in err and "vqvae2" in err
    assert not (run / "classifier_metrics.json").exists()  # refused before any training


@torch.no_grad()
def test_class_mixture_prior_is_normalised_and_sums_over_classes():
    """On 1x2 top grids and 2x4 bottom grids with K = 2: the top mixture sums to 1 over
    all 4 grids, the bottom factor to 1 over all 256 grids for every top grid, and
    top x bottom equals (1/C) sum_y p(c_t | y) p(c_b | c_t, y)."""
    torch.manual_seed(0)
    top = AttentionPixelCNNPrior(2, (1, 2), channels=8, num_layers=2, num_classes=3,
                                 num_heads=2).double()
    bottom = ConditionalPixelCNNPrior(2, (2, 4), 2, (1, 2), channels=8, num_layers=2,
                                      num_classes=3).double()
    for net in (top, bottom):  # random weights: make the conditionals far from uniform
        for p in net.parameters():
            p.data.normal_(0, 0.5)
    mt, mb = ClassMixturePrior(top), ClassMixturePrior(bottom, top=top)
    tops = torch.tensor(list(itertools.product([0, 1], repeat=2))).reshape(4, 1, 2)
    bottoms = torch.tensor(list(itertools.product([0, 1], repeat=8))).reshape(256, 2, 4)
    assert float(mt.log_prob(tops).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    for t in tops:
        ctx = t.expand(256, 1, 2)
        assert float(mb.log_prob(bottoms, context=ctx).exp().sum()) == pytest.approx(1.0, abs=1e-12)
        joint = mt.log_prob(t[None]) + mb.log_prob(bottoms, context=ctx)
        by_hand = torch.logsumexp(torch.stack([
            top.log_prob(t[None], torch.tensor([k])) + bottom.log_prob(
                bottoms, torch.full((256,), k), context=ctx) for k in range(3)]), 0) - math.log(3)
        assert torch.allclose(joint, by_hand, atol=1e-12)
    draws = mt.sample(2000, generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(draws == t).all(-1).all(-1).double().mean() for t in tops])
    p = mt.log_prob(tops).exp()
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / 2000).sqrt() + 1e-9)
    with pytest.raises(ValueError, match="class-conditional"):
        ClassMixturePrior(AttentionPixelCNNPrior(2, (1, 2), channels=8, num_heads=2))
    with pytest.raises(ValueError, match="context"):
        mb.log_prob(bottoms)


def test_padded_nets_and_config_for_32x32():
    """pad 2 reads 28x28 as 32x32: top 8x8, bottom 16x16; the decoder crops back."""
    enc = VQVAE2Encoder(1, 4, channels=8, res_channels=4, num_res_blocks=1, pad=2)
    dec = VQVAE2Decoder(4, (2, 1, 28, 28), channels=8, res_channels=4, num_res_blocks=1, pad=2)
    x = torch.rand(3, 1, 28, 28)
    h = enc.features(x)
    zt = enc.top(h)
    zb = enc.bottom(h, zt)
    assert zt.shape == (3, 4, 8, 8) and zb.shape == (3, 4, 16, 16)
    assert dec(zt, zb).shape == (3, 2, 1, 28, 28)
    one_enc = SingleLevelEncoder(1, 4, channels=8, res_channels=4, num_res_blocks=1, pad=2)
    one_dec = SingleLevelDecoder(4, (2, 1, 28, 28), channels=8, res_channels=4, num_res_blocks=1,
                                 pad=2)
    z = one_enc(x[None])  # any leading batch dims
    assert z.shape == (1, 3, 4, 16, 16) and one_dec(z).shape == (1, 3, 2, 1, 28, 28)
    with pytest.raises(ValueError, match="pad"):
        VQVAE2Encoder(1, 4, pad=-1)
    from lvm_pyro.training.builders import build_model

    cfg = RunConfig.from_dict({"model": "vqvae2", "data": "fashion-mnist", "pad": 2, "channels": 8})
    model, _ = build_model(cfg, (1, 28, 28))
    assert model.top_shape == (8, 8) and model.bottom_shape == (16, 16)
    with pytest.raises(ConfigError, match="pad"):
        build_model(RunConfig.from_dict({"model": "vqvae2", "pad": 1}), (1, 8, 8))
    with pytest.raises(ConfigError, match="codebook_size_top"):
        VQVAE2Config(codebook_size_top=0)


def test_small_classifiers_learn_a_separable_problem():
    """Two classes (bright top half vs bright bottom half, plus noise): both
    architectures reach > 95% accuracy on fresh data; features have the stated size."""
    from lvm_pyro.training.classifiers import accuracy, fit_classifier

    g = torch.Generator().manual_seed(0)

    def data(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
        x[y == 0, :, :4] += 0.5
        x[y == 1, :, 4:] += 0.5
        return x, y

    x, y = data(400)
    xt, yt = data(200)
    for arch, dim in (("a", 128), ("b", 64)):
        clf = fit_classifier(x, y, arch=arch, seed=0, epochs=3, batch_size=50, lr=3e-3)
        assert accuracy(clf, xt, yt) > 0.95
        assert clf.features(xt).shape == (200, dim)
    with pytest.raises(ValueError, match="arch"):
        SmallCNNClassifier((1, 8, 8), 2, arch="c")
    with pytest.raises(ValueError, match="expects"):
        SmallCNNClassifier((1, 8, 8), 2)(torch.zeros(2, 1, 9, 9))
