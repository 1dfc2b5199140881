"""lvm_pyro.ops.vq_nearest: the chunked CPU path and the Triton kernel (run on CPU
tensors under TRITON_INTERPRET=1, set by conftest.py before any kernel is decorated)
against a brute-force float64 numpy oracle; ties; the custom-op registration."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lvm_pyro.ops import vq_nearest

# The chosen code's true squared distance may exceed the minimum only by rounding of the
# float32 expansion ||e||^2 - 2 z.e: we allow 1e-5 (~ 80 float32 ulps) of
# ||z||^2 + max_j ||e_j||^2, far below the gap to a wrong code in these draws.
REL_TOL = 1e-5


def _oracle_sq_dists(z: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    zn, en = z.double().numpy(), codebook.double().numpy()
    return ((zn[:, None, :] - en[None, :, :]) ** 2).sum(-1)  # (N, K) float64


def _check_near_optimal(idx: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor,
                        rel_tol: float = REL_TOL) -> None:
    d = _oracle_sq_dists(z, codebook)
    assert idx.dtype == torch.int64 and idx.shape == (z.shape[0],)
    chosen = d[np.arange(len(d)), idx.numpy()]
    scale = (z.double() ** 2).sum(1).numpy() + (codebook.double() ** 2).sum(1).max().item()
    excess = chosen - d.min(1)
    assert (excess <= rel_tol * scale).all(), float((excess / scale).max())


def _problem(n, k, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, d, generator=g, dtype=torch.float64)
    # queries near random codes (the realistic case), plus some far away
    z = codebook[torch.randint(k, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g,
                                                                          dtype=torch.float64)
    z[: n // 4] = 3.0 * torch.randn(n // 4, d, generator=g, dtype=torch.float64)
    return z.to(dtype), codebook.to(dtype)


def _with_duplicates(n, d, seed):
    """Codebook with duplicated rows (exact ties) far apart in index, queries at and near
    the duplicated rows. Returns z, codebook, and the lowest index of each duplicate."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(100, d, generator=g)
    codebook = torch.cat([base, base[[3, 7, 50]], base[[3]]])  # rows 100..103 copy 3, 7, 50, 3
    k = len(codebook)
    perm = torch.randperm(k, generator=g)
    codebook = codebook[perm]  # shuffle so copies sit before and after the originals
    z = codebook[torch.randint(k, (n,), generator=g)] + 0.01 * torch.randn(n, d, generator=g)
    z[:20] = codebook[torch.randint(k, (20,), generator=g)]  # exactly on a code
    return z, codebook


def _expected_lowest(z, codebook):
    d = _oracle_sq_dists(z, codebook)
    return torch.as_tensor(d.argmin(1))  # numpy argmin: first occurrence of the minimum


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (257, 70, 20), (1000, 513, 64), (64, 3, 130)])
@pytest.mark.parametrize("chunk", [None, 1, 37])
def test_cpu_matches_float64_oracle(n, k, d, chunk):
    z, codebook = _problem(n, k, d, seed=n + k + d)
    idx = vq_nearest(z, codebook, chunk_size=chunk)
    _check_near_optimal(idx, z, codebook)


def test_cpu_float64_is_exact_argmin():
    z, codebook = _problem(500, 300, 16, seed=1, dtype=torch.float64)
    idx = vq_nearest(z, codebook, chunk_size=64)
    assert torch.equal(idx, _expected_lowest(z, codebook))


def test_chunk_size_does_not_change_result():
    z, codebook = _problem(333, 129, 24, seed=2)
    ref = vq_nearest(z, codebook, chunk_size=333)
    for chunk in (1, 5, 64, 10_000):
        assert torch.equal(vq_nearest(z, codebook, chunk_size=chunk), ref)


@pytest.mark.parametrize("chunk", [None, 1, 13])
def test_exact_ties_go_to_lowest_index(chunk):
    z, codebook = _with_duplicates(400, 32, seed=3)
    idx = vq_nearest(z, codebook, chunk_size=chunk)
    assert torch.equal(idx, _expected_lowest(z, codebook))


# K above one code tile (1024 codes): several tiles, a last tile padded to whole 64-code
# blocks; the tiles' winners must merge to the exact argmin in code order.
@pytest.mark.parametrize("k", [1025, 2500])
@pytest.mark.parametrize("chunk", [None, 7])
def test_cpu_several_code_tiles_match_oracle(k, chunk):
    z, codebook = _problem(300, k, 12, seed=k)
    _check_near_optimal(vq_nearest(z, codebook, chunk_size=chunk), z, codebook)
    z64, codebook64 = z.double(), codebook.double()
    assert torch.equal(vq_nearest(z64, codebook64, chunk_size=chunk),
                       _expected_lowest(z64, codebook64))


def test_exact_ties_across_code_tiles_and_blocks_go_to_lowest_index():
    g = torch.Generator().manual_seed(6)
    codebook = torch.randn(2500, 16, generator=g)
    # copies of row 5 in later blocks of tile 0 and in tiles 1 and 2 (the padded last
    # tile); copies of row 1500 before it (row 70) and after it (2499, the last code)
    for src, dst in [(5, 100), (5, 1100), (5, 2400), (1500, 70), (1500, 2499)]:
        codebook[dst] = codebook[src]
    z = torch.cat([codebook[[5, 100, 1100, 2400, 1500, 70, 2499]],
                   codebook[torch.randint(2500, (50,), generator=g)]
                   + 0.01 * torch.randn(50, 16, generator=g)])
    for chunk in (None, 1, 3):
        idx = vq_nearest(z, codebook, chunk_size=chunk)
        assert idx[:7].tolist() == [5, 5, 5, 5, 70, 70, 70]
        assert torch.equal(idx, _expected_lowest(z, codebook))


