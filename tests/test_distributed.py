"""Data-parallel training (lvm_pyro.training.distributed): 2 CPU processes joined by gloo.

Oracle: one process training on the same B rows. The sampling noise is made identical by
injecting it per data index (a fixed table of standard normals / uniforms indexed by the
datapoints' indices), so that a 2-rank step and a 1-process step see the same draws and
differ only by floating-point summation order (float64 here, tolerance 1e-6).
"""

from __future__ import annotations


import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from lvm_pyro.data import load_dataset
from lvm_pyro.training import Trainer
from lvm_pyro.training.checkpoint import CheckpointError, load_checkpoint
from lvm_pyro.training.distributed import (DistributedContext, launch_local, rank_seed,
                                           single_process)

N_ROWS = 13  # odd: the two shards of the global batch are uneven (7 and 6)
Z_DIM, K_PARTICLES = 3, 3


# -- programs with injected noise (a user's programs, written here) -------------------------
def _fit(eps: torch.Tensor, shape) -> torch.Tensor:
    """The injected noise for a batch shape: (K, B, Z) under a particle plate, its first
    particle (B, Z) outside one (a pass that runs a single particle)."""
    while eps.dim() > len(shape):
        eps = eps[0]
    return eps.expand(shape)


class InjectedNormal(dist.Normal):
    """Normal whose reparameterised draw is loc + scale * eps with eps given (the noise
    of the datapoints' indices)."""

    def __init__(self, loc, scale, eps):
        super().__init__(loc, scale)
        self.eps = eps

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return InjectedNormal(self.loc.expand(shape), self.scale.expand(shape), _fit(self.eps, shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.loc + self.scale * _fit(self.eps, self.batch_shape)


class InjectedBernoulli(dist.Bernoulli):
    """Bernoulli whose draw is 1{u < p} with the uniform u given."""

    def __init__(self, probs, u):
        super().__init__(probs=probs)
        self.u = u

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return InjectedBernoulli(self.probs.expand(shape), _fit(self.u, shape))

    def sample(self, sample_shape=torch.Size()):
        return (_fit(self.u, self.batch_shape) < self.probs).to(self.probs.dtype)


class Programs(nn.Module):
    """A small VAE (Gaussian or Bernoulli latents) over 64 binary pixels, with a
    ``pyro.param`` outside every module (the decoder's output bias) and noise read from a
    table by data index: (K, N, Z) standard normals or uniforms."""

    def __init__(self, latent: str, particles: int):
        super().__init__()
        torch.manual_seed(0)
        self.latent, self.particles = latent, particles
        self.enc = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 2 * Z_DIM))
        self.dec = nn.Sequential(nn.Linear(Z_DIM, 16), nn.Tanh(), nn.Linear(16, 64))
        g = torch.Generator().manual_seed(1)
        noise = (torch.randn(particles, N_ROWS, Z_DIM, generator=g) if latent == "normal"
                 else torch.rand(particles, N_ROWS, Z_DIM, generator=g))
        self.register_buffer("noise", noise)

    def model(self, x, num_data=None, idx=None):
        pyro.module("dec", self.dec)
        bias = pyro.param("x_bias", torch.zeros(64))
        with pyro.plate("data", num_data or len(x), subsample=idx):
            prior = (dist.Normal(torch.zeros(Z_DIM), 1.0) if self.latent == "normal"
                     else dist.Bernoulli(probs=torch.full((Z_DIM,), 0.5)))
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z) + bias).to_event(1), obs=x)

    def guide(self, x, num_data=None, idx=None):
        pyro.module("enc", self.enc)
        idx = torch.arange(len(x)) if idx is None else idx
        eps = self.noise[:, idx] if self.particles > 1 else self.noise[0, idx]  # ([K,] B, Z)
        with pyro.plate("data", num_data or len(x), subsample=idx):
            h = self.enc(x)
            if self.latent == "normal":
                q = InjectedNormal(h[..., :Z_DIM], nn.functional.softplus(h[..., Z_DIM:]) + 1e-3, eps)
            else:
                q = InjectedBernoulli(torch.sigmoid(h[..., :Z_DIM]), eps)
            pyro.sample("z", q.to_event(1))


def _digits(n: int, binary: bool) -> torch.Tensor:
    x = load_dataset("digits", "train").images[:n].double()  # (n, 1, 8, 8) in [0, 1]
    return (x > 0.5).double().reshape(n, 64) if binary else x


