"""Sandbox overhead: a trivial python command run bare (subprocess) vs in each sandbox backend.

    python benchmarks/bench_sandbox.py [--repeats N]

Prints, per backend, the median of: total wall time, command time, and overhead (start + teardown outside the
command, as the backend reports it), plus the extra cost over a bare subprocess. Target: overhead < 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: E402

REPO = ROOT

from sandbox import SandboxSpec, docker_unavailable_reason, get_backend  # noqa: E402
from sandbox.local_backend import LocalBackend  # noqa: E402

CODE = "print('hello from the sandbox')"


def bare(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True)
        times.append(time.monotonic() - t0)
    return times


def sandboxed(kind: str, repeats: int, **backend_kwargs: object) -> tuple[list[float], list[float], list[float]]:
    backend = LocalBackend(**backend_kwargs) if kind.startswith("local") else get_backend(kind)  # type: ignore[arg-type]
    totals, commands, overheads = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            spec = SandboxSpec(command=["python", "-c", CODE], mounts=[], output_dir=Path(tmp) / f"out{i}",
                               timeout_s=60, memory_mb=1024, label="bench")
            t0 = time.monotonic()
            res = backend.run(spec)
            totals.append(time.monotonic() - t0)
            if not res.ok:
                raise SystemExit(f"{kind} run failed: {res.error or res.log_tail}")
            commands.append(res.duration_s)
            overheads.append(res.overhead_s)
    return totals, commands, overheads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    med = statistics.median
    base = med(bare(args.repeats))
    print(f"bare subprocess            total {base:6.3f}s")
    kinds: list[tuple[str, dict[str, object]]] = [("local", {}), ("local-no-bwrap", {"use_bwrap": False,
                                                                                      "allow_root": True})]
    reason = docker_unavailable_reason()
    if reason is None:
        kinds.insert(0, ("docker", {}))
    else:
        print(f"docker: skipped ({reason})")
    for kind, kwargs in kinds:
        totals, commands, overheads = sandboxed(kind, args.repeats, **kwargs)
        print(f"{kind:<26} total {med(totals):6.3f}s  command {med(commands):6.3f}s  "
              f"overhead {med(overheads):6.3f}s  extra vs bare {med(totals) - base:+6.3f}s  "
              f"({'OK' if med(overheads) < 2.0 else 'OVER'} < 2 s target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
