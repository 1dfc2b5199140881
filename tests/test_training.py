"""VAE model and guide, the generic loop, checkpoints (atomic, weights_only, exact resume),
run directories and the CLI."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from lvm_pyro.cli import main
from lvm_pyro.data import load_dataset
from lvm_pyro.guides import AmortizedNormalGuide
from lvm_pyro.inference import log_weights
from lvm_pyro.models import BernoulliLikelihood, GaussianLikelihood, VAEModel
from lvm_pyro.nn import MLP, ConvDecoder, ConvEncoder
from lvm_pyro.training import CheckpointError, Trainer, load_checkpoint, load_run

SMALL = {"z_dim": 2, "hidden_dim": 16, "num_hidden": 1}


def small_vae(event=(1, 8, 8), z=2, conv=False, lik=None):
    lik = lik or BernoulliLikelihood()
    if conv:
        enc, dec = ConvEncoder(event, (2, z), channels=4, hidden_dim=8), ConvDecoder(z, (lik.num_params, *event), channels=4, hidden_dim=8)
    else:
        enc, dec = MLP(event, [16], (2, z)), MLP((z,), [16], (lik.num_params, *event))
    return VAEModel(dec, z, event, lik), AmortizedNormalGuide(enc, z)


def digits(n=200):
    return load_dataset("digits", "train").images[:n]


@pytest.mark.parametrize("conv", [False, True])
def test_networks_take_leading_particle_dims(conv):
    model, guide = small_vae(conv=conv)
    x = torch.bernoulli(digits(6))
    out = log_weights(model, guide, x, num_particles=3)
    assert out.log_w.shape == (3, 6) and bool(torch.isfinite(out.log_w).all())
    z = out.guide_trace.nodes["z"]["value"]
    assert z.shape == (3, 6, 2)
    # the (3, 6) batch equals running each particle separately through the decoder
    p0 = model.decoder(z[1])
    assert torch.allclose(model.decoder(z)[1], p0, atol=1e-6)


def test_support_errors_name_the_site_and_fix():
    model, guide = small_vae()
    with pytest.raises(ValueError, match="site 'x'.*[Bb]inaris"):
        model(digits(4))  # intensities, not bits
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(4, 64))
    gmodel, gguide = small_vae(lik=GaussianLikelihood())
    with pytest.raises(ValueError, match="NaN"):
        gmodel(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="site 'x'.*NaN"):
        gguide(torch.full((2, 1, 8, 8), float("nan")))


def _trainer(tmp_path, model, guide, **kw):
    return Trainer(model, guide, Trace_ELBO(), lr=1e-2, batch_size=50, seed=3, progress=False,
                   checkpoint_path=tmp_path / "ck.pt", config={"tag": "t"}, **kw)


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_training_lowers_loss_and_resume_is_exact(tmp_path):
    x = digits()
    pyro.set_rng_seed(0)
    model, guide = small_vae()
    init = {k: v.detach().clone() for k, v in list(model.state_dict().items()) + list(guide.state_dict().items())}
    hist = _trainer(tmp_path / "a", model, guide).fit(x, epochs=4)
    assert hist[-1]["loss"] < hist[0]["loss"] - 1.0
    full = _params()
    # interrupted after 2 epochs, then resumed in a fresh process state
    pyro.clear_param_store()
    model2, guide2 = small_vae()
    model2.load_state_dict({k: v for k, v in init.items() if k in model2.state_dict()})
    guide2.load_state_dict({k: v for k, v in init.items() if k in guide2.state_dict()})
    _trainer(tmp_path / "b", model2, guide2).fit(x, epochs=2)
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)  # resume must not depend on the current RNG state
    model3, guide3 = small_vae()
    t = _trainer(tmp_path / "b", model3, guide3)
    hist3 = t.fit(x, epochs=4, resume=True)
    resumed = _params()
    assert set(full) == set(resumed)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert [h["loss"] for h in hist3] == [h["loss"] for h in hist]


def test_checkpoint_is_weights_only_and_errors_are_clear(tmp_path):
    x = digits(100)
    model, guide = small_vae()
    t = _trainer(tmp_path, model, guide)
    t.fit(x, epochs=1)
    payload = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert payload["epoch"] == 1 and "params" in payload and "rng" in payload
    assert not list(tmp_path.glob(".ck.pt.*"))  # no temporary file left behind
    # corrupt file
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    # mismatched configuration / architecture
    pyro.clear_param_store()
    m2, g2 = small_vae()
    t2 = Trainer(m2, g2, Trace_ELBO(), batch_size=50, progress=False,
                 checkpoint_path=tmp_path / "ck.pt", config={"tag": "other"})
    with pytest.raises(CheckpointError, match="different configuration"):
        t2.fit(x, epochs=2, resume=True)
    pyro.clear_param_store()
    m3, g3 = small_vae(z=3)
    t3 = _trainer(tmp_path, m3, g3)
    with pytest.raises(CheckpointError, match="match"):
        t3.fit(x, epochs=2, resume=True)


def test_checkpoint_of_another_z_dim_is_one_line_naming_shapes_and_fix(tmp_path, capsys):
    """A run of z_dim 2 resumed (Trainer) or loaded (evaluate) with z_dim 3 used to raise
    torch's multi-line state_dict error; now one line names the first mismatched
    parameters with both shapes and the fix."""
    x = digits(100)
    model, guide = small_vae(z=2)
    Trainer(model, guide, Trace_ELBO(), batch_size=50, progress=False,
            checkpoint_path=tmp_path / "ck.pt").fit(x, epochs=1)
    pyro.clear_param_store()
    m3, g3 = small_vae(z=3)
    t3 = Trainer(m3, g3, Trace_ELBO(), batch_size=50, progress=False,
                 checkpoint_path=tmp_path / "ck.pt")  # no config to compare: the shapes differ
    with pytest.raises(CheckpointError) as e:
        t3.fit(x, epochs=2, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "does not match the model's architecture (VAEModel)" in msg
    assert "decoder.net.0.weight (16, 2) in the checkpoint vs (16, 3) here" in msg
    assert "config.json" in msg and "fit --force" in msg
    # the command line: a run whose checkpoint was written by a run of another z_dim
    args = ["--epochs", "1", "--num-samples", "2", "--num-test", "5", "--no-progress",
            "--hidden-dim", "8", "--num-hidden", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["fit", "--out", str(a), "--z-dim", "2", *args]) == 0
    assert main(["fit", "--out", str(b), "--z-dim", "3", *args]) == 0
    (a / "checkpoint.pt").write_bytes((b / "checkpoint.pt").read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(a), "--num-samples", "2", "--num-test", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(8, 3) in the checkpoint vs (8, 2) here" in err, err
    assert "config.json" in err and "--force" in err


def test_user_program_with_meanfield_and_minibatch_scaling():
    """A user's model/guide that take only x train with our loop (unscaled loss)."""
    loc = torch.tensor(0.0)

    def model(x):
        w = pyro.param("w", torch.tensor(0.5))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(w * z, 0.5), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        s = pyro.param("s", torch.tensor(0.7), constraint=dist.constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(a * x, s))  # contains the exact posterior

    x = 2.0 * torch.randn(400)
    t = Trainer(model, guide, TraceMeanField_ELBO(), lr=0.05, batch_size=100, binarization="none",
                progress=False)
    t.fit(x, epochs=100)
    # the MLE of w for Var(x) = w^2 + 0.25 (PPCA, 1-d): w = sqrt(var - 0.25)
    w_mle = float((x.var(unbiased=False) - 0.25).sqrt())
    assert abs(abs(pyro.param("w").item()) - w_mle) < 0.1


