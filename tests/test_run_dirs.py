"""Run directories: nothing lost, nothing silent. An existing run is never overwritten by
accident, ``--resume`` without a checkpoint says so and equals a fresh run, ``sample``
keeps fit's pictures, ``--data-root`` is checked and recorded, a failed download leaves
no folders, ``diagnose`` never replaces complete results by partial ones, a truncated
``config.json`` is named."""

import gzip
import json
import struct
from pathlib import Path

import pytest
import torch

from lvm_pyro.cli import main
from lvm_pyro.data import DatasetNotFoundError, load_dataset

TINY = ["--epochs", "1", "--num-samples", "2", "--num-test", "20", "--no-progress",
        "--z-dim", "2", "--hidden-dim", "8", "--num-hidden", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["fit", "--out", str(out), *TINY]) == 0
    return out


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_fit_refuses_an_existing_run_unless_resume_or_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), *TINY]) == 0
    old_files = ("diagnostics.json", "disentanglement.json", "classifier_metrics.json",
                 "classifier_rejection.pt")  # what later commands write about the old run
    for name in old_files:
        (out / name).write_text('{"about": "the old model"}')
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1").write_text("old curves")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["fit", "--out", str(out), *TINY, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--force" in err
    assert _snapshot(out) == before  # untouched
    # --force with a run that cannot be built (no data there) keeps the old run too
    assert main(["fit", "--out", str(out), *TINY, "--force", "--data", "mnist",
                 "--data-root", str(tmp_path / "missing")]) == 2
    assert _snapshot(out) == before
    assert main(["fit", "--out", str(out), *TINY, "--seed", "1", "--force"]) == 0
    for name in old_files:  # nothing of the old run left behind
        assert not (out / name).exists(), name
    assert not (out / "tensorboard").exists()
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    # another file of the user's in the folder is kept
    (out / "notes.txt").write_text("mine")
    assert main(["fit", "--out", str(out), *TINY, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_force_removes_the_old_models_sample_pictures_and_keeps_other_files(tmp_path):
    """A forced refit replaces the model, so the pictures `sample` drew from the old one go
    with the rest of the old run; a file of the user's in sample/ stays (and the folder
    with it), an emptied sample/ goes. --help says so."""
    from lvm_pyro.cli import build_parser

    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), *TINY]) == 0
    assert main(["sample", str(out), "--num-samples", "4"]) == 0
    pictures = sorted(p.name for p in (out / "sample").glob("*.png"))
    assert pictures == ["reconstructions.png", "samples.png"]
    (out / "sample" / "notes.txt").write_text("mine")
    assert main(["fit", "--out", str(out), *TINY, "--seed", "1", "--force"]) == 0
    assert not list((out / "sample").glob("*.png"))  # nothing drawn from the old model
    assert (out / "sample" / "notes.txt").read_text() == "mine"
    (out / "sample" / "notes.txt").unlink()
    assert main(["sample", str(out), "--num-samples", "4"]) == 0
    assert main(["fit", "--out", str(out), *TINY, "--force"]) == 0
    assert not (out / "sample").exists()
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    force = next(a for a in fit._actions if "--force" in a.option_strings)
    assert "OUT/sample/" in force.help and "old model" in force.help


