"""External tools the ops tests need: skipped with a reason when missing, failed when CI requires them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def require(found: object, reason: str) -> None:
    """Skip the test (fail it when ``BITNET_TEST_REQUIRE_OPS_TOOLS=1``) if ``found`` is falsy."""
    if found:
        return
    if os.environ.get("BITNET_TEST_REQUIRE_OPS_TOOLS") == "1":
        pytest.fail(f"{reason} (BITNET_TEST_REQUIRE_OPS_TOOLS=1)")
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    """``name`` from the running virtual environment's bin directory (pip-installed tools), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)
