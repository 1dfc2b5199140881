"""Whether a run's fitted code prior is current is decided by the fingerprint of the run
checkpoint it was fitted to, not by file times: a copied run keeps its prior, a retrained
run's prior is stale, and a prior from before fingerprints falls back to the times."""

import os
import shutil

import pytest
import torch

from lvm_pyro.training.checkpoint import file_fingerprint, save_checkpoint
from lvm_pyro.training.prior_stage import PRIOR_CHECKPOINT, fitted_to, prior_is_current


def _run(tmp_path, name="run"):
    run = tmp_path / name
    save_checkpoint(run / "checkpoint.pt", {"modules": {"w": torch.arange(4.0)}, "config": {}})
    return run


def _age(path, seconds):
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_a_copied_run_keeps_its_prior_and_a_retrained_run_loses_it(tmp_path):
    run = _run(tmp_path)
    assert not prior_is_current(run)  # no prior yet
    save_checkpoint(run / PRIOR_CHECKPOINT, {"config": {"fitted_to": fitted_to(run)}})
    assert prior_is_current(run)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, copy_function=shutil.copy)  # new file times, as `cp -r`
    _age(copy / PRIOR_CHECKPOINT, 100)  # the prior now looks older than the run
    assert prior_is_current(copy)
    save_checkpoint(run / "checkpoint.pt", {"modules": {"w": torch.ones(4)}, "config": {}})
    _age(run / "checkpoint.pt", 1000)  # retrained, yet older by its time
    assert not prior_is_current(run)
    assert file_fingerprint(run / "checkpoint.pt") != file_fingerprint(copy / "checkpoint.pt")


def test_a_prior_without_a_fingerprint_is_judged_by_time_and_a_corrupt_one_is_stale(tmp_path):
    run = _run(tmp_path)
    save_checkpoint(run / PRIOR_CHECKPOINT, {"config": {}})
    assert prior_is_current(run)
    _age(run / PRIOR_CHECKPOINT, 100)
    assert not prior_is_current(run)
    (run / PRIOR_CHECKPOINT).write_bytes(b"not a checkpoint")
    assert not prior_is_current(run)


def test_prior_problem_tells_a_corrupt_prior_from_a_stale_one(tmp_path):
    from lvm_pyro.training.prior_stage import prior_problem
    from lvm_pyro.training.rejection_sampling import check_rejection_ready

    run = _run(tmp_path)
    assert prior_problem(run) is None  # no prior file: nothing wrong with it
    save_checkpoint(run / PRIOR_CHECKPOINT, {"config": {"fitted_to": fitted_to(run)}})
    assert prior_problem(run) is None  # current
    save_checkpoint(run / "checkpoint.pt", {"modules": {"w": torch.ones(4)}, "config": {}})
    assert "earlier training" in prior_problem(run)
    (run / PRIOR_CHECKPOINT).write_bytes(b"not a checkpoint")
    problem = prior_problem(run)
    assert problem.startswith("is unreadable") and "earlier training" not in problem
    # the rejection sampler's check says the same (a VQ-VAE-2 run's config)
    (run / "config.json").write_text('{"model": "vqvae2"}')
    from lvm_pyro.training.checkpoint import CheckpointError

    for where in (run, str(run)):  # a path or a string, as a user passes it
        with pytest.raises(CheckpointError, match="is unreadable"):
            check_rejection_ready(where)
    save_checkpoint(run / PRIOR_CHECKPOINT, {"config": {"fitted_to": "an older fingerprint"}})
    with pytest.raises(CheckpointError, match="earlier training.*fit-prior .* --force"):
        check_rejection_ready(str(run))


@pytest.mark.parametrize("config", [None, "a string", [1, 2]])
def test_a_prior_whose_config_is_not_a_dict_is_unreadable_not_stale(tmp_path, config):
    from lvm_pyro.training.prior_stage import prior_problem

    run = _run(tmp_path)
    save_checkpoint(run / PRIOR_CHECKPOINT, {"config": config})
    assert not prior_is_current(run)
    problem = prior_problem(run)
    assert problem.startswith("is unreadable") and "config dict" in problem


def test_a_missing_run_checkpoint_is_named_not_called_a_retraining(tmp_path):
    from lvm_pyro.training.prior_stage import prior_problem

    run = _run(tmp_path)
    save_checkpoint(run / PRIOR_CHECKPOINT, {"config": {"fitted_to": fitted_to(run)}})
    (run / "checkpoint.pt").unlink()
    assert "checkpoint.pt is missing" in prior_problem(run)
