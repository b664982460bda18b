"""The libcst repo map: content, policy filtering, budget, and the history header."""

from __future__ import annotations

from pathlib import Path

from edits.paths import PathPolicy
from evolver.propose.prompt import HistoryItem
from evolver.propose.repo_summary import build_repo_summary, editable_files, estimate_tokens, map_file

CONFIG = '''"""Knobs."""
from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Architecture knobs."""

    hidden_size: int = 64  # width of both modules
    L_cycles: int = 2


LIMIT = 3
'''

MODEL = '''"""The model."""
import torch


def _helper_private(x):
    """A private helper."""
    return x


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise by the root mean square.

    More text that is not the first line.
    """
    return x


class HRMInner(torch.nn.Module):
    """Inner model."""

    def __init__(self, config) -> None:
        super().__init__()

    def forward(self, carry, batch: dict) -> tuple:
        """One segment."""
        return carry, batch

    def _private_method(self):
        return 1
'''


def make_repo(root: Path) -> Path:
    files = {
        "hrm/__init__.py": "",
        "hrm/config.py": CONFIG,
        "hrm/model.py": MODEL,
        "hrm/evaluate.py": "def evaluate():\n    return 1\n",
        "hrm/data/gen.py": "def generate():\n    return 1\n",
        "hrm/broken.py": "def broken(:\n",
        "evolver/engine.py": "def engine():\n    return 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_editable_files_follow_the_policy(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    assert editable_files(root) == ["hrm/__init__.py", "hrm/broken.py", "hrm/config.py", "hrm/data/gen.py",
                                    "hrm/evaluate.py", "hrm/model.py"]  # every file of hrm/ is evolvable
    custom = PathPolicy(allowed=("hrm/",), protected=("hrm/model.py",))
    assert "hrm/model.py" not in editable_files(root, custom) and "hrm/evaluate.py" in editable_files(root, custom)


def test_map_has_signatures_fields_and_first_doc_lines(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    text = build_repo_summary(root, budget_tokens=10_000, best_score=0.8125)
    assert "Current best score: 0.8125" in text
    assert "@dataclass class ModelConfig  # Architecture knobs." in text
    assert "hidden_size: int = 64  # width of both modules" in text and "L_cycles: int = 2" in text
    assert "def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor  # Normalise by the root mean square." in text
    assert "More text" not in text
    assert "class HRMInner(torch.nn.Module)" in text and "def forward(self, carry, batch: dict) -> tuple" in text
    assert "LIMIT = 3" in text and "_helper_private" in text
    assert "could not parse" in text  # the broken file is reported, not fatal
    assert "def evaluate()" in text and "def generate()" in text  # hrm/ is wholly evolvable
    assert "engine" not in text


def test_budget_drops_private_then_docs(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    full = build_repo_summary(root, budget_tokens=10_000)
    private_cut = estimate_tokens(full) - 1
    smaller = build_repo_summary(root, budget_tokens=private_cut)
    assert estimate_tokens(smaller) <= private_cut
    assert "_helper_private" not in smaller and "_private_method" not in smaller
    assert "def forward(self, carry, batch: dict) -> tuple" in smaller
    tiny = build_repo_summary(root, budget_tokens=120)
    assert estimate_tokens(tiny) <= 120
    assert "Normalise by" not in tiny
    assert "hrm/model.py" in tiny  # the core file survives longest


def test_history_header_lists_verdicts_and_is_capped(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    tried = [HistoryItem(f"p{i}", f"idea number {i}", "rejected: smoke failed", 0.5) for i in range(200)]
    text = build_repo_summary(root, budget_tokens=1500, tried=tried, best_score=0.5)
    assert estimate_tokens(text) <= 1500
    assert "[p199] idea number 199: rejected: smoke failed mean gain +0.5000" in text
    assert "[p0] " not in text and "oldest" in text
    assert "hrm/model.py" in text


def test_map_file_reports_parse_errors(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    assert map_file(root, "hrm/broken.py").error.startswith("could not parse")
    assert [s.name for s in map_file(root, "hrm/model.py").symbols] == ["_helper_private", "rms_norm", "HRMInner"]


def test_real_hrm_fits_default_budget() -> None:
    root = Path(__file__).resolve().parents[3]
    text = build_repo_summary(root, budget_tokens=2000)
    assert estimate_tokens(text) <= 2000
    assert "hrm/model.py" in text and "hrm/config.py" in text and "L_cycles" in text
