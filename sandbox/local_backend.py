"""Run a SandboxSpec as a local process: bubblewrap namespaces when ``bwrap`` exists, rlimits always.

Weaker than Docker (no memory/pids cgroup); every result lists what is not in force in ``missing``.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.hostfs import OutputQuota, grant_access, sandbox_ids
from sandbox.spec import OUT_TARGET, SandboxResult, SandboxSpec, Warn, finished_result, tail_lines

NOFILE = 1024
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
KILL_GRACE_S = 5.0


def _python_roots() -> list[Path]:
    """The directories the interpreter needs: its prefix (a venv) and the base installation."""
    roots: list[Path] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        real = Path(os.path.realpath(p))
        if not any(real == r or real.is_relative_to(r) for r in roots):
            roots.append(real)
    return roots


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid`` could traverse every directory up to ``path`` and read it (mode bits only)."""
    path = Path(os.path.realpath(path))
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except OSError:
            return False
        need = stat.S_IXOTH if part != path or part.is_dir() else stat.S_IROTH
        if st.st_uid == uid:
            need_bits = need << 6
        elif st.st_gid == gid:
            need_bits = need << 3
        else:
            need_bits = need
        if not st.st_mode & need_bits:
            return False
    return True


def _signal_exit(code: int) -> int:
    """Popen's -N for a signal becomes Docker's 128+N."""
    return 128 - code if code < 0 else code


