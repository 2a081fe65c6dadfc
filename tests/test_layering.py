"""Imports point down only (ARCHITECTURE.md, "Layers"), those under ``if TYPE_CHECKING:`` too; and the scripts
in ``ops/`` use public APIs only (no ``_x`` module or attribute of our packages)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layer of a module, by longest matching prefix; a module may import its own layer and any lower one.
LAYERS: dict[str, int] = {
    "kernels_cython": 0,
    "kernels_opencl": 0,
    "bitnet_actor.errors": 1,
    "bitnet_actor.config": 1,
    "bitnet_actor.observability": 1,
    "bitnet_actor.engine": 2,
    "bitnet_actor.stores": 2,
    "bitnet_actor.services": 3,
    "actors": 4,
    "bitnet_actor.handles": 4,
    "bitnet_actor.api": 5,
    "bitnet_actor.app": 5,
    "portal": 5,
    "bitnet_actor.system": 6,
    "bitnet_actor.cli": 6,
    "bitnet_actor.admin": 6,
    "bitnet_actor.admin_plans": 6,
    "bitnet_actor.admin_jobs": 6,
    "bitnet_actor.cli_plans": 6,
    "bitnet_actor.cli_models": 6,
    "bitnet_actor.admin_models": 6,
    "bitnet_actor.cli_jobs": 6,
    "bitnet_actor.cli_engine": 6,
    "bitnet_actor.__main__": 6,
    "bitnet_actor": 1,  # the package's own __init__ (version)
}
# Pairs within a layer that must not meet.
FORBIDDEN = [
    ("bitnet_actor.engine", "bitnet_actor.stores"),
    ("bitnet_actor.stores", "bitnet_actor.engine"),
    ("bitnet_actor.engine", "trio"),
    ("kernels_cython", "trio"),
    ("kernels_opencl", "trio"),
    ("kernels_cython", "kernels_opencl"),
]


def layer_of(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, level in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, level)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# Type-only imports that point up, allowed for now: (importing module or its package, imported module).
TYPE_ONLY_ALLOWED: set[tuple[str, str]] = set()  # none: the web layer takes Handles (bitnet_actor.handles)

OUR_PACKAGES = ("bitnet_actor", "actors", "kernels_cython", "kernels_opencl", "portal")


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """Every absolute import of ``path``: ``(line, module, whether under if TYPE_CHECKING:)``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in type_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, id(node) in type_only))
    return found


def _allowed_type_only(me: str, target: str) -> tuple[str, str] | None:
    for mine, theirs in TYPE_ONLY_ALLOWED:
        if (me == mine or me.startswith(mine + ".")) and (target == theirs or target.startswith(theirs + ".")):
            return (mine, theirs)
    return None


SOURCES = sorted(
    p
    for pkg in ("bitnet_actor", "actors", "kernels_cython", "kernels_opencl", "portal")
    for p in (ROOT / pkg).rglob("*.py")
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    me = module_name(path)
    my_layer = layer_of(me)
    assert my_layer is not None, f"{me} is in no layer: add it to LAYERS"
    for lineno, target, type_only in imports(path):
        kind = "imports (for types)" if type_only else "imports"
        theirs = layer_of(target)
        for a, b in FORBIDDEN:
            if me.startswith(a) and (target == b or target.startswith(b + ".")):
                pytest.fail(f"{me}:{lineno} {kind} {target}: {a} must not use {b}")
        if theirs is not None and theirs[1] > my_layer[1]:
            if type_only and _allowed_type_only(me, target):
                continue
            pytest.fail(f"{me}:{lineno} {kind} {target}, a higher layer ({theirs[0]})")


def test_every_allowed_type_only_import_is_still_needed() -> None:
    used = {
        _allowed_type_only(module_name(p), target)
        for p in SOURCES
        for _, target, type_only in imports(p)
        if type_only and _allowed_type_only(module_name(p), target)
    }
    assert used == TYPE_ONLY_ALLOWED, f"no longer needed, remove: {TYPE_ONLY_ALLOWED - used}"


# ------------------------------------------------------------------------------------- ops/ uses public APIs

OPS_SCRIPTS = sorted((ROOT / "ops").rglob("*.py"))


def _ours(module: str) -> bool:
    return module.split(".")[0] in OUR_PACKAGES


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
    """Private names of our packages that ``path`` reaches: ``_x`` modules, ``from ours import _x``, and ``_x``
    attributes (or ``getattr`` / ``setattr`` / ``delattr`` of ``"_x"``) of a name bound to one of our modules or
    objects."""
    tree = ast.parse(path.read_text(), filename=str(path))
    ours: set[str] = set()  # local names bound to our modules or their members
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    ours.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _ours(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                ours.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in ours:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "delattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in ours
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(set(found))


@pytest.mark.parametrize("path", OPS_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_ops_scripts_use_public_names_only(path: Path) -> None:
    assert not private_uses(path), f"{path.relative_to(ROOT)} reaches private names: {private_uses(path)}"


def test_the_private_name_check_finds_each_kind(tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text(
        "import numpy as np\n"
        "import kernels_cython._ternary\n"
        "from bitnet_actor.engine import _ops, ops\n"
        "from actors._mailbox import Mailbox\n"
        "from kernels_opencl import device as dev\n"
        "ops._fast = None\n"
        "dev.Context._lock\n"
        "setattr(ops, '_kfast', None)\n"
        "np._NoValue, ops.__name__, ops.rmsnorm\n"  # not ours / a dunder / public: fine
    )
    assert [f.split(":")[0] for f in private_uses(script)] == ["2", "3", "4", "6", "7", "8"]
