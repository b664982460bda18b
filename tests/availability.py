"""Skip a test whose backend is unavailable here, or fail it where the environment demands the backend (CI)."""

from __future__ import annotations

import os

import pytest


def skip_or_fail(reason: str | None, require_env: str) -> None:
    """Nothing when ``reason`` is None; otherwise fail if ``require_env`` is "1", else skip with the reason."""
    if reason is None:
        return
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{require_env}=1 but {reason}")
    pytest.skip(reason)
