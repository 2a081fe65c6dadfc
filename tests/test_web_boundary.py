"""The web layer's boundary ([R]): it reaches the running system only through ``bitnet_actor.handles``.

``bitnet_actor.api`` and ``portal`` never import the composition root (``bitnet_actor.system``), not even for
typing, and take from ``actors`` only message and error types (never an actor or the model cache itself);
what they call on actors goes through the protocol-typed fields of ``Handles``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = sorted(
    [*(ROOT / "bitnet_actor" / "api").rglob("*.py"), *(ROOT / "portal").rglob("*.py"), ROOT / "bitnet_actor" / "app.py"]
)

# What the web layer may take from actors: frozen messages, the events of a reply channel, errors, the lease type.
ALLOWED_FROM_ACTORS = {
    "actors.scheduler": {"Token", "Finished", "Failed", "Event"},
    "actors.inference": {"Generate"},
    "actors.model_cache": {"Lease", "UnknownModelError", "ModelCapacityError", "ModelLoadFailedError"},
}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every absolute import in ``path``, TYPE_CHECKING ones included: (line, module, names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("path", WEB, ids=lambda p: str(p.relative_to(ROOT)))
def test_web_layer_takes_only_handles_messages_and_errors(path: Path) -> None:
    wrong = []
    for line, module, names in imports(path):
        if module == "bitnet_actor.system" or module.startswith("bitnet_actor.system."):
            wrong.append(f"{line}: imports the composition root {module}")
        elif module == "actors" or module.startswith("actors."):
            allowed = ALLOWED_FROM_ACTORS.get(module, set())
            extra = [n for n in names or ["*"] if n not in allowed]
            if extra:
                wrong.append(f"{line}: takes {', '.join(extra)} from {module} (use the handles)")
    assert not wrong, f"{path.relative_to(ROOT)}:\n" + "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bitnet_actor.system import System\n"
        "from actors.model_cache import ModelCache\n"
    )
    found = imports(bad)
    assert ("bitnet_actor.system", ["System"]) in [(m, n) for _, m, n in found]
    assert ("actors.model_cache", ["ModelCache"]) in [(m, n) for _, m, n in found]
