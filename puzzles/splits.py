"""A run's datasets, built on the host from a secret seed, and the views of them a sandbox may see.

``ensure_run_data(root, task)`` creates ``root/secret`` (128 random bits, mode 0600) once and builds
``root/data/{train,select,final}`` from it with the trusted generators. The secret never enters a sandbox,
so a candidate cannot regenerate the held-out splits, and its labels stay on the host:
``sealed_view(data, split, dest)`` copies a split without its ``*__labels.npy`` files for the evaluate
stage; ``train_view`` copies only the train split.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from puzzles.build import build_dataset
from puzzles.tasks import TaskSpec

SECRET_FILE = "secret"
DATA_DIR = "data"
SPEC_FILE = "task.json"


def read_or_create_secret(root: Path) -> int:
    """The run's secret seed (created once, readable by the owner only)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / SECRET_FILE
    if not path.exists():
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{secrets.randbits(128)}\n")
        os.replace(path.with_suffix(".tmp"), path)
    return int(path.read_text().strip())


def _complete(data: Path, spec: TaskSpec) -> bool:
    return all((data / split / "dataset.json").is_file() for split in spec.splits())


def ensure_run_data(root: Path, spec: TaskSpec) -> Path:
    """Build (once) the run's train/select/final splits from its secret seed; returns the dataset root."""
    root = Path(root)
    data = root / DATA_DIR
    if _complete(data, spec):
        stored = json.loads((data / SPEC_FILE).read_text()) if (data / SPEC_FILE).is_file() else None
        if stored != json.loads(json.dumps(spec.to_dict())):
            if spec.builder == "file" and stored and stored.get("builder") == "file":
                raise ValueError(_changed_file(stored, spec.to_dict()))
            raise ValueError(f"{data} was built for another task spec ({stored}); use a new run")
        return data
    seed = read_or_create_secret(root)
    tmp = root / (DATA_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    build_dataset(spec.builder, tmp, seed=seed, splits=spec.splits(), **spec.kwargs)
    (tmp / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    if data.exists():
        shutil.rmtree(data)
    os.replace(tmp, data)
    return data


def _changed_file(stored: dict, now: dict) -> str:
    """Why a file task's run refuses to resume: which file's content (sha256) or path moved."""
    before, after = stored["kwargs"], now["kwargs"]
    for split in sorted(set(before["files"]) | set(after["files"])):
        old_path, new_path = before["files"].get(split), after["files"].get(split)
        old_hash, new_hash = before["sha256"].get(split), after["sha256"].get(split)
        if old_path != new_path:
            return (f"the run's {split} file was {old_path}, now {new_path}: a resumed run keeps its task files; "
                    "start a new run for another file")
        if old_hash != new_hash:
            return (f"{new_path} changed since this run built its splits (sha256 {str(old_hash)[:12]}..., now "
                    f"{str(new_hash)[:12]}...): a resumed run needs the same file; start a new run for the new one")
    return f"the task file spec changed ({before} -> {after}); start a new run"


def _copy_split(data: Path, split: str, dest_root: Path, *, with_labels: bool, as_name: str) -> Path:
    src = Path(data) / split
    if not (src / "dataset.json").is_file():
        raise FileNotFoundError(f"{src}/dataset.json not found")
    if dest_root.exists():
        shutil.rmtree(dest_root)
    (dest_root / as_name).mkdir(parents=True)
    for item in sorted(src.iterdir()):
        if item.is_file() and not item.is_symlink() and (with_labels or not item.name.endswith("__labels.npy")):
            shutil.copyfile(item, dest_root / as_name / item.name)
    identifiers = Path(data) / "identifiers.json"
    if identifiers.is_file():
        shutil.copyfile(identifiers, dest_root / "identifiers.json")
    return dest_root


def train_view(data: Path, dest_root: Path) -> Path:
    """A dataset root holding only the train split (copies: nothing links back to the host's files)."""
    return _copy_split(data, "train", dest_root, with_labels=True, as_name="train")


def sealed_view(data: Path, split: str, dest_root: Path) -> Path:
    """A dataset root holding held-out ``split`` as ``test`` without its label files."""
    return _copy_split(data, split, dest_root, with_labels=False, as_name="test")
