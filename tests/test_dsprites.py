"""Procedural dSprites (lvm_pyro.data.dsprites): each factor changes only what it should.

Oracles: the unit shapes' areas (square 4, ellipse pi/2, heart by a 2000 x 2000 midpoint
quadrature of its implicit inequality, independent of the renderer's 4 x 4 supersampling),
exact whole-pixel translations for the positions, and the principal axis of the image
moments for the ellipse's orientation.
"""

import math

import numpy as np
import pytest
import torch

from lvm_pyro.data import DatasetNotFoundError, load_dataset
from lvm_pyro.data.dsprites import (DSPRITES_NPZ, DSPRITES_VARIANTS, FACTOR_NAMES, SHAPES,
                                    DSpritesConfig, load_dsprites, make_dsprites,
                                    render_dsprites, split_indices)

FULL = DSPRITES_VARIANTS["full"]


def _grid(shape=None, scale=None, orientation=None, pos_x=None, pos_y=None, cfg=FULL):
    """All factor rows with the given factors fixed (others over their full ranges)."""
    sizes = (len(SHAPES), cfg.num_scales, cfg.num_orientations, cfg.num_positions, cfg.num_positions)
    fixed = (shape, scale, orientation, pos_x, pos_y)
    ranges = [torch.tensor([f]) if f is not None else torch.arange(n) for f, n in zip(fixed, sizes)]
    return torch.cartesian_prod(*ranges).reshape(-1, 5)


def _com(images):
    """Centre of mass (x = column, y = row) in pixel-centre coordinates, (N, 2) float64."""
    img = images[:, 0].double()
    h, w = img.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    mass = img.sum((-1, -2))
    return torch.stack([(img.sum(-2) * xs).sum(-1) / mass, (img.sum(-1) * ys).sum(-1) / mass], -1)


def _heart_area():
    n = 2000
    g = (np.arange(n) + 0.5) / n * 3 - 1.5  # [-1.5, 1.5] covers the unit heart
    u, v = np.meshgrid(g, g)
    a, b = 1.14 * u, 1.14 * (-v + 0.11)
    return float(((a ** 2 + b ** 2 - 1) ** 3 - a ** 2 * b ** 3 <= 0).mean() * 9)


def test_cpu_variant_sizes_factors_and_split():
    d = make_dsprites("cpu")
    assert d.images.shape == (46080, 1, 32, 32) and d.images.dtype == torch.float32
    assert set(d.images.unique().tolist()) == {0.0, 1.0}
    assert d.factors.shape == (46080, 5) and d.factors.dtype == torch.int64
    assert d.factor_names == FACTOR_NAMES and d.factor_sizes == (3, 6, 10, 16, 16)
    # every combination exactly once
    code = (((d.factors[:, 0] * 6 + d.factors[:, 1]) * 10 + d.factors[:, 2]) * 16
            + d.factors[:, 3]) * 16 + d.factors[:, 4]
    assert torch.equal(code, torch.arange(46080))  # and in row-major order
    test = load_dataset("dsprites", "test")
    assert len(test.images) == math.ceil(0.1 * 46080)
    train_idx = split_indices(46080, "train")
    rows = torch.cat([d.factors[train_idx], test.factors])
    code = (((rows[:, 0] * 6 + rows[:, 1]) * 10 + rows[:, 2]) * 16 + rows[:, 3]) * 16 + rows[:, 4]
    assert torch.equal(code.sort().values, torch.arange(46080))  # disjoint, together all
    assert test.factors.dtype == torch.int64 and test.factor_names == FACTOR_NAMES
    # images belong to their factors; deterministic
    assert torch.equal(test.images, render_dsprites(test.factors).float())
    assert torch.equal(split_indices(46080, "test"), split_indices(46080, "test"))
    assert torch.equal(test.labels, test.factors[:, 0])
    assert test.source == "lvm_pyro.data.dsprites:cpu"


def test_positions_translate_the_image_exactly():
    base = _grid(pos_x=3, pos_y=5)
    img = render_dsprites(base, "full")
    right = base.clone()
    right[:, 3] += 7
    down = base.clone()
    down[:, 4] += 11
    assert torch.equal(render_dsprites(right, "full"), torch.roll(img, 7, dims=-1))
    assert torch.equal(render_dsprites(down, "full"), torch.roll(img, 11, dims=-2))
    com = _com(img)
    d_right = _com(render_dsprites(right, "full")) - com
    assert torch.allclose(d_right, torch.tensor([7.0, 0.0], dtype=torch.float64), atol=1e-9)


def test_centre_of_mass_follows_position_for_symmetric_shapes():
    # square and ellipse are point-symmetric: their centre of mass is the centre itself,
    # first_centre + index (1-pixel steps), up to rasterisation (< 0.25 px here)
    rows = torch.cat([_grid(shape=s, scale=5, orientation=o) for s in (0, 1) for o in (0, 7)])
    com = _com(render_dsprites(rows, "full"))
    expected = FULL.first_centre + rows[:, 3:5].double()
    assert (com - expected).abs().max() < 0.25


