"""Run a SandboxSpec in a locked-down Docker container (the docker SDK, no shelling out)."""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime
from typing import Any

from sandbox.hostfs import OutputQuota, grant_access, sandbox_ids
from sandbox.pids import pid_alive
from sandbox.spec import (
    DEFAULT_IMAGE,
    OUT_TARGET,
    SandboxResult,
    SandboxSpec,
    Warn,
    finished_result,
    tail_lines,
)

LABEL = "hrm-evolve"
RUN_LABEL = "hrm-evolve.run"
HOST_LABEL = "hrm-evolve.host"
PID_LABEL = "hrm-evolve.pid"
NOFILE = 4096


def _parse_ts(value: str | None) -> float | None:
    """Docker's RFC 3339 timestamps carry nanoseconds; keep microseconds."""
    if not value or value.startswith("0001-"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    frac = (frac + "000000")[:6]
    try:
        return datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()
    except ValueError:
        return None


class DockerBackend:
    """Each run is a fresh container: no network, read-only root, cgroup limits, non-root, all caps dropped."""

    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, *, client: Any | None = None, warn: Warn | None = None,
                 prune: bool = True) -> None:
        import docker

        self.image = image
        self.client = client or docker.from_env()
        self.warn = warn
        self.client.ping()
        if prune:
            self.prune_leftovers()

    def prune_leftovers(self) -> list[str]:
        """Remove hrm-evolve containers left by processes on this host that are gone (crash, kill -9).

        Containers whose owning process is alive (a concurrent run) are left alone.
        """
        removed: list[str] = []
        host = socket.gethostname()
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
            labels = c.labels or {}
            owner = labels.get(PID_LABEL, "")
            if labels.get(HOST_LABEL) == host and owner.isdigit() and pid_alive(int(owner)):
                continue
            try:
                c.remove(force=True)
                removed.append(c.name)
            except Exception as exc:  # already gone, or engine busy: not worth failing a run over
                if self.warn:
                    self.warn(f"could not remove leftover container {c.name}: {exc}")
        if removed and self.warn:
            self.warn(f"removed {len(removed)} leftover sandbox container(s): {', '.join(removed)}")
        return removed

    @staticmethod
    def isolation(spec: SandboxSpec, user: str) -> list[str]:
        items = [
            "container (runc)",
            "no network (network_mode=none)",
            "read-only root filesystem",
            "read-only input mounts",
            f"only writable mount: output dir at {OUT_TARGET} (quota {spec.disk_mb} MiB, host-polled)",
            f"private /tmp tmpfs ({spec.disk_mb} MiB)",
            f"memory cgroup {spec.memory_mb} MiB, no swap",
            f"cpus {spec.cpus:g}",
            f"pids {spec.pids}",
            f"file size <= {spec.disk_mb} MiB (RLIMIT_FSIZE)",
            "all capabilities dropped",
            "no-new-privileges",
            f"non-root user {user}",
            f"wall clock {spec.timeout_s:g}s (host kills)",
            "environment = spec.env only (no host variables)",
        ]
        if spec.gpus:
            items.append(f"GPUs via device request: {','.join(spec.gpu_ids) if spec.gpu_ids else 'all'}")
        return items

    def _kwargs(self, spec: SandboxSpec, uid: int, gid: int) -> dict[str, Any]:
        import docker.types

        mounts = [docker.types.Mount(target=m.target, source=str(m.host), type="bind", read_only=m.read_only)
                  for m in spec.mounts]
        mounts.append(docker.types.Mount(target=OUT_TARGET, source=str(spec.output_dir), type="bind",
                                         read_only=False))
        limit_bytes = spec.disk_mb * 1024 * 1024
        shm_mb = max(64, min(spec.memory_mb // 4, 2048))
        kwargs: dict[str, Any] = dict(
            command=list(spec.command),
            detach=True,
            network_mode="none",
            read_only=True,
            mounts=mounts,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={spec.disk_mb}m,uid={uid},gid={gid},mode=1777"},
            shm_size=f"{shm_mb}m",
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            nano_cpus=int(spec.cpus * 1e9),
            pids_limit=spec.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=f"{uid}:{gid}",
            init=True,
            ulimits=[docker.types.Ulimit(name="fsize", soft=limit_bytes, hard=limit_bytes),
                     docker.types.Ulimit(name="nofile", soft=NOFILE, hard=NOFILE),
                     docker.types.Ulimit(name="core", soft=0, hard=0)],
            labels={LABEL: "1", RUN_LABEL: spec.label, HOST_LABEL: socket.gethostname(),
                    PID_LABEL: str(os.getpid())},
            environment=dict(spec.env),
            working_dir=spec.workdir,
            hostname="sandbox",
        )
        if spec.gpus and spec.gpu_ids:  # one sandbox, its own devices
            kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=list(spec.gpu_ids),
                                                                    capabilities=[["gpu"]])]
        elif spec.gpus:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return kwargs

    def run(self, spec: SandboxSpec) -> SandboxResult:
        import docker.errors
        import requests.exceptions

        spec.validate()
        t_begin = time.monotonic()
        uid, gid = sandbox_ids()
        user = f"{uid}:{gid}"
        isolation = self.isolation(spec, user)

        def infra_failure(message: str, log: str = "") -> SandboxResult:
            total = time.monotonic() - t_begin
            return SandboxResult(None, False, False, 0.0, total, log, self.name, isolation, [], error=message)

        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            return infra_failure(f"sandbox image {self.image} is missing: run `python -m sandbox.image build`")
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            return infra_failure(f"Docker engine unavailable: {exc}")
        grant_access(spec, uid)

        container = None
        timed_out = False
        exit_code: int | None = None
        oom = False
        quota_msg: str | None = None
        log = ""
        t_cmd0 = t_cmd1 = time.monotonic()
        try:
            try:
                container = self.client.containers.create(self.image, **self._kwargs(spec, uid, gid))
                container.start()
            except docker.errors.APIError as exc:
                return infra_failure(f"container failed to start: {exc.explanation or exc}")
            t_cmd0 = time.monotonic()

            def kill(reason: str) -> None:
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass  # already stopped

            with OutputQuota(spec.output_dir, spec.disk_mb, kill, stop=spec.stop) as quota:
                try:
                    status = container.wait(timeout=spec.timeout_s)
                    exit_code = int(status.get("StatusCode", -1))
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    timed_out = True
                    kill("timeout")
                    try:
                        status = container.wait(timeout=30)
                        exit_code = int(status.get("StatusCode", -1))
                    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                        exit_code = None
                quota_msg = quota.exceeded
                stopped = quota.stopped
            t_cmd1 = time.monotonic()
            container.reload()
            state = container.attrs.get("State", {})
            oom = bool(state.get("OOMKilled"))
            if exit_code is None and state.get("ExitCode") is not None and not state.get("Running"):
                exit_code = int(state["ExitCode"])
            started, finished = _parse_ts(state.get("StartedAt")), _parse_ts(state.get("FinishedAt"))
            if started is not None and finished is not None and finished >= started:
                t_cmd1 = t_cmd0 + (finished - started)
            raw = container.logs(stdout=True, stderr=True, tail=400)
            log = tail_lines(raw.decode("utf-8", errors="replace"))
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            return infra_failure(f"Docker engine failed during the run: {exc}", log)
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except docker.errors.DockerException as exc:
                    if self.warn:
                        self.warn(f"could not remove container {container.short_id}: {exc}")
        return finished_result(spec, self.name, exit_code=exit_code, timed_out=timed_out, oom=oom,
                               oom_note=f"killed by the {spec.memory_mb} MiB memory limit (OOM)",
                               quota_msg=quota_msg, log=log, command_s=t_cmd1 - t_cmd0,
                               total_s=time.monotonic() - t_begin, isolation=isolation, missing=[],
                               stopped=stopped)