def _objective(name: str):
    from pyro.infer import Trace_ELBO

    from lvm_pyro.inference import IWAE_ELBO, VIMCO
    return {"trace": lambda: Trace_ELBO(), "iwae": lambda: IWAE_ELBO(num_particles=K_PARTICLES),
            "vimco": lambda: VIMCO(num_particles=K_PARTICLES)}[name]()


def _snapshot(trainer: Trainer) -> dict:
    ps = pyro.get_param_store()
    return {"params": {k: v.detach().clone() for k, v in ps.named_parameters()},
            "buffers": {f"{k}.{n}": b.detach().clone() for k, m in trainer.modules.items()
                        for n, b in m.named_buffers()},
            "history": [h["loss"] for h in trainer.history]}


def _train_one_step(ctx: DistributedContext, case: str, **kw) -> dict:
    """One epoch of one step (global batch = all N_ROWS rows) of ``case``."""
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if case == "vqvae":
        from lvm_pyro.training.builders import build_model
        model, guide = build_model({"model": "vqvae", "codebook_size": 6, "embedding_dim": 2,
                                    "channels": 4, "decay": 0.9,
                                    "dead_code_threshold": kw.get("threshold", 0.0)}, (1, 8, 8))
        model.double(), guide.double()
        x, modules = _digits(N_ROWS, binary=False), None
        elbo = _objective("trace")
    else:
        progs = Programs("bernoulli" if case == "vimco" else "normal",
                         1 if case == "trace" else K_PARTICLES)
        model, guide, modules = progs.model, progs.guide, {"programs": progs}
        x, elbo = _digits(N_ROWS, binary=True), _objective(case)
    t = Trainer(model, guide, elbo, lr=0.01, batch_size=kw.get("batch_size", N_ROWS),
                binarization="none",
                progress=False, divergence_tolerance=None, modules=modules,
                distributed=None if ctx is None else ctx)
    t.fit(x, kw.get("epochs", 1))
    out = _snapshot(t)
    if case == "vqvae":
        out["restarts"] = int(sum(q.epoch_restarts for q in t._quantizers)) if t._quantizers else 0
    return out


CASES = ("trace", "iwae", "vimco", "vqvae")


def _score_function_run(ctx, path: str, epochs: int, resume: bool) -> dict:
    """Bernoulli latents, TraceGraph_ELBO with Pyro's decaying-average baselines (running
    state in the param store, per rank), 3 batches of 4 rows."""
    from pyro.infer import TraceGraph_ELBO

    from lvm_pyro.inference.score_function import ScoreFunctionMessenger
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    progs = Programs("bernoulli", 1)
    guide = ScoreFunctionMessenger(baseline="decaying_avg")(progs.guide)
    t = Trainer(progs.model, guide, TraceGraph_ELBO(), lr=0.01, batch_size=4,
                binarization="none", progress=False, divergence_tolerance=None,
                modules={"programs": progs}, checkpoint_path=path, distributed=ctx)
    t.fit(_digits(N_ROWS, binary=True)[:12], epochs, resume=resume)
    out = _snapshot(t)
    out["baselines"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()
                        if k.startswith("__baseline")}
    return out


def _worker(ctx: DistributedContext, directory: str) -> dict:
    """Everything the 2-rank tests check, in one pair of processes (starting processes is
    the slow part): one step per objective, restarts over 3 epochs, stop and resume, and
    last a failing rank 1."""
    out = {case: _train_one_step(ctx, case) for case in CASES}
    # batches of 4 from 13 rows: shards 2 / 2 and, for the last batch of 1, 1 / 0 (empty)
    out["uneven"] = _train_one_step(ctx, "trace", batch_size=4)
    # restarts decided on rank 0 and broadcast: ranks agree after several steps
    out["vq_restarts"] = _train_one_step(ctx, "vqvae", threshold=5.0, epochs=3)
    out["straight"] = _vae_run(ctx, f"{directory}/straight.pt", 2, False)
    # stop after the first epoch; rank 0 writes its checkpoint late, so a rank that did not
    # wait for it would find none and start the resumed run afresh
    import lvm_pyro.training.loop as loop_module
    real_save = loop_module.save_checkpoint

    def late_save(path, payload):
        import time
        time.sleep(2.0)
        return real_save(path, payload)

    loop_module.save_checkpoint = late_save
    try:
        _vae_run(ctx, f"{directory}/stopped.pt", 1, False)
    finally:
        loop_module.save_checkpoint = real_save
    out["resumed"] = _vae_run(ctx, f"{directory}/stopped.pt", 2, True)  # a new Trainer
    out["sf_straight"] = _score_function_run(ctx, f"{directory}/sf_straight.pt", 2, False)
    _score_function_run(ctx, f"{directory}/sf_stopped.pt", 1, False)
    out["sf_resumed"] = _score_function_run(ctx, f"{directory}/sf_stopped.pt", 2, True)
    out["failure"] = _failure_outcome(ctx)  # last: rank 1 leaves the job
    return out


