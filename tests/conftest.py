"""Every test runs in its own folder with no fal key and no mirror settings from outside."""

from __future__ import annotations

import pytest

MIRROR_ENV = (
    "FAL_KEY",
    "FAL_KEY_ID",
    "FAL_KEY_SECRET",
    "MIRROR_DB",
    "MIRROR_BASE_URL",
    "MIRROR_KEY_FILE",
    "MIRROR_DEBUG",
    "MIRROR_RETRY_BASE",
    "MIRROR_RETRY_ATTEMPTS",
    "MIRROR_RETRY_CAP",
    "MIRROR_REQUEST_DEADLINE",
)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    for var in MIRROR_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