def test_non_finite_queries_give_indices_in_range():
    # padding codes (K not a multiple of the 64-code block) must never be returned
    z, codebook = _problem(20, 70, 8, seed=7)
    z[3, 2] = float("nan")
    z[4] = float("inf")
    idx = vq_nearest(z, codebook)
    assert ((idx >= 0) & (idx < 70)).all()
    good = torch.ones(20, dtype=torch.bool)
    good[[3, 4]] = False
    _check_near_optimal(idx[good], z[good], codebook)


def test_default_chunk_size_bounds_the_tile():
    from lvm_pyro.ops.vq_nearest import CODE_TILE, DEFAULT_CHUNK_ELEMENTS, default_chunk_size

    for k in (1, 3, 512, 1024, 8192, 10 ** 6):
        rows = default_chunk_size(k)
        assert rows >= 1
        assert rows == 1 or rows * min(k, CODE_TILE) <= DEFAULT_CHUNK_ELEMENTS
        assert rows == 1 or rows * k <= 2 ** 23


def test_cpu_matches_faiss_exact_index():
    """FAISS's exact IndexFlatL2 (the ``bench`` extra) as an independent oracle."""
    faiss = pytest.importorskip("faiss")
    z, codebook = _problem(2000, 3000, 32, seed=8)
    index = faiss.IndexFlatL2(32)
    index.add(codebook.numpy())
    _, ref = index.search(z.numpy(), 1)  # (N, 1) int64
    idx = vq_nearest(z, codebook)
    agree = (idx.numpy() == ref[:, 0])
    assert agree.mean() > 0.999  # FAISS rounds differently; near-ties may differ
    _check_near_optimal(idx, z, codebook)


def test_half_precision_inputs_are_computed_in_float32():
    z, codebook = _problem(200, 50, 16, seed=4)
    idx = vq_nearest(z.bfloat16(), codebook.bfloat16())
    _check_near_optimal(idx, z.bfloat16().float(), codebook.bfloat16().float())


def test_empty_input_and_errors():
    assert vq_nearest(torch.zeros(0, 4), torch.randn(3, 4)).shape == (0,)
    with pytest.raises(ValueError, match="z \\(N, D\\)"):
        vq_nearest(torch.zeros(2, 3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="embedding_dim must match"):
        vq_nearest(torch.zeros(2, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        vq_nearest(torch.zeros(2, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="floating"):
        vq_nearest(torch.zeros(2, 4, dtype=torch.int64), torch.randn(3, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        vq_nearest(torch.zeros(2, 4), torch.randn(3, 4), chunk_size=0)


def test_custom_op_registration_fake_kernel_and_compile():
    z, codebook = _problem(50, 20, 8, seed=5)
    op = torch.ops.lvm_pyro.vq_nearest.default
    result = torch.library.opcheck(op, (z, codebook, 16))
    assert all(v == "SUCCESS" for v in result.values()), result
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = op(torch.empty(7, 8), torch.empty(20, 8), 4)
    assert out.shape == (7,) and out.dtype == torch.int64
    compiled = torch.compile(lambda a, b: vq_nearest(a, b) * 2, backend="aot_eager",
                             fullgraph=True)
    assert torch.equal(compiled(z, codebook), vq_nearest(z, codebook) * 2)


def test_no_gradient_is_tracked():
    z = torch.randn(10, 4, requires_grad=True)
    idx = vq_nearest(z, torch.randn(5, 4, requires_grad=True))
    assert not idx.requires_grad


# -- Triton kernel under the interpreter -------------------------------------------------
_TRITON_IMPORTS = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from test_vq_nearest import (_problem, _with_duplicates, _check_near_optimal,
                                 _expected_lowest)
""")
_TRITON_CASES = textwrap.dedent("""
    import torch
    from lvm_pyro.ops._triton_vq import triton_vq_nearest
    for (n, k, d, kw) in [(130, 150, 20, {}), (70, 40, 40, {"block_d": 16}),
                          (33, 17, 3, {"block_n": 16, "block_k": 16})]:
        z, codebook = _problem(n, k, d, seed=n + k)
        _check_near_optimal(triton_vq_nearest(z, codebook, **kw), z, codebook)
    z, codebook = _with_duplicates(150, 32, seed=3)  # K = 104: copies span two 64-row tiles
    assert torch.equal(triton_vq_nearest(z, codebook), _expected_lowest(z, codebook))
    assert torch.equal(triton_vq_nearest(z, codebook, block_k=16), _expected_lowest(z, codebook))
    z, codebook = _problem(64, 30, 16, seed=9)
    _check_near_optimal(triton_vq_nearest(z.half(), codebook.half()), z.half().float(),
                        codebook.half().float())
    print("TRITON_OK")
""")


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        exec(compile(_TRITON_CASES, "<triton cases>", "exec"), dict(globals()))
        return
    # Triton reads TRITON_INTERPRET when a kernel is decorated: run in a fresh process
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", _TRITON_IMPORTS + _TRITON_CASES], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "TRITON_OK" in res.stdout, res.stderr[-3000:]
