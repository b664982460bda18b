"""Replies cached on disk by prompt hash, so a run can be replayed without a model server."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol


class _ReplyLike(Protocol):
    raw_text: str
    provider: str
    model: str
    prompt_hash: str
    attempts: int
    tokens_in: int
    tokens_out: int


class ReplyCache:
    """One JSON file per prompt hash under `root`: `<hash>.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def store(self, key: str, reply: _ReplyLike) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {
            "prompt_hash": key,
            "provider": reply.provider,
            "model": reply.model,
            "raw_text": reply.raw_text,
            "attempts": reply.attempts,
            "tokens_in": reply.tokens_in,
            "tokens_out": reply.tokens_out,
            "stored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path = self.path(key)
        # Write-then-rename so a crash never leaves half a file behind.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entry, handle, indent=2, ensure_ascii=False)
        os.replace(tmp, path)
        return path

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))
