"""Command-line integration of the PixelCNN-decoder VAE, KL schedules, aggressive encoder
training, beta-TCVAE with the disentanglement command, and dequantised models: tiny
settings on the bundled digits and a small slice of the procedural dSprites."""

import json
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.cli import main
from lvm_pyro.data import binarize_test, load_dataset
from lvm_pyro.guides import AmortizedNormalGuide, UniformDequantizer
from lvm_pyro.inference import (KLWeighted_ELBO, TCVAE_ELBO, bits_per_dim_offset, log_weights,
                                nll_report)
from lvm_pyro.models import BernoulliLikelihood, FlowModel, VAEModel
from lvm_pyro.nn import MLP
from lvm_pyro.training import AggressiveEncoder, RunConfig, Trainer, load_run
from lvm_pyro.training.builders import ELBO_BUILDERS, build_model, build_objective
from lvm_pyro.training.config import ConfigError
from lvm_pyro.training.run import latent_metrics
from lvm_pyro.training.run import test_bits_offset as run_bits_offset

QUICK = ["--epochs", "1", "--num-samples", "2", "--num-test", "30", "--no-progress"]
SMALL_VAE = ["--z-dim", "2", "--hidden-dim", "16", "--num-hidden", "1"]
EVENT = (1, 8, 8)


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


# -- PixelCNN-decoder VAE, test_kl and active units ------------------------------------
def test_pixelvae_fit_reports_test_kl_and_active_units_of_the_closed_form(tmp_path):
    out = tmp_path / "pv"
    assert main(["fit", "--model", "pixelvae", "--decoder-layers", "1", "--decoder-kernel", "3",
                 "--channels", "8", "--out", str(out), *SMALL_VAE, *QUICK]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model"], cfg["decoder_layers"], cfg["decoder_kernel"]) == ("pixelvae", 1, 3)
    m = _metrics(out)
    run = load_run(out)
    assert run.model.receptive_radius == 1
    x = binarize_test(load_dataset("digits", "test").images, seed=0)[:30]
    with torch.no_grad():  # oracle: KL(N(mu, s^2) || N(0, 1)) by hand from the guide's net
        q = pyro.poutine.trace(run.guide).get_trace(x).nodes["z"]["fn"].base_dist
        mu, s = q.loc, q.scale
        kl = 0.5 * (mu ** 2 + s ** 2 - 1 - 2 * torch.log(s)).sum(-1)
        var = mu.double().var(0)
    assert m["test_kl"] == pytest.approx(float(kl.mean()), rel=1e-5, abs=1e-6)
    assert m["active_units"] == int((var > 0.01).sum()) and m["latent_dims"] == 2


def test_latent_metrics_are_skipped_with_the_reason_without_a_gaussian_z():
    model, guide = build_model({"model": "sbn", "z_dim": 3, "num_hidden": 0}, EVENT)
    x = binarize_test(load_dataset("digits", "test").images[:10])
    m = latent_metrics(model, guide, x)
    assert m["test_kl_se"] is None and m["active_units"] is None
    assert "Bernoulli" in m["latent_metrics_note"] and "Gaussian" in m["latent_metrics_note"]


def test_pixelvae_config_rejects_an_even_kernel_and_a_continuous_likelihood(capsys):
    assert main(["fit", "--model", "pixelvae", "--decoder-kernel", "4"]) == 2
    assert "--decoder-kernel must be odd" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="likelihood"):
        RunConfig.from_dict({"model": "pixelvae", "likelihood": "gaussian"})


# -- KL schedules ------------------------------------------------------------------------
def test_kl_schedule_flags_build_the_stated_schedules():
    plain = build_objective(RunConfig.from_dict({}), num_data=1500)
    assert isinstance(plain, Trace_ELBO)  # constant beta = 1: the plain objective
    warm = build_objective(RunConfig.from_dict({"kl_warmup": 10, "beta": 2.0}), num_data=1500)
    assert isinstance(warm, KLWeighted_ELBO)  # --kl-warmup keeps its meaning
    assert [warm.schedule(t) for t in (0, 5, 10, 20)] == [0.0, 1.0, 2.0, 2.0]
    # 2 epochs x ceil(1500 / 100) = 30 steps in 3 cycles: period 10, ramp over 5 steps
    cyc = build_objective(RunConfig.from_dict({"kl_schedule": "cyclical", "kl_cycles": 3,
                                               "beta": 4.0, "epochs": 2}), num_data=1500)
    got = [cyc.schedule(t) for t in (0, 2, 5, 9, 10, 12, 29)]
    assert got == pytest.approx([0.0, 1.6, 4.0, 4.0, 0.0, 1.6, 4.0])
    with pytest.raises(ConfigError, match="kl_schedule"):  # cyclical needs the run's length
        build_objective(RunConfig.from_dict({"kl_schedule": "cyclical"}).objective)