class LocalBackend:
    """A hardened subprocess; under bubblewrap it gets its own network, pid, ipc and mount namespaces."""

    name = "local"

    def __init__(self, *, use_bwrap: bool | None = None, warn: Warn | None = None, allow_root: bool = False) -> None:
        bwrap = shutil.which("bwrap")
        if use_bwrap and bwrap is None:
            raise RuntimeError("use_bwrap=True but bubblewrap (bwrap) is not installed")
        self.bwrap = bwrap if use_bwrap in (None, True) else None
        self.setpriv = shutil.which("setpriv")
        self.warn = warn
        self.python = os.path.realpath(sys.executable)
        self.allow_root = allow_root

    # -- what is and is not in force -------------------------------------------------------------
    def _drop_uid(self, uid: int) -> bool:
        return uid != os.getuid()

    def describe(self, spec: SandboxSpec) -> tuple[list[str], list[str]]:
        uid, gid = sandbox_ids()
        isolation = [
            "own session, process group killed on timeout",
            f"wall clock {spec.timeout_s:g}s (host kills)",
            f"RLIMIT_CPU {math.ceil(spec.timeout_s) + 1}s",
            f"file size <= {spec.disk_mb} MiB (RLIMIT_FSIZE)",
            f"only writable mount: output dir (quota {spec.disk_mb} MiB, host-polled)",
            "no core dumps",
            "environment = spec.env only (no host variables)",
        ]
        missing = ["memory cgroup (no OOM kill; RLIMIT_AS only)" if not spec.gpus
                   else "memory limit (RLIMIT_AS is off with GPUs: CUDA reserves huge virtual memory)",
                   "CPU share limit (cpus)", "pids cgroup (RLIMIT_NPROC is per uid, shared with other sandboxes)",
                   "capability dropping / seccomp"]
        if not spec.gpus:
            isolation.append(f"address space <= {spec.memory_mb} MiB (RLIMIT_AS)")
        runs_unprivileged = not self._drop_uid(uid) or self.bwrap is not None or self._no_bwrap_can_drop(uid, gid)
        if runs_unprivileged:
            isolation.append(f"non-root uid {uid}, RLIMIT_NPROC {spec.pids}")
        else:
            missing.append(f"unprivileged user: uid {uid} cannot reach the interpreter {self.python}, so the "
                           + ("command runs as root (allow_root=True) and RLIMIT_NPROC is not enforced"
                              if self.allow_root else "runs are refused (install bubblewrap or use Docker)"))
        if self.bwrap:
            isolation += ["bubblewrap: no network (own net namespace)", "own pid, ipc, uts namespaces",
                          "only /usr, the python install and the mounts visible, all read-only",
                          f"private /tmp tmpfs ({spec.disk_mb} MiB)", "no-new-privileges"]
        else:
            missing += ["network isolation (bubblewrap missing)", "file system isolation: the host is readable",
                        "pid namespace (a process that calls setsid escapes the kill)", "private /tmp",
                        "read-only inputs (only file modes protect them)"]
        return isolation, missing

    def refusal_reason(self) -> str | None:
        """Why every run would be refused on this host (root without bubblewrap), or None."""
        uid, gid = sandbox_ids()
        if self.bwrap or self.allow_root or not self._drop_uid(uid) or self._no_bwrap_can_drop(uid, gid):
            return None
        return (f"refusing to run the candidate as root: without bubblewrap uid {uid} cannot reach {self.python}; "
                "install bubblewrap (apt-get install bubblewrap), use Docker, or pass allow_root=True")

    def _no_bwrap_can_drop(self, uid: int, gid: int) -> bool:
        return _reachable_by(Path(self.python), uid, gid)

    # -- command lines -----------------------------------------------------------------------------
    def _bwrap_argv(self, spec: SandboxSpec, uid: int, gid: int) -> list[str]:
        assert self.bwrap is not None
        drop = self._drop_uid(uid)
        argv = [self.bwrap]
        if drop:
            # As root a user namespace would map the sandbox user back to root; stay in the host user
            # namespace and drop to the unprivileged uid inside instead.
            argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            argv += ["--unshare-all"]
        argv += ["--die-with-parent", "--new-session"]
        made: set[str] = {"/"}

        def parents(target: str) -> None:
            for parent in reversed(Path(target).parents):
                p = str(parent)
                if p not in made:
                    argv.extend(["--perms", "0755", "--dir", p])
                    made.add(p)

        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                argv += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
            made.add(d)
        for root in _python_roots():
            if str(root).startswith("/usr/"):
                continue
            parents(str(root))
            argv += ["--ro-bind", str(root), str(root)]
            made.add(str(root))
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", str(spec.disk_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        made |= {"/proc", "/dev", "/tmp"}
        for m in spec.mounts:
            parents(m.target)
            argv += ["--ro-bind" if m.read_only else "--bind", str(m.host), m.target]
            made.add(m.target)
        argv += ["--bind", str(spec.output_dir), OUT_TARGET, "--chdir", spec.workdir]
        if drop:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"]
            argv += self._dropper(uid, gid)
        else:
            argv += ["--"]
        return argv

    def _dropper(self, uid: int, gid: int) -> list[str]:
        if self.setpriv:
            return [self.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]
        code = ("import os,sys; os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[2])); "
                "os.execv(sys.argv[3], sys.argv[3:])")
        return [self.python, "-I", "-c", code, str(gid), str(uid)]

    def _host_path(self, spec: SandboxSpec, value: str) -> str:
        """Rewrite sandbox paths (/candidate/x, KEY=/out/y, /candidate:/harness) to host paths (no-bwrap mode)."""
        table = sorted([(m.target.rstrip("/"), str(m.host)) for m in spec.mounts]
                       + [(OUT_TARGET, str(spec.output_dir))], key=lambda t: -len(t[0]))

        def one(item: str) -> str:
            for target, host in table:
                if item == target or item.startswith(target + "/"):
                    return host + item[len(target):]
            return item

        prefix = ""
        if not value.startswith("/") and "=" in value:
            key, _, value = value.partition("=")
            prefix = key + "="
        return prefix + ":".join(one(part) for part in value.split(":"))

    def _preexec(self, spec: SandboxSpec, uid: int, gid: int, setuid_here: bool) -> Callable[[], None]:
        cpu = math.ceil(spec.timeout_s) + 1
        fsize = spec.disk_mb * 1024 * 1024
        memory = spec.memory_mb * 1024 * 1024
        use_as = not spec.gpus

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
            resource.setrlimit(resource.RLIMIT_NPROC, (spec.pids, spec.pids))
            if use_as:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            if setuid_here:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        return preexec

    # -- run -----------------------------------------------------------------------------------------
    def run(self, spec: SandboxSpec) -> SandboxResult:
        spec.validate()
        t_begin = time.monotonic()
        uid, gid = sandbox_ids()
        isolation, missing = self.describe(spec)
        grant_access(spec, uid)
        command = list(spec.command)
        if command[0] == "python":
            command[0] = self.python
        env = dict(spec.env)
        setuid_here = False
        if self.bwrap:
            argv = self._bwrap_argv(spec, uid, gid) + command
            cwd = str(spec.output_dir)
        else:
            argv = [self._host_path(spec, a) for a in command]
            env = {k: self._host_path(spec, v) for k, v in env.items()}
            cwd = self._host_path(spec, spec.workdir)
            setuid_here = self._drop_uid(uid) and self._no_bwrap_can_drop(uid, gid)
            refusal = self.refusal_reason()
            if refusal is not None:
                return SandboxResult(None, False, False, 0.0, time.monotonic() - t_begin, "", self.name, isolation,
                                     missing, error=refusal)
        log_fd, log_path = tempfile.mkstemp(prefix="hrm-evolve-sandbox-", suffix=".log")
        timed_out = False
        exit_code: int | None = None
        try:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                        cwd=cwd, env=env, start_new_session=True, close_fds=True,
                                        preexec_fn=self._preexec(spec, uid, gid, setuid_here))
            except (OSError, subprocess.SubprocessError) as exc:
                total = time.monotonic() - t_begin
                return SandboxResult(None, False, False, 0.0, total, "", self.name, isolation, missing,
                                     error=f"could not start the sandboxed process: {exc}")
            t_cmd0 = time.monotonic()

            def kill(reason: str) -> None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            with OutputQuota(spec.output_dir, spec.disk_mb, kill) as quota:
                try:
                    proc.wait(timeout=spec.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    kill("timeout")
                    try:
                        proc.wait(timeout=KILL_GRACE_S)
                    except subprocess.TimeoutExpired:
                        pass
                quota_msg = quota.exceeded
            t_cmd1 = time.monotonic()
            kill("cleanup")  # anything left in the process group (bwrap's pid namespace dies with it)
            if proc.returncode is not None:
                exit_code = _signal_exit(proc.returncode)
            with open(log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(log_path) - 256 * 1024))
                log = tail_lines(fh.read().decode("utf-8", errors="replace"))
        finally:
            os.close(log_fd)
            os.unlink(log_path)
        oom = (not timed_out and exit_code not in (0, None)
               and any("MemoryError" in line for line in log.splitlines()[-20:]))
        return finished_result(spec, self.name, exit_code=exit_code, timed_out=timed_out, oom=oom,
                               oom_note=f"out of memory under RLIMIT_AS {spec.memory_mb} MiB",
                               quota_msg=quota_msg, log=log, command_s=t_cmd1 - t_cmd0,
                               total_s=time.monotonic() - t_begin, isolation=isolation, missing=missing)
