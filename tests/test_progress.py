"""Progress reports: a bar on a terminal, one line per epoch in logs and CI."""

import io

import torch
from pyro.infer import Trace_ELBO

from lvm_pyro.training import Trainer
from lvm_pyro.training.builders import build_vae
from lvm_pyro.training.progress import EpochProgress, progress_iter


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_non_terminal_gets_one_line_per_epoch(capsys):
    x = torch.rand(60, 1, 8, 8)
    model, guide = build_vae({"z_dim": 2, "hidden_dim": 16, "num_hidden": 1}, (1, 8, 8))
    Trainer(model, guide, Trace_ELBO(), batch_size=10, progress=True).fit(x, 3)  # 6 steps/epoch
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 3 and "\r" not in err
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("nats/example" in ln for ln in lines)


def test_terminal_gets_a_bar_and_no_epoch_lines():
    stream = _Terminal()
    p = EpochProgress(4, stream=stream)
    for i in range(4):
        p.step(1, 10.0 - i)
    p.end_epoch(1, 1, 7.0, 0.1)
    p.close()
    out = stream.getvalue()
    assert "\r" in out and "4/4" in out and "epoch 1/1:" not in out


def test_progress_iter_line_when_not_a_terminal():
    stream = io.StringIO()
    assert list(progress_iter(range(5), "evaluating", stream=stream)) == list(range(5))
    assert stream.getvalue() == "evaluating: 5 batches done\n"
    stream = io.StringIO()
    assert list(progress_iter(range(2), "x", stream=stream, enabled=False)) == [0, 1]
    assert stream.getvalue() == ""
