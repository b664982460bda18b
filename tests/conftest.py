"""Project-wide test helpers: tests that need a working local sandbox skip with the reason where it refuses
to run (root without bubblewrap), unless HRM_EVOLVE_REQUIRE_SANDBOX=1 (CI), which turns the skip into a failure."""

from __future__ import annotations

import os

import pytest

from sandbox import local_unavailable_reason


@pytest.fixture
def require_local_sandbox() -> None:
    reason = local_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("HRM_EVOLVE_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"HRM_EVOLVE_REQUIRE_SANDBOX=1 but {reason}")
    pytest.skip(reason)
