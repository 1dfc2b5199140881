"""Users' own models from the command line (``lvm-pyro fit --model module:build``), the
ELBO's reconstruction / KL split, seeded evaluation, and the warning for a network that a
program forgot to register with Pyro."""

import json
import math
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.cli import main
from lvm_pyro.inference import elbo_parts, elbo_per_datapoint
from lvm_pyro.sites import data_plate
from lvm_pyro.training import builders
from lvm_pyro.training.config import (MODEL_CONFIGS, ConfigError, RunConfig, UserModelConfig,
                                      model_arguments)
from lvm_pyro.training.loop import Trainer, UnregisteredParameterWarning

REPO = Path(__file__).resolve().parents[1]
HVAE = "examples.hierarchical_vae:build"


@pytest.fixture
def registry():
    """Restore the model registries after a test registers user models."""
    saved = dict(builders.MODEL_BUILDERS), dict(MODEL_CONFIGS)
    yield
    for live, old in zip((builders.MODEL_BUILDERS, MODEL_CONFIGS), saved):
        live.clear()
        live.update(old)


# -- the hierarchical VAE example through the command line --------------------------------
def test_hierarchical_vae_fit_resume_evaluate_sample_diagnose(tmp_path, monkeypatch, registry,
                                                              capsys):
    """Run from the repository root, in process (``main([...])``): fit, exact resume,
    seeded evaluate, sample, and diagnostics for the root latent z1 and the refusal for
    z2, whose guide depends on z1."""
    monkeypatch.chdir(REPO)
    common = ["--model", HVAE, "--z-dim", "4", "--hidden-dim", "32", "--model-arg", "z2_dim=2",
              "--batch-size", "200", "--num-test", "40", "--num-samples", "20", "--no-progress"]
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert main(["fit", *common, "--epochs", "2", "--out", str(once)]) == 0
    assert main(["fit", *common, "--epochs", "1", "--out", str(twice)]) == 0
    assert main(["fit", *common, "--epochs", "2", "--out", str(twice), "--resume"]) == 0
    m1 = json.loads((once / "metrics.json").read_text())
    m2 = json.loads((twice / "metrics.json").read_text())
    assert [h["loss"] for h in m1["train_curve"]] == [h["loss"] for h in m2["train_curve"]]
    assert m1["test_nll"] == m2["test_nll"]
    cfg = json.loads((once / "config.json").read_text())
    assert cfg["model"] == HVAE and cfg["options"] == {"z2_dim": 2} and cfg["z_dim"] == 4
    # two latent sites: the KL is Monte Carlo, on the same draw as the ELBO
    assert m1["test_kl_method"] == "monte_carlo"
    assert m1["test_reconstruction"] - m1["test_kl"] == pytest.approx(m1["test_elbo"], abs=1e-4)
    assert m1["test_nll"] <= -m1["test_elbo"] + 1.0  # the K=20 bound is above the ELBO
    for name in ("samples.png", "reconstructions.png", "loss_curve.png"):
        assert (once / name).stat().st_size > 0

    builders.MODEL_BUILDERS.pop(HVAE)  # a fresh process: load_run re-imports the builder
    MODEL_CONFIGS.pop(HVAE)
    evals = []
    for _ in range(2):
        assert main(["evaluate", str(once), "--num-test", "20", "--num-samples", "10",
                     "--seed", "3"]) == 0
        evals.append(json.loads((once / "evaluation.json").read_text()))
    assert evals[0]["seed"] == 3 and evals[0]["test_nll"] == evals[1]["test_nll"]
    assert evals[0]["test_elbo"] == evals[1]["test_elbo"]
    assert main(["sample", str(once), "--num-samples", "16"]) == 0
    assert (once / "sample" / "samples.png").exists()

    from lvm_pyro.training.config import DiagnoseConfig
    from lvm_pyro.training.diagnose import diagnose_run

    small = DiagnoseConfig(num_test=20, num_samples=50, num_mi_points=40, nuts_points=0,
                           sbc_simulations=0)
    d = diagnose_run(once, small, latent="z1", log=None)
    assert d["latent"] == "z1" and math.isfinite(d["importance"]["log_marginal_mean"])
    assert len(d["information"]["kl_per_dimension"]) == 4
    assert math.isfinite(d["information"]["kl_total"])
    with pytest.raises(ValueError, match="'z2' depends on the guide's latent"):
        diagnose_run(once, small, latent="z2", out=tmp_path / "z2", log=None)
    capsys.readouterr()


