"""Cross-check of MIG, DCI and SAP against the maintained ``disent`` package (optional
extra ``pip install .[disent]``; it pulls in lightning, h5py and requests), on the same
codes and the same train / test rows. Slow and skipped without ``disent``: not in the
default suite. BetaVAE / FactorVAE are not compared: disent computes them only through its
own dataset and representation-function objects.
"""

import numpy as np
import pytest

from lvm_pyro.diagnostics import dci_from_importance, dci_scores, mig_score, sap_score
from lvm_pyro.diagnostics.disentanglement import _split

pytestmark = pytest.mark.slow
disent_mig = pytest.importorskip("disent.metrics._mig")
disent_dci = pytest.importorskip("disent.metrics._dci")
disent_sap = pytest.importorskip("disent.metrics._sap")


def _codes(kind: str, rng):
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    f = np.tile(grid, (8, 1))  # (512, 3)
    s = (f - 1.5) / np.sqrt(1.25)
    if kind == "aligned":
        c = np.concatenate([s, rng.normal(size=(len(f), 1))], 1)
    elif kind == "rotated":
        q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
        c = np.concatenate([s, np.zeros((len(f), 1))], 1) @ q
    else:
        c = rng.normal(size=(len(f), 4))
    return c + 0.1 * rng.normal(size=c.shape), f


@pytest.mark.parametrize("kind", ["aligned", "rotated", "noise"])
def test_mig_dci_sap_agree_with_disent(kind):
    rng = np.random.default_rng(0)
    c, f = _codes(kind, rng)
    ours = mig_score(c, f, num_train=len(c)).score
    theirs = disent_mig._compute_mig(c.T, f.T)["mig.discrete_score"]
    assert ours == pytest.approx(theirs, abs=1e-12)

    tr, te = _split(len(c), 340, 172, np.random.default_rng(0))  # the rows ours uses
    dci = dci_scores(c, f, seed=0, num_train=340, num_test=172)
    ref = disent_dci._compute_dci(c[tr].T, f[tr].T, c[te].T, f[te].T)
    # the formulas on one importance matrix: identical
    d, comp, _, _ = dci_from_importance(dci.importance)
    assert d == pytest.approx(disent_dci._disentanglement(dci.importance), abs=1e-12)
    assert comp == pytest.approx(disent_dci._completeness(dci.importance), abs=1e-12)
    # whole pipeline: the boosted trees differ only in tie-breaking (random_state)
    assert dci.disentanglement == pytest.approx(ref["dci.disentanglement"], abs=0.03)
    assert dci.completeness == pytest.approx(ref["dci.completeness"], abs=0.03)
    assert dci.informativeness == pytest.approx(ref["dci.informativeness_test"], abs=0.03)

    ours_sap = sap_score(c, f, seed=0, num_train=340, num_test=172)
    ref_sap = disent_sap._compute_sap(c[tr].T, f[tr].T, c[te].T, f[te].T, False)["sap.score"]
    assert ours_sap == pytest.approx(ref_sap, abs=1e-3)
