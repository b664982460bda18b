"""The installed commands: `hrm-evolve` and `hrm` work beside `python evolve.py` and `python -m hrm`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command, words", [("hrm-evolve", "history"), ("hrm", "train")])
def test_installed_command_answers_help(command: str, words: str) -> None:
    path = shutil.which(command) or str(Path(sys.executable).parent / command)
    assert Path(path).is_file(), f"{command} is not installed: pip install -e . declares it in [project.scripts]"
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert words in out.stdout