# -- builder paths and entry points -------------------------------------------------------
def test_builder_imported_from_the_current_directory_with_its_config(tmp_path, monkeypatch,
                                                                    registry):
    (tmp_path / "my_lvm_model_q7.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from lvm_pyro.training.config import ModelConfig, option
        from examples.hierarchical_vae import build as _build
        from lvm_pyro.training.config import UserModelConfig

        @dataclass(frozen=True)
        class CONFIG(ModelConfig):
            z_dim: int = option(3, "latent size")
            depth: int = option(1, "unused")

        def build(config, event_shape):
            return _build(UserModelConfig(z_dim=config.z_dim, hidden_dim=8), event_shape)
    '''))
    monkeypatch.syspath_prepend(str(REPO))  # for examples
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_lvm_model_q7", raising=False)
    cfg = RunConfig.from_dict({"model": "my_lvm_model_q7:build", "depth": 2})
    assert type(cfg.model).__name__ == "CONFIG" and cfg.model.depth == 2 and cfg.model.z_dim == 3
    model, guide = builders.build_model(cfg, (1, 8, 8))
    assert model.z_dim == 3
    with pytest.raises(ConfigError, match="does not apply"):
        RunConfig.from_dict({"model": "my_lvm_model_q7:build", "hidden_dim": 5})


@pytest.mark.parametrize("name, match", [
    ("no_such_module_q7:build", "cannot import 'no_such_module_q7'"),
    ("examples.hierarchical_vae:nope", "no callable 'nope'"),
    ("examples.hierarchical_vae:", "package.module:builder"),
    ("no_such_model_q7", "must be a registered model"),
])
def test_bad_model_names_are_clear_errors(name, match, monkeypatch, registry):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict({"model": name})


def test_entry_point_registers_a_name(monkeypatch, registry):
    import importlib.metadata as md

    ep = md.EntryPoint(name="hvae_q7", value=HVAE, group=builders.ENTRY_POINT_GROUP)
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: (
        [ep] if kw.get("group") == builders.ENTRY_POINT_GROUP else real(**kw)))
    monkeypatch.syspath_prepend(str(REPO))
    cfg = RunConfig.from_dict({"model": "hvae_q7", "hidden_dim": 16, "options": {"z2_dim": 3}})
    assert isinstance(cfg.model, UserModelConfig) and cfg.model_name == "hvae_q7"
    model, guide = builders.build_model(cfg, (1, 8, 8))
    assert model.z2_dim == 3 and model.z_dim == 10  # z_dim: the digits default


def test_model_arguments_parse_json_values():
    out = model_arguments(["z_dim=5", "z2_dim=3", "name=abc", "sizes=[1, 2]"], UserModelConfig)
    assert out == {"z_dim": 5, "options": {"z2_dim": 3, "name": "abc", "sizes": [1, 2]}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        model_arguments(["z_dim"], UserModelConfig)
    from lvm_pyro.training.config import VAEConfig
    with pytest.raises(ConfigError, match="not a field of VAEConfig"):
        model_arguments(["depth=2"], VAEConfig)
    with pytest.raises(ConfigError, match="options"):
        UserModelConfig(options={"x": float("nan")})


# -- the forgotten pyro.module -------------------------------------------------------------
def _programs(register: bool):
    enc, dec = torch.nn.Linear(3, 4), torch.nn.Linear(2, 3)

    def model(x, *, num_data=None, idx=None):
        pyro.module("decoder", dec)
        with data_plate(x, num_data, idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 1.0).to_event(1), obs=x)

    def guide(x, *, num_data=None, idx=None):
        if register:
            pyro.module("encoder", enc)
        with data_plate(x, num_data, idx):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], torch.nn.functional.softplus(h[..., 2:]))
                        .to_event(1))

    return model, guide, enc


def test_unregistered_encoder_is_named_once():
    model, guide, enc = _programs(register=False)
    before = enc.weight.detach().clone()
    trainer = Trainer(model, guide, Trace_ELBO(), batch_size=10, binarization="none",
                      progress=False)
    with pytest.warns(UnregisteredParameterWarning) as rec:
        trainer.fit(torch.randn(20, 3), epochs=2)
    assert len(rec) == 1  # once, after the first step
    msg = str(rec[0].message)
    assert "guide enc.weight (4, 3)" in msg and "guide enc.bias (4,)" in msg
    assert "decoder" not in msg and "pyro.module" in msg
    assert torch.equal(enc.weight, before)  # what the warning is about: it never moved


def test_registered_encoder_does_not_warn():
    model, guide, enc = _programs(register=True)
    before = enc.weight.detach().clone()
    Trainer(model, guide, Trace_ELBO(), batch_size=10, binarization="none",
            progress=False).fit(torch.randn(20, 3), epochs=1)  # a warning would be an error
    assert not torch.equal(enc.weight, before)


# -- ELBO parts against closed forms ------------------------------------------------------
SIGMA, A, S = 0.7, 0.6, 0.5


def _lg_model(x):
    with data_plate(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


def _lg_guide(x):
    with data_plate(x):
        pyro.sample("z", dist.Normal(A * x, S).to_event(1))


def test_elbo_parts_match_the_linear_gaussian_closed_form():
    """z ~ N(0, 1), x | z ~ N(z, sigma^2), q(z | x) = N(a x, s^2): E_q log p(x | z) =
    -log(2 pi sigma^2) / 2 - ((x - a x)^2 + s^2) / (2 sigma^2) and KL = (s^2 + (a x)^2 - 1)
    / 2 - log s."""
    x = torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64)
    parts = elbo_parts(_lg_model, _lg_guide, x, num_samples=20000)
    m = A * x[:, 0]
    rec = -0.5 * math.log(2 * math.pi * SIGMA ** 2) - ((x[:, 0] - m) ** 2 + S ** 2) / (2 * SIGMA ** 2)
    kl = 0.5 * (S ** 2 + m ** 2 - 1) - math.log(S)
    assert parts.kl_method == "closed_form"
    torch.testing.assert_close(parts.kl, kl, rtol=0, atol=1e-10)
    # Monte Carlo over 20000 draws: sd of log p(x | z) here is below 1, so SE < 0.01
    torch.testing.assert_close(parts.reconstruction, rec, rtol=0, atol=0.04)
    torch.testing.assert_close(parts.elbo, rec - kl, rtol=0, atol=0.05)


def test_elbo_parts_monte_carlo_for_a_hierarchy():
    def model(x):
        with data_plate(x):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1, SIGMA).to_event(1), obs=x)

    def guide(x):
        with data_plate(x):
            z1 = pyro.sample("z1", dist.Normal(A * x, S).to_event(1))
            pyro.sample("z2", dist.Normal(0.5 * z1, 0.8).to_event(1))

    x = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    pyro.set_rng_seed(1)
    parts = elbo_parts(model, guide, x, num_samples=7)
    pyro.set_rng_seed(1)
    elbo = elbo_per_datapoint(model, guide, x, num_samples=7)
    assert parts.kl_method == "monte_carlo"
    torch.testing.assert_close(parts.elbo, elbo)
    torch.testing.assert_close(parts.reconstruction - parts.kl, elbo)