@pytest.mark.parametrize("args, message", [
    (["--kl-schedule", "linear"], "--kl-schedule linear needs --kl-warmup"),
    (["--kl-schedule", "cyclical", "--kl-warmup", "5"], "--kl-warmup applies to the linear"),
    (["--kl-ramp-fraction", "0"], "--kl-ramp-fraction must be in (0, 1]"),
    (["--elbo", "iwae", "--kl-cycles", "2"], "--kl-cycles does not apply"),
])
def test_kl_schedule_flags_refuse_what_does_not_fit(args, message, capsys):
    assert main(["fit", *args]) == 2
    assert message in capsys.readouterr().err


# -- beta-TCVAE and the disentanglement command ------------------------------------------
def test_tcvae_objective_takes_the_training_set_size_from_the_data(tmp_path, monkeypatch):
    cfg = RunConfig.from_dict({"elbo": "tcvae", "alpha": 0.5, "beta": 3.0,
                               "tc_estimator": "mws"})
    with pytest.raises(ConfigError, match="num_data"):
        build_objective(cfg)
    elbo = build_objective(cfg, num_data=123)
    assert isinstance(elbo, TCVAE_ELBO)
    assert (elbo.num_data, elbo.alpha, elbo.beta, elbo.gamma, elbo.estimator) == (
        123, 0.5, 3.0, 1.0, "mws")
    seen = []
    original = ELBO_BUILDERS["tcvae"]

    def spy(c, *, num_data):
        seen.append(num_data)
        return original(c, num_data=num_data)

    monkeypatch.setitem(ELBO_BUILDERS, "tcvae", spy)
    assert main(["fit", "--elbo", "tcvae", "--out", str(tmp_path / "tc"), *SMALL_VAE,
                 *QUICK]) == 0
    assert seen == [len(load_dataset("digits", "train").images)]


@pytest.fixture
def small_dsprites(monkeypatch):
    """The procedural dSprites, every 40th image of each split (about 1040 / 115)."""
    import lvm_pyro.data.dsprites as ds

    original, cache = ds.load_dsprites, {}

    def small(split="train", root=None, variant="cpu"):
        if (split, root, variant) not in cache:  # rendered once per split
            full = original(split, root, variant)
            keep = slice(None, None, 40)
            cache[split, root, variant] = full._replace(
                images=full.images[keep], labels=full.labels[keep], factors=full.factors[keep])
        return cache[split, root, variant]

    monkeypatch.setattr(ds, "load_dsprites", small)


def test_disentanglement_command_scores_a_tcvae_run_on_dsprites(tmp_path, small_dsprites,
                                                                capsys):
    out = tmp_path / "ds"
    assert main(["fit", "--data", "dsprites", "--elbo", "tcvae", "--beta", "4", "--z-dim", "3",
                 "--hidden-dim", "16", "--num-hidden", "1", "--out", str(out), *QUICK]) == 0
    assert main(["disentanglement", str(out), "--num-train", "100", "--num-test", "50"]) == 0
    res = json.loads((out / "disentanglement.json").read_text())
    keys = ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
            "dci_informativeness", "sap")
    for k in keys:
        assert math.isfinite(res[k]) and -1e-9 <= res[k] <= 1 + 1e-9, k
    assert res["num_codes"] == 3 and res["num_points"] == len(
        load_dataset("dsprites", "test").images)
    assert res["factor_names"] == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert res["settings"]["num_train"] == 100
    capsys.readouterr()