def _assert_close(a: dict, b: dict, what: str, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), \
            f"{what}: {k} differs by {float((a[k] - b[k]).abs().max()):.3g}"


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp")
    results = launch_local(_worker, 2, str(directory), timeout=120.0)
    assert all(status == "ok" for status, _ in results), results
    return directory, [v for _, v in results]


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_one_step_equals_one_process(two_rank_results, case):
    _, two_rank_results = two_rank_results
    ref = _train_one_step(None, case)
    torch.set_default_dtype(torch.float32)
    for rank, res in enumerate(two_rank_results):
        r = res[case]
        _assert_close(r["params"], ref["params"], f"{case} rank {rank} params")
        _assert_close(r["buffers"], ref["buffers"], f"{case} rank {rank} buffers")
        assert r["history"] == pytest.approx(ref["history"], rel=1e-9)
    moved = max(float((ref["params"][k] - v).abs().max())
                for k, v in two_rank_results[0][case]["params"].items())
    assert moved > 0  # sanity: the comparison is not of untouched initial values


def test_empty_shard_still_equals_one_process(two_rank_results):
    """One epoch of 4 steps whose last global batch has 1 row: rank 1 contributes no
    data (zero weight) to that step's all-reduce; every step equals one process's."""
    _, results = two_rank_results
    ref = _train_one_step(None, "trace", batch_size=4)
    torch.set_default_dtype(torch.float32)
    for rank, res in enumerate(results):
        _assert_close(res["uneven"]["params"], ref["params"], f"rank {rank} params")
        assert res["uneven"]["history"] == pytest.approx(ref["history"], rel=1e-9)


def test_vq_dead_code_restarts_agree_across_ranks(two_rank_results):
    _, two_rank_results = two_rank_results
    r0, r1 = (res["vq_restarts"] for res in two_rank_results)
    assert r0["restarts"] > 0 or any("epoch_restarts" in k for k in r0["buffers"])
    _assert_close(r0["params"], r1["params"], "params rank 0 vs 1", atol=0)
    _assert_close(r0["buffers"], r1["buffers"], "buffers rank 0 vs 1", atol=0)