def test_shape_and_scale_set_the_area():
    heart = _heart_area()  # 2.818 in unit-shape units
    unit_area = torch.tensor([4.0, math.pi / 2, heart], dtype=torch.float64)
    rows = torch.cat([_grid(shape=s, scale=k, pos_x=16, pos_y=16) for s in range(3) for k in range(6)])
    area = render_dsprites(rows, "full").sum((1, 2, 3)).double()
    scale = torch.linspace(0.5, 1.0, 6, dtype=torch.float64)[rows[:, 1]]
    expected = unit_area[rows[:, 0]] * (scale * FULL.half_size) ** 2
    rel = (area - expected) / expected
    # single images: thresholding 4 x 4 sub-pixels errs by up to ~0.3 pixel per pixel of
    # perimeter, 12 % for the smallest rotated square (measured); over the orientations
    # it averages out: every (shape, scale) mean is within 3 % of the exact area
    assert rel.abs().max() < 0.13
    key = rows[:, 0] * 6 + rows[:, 1]
    means = torch.zeros(18, dtype=torch.float64).index_add_(0, key, rel) / 40
    assert means.abs().max() < 0.03
    # area grows as scale^2: scale 1 against scale 0.5 (ratio 4) from the orientation means
    for s in range(3):
        a1, a0 = area[(rows[:, 0] == s) & (rows[:, 1] == 5)], area[(rows[:, 0] == s) & (rows[:, 1] == 0)]
        assert float(a1.mean() / a0.mean()) == pytest.approx(4.0, rel=0.04)


def test_rotation_preserves_area_and_turns_the_ellipse():
    rows = _grid(shape=1, scale=5, pos_x=16, pos_y=16)  # 40 orientations
    img = render_dsprites(rows, "full")
    area = img.sum((1, 2, 3)).double()
    exact = math.pi / 2 * FULL.half_size ** 2  # 144.8 pixels
    assert ((area / exact) - 1).abs().max() < 0.05  # measured: -1.2 % .. +4.3 %
    # principal axis of the second central moments = theta (mod pi), x right, y down
    p = img[:, 0].double()
    ys, xs = torch.meshgrid(torch.arange(64.0, dtype=torch.float64),
                            torch.arange(64.0, dtype=torch.float64), indexing="ij")
    m = p.sum((1, 2))
    cx, cy = (p * xs).sum((1, 2)) / m, (p * ys).sum((1, 2)) / m
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    mu20, mu02 = (p * dx * dx).sum((1, 2)), (p * dy * dy).sum((1, 2))
    mu11 = (p * dx * dy).sum((1, 2))
    angle = 0.5 * torch.atan2(2 * mu11, mu20 - mu02)
    theta = 2 * math.pi * rows[:, 2].double() / 40
    diff = torch.remainder(angle - theta + math.pi / 2, math.pi) - math.pi / 2
    assert diff.abs().max() < 0.05  # radians
    # rotation keeps the centre of mass
    assert (torch.stack([cx, cy], 1) + 0.5 - (FULL.first_centre + 16)).abs().max() < 0.2


def test_bad_factors_and_configs_are_refused():
    with pytest.raises(ValueError, match="orientation"):
        render_dsprites(torch.tensor([[0, 0, 10, 0, 0]]), "cpu")
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        render_dsprites(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="variant"):
        make_dsprites("huge")
    with pytest.raises(ValueError, match="positions"):
        render_dsprites(torch.zeros(1, 5, dtype=torch.long), DSpritesConfig(32, 4, 30))


def test_real_npz_loader_with_a_tiny_file(tmp_path):
    n = 20
    rng = np.random.default_rng(0)
    classes = np.zeros((n, 6), dtype=np.int64)
    classes[:, 1] = np.arange(n) % 3
    classes[:, 4] = np.arange(n) % 32
    values = classes.astype(np.float64)
    values[:, 4] = classes[:, 4] / 31.0
    imgs = rng.integers(0, 2, (n, 64, 64)).astype(np.uint8)
    np.savez(tmp_path / DSPRITES_NPZ, imgs=imgs, latents_classes=classes, latents_values=values)
    tr, te = load_dsprites("train", tmp_path), load_dataset("dsprites", "test", root=tmp_path)
    assert len(te.images) == 2 and len(tr.images) == 18
    sel = split_indices(n, "test")
    assert torch.equal(te.images[:, 0], torch.from_numpy(imgs).float()[sel])
    assert torch.equal(te.factors, torch.from_numpy(classes[:, 1:])[sel])
    assert te.factor_values[3][19] == pytest.approx(19 / 31)
    assert te.source == str((tmp_path / DSPRITES_NPZ).resolve())
    with pytest.raises(DatasetNotFoundError, match=DSPRITES_NPZ):
        load_dataset("dsprites", "train", root=tmp_path / "nothing")
