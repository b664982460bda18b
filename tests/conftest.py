"""Project-wide test helpers: tests that need a working local sandbox skip with the reason where it refuses
to run (root without bubblewrap), unless HRM_EVOLVE_REQUIRE_SANDBOX=1 (CI), which turns the skip into a failure."""

from __future__ import annotations

import pytest

from sandbox import local_unavailable_reason
from tests.availability import skip_or_fail


@pytest.fixture
def require_local_sandbox() -> None:
    skip_or_fail(local_unavailable_reason(), "HRM_EVOLVE_REQUIRE_SANDBOX")
