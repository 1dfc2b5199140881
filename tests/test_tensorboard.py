"""``lvm-pyro fit --logger tensorboard``: the event file of a 1-epoch run holds the
scalars and images, and logging does not change training."""

import json

from lvm_pyro.cli import main


def test_tensorboard_event_file_holds_scalars_and_images(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = ["--z-dim", "3", "--hidden-dim", "32", "--epochs", "1", "--num-test", "30",
              "--num-samples", "10", "--no-progress"]
    logged, plain = tmp_path / "logged", tmp_path / "plain"
    assert main(["fit", *common, "--out", str(logged), "--logger", "tensorboard"]) == 0
    assert main(["fit", *common, "--out", str(plain)]) == 0
    capsys.readouterr()
    events = list((logged / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and not (plain / "tensorboard").exists()
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "test/elbo", "test/reconstruction", "test/kl", "test/nll"} <= scalars
    assert {f"test/kl_per_dim/{d}" for d in range(3)} <= scalars
    assert {"samples", "reconstructions"} <= set(acc.Tags()["images"])
    m = json.loads((logged / "metrics.json").read_text())
    (loss,) = acc.Scalars("train/loss")
    assert loss.step == 1 and abs(loss.value - m["train_curve"][0]["loss"]) < 1e-4
    nll = acc.Scalars("test/nll")[0].value
    assert 0 < nll < 100  # nats per 64-pixel binarised digit
    kl_dims = sum(acc.Scalars(f"test/kl_per_dim/{d}")[0].value for d in range(3))
    assert abs(kl_dims - acc.Scalars("test/kl")[0].value) < 1e-3  # diagonal Gaussian: KL adds up
    # the callback restores every RNG: the logged run trained exactly as the plain one
    p = json.loads((plain / "metrics.json").read_text())
    assert m["train_curve"][0]["loss"] == p["train_curve"][0]["loss"]
    assert m["test_nll"] == p["test_nll"]


def test_a_flow_run_logs_samples_but_no_reconstructions(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "flow"
    assert main(["fit", "--model", "flow", "--num-scales", "1", "--num-couplings", "1",
                 "--hidden-channels", "4", "--epochs", "1", "--num-test", "20",
                 "--num-samples", "4", "--no-progress", "--out", str(out),
                 "--logger", "tensorboard"]) == 0
    capsys.readouterr()
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images = set(acc.Tags()["images"])
    assert "samples" in images and "reconstructions" not in images
    assert "test/nll" in set(acc.Tags()["scalars"])
