"""The layout shows the architecture: ops holds only registered custom ops (no nn <-> ops
cycle), one home per site name, one codes-prior type, one KL-per-dimension function, and
each package's front door is one sorted import block plus its ``__all__``."""

import ast
import importlib
from pathlib import Path

import pytest
from pyro.poutine.messenger import Messenger

ROOT = Path(__file__).resolve().parents[1] / "lvm_pyro"
PACKAGES = ["data", "diagnostics", "guides", "inference", "models", "nn", "ops", "training"]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the lvm_pyro modules ``path`` imports."""
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("lvm_pyro")}


def test_ops_holds_only_custom_ops_and_imports_nothing_from_nn():
    for path in (ROOT / "ops").glob("*.py"):
        imports = _imported_modules(path, "lvm_pyro.ops")
        assert not any(m.startswith("lvm_pyro.nn") for m in imports), (path.name, imports)
        if not path.name.startswith("_"):
            assert "torch.library" in path.read_text(), f"ops/{path.name} registers no custom op"


def test_quantized_site_name_lives_in_sites_only():
    from lvm_pyro.sites import QUANTIZED

    assert QUANTIZED == "z_q"
    for path in ROOT.rglob("*.py"):
        if path.name == "sites.py":
            continue
        literals = [n for n in ast.walk(_tree(path))
                    if isinstance(n, ast.Constant) and n.value in ("z_q", "codes", "x", "z", "u")
                    and _is_site_call_arg(path, n)]
        assert not literals, f"{path}: site name written as a literal"


def _is_site_call_arg(path: Path, const: ast.Constant) -> bool:
    """Whether ``const`` is the first argument of a ``pyro.sample`` call in ``path``."""
    for node in ast.walk(_tree(path)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "sample" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "pyro" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == const.value
                and node.args[0].lineno == const.lineno):
            return True
    return False


def test_one_codes_prior_type_and_one_kl_per_dimension_function():
    codes_types, kl_defs = [], []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and "Codes" in node.name and any(
                    getattr(b, "attr", getattr(b, "id", "")) == "TorchDistribution" for b in node.bases):
                codes_types.append(f"{path.name}:{node.name}")
            if isinstance(node, ast.FunctionDef):
                calls = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Name)}
                if "kl_divergence" in calls and ("dim" in node.name or "per_dim" in node.name):
                    kl_defs.append(f"{path.name}:{node.name}")
    assert codes_types == ["codes_prior.py:ModuleCodesPrior"]
    assert kl_defs == ["kl.py:per_dimension_kl"]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_front_door_is_one_sorted_import_block_and_all(package):
    path = ROOT / package / "__init__.py"
    body = _tree(path).body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)  # docstring
    imports, rest = [], body[1:]
    while rest and isinstance(rest[0], ast.ImportFrom):
        imports.append(rest.pop(0))
    assert len(rest) == 1 and isinstance(rest[0], ast.Assign), "one import block, then __all__"
    assert [t.id for t in rest[0].targets] == ["__all__"]
    modules = [i.module for i in imports]
    assert modules == sorted(modules) and len(set(modules)) == len(modules)
    names = []
    for i in imports:
        own = [a.name for a in i.names]
        assert own == sorted(own), i.module
        names += own
    exported = [e.value for e in rest[0].value.elts]
    assert exported == sorted(exported) and sorted(names) == exported


def test_handlers_and_baselines_leave_the_inference_front_door():
    inference = importlib.import_module("lvm_pyro.inference")
    for name in inference.__all__:
        obj = getattr(inference, name)
        assert not (isinstance(obj, type) and issubclass(obj, Messenger)), name  # handlers
        assert "baseline" not in name.lower(), name  # baseline modules and functions
        assert not callable(obj) or not getattr(obj, "__name__", "").endswith("Messenger"), name
    from lvm_pyro.inference.kl_weighting import LatentScaleMessenger  # noqa: F401
    from lvm_pyro.inference.score_function import MLPBaseline, ScoreFunctionMessenger  # noqa: F401
    from lvm_pyro.inference.vimco import leave_one_out_baselines  # noqa: F401
