"""Imports point down only (ARCHITECTURE.md, "Layers"). Imports under ``if TYPE_CHECKING:`` don't count."""

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


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


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
    for lineno, target in runtime_imports(path):
        theirs = layer_of(target)
        for a, b in FORBIDDEN:
            if me.startswith(a) and (target == b or target.startswith(b + ".")):
                pytest.fail(f"{me}:{lineno} imports {target}: {a} must not use {b}")
        if theirs is not None:
            assert theirs[1] <= my_layer[1], f"{me}:{lineno} imports {target}, a higher layer ({theirs[0]})"
