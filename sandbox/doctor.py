"""`python -m sandbox.doctor`: what sandboxing this machine can give, and what `auto` would pick."""

from __future__ import annotations

import argparse
import json
import shutil
from typing import Any

from sandbox.spec import DEFAULT_IMAGE, SandboxSpec


def _docker_facts(image: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"engine": False, "version": None, "image": False, "image_id": None,
                             "gpu_runtime": False, "runtimes": [], "error": None}
    try:
        import docker

        client = docker.from_env()
        client.ping()
        facts["engine"] = True
        info = client.info()
        facts["version"] = info.get("ServerVersion")
        facts["runtimes"] = sorted((info.get("Runtimes") or {}).keys())
        # GPUs via device_requests need the NVIDIA container toolkit (runtime or CDI hook) on the engine.
        facts["gpu_runtime"] = "nvidia" in facts["runtimes"] or shutil.which("nvidia-container-cli") is not None
        try:
            img = client.images.get(image)
            facts["image"] = True
            facts["image_id"] = img.short_id
        except docker.errors.ImageNotFound:
            pass
    except Exception as exc:  # any failure here means "Docker is not usable"
        facts["error"] = f"{type(exc).__name__}: {exc}"
    return facts


def doctor(image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """A dict of facts: Docker engine/version/image/GPU, bwrap, which backend auto picks, isolation in force."""
    from pathlib import Path

    from sandbox import docker_unavailable_reason
    from sandbox.hostfs import host_ids
    from sandbox.local_backend import LocalBackend

    dock = _docker_facts(image)
    reason = docker_unavailable_reason(image)  # the same wording get_backend() warns with
    probe = SandboxSpec(command=["python"], mounts=[], output_dir=Path("/nonexistent"))
    local = LocalBackend()
    local_isolation, local_missing = local.describe(probe)
    report: dict[str, Any] = {
        "image_tag": image,
        "docker": dock,
        "bwrap": shutil.which("bwrap"),
        "running_as_root": (host_ids() or (-1, -1))[0] == 0,
        "auto_backend": "docker" if reason is None else "local",
        "docker_unavailable": reason,
        "local_python": local.python,  # the interpreter the local backend runs (a venv's own, not its realpath)
        "local_refused": local.refusal_reason(),  # why the local backend refuses every run here, or None
    }
    report["first_use"] = None  # what a run does about a missing image where an engine answers
    if dock.get("engine") and not dock.get("image"):
        from sandbox.image import _client, build_command, first_use_obstacle

        try:
            obstacle = first_use_obstacle(_client())
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it never fails
            obstacle = f"{type(exc).__name__}: {exc}"
        report["first_use"] = ("builds the image on first use (registry-free)" if obstacle is None else
                               f"stops: {obstacle}; build it with {build_command(image)}")
    if reason is None:
        from sandbox.docker_backend import DockerBackend
        from sandbox.hostfs import sandbox_ids

        uid, gid = sandbox_ids()
        report["isolation"] = DockerBackend.isolation(probe, f"{uid}:{gid}")
        report["missing"] = []
    else:
        report["isolation"] = local_isolation
        report["missing"] = local_missing
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    dock = report["docker"]
    table = Table(title="hrm-evolve sandbox doctor", show_header=False)
    ok, no = "[green]yes[/]", "[red]no[/]"
    table.add_row("Docker engine", (ok + f" ({dock['version']})") if dock["engine"] else no + f" {dock['error'] or ''}")
    table.add_row(f"image {report['image_tag']}", (ok + f" ({dock['image_id']})") if dock["image"] else no)
    table.add_row("GPU runtime (nvidia)", ok if dock["gpu_runtime"] else no)
    table.add_row("bubblewrap", report["bwrap"] or no)
    table.add_row("auto picks", f"[bold]{report['auto_backend']}[/]")
    if report["docker_unavailable"]:
        table.add_row("why not docker", report["docker_unavailable"])
    if report.get("first_use"):
        table.add_row("a run (evolve.py)", report["first_use"])
    table.add_row("local python", report["local_python"])
    if report["local_refused"]:
        table.add_row("local refuses", report["local_refused"])
    console.print(table)
    console.print("[bold]in force:[/] " + "; ".join(report["isolation"]))
    if report["missing"]:
        console.print("[bold yellow]missing:[/] " + "; ".join(report["missing"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.doctor", description=__doc__)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    report = doctor(args.image)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
