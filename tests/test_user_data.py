"""A user's own data from the command line (``lvm-pyro fit --data PATH``): array files and
image folders, the transform that follows the likelihood, 2-D vector data checked against
the true density."""

import json

import numpy as np
import pytest
import torch

from lvm_pyro.cli import main
from lvm_pyro.data.files import load_data_file, split_indices
from lvm_pyro.training.config import ConfigError, DataConfig, RunConfig

MEAN = np.array([1.0, -2.0])
SCALE_TRIL = np.array([[1.0, 0.0], [0.8, 0.5]])


def _gaussian_2d(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 2)) @ SCALE_TRIL.T + MEAN).astype(np.float32)


def test_fit_2d_gaussian_data_nll_matches_the_true_density(tmp_path, capsys):
    """6000 points of N(mean, L L^T), 20 % (1200) held out; a VAE with a Gaussian decoder
    (z_dim 2, one hidden layer of 32) for 15 epochs: its IS NLL (K = 500) on the test points
    is within 0.03 nats of the true density's mean -log p on the same points (measured:
    0.004 after 20 epochs)."""
    path = tmp_path / "gauss.npy"
    np.save(path, _gaussian_2d(6000))
    out = tmp_path / "run"
    assert main(["fit", "--data", str(path), "--likelihood", "gaussian", "--z-dim", "2",
                 "--hidden-dim", "32", "--num-hidden", "1", "--epochs", "15", "--lr", "3e-3",
                 "--num-samples", "500", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test NLL" in printed and "test ELBO" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["binarization"] == "none" and cfg["data"] == str(path.resolve())
    assert cfg["split_seed"] == 0 and cfg["test_fraction"] == 0.2
    assert "split_seed" not in RunConfig().to_dict()  # only for a data path
    m = json.loads((out / "metrics.json").read_text())
    x = load_data_file(path, "test").images.double()
    assert len(x) == m["num_test_points"] == 1200
    true = torch.distributions.MultivariateNormal(torch.as_tensor(MEAN),
                                                  scale_tril=torch.as_tensor(SCALE_TRIL))
    true_nll = float(-true.log_prob(x).mean())
    assert abs(m["test_nll"] - true_nll) < 0.03, (m["test_nll"], true_nll)
    assert m["test_kl_method"] == "closed_form" and m["test_kl"] > 0
    # -ELBO = -reconstruction + KL up to the Monte-Carlo noise of one draw per point
    assert m["test_reconstruction"] - m["test_kl"] == pytest.approx(m["test_elbo"], abs=0.15)
    assert -m["test_elbo"] >= m["test_nll"] - 0.05
    assert (out / "samples.png").stat().st_size > 0  # the scatter of data vs samples


def test_array_files_and_image_folders_load_and_split(tmp_path):
    from PIL import Image

    x = np.arange(40, dtype=np.float32).reshape(10, 2, 2)
    np.savez(tmp_path / "a.npz", x=x, y=np.zeros(10))
    torch.save({"x": torch.from_numpy(x)}, tmp_path / "a.pt")
    np.save(tmp_path / "a.npy", (x * 6).astype(np.uint8))
    for name in ("a.npz", "a.pt"):
        tr = load_data_file(tmp_path / name, "train", split_seed=1, test_fraction=0.3)
        te = load_data_file(tmp_path / name, "test", split_seed=1, test_fraction=0.3)
        assert tr.images.shape == (7, 2, 2) and te.images.shape == (3, 2, 2)
        both = torch.cat([tr.images, te.images]).flatten(1)[:, 0].sort().values
        assert torch.equal(both, torch.from_numpy(x).flatten(1)[:, 0])  # a partition
    u8 = load_data_file(tmp_path / "a.npy", "test", split_seed=1, test_fraction=0.3)
    assert float(u8.images.max()) <= 1.0 and u8.levels == 256  # 8-bit values / 255
    assert not torch.equal(split_indices(10, "test", split_seed=1),
                           split_indices(10, "test", split_seed=2))
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), 80 * i, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = load_data_file(tmp_path / "imgs", "train", test_fraction=0.5)
    assert ds.images.shape == (3, 1, 4, 4) and set(ds.labels.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="name the data array 'x'"):
        np.savez(tmp_path / "b.npz", p=x, q=x)
        load_data_file(tmp_path / "b.npz")


def test_data_path_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a data set"):
        DataConfig(data=str(tmp_path / "missing.npy"))
    np.save(tmp_path / "a.npy", _gaussian_2d(10))
    with pytest.raises(ConfigError, match="test_fraction"):
        DataConfig(data=str(tmp_path / "a.npy"), test_fraction=1.0)
    with pytest.raises(ConfigError, match="data_root"):
        DataConfig(data=str(tmp_path / "a.npy"), data_root=str(tmp_path))
    # the transform follows the likelihood: real-valued data are never dequantised
    # or binarised under a Gaussian likelihood
    cfg = RunConfig.from_dict({"data": str(tmp_path / "a.npy"), "likelihood": "gaussian"})
    assert cfg.data.binarization == "none"


def test_bernoulli_on_real_valued_data_names_the_right_fix(tmp_path, capsys):
    np.save(tmp_path / "a.npy", _gaussian_2d(50))
    assert main(["fit", "--data", str(tmp_path / "a.npy"), "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--likelihood gaussian" in err and "binarization 'none'" in err


def test_trainer_transform_follows_the_likelihood():
    """A Gaussian-likelihood model given to Trainer with no transform is not binarised
    (it was: Bernoulli draws of continuous intensities, silently)."""
    from pyro.infer import Trace_ELBO

    from lvm_pyro.training import Trainer
    from lvm_pyro.training.builders import build_vae

    gauss, guide = build_vae({"likelihood": "gaussian", "z_dim": 2, "hidden_dim": 8}, (2,))
    assert Trainer(gauss, guide, Trace_ELBO(), progress=False).transform.mode == "none"
    bern, guide = build_vae({"z_dim": 2, "hidden_dim": 8}, (2,))
    assert Trainer(bern, guide, Trace_ELBO(), progress=False).transform.mode == "dynamic"


def test_full_covariance_gaussian_decoder_matches_the_cholesky_density():
    """params (..., 1 + D, D) -> N(loc, L L^T) with L = tril(raw, -1) + diag(softplus(diag
    raw) + min_scale), checked against scipy's multivariate normal."""
    from scipy.stats import multivariate_normal

    from lvm_pyro.models import make_likelihood

    lik = make_likelihood("gaussian_full", dim=3)
    params = torch.randn(4, 4, 3, dtype=torch.float64)  # (batch, 1 + D, D)
    x = torch.randn(4, 3, dtype=torch.float64)
    got = lik(params, 1).log_prob(x)
    for i in range(4):
        raw = params[i, 1:].numpy()
        L = np.tril(raw, -1) + np.diag(np.log1p(np.exp(np.diag(raw))) + 1e-3)
        want = multivariate_normal(params[i, 0].numpy(), L @ L.T).logpdf(x[i].numpy())
        assert abs(float(got[i]) - want) < 1e-9
    with pytest.raises(ValueError, match=r"vector data \(batch, 3\)"):
        lik.check_support(torch.zeros(2, 1, 3))


def test_full_covariance_vae_trains_on_vector_data():
    from pyro.infer import Trace_ELBO

    from lvm_pyro.inference import log_marginal_likelihood
    from lvm_pyro.training import Trainer
    from lvm_pyro.training.builders import build_vae

    model, guide = build_vae({"likelihood": "gaussian_full", "z_dim": 1, "hidden_dim": 16,
                              "num_hidden": 1}, (2,))
    x = torch.from_numpy(_gaussian_2d(400))
    history = Trainer(model, guide, Trace_ELBO(), lr=3e-3, progress=False).fit(x, epochs=3)
    assert history[-1]["loss"] < history[0]["loss"]
    assert torch.isfinite(log_marginal_likelihood(model, guide, x[:10], num_samples=20)).all()
    with pytest.raises(ConfigError, match="vector data"):
        build_vae({"likelihood": "gaussian_full"}, (1, 8, 8))
