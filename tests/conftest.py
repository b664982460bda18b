"""Project-wide test helpers: tests that need a working local sandbox skip with the reason where it refuses
to run (root without bubblewrap), unless HRM_EVOLVE_REQUIRE_SANDBOX=1 (CI), which turns the skip into a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import local_unavailable_reason
from tests.availability import skip_or_fail


@pytest.fixture
def require_local_sandbox() -> None:
    skip_or_fail(local_unavailable_reason(), "HRM_EVOLVE_REQUIRE_SANDBOX")


@pytest.fixture(scope="session")
def run_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small sudoku4 run data (train 400, select 100, final 100) from a random secret seed, as a run makes."""
    from puzzles.splits import ensure_run_data
    from puzzles.tasks import get_task

    return ensure_run_data(tmp_path_factory.mktemp("run-data"),
                           get_task("sudoku4", n_train=400, n_select=100, n_final=100))


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pristine read-only harness copy the stages mount."""
    from evolver.execute.harness_copy import pristine_harness

    return pristine_harness(tmp_path_factory.mktemp("state"))