def test_cli_fit_evaluate_sample_and_load_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["fit", "--epochs", "1", "--out", str(out), "--num-samples", "5", "--no-progress",
               "--z-dim", "2", "--hidden-dim", "16", "--num-hidden", "1", "--num-test", "40"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test_elbo", "test_nll", "test_nll_se", "test_bits_per_dim", "num_test_points",
                "train_curve", "versions"):
        assert key in m
    assert m["test_nll"] > 0 and m["num_test_points"] == 40
    assert m["test_bits_per_dim"] == pytest.approx(m["test_nll"] / (64 * 0.6931471805599453))
    assert -m["test_elbo"] >= m["test_nll"] - 3 * m["test_nll_se"]
    for f in ("samples.png", "reconstructions.png", "loss_curve.png", "checkpoint.pt"):
        assert (out / f).stat().st_size > 0
    assert "test NLL" in capsys.readouterr().out
    run = load_run(out)
    assert isinstance(run.model, VAEModel) and run.config["z_dim"] == 2
    assert main(["evaluate", str(out), "--num-samples", "3", "--num-test", "10"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["num_test_points"] == 10
    assert main(["sample", str(out)]) == 0
    # bad input: a directory that is not a run
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_continuous_likelihood_reports_a_bound_only_when_dequantised(tmp_path):
    from lvm_pyro.training.run import train_run

    common = {"z_dim": 2, "hidden_dim": 16, "num_hidden": 1, "likelihood": "gaussian", "epochs": 1}
    m = train_run({**common, "binarization": "dequantize"}, tmp_path / "deq", progress=False,
                  num_samples=3, num_test=20)
    assert m["bits_per_dim_offset_nats"] == pytest.approx(64 * math.log(17))
    assert m["test_nll"] == pytest.approx(m["test_nll_density"] + 64 * math.log(17))
    assert m["test_bits_per_dim"] == pytest.approx(m["test_nll"] / (64 * math.log(2)))
    m2 = train_run({**common, "binarization": "dynamic"}, tmp_path / "dyn", progress=False,
                   num_samples=3, num_test=20)
    assert m2["test_bits_per_dim"] is None and "NOT a bound" in m2["nll_note"]


def test_bad_run_options_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", "--epochs", "1", "--out", str(out), "--num-samples", "0", "--no-progress"]) == 2
    assert "num-samples" in capsys.readouterr().err and not (out / "config.json").exists()
    assert main(["fit", "--epochs", "1", "--out", str(out), "--device", "nonsense", "--no-progress"]) == 2
    assert not (out / "config.json").exists()
    if not torch.cuda.is_available():
        assert main(["fit", "--epochs", "1", "--out", str(out), "--device", "cuda", "--no-progress"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    # a resumed run may not shrink: the checkpoint holds 2 epochs
    args = ["fit", "--out", str(out), "--no-progress", "--num-samples", "2", "--num-test", "5",
            "--z-dim", "2", "--hidden-dim", "8", "--num-hidden", "1"]
    assert main(args + ["--epochs", "2"]) == 0
    assert main(args + ["--epochs", "1", "--resume"]) == 2
    assert "already holds 2 epochs" in capsys.readouterr().err


def test_num_levels_off_the_data_grid_fails_before_training(tmp_path, capsys, monkeypatch):
    """--num-levels 256 on the 17-level digits used to fail only inside the first training
    step (a multi-line Pyro trace, config.json already written); it is now one line when
    the data are loaded, before the run directory is touched or training starts."""
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("lvm_pyro.training.run.Trainer.fit", no_training)
    vq = ["--model", "vqvae", "--codebook-size", "8", "--embedding-dim", "4", "--channels", "8"]
    for model in (vq, ["--model", "flow"],
                  ["--likelihood", "gaussian", "--dequantization", "uniform"]):
        out = tmp_path / model[1]
        assert main(["fit", *model, "--num-levels", "256", "--epochs", "1", "--out", str(out),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lvm-pyro: error: --num-levels is 256, but the training data "
                              "are not on its grid k / 255 (e.g. ") and err.count("\n") == 1, err
        assert "the digits data have 17 levels" in err and "--num-levels 17" in err
        assert not out.exists()
    from lvm_pyro.training.config import RunConfig
    from lvm_pyro.training.run import check_num_levels

    x = digits(50)
    # a grid that holds the data's (33 levels: every k / 16 is 2k / 32) is accepted, and so
    # is any grid for binarised data (0 and 1 are on every grid) or a model that does not
    # read the levels (a VAE without dequantisation)
    for values in ({"model": "vqvae", "num_levels": 33},
                   {"model": "vqvae", "num_levels": 256, "binarization": "dynamic"},
                   {"model": "vae", "likelihood": "gaussian", "num_levels": 256,
                    "binarization": "none"}):
        check_num_levels(RunConfig.from_dict(values), x)
    with pytest.raises(ValueError, match="num_levels is 5, but .* 17 levels"):
        check_num_levels(RunConfig.from_dict({"model": "flow", "num_levels": 5}), x)


def test_python_resume_without_a_checkpoint_equals_a_fresh_run(tmp_path):
    """Trainer.fit(resume=True) with no checkpoint on disk trains exactly as a fresh run
    (the same seeded parameters and loss curve), instead of continuing the global RNG."""
    import pyro
    from pyro.infer import Trace_ELBO
    from lvm_pyro.training.builders import build_vae

    x = torch.rand(40, 1, 8, 8)

    def run(resume, path):
        pyro.clear_param_store()
        pyro.set_rng_seed(123)  # a different global state before fit
        torch.rand(7)
        model, guide = build_vae({"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}, (1, 8, 8))
        t = Trainer(model, guide, Trace_ELBO(), batch_size=10, seed=3, progress=False,
                    checkpoint_path=path)
        hist = t.fit(x, 2, resume=resume)
        return [h["loss"] for h in hist], {k: v.detach().clone() for k, v in
                                           pyro.get_param_store().named_parameters()}

    fresh_loss, fresh_params = run(False, tmp_path / "a.pt")
    res_loss, res_params = run(True, tmp_path / "b.pt")
    assert fresh_loss == res_loss
    assert all(torch.equal(fresh_params[k], res_params[k]) for k in fresh_params)


def test_the_train_curve_records_the_kl_weight_and_the_capacity():
    from lvm_pyro.inference import Capacity_ELBO, CapacitySchedule, KLWeighted_ELBO
    from lvm_pyro.training.builders import build_vae

    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cfg = {"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}
    pyro.clear_param_store()
    model, guide = build_vae(cfg, (1, 4, 4))
    warm = KLWeighted_ELBO(Trace_ELBO(max_plate_nesting=1), beta=1.0, kl_warmup_steps=10)
    hist = Trainer(model, guide, warm, batch_size=10, progress=False).fit(x, 3)
    # 4 steps an epoch, a 10-step warm-up: the weight rises, then stays at beta
    weights = [h["kl_weight"] for h in hist]
    assert weights[0] < weights[1] <= weights[2] == 1.0
    assert "capacity_nats" not in hist[0]
    pyro.clear_param_store()
    model, guide = build_vae(cfg, (1, 4, 4))
    cap = Capacity_ELBO(CapacitySchedule(5.0, 8), weight=2.0, max_plate_nesting=1)
    hist = Trainer(model, guide, cap, batch_size=10, progress=False).fit(x, 3)
    caps = [h["capacity_nats"] for h in hist]
    assert caps[0] < caps[1] == caps[2] == 5.0
    assert caps[-1] == cap.current_capacity


def test_a_module_swapped_in_between_fits_is_trained_by_the_same_trainer():
    """A new decoder of the same architecture, the param store cleared, the same Trainer:
    the optimiser steps the new tensors (before, it kept stepping the old ones)."""
    from lvm_pyro.training.builders import build_vae

    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    pyro.clear_param_store()
    model, guide = build_vae({"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}, (1, 4, 4))
    t = Trainer(model, guide, Trace_ELBO(), batch_size=10, progress=False)
    t.fit(x, 1)
    fresh, _ = build_vae({"z_dim": 2, "hidden_dim": 8, "num_hidden": 1}, (1, 4, 4))
    model.decoder = fresh.decoder
    pyro.clear_param_store()
    before = {k: v.detach().clone() for k, v in model.decoder.named_parameters()}
    t.fit(x, 2)
    after = dict(model.decoder.named_parameters())
    assert all(not torch.equal(before[k], after[k]) for k in before)
    held = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in model.decoder.parameters())
