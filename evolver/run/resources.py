"""Host resource guards for long unattended runs: stop cleanly before the disk or memory runs out."""

from __future__ import annotations

import shutil
from pathlib import Path


def free_disk_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


def available_memory_gb() -> float | None:
    """MemAvailable from /proc/meminfo; None where the platform does not provide it."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None


def check_resources(path: Path, min_free_disk_gb: float, min_free_memory_gb: float) -> str | None:
    """Return a reason to stop, or None when there is room to run another cycle."""
    disk = free_disk_gb(path)
    if disk < min_free_disk_gb:
        return f"free disk {disk:.1f} GB at {path} is below the threshold {min_free_disk_gb:.1f} GB"
    mem = available_memory_gb()
    if mem is not None and mem < min_free_memory_gb:
        return f"available memory {mem:.1f} GB is below the threshold {min_free_memory_gb:.1f} GB"
    return None