def test_resume_without_checkpoint_says_so_and_equals_a_fresh_run(tmp_path, capsys):
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    args = ["--epochs", "2", "--num-samples", "2", "--num-test", "10", "--no-progress",
            "--z-dim", "2", "--hidden-dim", "8", "--num-hidden", "1"]
    assert main(["fit", "--out", str(fresh), *args]) == 0
    capsys.readouterr()
    assert main(["fit", "--out", str(resumed), *args, "--resume"]) == 0
    err = capsys.readouterr().err
    a = json.loads((fresh / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert [h["loss"] for h in a["train_curve"]] == [h["loss"] for h in b["train_curve"]]
    assert "no checkpoint" in err
    assert a["test_nll"] == b["test_nll"]
    pa = torch.load(fresh / "checkpoint.pt", weights_only=True)["params"]
    pb = torch.load(resumed / "checkpoint.pt", weights_only=True)["params"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_sample_keeps_the_pictures_of_fit(run_dir):
    fit_pictures = {n: (run_dir / n).read_bytes() for n in ("samples.png", "reconstructions.png")}
    assert main(["sample", str(run_dir), "--num-samples", "16"]) == 0
    for n, data in fit_pictures.items():
        assert (run_dir / n).read_bytes() == data
        assert (run_dir / "sample" / n).stat().st_size > 0


def test_truncated_config_json_is_named(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("checkpoint.pt", "config.json"):
        (broken / f).write_bytes((run_dir / f).read_bytes())
    text = (broken / "config.json").read_text()
    (broken / "config.json").write_text(text[: len(text) // 2])
    assert main(["evaluate", str(broken), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert str(broken / "config.json") in err and "not valid JSON" in err


# -- data roots ------------------------------------------------------------------------
def _write_idx(raw: Path, n_train: int = 60, n_test: int = 20) -> None:
    """A tiny fake MNIST in the IDX format torchvision reads (gzipped)."""
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        with gzip.open(raw / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes())
        with gzip.open(raw / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def test_data_root_is_checked_recorded_and_overridable(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    _write_idx(cache / "MNIST" / "raw")
    monkeypatch.setenv("LVM_PYRO_DATA", str(cache))
    monkeypatch.setenv("LVM_PYRO_DATA_ONLY", str(cache))  # main's fresh-machine switch, if merged
    args = ["--data", "mnist", "--epochs", "1", "--num-samples", "2", "--num-test", "5",
            "--no-progress", "--z-dim", "2", "--hidden-dim", "8", "--num-hidden", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for root, word in ((empty, "is empty"), (tmp_path / "missing", "does not exist")):
        out = tmp_path / f"run_{root.name}"
        assert main(["fit", "--data-root", str(root), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert str(root) in err and word in err  # no silent fallback to the cache
        assert not (out / "config.json").exists()
    # a real root: config.json records absolute paths of the root and the files read
    mine = tmp_path / "mine"
    _write_idx(mine / "MNIST" / "raw")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--data-root", "mine", "--out", str(out), *args]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data_root"] == str(mine.resolve())
    assert cfg["data_source"] == str((mine / "MNIST" / "raw").resolve())
    # the data move: evaluate / sample / diagnose read them from --data-root
    moved = tmp_path / "moved"
    mine.rename(moved)
    assert main(["evaluate", str(out), "--num-samples", "2", "--num-test", "5"]) == 2
    assert str(mine.resolve()) in capsys.readouterr().err
    assert main(["evaluate", str(out), "--num-samples", "2", "--num-test", "5",
                 "--data-root", str(moved)]) == 0
    assert main(["sample", str(out), "--num-samples", "4", "--data-root", str(moved)]) == 0
    assert main(["diagnose", str(out), "--data-root", str(moved), "--num-test", "5",
                 "--num-samples", "30", "--num-mi-points", "5", "--nuts-points", "0",
                 "--sbc-simulations", "0"]) == 0


def test_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    monkeypatch.delenv("LVM_PYRO_DATA_ONLY", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LVM_PYRO_DATA", str(cache))
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        load_dataset("mnist", "train")
    assert not cache.exists()


# -- diagnose ----------------------------------------------------------------------------
DIAG = ["--num-test", "20", "--num-samples", "30", "--num-mi-points", "20", "--nuts-points", "0",
        "--sbc-simulations", "20", "--sbc-draws", "9"]


def test_diagnose_unknown_latent_or_failing_check_never_replaces_results(run_dir, capsys):
    assert main(["diagnose", str(run_dir), *DIAG]) == 0
    complete = (run_dir / "diagnostics.json").read_bytes()
    figures = {p.name: p.read_bytes() for p in run_dir.glob("diag_*.png")}
    assert figures
    capsys.readouterr()
    assert main(["diagnose", str(run_dir), *DIAG, "--latent", "foo"]) == 2
    assert "no latent site 'foo'" in capsys.readouterr().err
    assert (run_dir / "diagnostics.json").read_bytes() == complete
    assert json.loads(complete)["latent"] == "z"
    # an error that is not "does not apply" (here SBC's bins) is not a skipped section
    bad = [*DIAG[:-1], "10"]  # sbc_draws + 1 = 11 is not a multiple of the 10 bins
    assert main(["diagnose", str(run_dir), *bad]) == 2
    assert "multiple of num_bins" in capsys.readouterr().err
    assert (run_dir / "diagnostics.json").read_bytes() == complete
    assert {p.name: p.read_bytes() for p in run_dir.glob("diag_*.png")} == figures
    assert not list(run_dir.glob(".diagnose-*"))  # no staging folder left


def test_diagnose_skips_only_what_does_not_apply(tmp_path):
    """A VQ-VAE's point-mass guide over discrete codes: importance diagnostics and NUTS do
    not apply (NotApplicableError) and are recorded as skipped."""
    run = tmp_path / "vq"
    assert main(["fit", "--model", "vqvae", "--codebook-size", "8", "--embedding-dim", "4",
                 "--channels", "8", "--out", str(run), "--epochs", "1", "--num-samples", "1",
                 "--num-test", "20", "--no-progress"]) == 0
    assert main(["diagnose", str(run), "--num-test", "10", "--num-samples", "30",
                 "--num-mi-points", "10", "--nuts-points", "1", "--nuts-chains", "1",
                 "--nuts-warmup", "5", "--nuts-samples", "5", "--sbc-simulations", "0"]) == 0
    d = json.loads((run / "diagnostics.json").read_text())
    assert d["importance"]["skipped"].startswith("not applicable: the guide's latent draws")
    assert d["nuts"]["skipped"].startswith("not applicable: site 'codes' is discrete")
    assert d["sbc"]["skipped"].startswith("not requested")
    assert d["latent"] == "codes"


def test_resume_of_a_run_interrupted_in_its_first_epoch_starts_afresh(tmp_path, capsys):
    """A run stopped before its first checkpoint leaves only config.json: the interrupt hint
    says --resume, and --resume then trains exactly as a fresh run (no 'already holds a
    run' refusal)."""
    from lvm_pyro.cli import main

    args = ["fit", "--epochs", "1", "--z-dim", "2", "--hidden-dim", "8", "--num-hidden", "1",
            "--num-samples", "2", "--num-test", "10", "--no-progress"]
    fresh, half = tmp_path / "fresh", tmp_path / "half"
    assert main(args + ["--out", str(fresh)]) == 0
    half.mkdir()
    (half / "config.json").write_text((fresh / "config.json").read_text())  # no checkpoint
    capsys.readouterr()
    assert main(args + ["--out", str(half), "--resume"]) == 0
    out = capsys.readouterr()
    assert "nothing to resume" in out.out + out.err
    a = json.loads((fresh / "metrics.json").read_text())
    b = json.loads((half / "metrics.json").read_text())
    assert a["test_nll"] == b["test_nll"] and a["test_elbo"] == b["test_elbo"]


def test_a_file_where_a_folder_should_be_is_one_clear_error(tmp_path, capsys):
    from lvm_pyro.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["fit", "--epochs", "1", "--out", str(blocker), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()  # nothing created for a missing run
