"""A run of a continuous density on uniformly dequantised data reports every quantity on
one scale, the discrete log P(x) bound (Theis et al. 2016, eq. 9): the printed line,
metrics.json and TensorBoard hold the ELBO, its reconstruction term, the train loss and
the NLL all with the offset D log L, stated once as ``bits_per_dim_offset_nats``."""

import json
import math

import pytest

from lvm_pyro.cli import main

DIGITS_OFFSET = 64 * math.log(17)  # D log L of the bundled 8x8 digits (17 levels): 181.33


def test_dequantized_run_reports_every_quantity_on_the_discrete_scale(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["fit", "--likelihood", "gaussian", "--binarization", "dequantize", "--z-dim",
                 "2", "--hidden-dim", "16", "--num-hidden", "1", "--epochs", "1", "--num-test",
                 "40", "--num-samples", "20", "--no-progress", "--out", str(out),
                 "--logger", "tensorboard"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    offset = m["bits_per_dim_offset_nats"]
    assert offset == pytest.approx(DIGITS_OFFSET)
    # the K-sample bound is above the ELBO on the same scale (before: the ELBO lacked the
    # offset and sat ~181 nats above -NLL, a bound that looked violated)
    assert -m["test_elbo"] >= m["test_nll"] - 3 * m["test_nll_se"]
    assert -m["test_elbo"] - m["test_nll"] < 20  # same scale: a gap of nats, not of D log L
    assert m["test_elbo"] == pytest.approx(m["test_elbo_density"] - offset, abs=1e-4)
    assert m["test_nll"] == pytest.approx(m["test_nll_density"] + offset, abs=1e-4)
    assert m["test_reconstruction"] == pytest.approx(m["test_reconstruction_density"] - offset,
                                                     abs=1e-4)
    # closed-form KL against a one-draw Monte-Carlo ELBO: equal up to Monte-Carlo error
    assert m["test_reconstruction"] - m["test_kl"] == pytest.approx(m["test_elbo"], abs=1.0)
    assert m["test_bits_per_dim"] == pytest.approx(m["test_nll"] / (64 * math.log(2)))
    # the train loss (a -ELBO) too: the density's value is kept as loss_density
    (h,) = m["train_curve"]
    assert h["loss"] == pytest.approx(h["loss_density"] + offset)
    assert h["loss"] > -m["test_elbo"] - 50  # train and test -ELBO of the same order
    # the printed line: NLL and ELBO as in metrics.json, the offset named
    assert f"test ELBO {m['test_elbo']:.3f} nats" in printed
    assert f"test NLL {m['test_nll']:.3f}" in printed
    assert f"D log L = {offset:.2f} nats" in printed
    # TensorBoard's scalars on the same scale
    (events,) = list((out / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 1})
    acc.Reload()
    value = {tag: acc.Scalars(tag)[0].value for tag in
             ("train/loss", "test/elbo", "test/reconstruction", "test/kl", "test/nll")}
    assert value["train/loss"] == pytest.approx(m["train_curve"][0]["loss"], abs=1e-3)
    # first 200 test points, K = 100: the NLL above the -ELBO by nats, not by D log L
    assert -value["test/elbo"] >= value["test/nll"] - 5
    assert -value["test/elbo"] - value["test/nll"] < 20
    assert value["test/nll"] > DIGITS_OFFSET / 2  # the offset is in (a density alone: < 0)
    assert value["test/reconstruction"] - value["test/kl"] == pytest.approx(value["test/elbo"],
                                                                            abs=1.0)


def test_discrete_likelihood_run_has_no_offset_and_no_density_fields(tmp_path):
    out = tmp_path / "run"
    assert main(["fit", "--z-dim", "2", "--hidden-dim", "16", "--num-hidden", "1", "--epochs",
                 "1", "--num-test", "20", "--num-samples", "5", "--no-progress",
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["bits_per_dim_offset_nats"] == 0.0
    assert m["test_elbo_density"] is None and m["test_reconstruction_density"] is None
    assert "loss_density" not in m["train_curve"][0]
