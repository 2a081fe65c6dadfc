"""Embedded PostgreSQL started by root: the system user it runs as is created with useradd found by full path
when root's PATH lacks /usr/sbin, and without any useradd the error is one line saying what to do."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid

import pytest

from bitnet_actor.errors import StartupError
from bitnet_actor.stores.embedded import ensure_system_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating system users needs root")


@pytest.fixture
def user_name():
    name = f"bitnet-t{uuid.uuid4().hex[:8]}"
    yield name
    userdel = shutil.which("userdel") or "/usr/sbin/userdel"
    subprocess.run([userdel, name], capture_output=True, check=False)


def test_useradd_found_by_full_path_without_sbin_on_path(user_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.access("/usr/sbin/useradd", os.X_OK):
        pytest.skip("no /usr/sbin/useradd on this machine")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("useradd") is None
    ensure_system_user(user_name)
    assert pwd.getpwnam(user_name).pw_name == user_name
    ensure_system_user(user_name)  # idempotent


def test_no_useradd_anywhere_is_one_clear_line(user_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StartupError) as info:
        ensure_system_user(user_name, search=())
    message = str(info.value)
    assert "\n" not in message
    assert user_name in message and "useradd" in message and "BITNET_DATABASE_URL" in message
    with pytest.raises(KeyError):
        pwd.getpwnam(user_name)