def test_shard_covers_the_batch_without_repeats():
    batch = torch.arange(7)
    parts = [DistributedContext(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    tiny = [DistributedContext(rank=r, world_size=3).shard(torch.arange(2)) for r in range(3)]
    assert [len(p) for p in tiny] == [1, 1, 0]
    assert single_process().shard(batch) is batch
    assert rank_seed(5, 0) == 5 and len({rank_seed(5, r) for r in range(8)}) == 8


def test_init_from_environment_without_torchrun_and_with_bad_settings(monkeypatch):
    from lvm_pyro.training.distributed import TIMEOUT_ENV, init_from_environment
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", TIMEOUT_ENV):
        monkeypatch.delenv(k, raising=False)
    assert init_from_environment().world_size == 1  # no torchrun: one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK, MASTER_ADDR, MASTER_PORT unset.*torchrun"):
        init_from_environment()
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV} must be a number of seconds"):
        init_from_environment()


# -- checkpoint, stop, resume ---------------------------------------------------------------
def _vae_run(ctx, path: str, epochs: int, resume: bool) -> dict:
    from lvm_pyro.training.builders import build_model
    torch.set_default_dtype(torch.float32)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = build_model({"model": "vae", "z_dim": 2, "hidden_dim": 16}, (1, 8, 8))
    x = load_dataset("digits", "train").images[:60]
    t = Trainer(model, guide, _objective("trace"), lr=0.01, batch_size=16, progress=False,
                checkpoint_path=path, binarization="dynamic", divergence_tolerance=None,
                distributed=ctx)
    t.fit(x, epochs, resume=resume)
    return _snapshot(t)


def test_two_ranks_stop_and_resume_equals_uninterrupted(two_rank_results):
    """2 ranks: 2 epochs straight vs 1 epoch, stop, a new Trainer resuming from the
    checkpoint to 2 epochs (same processes, param store cleared and rebuilt)."""
    directory, results = two_rank_results
    for rank in range(2):
        a, b = results[rank]["straight"], results[rank]["resumed"]
        _assert_close(a["params"], b["params"], f"rank {rank} params", atol=0)
        assert a["history"] == b["history"] and len(a["history"]) == 2
    _assert_close(results[0]["straight"]["params"], results[1]["straight"]["params"],
                  "ranks differ", atol=0)
    for rank in range(2):  # per-rank running state (decaying-average baselines) restored
        a, b = results[rank]["sf_straight"], results[rank]["sf_resumed"]
        assert a["baselines"], "no decaying-average baseline was created"
        _assert_close(a["params"], b["params"], f"rank {rank} score-function params", atol=0)
        _assert_close(a["baselines"], b["baselines"], f"rank {rank} baselines", atol=0)
        assert a["history"] == b["history"]
    payload = load_checkpoint(directory / "straight.pt")
    assert payload["world_size"] == 2 and len(payload["rng"]["ranks"]) == 2
    # a different world size is refused, naming the number of processes
    with pytest.raises(CheckpointError, match="2 process"):
        _vae_run(None, str(directory / "stopped.pt"), 3, True)


# -- a failing rank stops the job ------------------------------------------------------------
class Boom(RuntimeError):
    """The failure a test injects on rank 1."""


def _failing_run(ctx, mode: str, stall_seconds: float = 0.0) -> str:
    """Train 3 epochs of 4 steps; rank 1 raises after its first epoch (after sleeping
    ``stall_seconds`` with ``mode="stall"``: alive but absent from the next collective)."""
    torch.set_default_dtype(torch.float32)
    pyro.clear_param_store()
    x = _digits(N_ROWS, binary=True)
    progs = Programs("normal", 1)

    def bomb(trainer, metrics):
        if ctx.rank == 1:
            if mode == "stall":
                import time
                time.sleep(stall_seconds)
            raise Boom("rank 1 failed on purpose")

    t = Trainer(progs.model, progs.guide, _objective("trace"), batch_size=4,
                binarization="none", progress=False, divergence_tolerance=None,
                modules={"programs": progs}, callbacks=[bomb], distributed=ctx)
    t.fit(x.float(), 3)
    return "finished"


def _failure_outcome(ctx, mode: str = "exit", stall_seconds: float = 0.0) -> str:
    """``"Boom: ..."`` on rank 1, the error rank 0 got (its process carries on)."""
    from lvm_pyro.training.distributed import DistributedError
    try:
        return _failing_run(ctx, mode, stall_seconds)
    except (Boom, DistributedError) as e:  # rank 1 then leaves (its process exits)
        return f"{type(e).__name__}: {e}"


def _check_failure(outcomes: list) -> None:
    assert outcomes[1] == "Boom: rank 1 failed on purpose"
    assert outcomes[0].startswith("DistributedError: rank 0 of 2: the gradient all-reduce of "
                                  "step 5 failed"), outcomes[0]  # the first step of epoch 2
    assert "another rank stopped" in outcomes[0] and "timeout" in outcomes[0]


def test_a_failing_rank_stops_the_job_with_a_clear_message(two_rank_results):
    """Rank 1 raises and its process exits: rank 0's next all-reduce fails at once,
    naming the step, instead of hanging."""
    _, results = two_rank_results
    _check_failure([r["failure"] for r in results])


@pytest.mark.slow
def test_a_stalled_rank_times_out_with_a_clear_message():
    """Rank 1 stays alive but never reaches the all-reduce: rank 0 raises after the
    process group's timeout (20 s) instead of waiting for ever."""
    results = launch_local(_failure_outcome, 2, "stall", 40.0, timeout=20.0, join_timeout=180.0)
    assert all(s == "ok" for s, _ in results), results
    _check_failure([v for _, v in results])


@pytest.mark.slow
def test_torchrun_cli_fit_records_world_size_and_refuses_another(tmp_path):
    """`torchrun --nproc_per_node 2 -m lvm_pyro.cli fit` trains, rank 0 alone reports and
    writes metrics.json with world_size 2; `lvm-pyro fit --resume` in one process is
    refused with one line."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    flags = ["fit", "--epochs", "1", "--z-dim", "2", "--num-samples", "5", "--num-test", "20",
             "--out", str(out), "--no-progress"]
    done = subprocess.run([str(torchrun if torchrun.exists() else "torchrun"),
                           "--nproc_per_node", "2", "-m", "lvm_pyro.cli", *flags],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test NLL") == 1  # rank 0 alone prints
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    flags[2] = "2"  # --epochs 2
    again = subprocess.run([sys.executable, "-m", "lvm_pyro.cli", *flags, "--resume"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "2 process(es)" in again.stderr, again.stderr[-2000:]
