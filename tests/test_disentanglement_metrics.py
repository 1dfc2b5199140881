"""Disentanglement metrics (lvm_pyro.diagnostics.disentanglement) on synthetic codes with
known answers.

Table: 4 factors with 3 values each, every combination 6 times (486 rows), so distinct
factors are exactly independent in the table. Cases: codes = standardised factors plus
noise (sd 0.05; everything near 1), a random rotation of them (MIG and DCI
disentanglement clearly lower; BetaVAE / FactorVAE make no claim there), a factor
captured by two identical codes (its MIG gap 0, its DCI completeness about 0.5), pure
noise (MIG, DCI, SAP near 0; BetaVAE / FactorVAE near chance 1/4). Exact oracles: MIG = 1
when the codes are the factors themselves; DCI's formulas on hand-made importance
matrices.
"""

import math

import numpy as np
import pytest

from lvm_pyro.diagnostics import (METRIC_KEYS, dci_from_importance, dci_scores,
                                  disentanglement_metrics, mig_score)

K, V = 4, 3
SMALL = dict(num_train=300, num_test=150)


def _table():
    grid = np.stack(np.meshgrid(*[np.arange(V)] * K, indexing="ij"), -1).reshape(-1, K)
    factors = np.tile(grid, (6, 1))  # (486, 4)
    return factors, (factors - 1) / math.sqrt(2 / 3)  # unit-variance factor values


def test_factors_plus_small_noise_score_near_one():
    f, s = _table()
    codes = s + 0.05 * np.random.default_rng(0).normal(size=s.shape)
    m = disentanglement_metrics(codes, f, seed=0, **SMALL)
    assert tuple(m) == METRIC_KEYS
    assert all(isinstance(v, float) for v in m.values())
    assert m["mig"] > 0.9 and m["dci_disentanglement"] > 0.95 and m["dci_completeness"] > 0.95
    assert m["dci_informativeness"] > 0.95 and m["beta_vae"] > 0.95 and m["factor_vae"] > 0.95
    # SAP's one-dimensional linear SVMs separate only the outer values of a 3-valued
    # factor from the rest: the best code is far ahead of chance, the others at chance
    assert m["sap"] > 0.4
    # deterministic for a seed
    assert disentanglement_metrics(codes, f, seed=0, **SMALL) == m


def test_random_rotation_lowers_mig_and_dci_disentanglement():
    f, s = _table()
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(K, K)))
    aligned = s + 0.05 * rng.normal(size=s.shape)
    rotated = s @ q + 0.05 * rng.normal(size=s.shape)
    mig_a, mig_r = mig_score(aligned, f).score, mig_score(rotated, f).score
    dci_a, dci_r = dci_scores(aligned, f, **SMALL), dci_scores(rotated, f, **SMALL)
    assert mig_r < 0.5 < 0.9 < mig_a  # measured 0.24 against 0.97
    assert dci_r.disentanglement < 0.7 < 0.95 < dci_a.disentanglement  # 0.51 against 1.0
    assert dci_r.informativeness > 0.9  # the information is all there, only mixed


def test_factor_captured_by_two_identical_codes():
    f, s = _table()
    codes = np.concatenate([s[:, :1], s], 1) + 0.05 * np.random.default_rng(0).normal(size=(len(s), K + 1))
    codes[:, 1] = codes[:, 0]
    mig = mig_score(codes, f)
    assert mig.per_factor[0] == 0.0  # two codes share the top MI: no gap
    assert np.all(mig.per_factor[1:] > 0.9)
    dci = dci_scores(codes, f, **SMALL)
    assert dci.completeness_per_factor[0] == pytest.approx(0.5, abs=0.15)
    assert np.all(dci.completeness_per_factor[1:] > 0.95)


def test_pure_noise_scores_near_zero():
    f, _ = _table()
    codes = np.random.default_rng(0).normal(size=(len(f), K))
    m = disentanglement_metrics(codes, f, seed=0, **SMALL)
    assert m["mig"] < 0.05 and m["dci_disentanglement"] < 0.1 and m["dci_completeness"] < 0.1
    assert m["sap"] < 0.05
    assert abs(m["dci_informativeness"] - 1 / V) < 0.1  # chance accuracy
    assert m["beta_vae"] < 0.4 and m["factor_vae"] < 0.45  # chance is 1/4


def test_mig_is_one_when_codes_are_the_factors():
    # every factor value falls in its own histogram bin, so MI(c_k; v_k) = H(v_k) and, the
    # factors being independent in the full table, MI(c_j; v_k) = 0 for j != k
    f, _ = _table()
    r = mig_score(f.astype(float), f, num_train=len(f))
    assert r.score == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(r.entropy, math.log(V))
    assert np.allclose(r.mutual_information, np.eye(K) * math.log(V), atol=1e-12)


def test_dci_formulas_on_known_importance_matrices():
    d, c, _, _ = dci_from_importance(np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    assert d == pytest.approx(1.0, abs=1e-8) and c == pytest.approx(1.0, abs=1e-8)
    d, c, _, _ = dci_from_importance(np.ones((3, 3)))
    assert d == pytest.approx(0.0, abs=1e-8) and c == pytest.approx(0.0, abs=1e-8)
    # factor 0 split over two codes: completeness 1 - log 2 / log 3 for it, 1 for factor 1
    d, c, per_code, per_factor = dci_from_importance(np.array([[0.5, 0.0], [0.5, 0.0], [0.0, 1.0]]))
    assert per_factor[0] == pytest.approx(1 - math.log(2) / math.log(3), abs=1e-8)
    assert c == pytest.approx(0.5 * (1 - math.log(2) / math.log(3)) + 0.5, abs=1e-8)
    assert d == pytest.approx(1.0, abs=1e-8)


def test_bad_tables_are_refused():
    f, s = _table()
    with pytest.raises(ValueError, match="same N"):
        disentanglement_metrics(s[:10], f[:11])
    with pytest.raises(ValueError, match="single value"):
        disentanglement_metrics(s, np.concatenate([f, np.zeros((len(f), 1), int)], 1))
    with pytest.raises(ValueError, match="integer"):
        disentanglement_metrics(s, f + 0.5)
    with pytest.raises(ValueError, match="NaN"):
        disentanglement_metrics(np.full_like(s, np.nan), f)
    with pytest.raises(ValueError, match="at least 2 codes"):
        disentanglement_metrics(s[:, :1], f)