def test_disentanglement_command_refuses_data_without_factors(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["fit", "--out", str(out), *SMALL_VAE, *QUICK]) == 0
    capsys.readouterr()
    assert main(["disentanglement", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'digits' has no known generative factors" in err and "--data dsprites" in err
    assert not (out / "disentanglement.json").exists()


# -- dequantisation ------------------------------------------------------------------------
def test_one_offset_rule_knows_self_dequantising_models():
    off = bits_per_dim_offset(False, "none", 17, 64, model_dequantizes=True)
    assert off.offset_nats == 0.0 and "dequantised model" in off.note
    for transform in ("dynamic", "static", "dequantize"):
        with pytest.raises(ValueError, match="raw levels"):
            bits_per_dim_offset(False, transform, 17, 64, model_dequantizes=True)
    cfg = RunConfig.from_dict({"model": "flow"})
    assert cfg.data.binarization == "none"  # the model adds u itself
    assert run_bits_offset(cfg, torch.zeros(2, *EVENT)).offset_nats == 0.0


def test_dequantised_bound_reported_alike_by_the_model_and_the_density_with_its_offset():
    """One bound, two reports: the FlowModel's log weight with q(u) = U[0, 1)^D (offset 0)
    and its density p_y at y = (k + u) / L with the uniform-dequantisation offset D log L
    give the same bits/dim for the same draws u."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    levels, x = 17, load_dataset("digits", "test").images[:20]
    model = FlowModel(EVENT, levels, num_scales=1, num_couplings=1, hidden_channels=4)
    out = log_weights(model, UniformDequantizer(), x, 1)
    u = out.guide_trace.nodes["u"]["value"][0]  # (20, 1, 8, 8)
    k = torch.round(x * (levels - 1))
    with torch.no_grad():
        log_py = model.flow.distribution().log_prob((k + u) / levels)  # density over y
    mine = nll_report(out.log_w[0], run_bits_offset(RunConfig.from_dict({"model": "flow"}), x))
    theirs = nll_report(log_py, bits_per_dim_offset(False, "dequantize", levels, 64))
    assert mine.bits_per_dim == pytest.approx(theirs.bits_per_dim, rel=1e-5)
    assert mine.nll == pytest.approx(theirs.nll, rel=1e-5)


@pytest.mark.parametrize("args", [
    ["--model", "flow", "--num-scales", "1", "--num-couplings", "1", "--hidden-channels", "4"],
    ["--model", "vae", "--likelihood", "gaussian", "--dequantization", "variational",
     *SMALL_VAE],
])
def test_dequantised_models_fit_and_report_the_bound_as_bits_per_dim(args, tmp_path):
    out = tmp_path / "dq"
    assert main(["fit", *args, "--out", str(out), *QUICK]) == 0
    m = _metrics(out)
    assert m["bits_per_dim_offset_nats"] == 0.0 and m["train_binarization"] == "none"
    assert m["test_bits_per_dim"] == pytest.approx(m["test_nll"] / (64 * math.log(2)))
    assert m["test_nll"] > 0  # a bound on a discrete -log P(k)
    run = load_run(out)
    assert "u" in pyro.poutine.trace(run.guide).get_trace(
        load_dataset("digits", "test").images[:2]).nodes
    if "--likelihood" in args:
        assert m["test_kl"] is not None and m["active_units"] is not None
        assert (out / "reconstructions.png").exists() and "flow_note" not in m
    else:  # a flow: no latent code, no reconstructions; its KL is of the noise u
        assert not (out / "reconstructions.png").exists() and (out / "samples.png").exists()
        assert "KL(q(u | x) || U[0, 1)^D)" in m["flow_note"]
        assert m["test_kl"] >= -1e-4  # E_q log q(u | x) >= 0 on the unit cube


@pytest.mark.parametrize("args, message", [
    (["--likelihood", "bernoulli", "--dequantization", "uniform"],
     "--dequantization needs a continuous likelihood"),
    (["--likelihood", "gaussian", "--dequantization", "uniform", "--binarization", "dequantize"],
     "--binarization must be none with --dequantization uniform"),
])
def test_dequantization_flags_refuse_what_does_not_fit(args, message, capsys):
    assert main(["fit", *args]) == 2
    assert message in capsys.readouterr().err


# -- aggressive encoder training -----------------------------------------------------------
def _vae():
    enc, dec = MLP(EVENT, [16], (2, 2)), MLP((2,), [16], (1, *EVENT))
    return VAEModel(dec, 2, EVENT, BernoulliLikelihood()), AmortizedNormalGuide(enc, 2)


def _heldout():
    return binarize_test(load_dataset("digits", "test").images[:40])


def _trainer(model, guide, **kw):
    aggressive = AggressiveEncoder(_heldout(), max_inner_steps=6, check_every=3)
    return Trainer(model, guide, Trace_ELBO(max_plate_nesting=1), lr=1e-2, batch_size=30,
                   seed=1, progress=False, aggressive=aggressive, divergence_tolerance=None,
                   **kw)


def test_inner_loop_stops_when_the_window_mean_stops_falling_or_at_the_cap():
    agg = AggressiveEncoder(_heldout(), max_inner_steps=9, check_every=2)
    assert not agg.inner_converged([5.0, 4.0, 3.0])  # no full second window yet
    assert not agg.inner_converged([5.0, 4.0, 3.0, 2.0])  # 2.5 < 4.5: still improving
    assert agg.inner_converged([5.0, 4.0, 4.0, 5.0])  # 4.5 >= 4.5: stopped improving
    assert agg.inner_converged([9.0 - i for i in range(9)])  # the cap


def test_encoder_only_steps_leave_the_decoder_and_the_decoder_step_the_encoder(tmp_path):
    pyro.set_rng_seed(0)
    model, guide = _vae()
    t = _trainer(model, guide)
    x = binarize_test(load_dataset("digits", "train").images[:90])
    t._discover(x)
    dec0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    enc0 = {k: v.detach().clone() for k, v in guide.named_parameters()}
    steps = t._encoder_steps(x, len(x))
    assert 6 <= steps * 1 and steps <= 6 and t.step == steps  # at least two windows, capped
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in dec0.items())
    assert any(not torch.equal(v, dict(guide.named_parameters())[k]) for k, v in enc0.items())
    enc1 = {k: v.detach().clone() for k, v in guide.named_parameters()}
    idx = torch.arange(30)
    t._step(x[idx], len(x), idx, train="decoder")
    assert all(torch.equal(v, dict(guide.named_parameters())[k]) for k, v in enc1.items())
    assert any(not torch.equal(v, dict(model.named_parameters())[k]) for k, v in dec0.items())


def test_aggressive_mode_ends_at_the_first_epoch_whose_heldout_mi_falls(monkeypatch):
    import lvm_pyro.diagnostics as diagnostics

    values = iter([1.0, 2.0, 1.5, 9.0, 9.0])
    calls = []

    def fake_mi(guide, x, **kw):
        calls.append(len(x))
        return diagnostics.MutualInformation(next(values), 0.0, 0.0, len(x), 0.0, None, None,
                                             None)

    monkeypatch.setattr(diagnostics, "mutual_information", fake_mi)
    pyro.set_rng_seed(0)
    t = _trainer(*_vae())
    hist = t.fit(load_dataset("digits", "train").images[:90], epochs=5)
    assert [h["aggressive"] for h in hist] == [True, True, True, False, False]
    assert [h["heldout_mi"] for h in hist] == [1.0, 2.0, 1.5, None, None]
    assert calls == [40, 40, 40]  # no estimate once the mode is over
    assert all(h["aggressive_inner_steps"] >= 2 for h in hist[:3])
    assert [h["aggressive_inner_steps"] for h in hist[3:]] == [None, None]
    assert not t.aggressive.active


def _fit_aggressive(path, epochs, resume=False):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = _vae()
    if resume:
        pyro.set_rng_seed(12345)
    t = _trainer(model, guide, checkpoint_path=path)
    hist = t.fit(load_dataset("digits", "train").images[:90], epochs=epochs, resume=resume)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, hist, t.aggressive.state_dict()


def test_aggressive_training_resumes_bit_exactly(tmp_path):
    params, hist, state = _fit_aggressive(tmp_path / "a.pt", 3)
    _fit_aggressive(tmp_path / "b.pt", 1)
    params2, hist2, state2 = _fit_aggressive(tmp_path / "b.pt", 3, resume=True)
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    assert [h["heldout_mi"] for h in hist2] == [h["heldout_mi"] for h in hist]
    assert state2 == state
    for k in params:
        assert torch.equal(params[k], params2[k]), k
