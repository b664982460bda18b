"""Run a SandboxSpec as a local process: bubblewrap namespaces when ``bwrap`` exists, rlimits always.

Weaker than Docker (no memory/pids cgroup); every result lists what is not in force in ``missing``.

Runs on Linux (with or without bubblewrap) and macOS (without). The POSIX-only pieces (``resource``, uids,
process groups) are looked up where they are used, so this module imports everywhere; on a platform that lacks
them (Windows) every run is refused with an error that says so.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.hostfs import OutputQuota, grant_access, host_ids, sandbox_ids
from sandbox.spec import OUT_TARGET, SandboxResult, SandboxSpec, Warn, finished_result, tail_lines

NOFILE = 1024
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
KILL_GRACE_S = 5.0
CPU_MARGIN_S = 10
DEV_ROOT = "/dev"
GPU_NODES = "nvidia*"  # nvidia0.., nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset, nvidia-caps/
PLATFORM_REQUIREMENT = "the local backend needs Linux (or macOS without bubblewrap)"
_POSIX_OS_CALLS = ("getuid", "getgid", "setuid", "setgid", "setgroups", "killpg")


class SetupError(RuntimeError):
    """The sandbox cannot be set up for this spec on this host (reported as the result's ``error``)."""


def platform_unsupported_reason() -> str | None:
    """Why this platform cannot run the local backend at all (Windows: no ``resource``, no uids), or None."""
    lacking = [f"os.{name}" for name in _POSIX_OS_CALLS if not hasattr(os, name)]
    try:
        import resource  # noqa: F401
    except ImportError:
        lacking.insert(0, "the resource module")
    if not lacking and sys.platform.startswith(("linux", "darwin")):
        return None
    detail = f", which has no {', '.join(lacking)}" if lacking else ""
    return (f"{PLATFORM_REQUIREMENT}: this is {sys.platform!r}{detail}. "
            "Use the Docker backend (--backend docker)")


# -- what the interpreter needs to see inside bubblewrap -------------------------------------------------------
def _site_dirs() -> list[str]:
    """The site-packages dirs the interpreter reads at startup: the venv's, and the base installation's with
    ``--system-site-packages``. The user site is left out: the sandboxed interpreter has another HOME."""
    try:
        dirs = list(site.getsitepackages())
    except AttributeError:  # the site.py of old virtualenvs has no getsitepackages
        dirs = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _pth_dirs(site_dir: str) -> list[str]:
    """The directories the ``.pth`` files in ``site_dir`` add to sys.path (editable installs of dependencies),
    read as site.py reads them: one path per line; comments and ``import`` lines are skipped."""
    found: list[str] = []
    try:
        names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth") and not n.startswith("."))
    except OSError:
        return found
    for name in names:
        try:
            text = Path(site_dir, name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if not line.strip() or line.startswith("#") or line.startswith(("import ", "import\t")):
                continue
            path = os.path.abspath(os.path.join(site_dir, line.rstrip()))
            if os.path.isdir(path):
                found.append(path)
    return found


def engine_checkout() -> Path | None:
    """The engine's source checkout (its state dirs and ``.env`` live there), which candidates must never see;
    None when the engine is installed as a package (``sandbox`` then sits directly in a site-packages dir)."""
    root = Path(__file__).resolve().parent.parent
    if root.name in ("site-packages", "dist-packages") or root in {Path(os.path.realpath(d)) for d in _site_dirs()}:
        return None
    return root


def _home() -> Path | None:
    try:
        return Path(os.path.realpath(Path.home()))
    except (RuntimeError, KeyError, OSError):
        return None


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def interpreter_binds(python: str, engine: Path | None) -> list[tuple[str, str]]:
    """(host path, sandbox path) pairs to bind read-only so that ``python`` starts inside bubblewrap.

    ``python`` is ``sys.executable``, a venv's own interpreter and not its realpath. The pairs are the
    prefixes (``sys.prefix``: the venv; ``sys.base_prefix``: the installation it was made from), the
    site-packages dirs and the directories their ``.pth`` files add. A ``.pth`` path that is, holds or lies in
    the engine checkout is left out (a legacy editable install of the engine itself: candidates get their code
    through the mounts), and so is one that holds the home directory (``/``, ``/home``, ``~``). A prefix that
    holds the checkout is bound, and the checkout then hidden (see ``hidden_targets``). Each path is bound at
    its real location and, when that differs, at the path the interpreter uses too. Parents come first.
    """
    wanted = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(python))]
    sites = _site_dirs()
    wanted += sites
    home = _home()
    for d in sites:
        for extra in _pth_dirs(d):
            real = Path(os.path.realpath(extra))
            if engine is not None and _overlaps(real, engine):
                continue
            if home is not None and home.is_relative_to(real):  # "/", "/home", ~ itself: far more than a package
                continue
            wanted.append(extra)
    binds: list[tuple[str, str]] = []
    for path in dict.fromkeys(os.path.abspath(p) for p in wanted if p):
        resolved = os.path.realpath(path)
        if not os.path.isdir(resolved):
            continue
        if engine is not None and engine in (Path(resolved), Path(path)):
            raise SetupError(f"the Python installation at {path} is the engine checkout itself; binding it would "
                             "show the checkout (state dirs, .env) to the candidate. Put the venv in a subdirectory")
        binds += [(resolved, target) for target in dict.fromkeys((resolved, path))]
    literal = os.path.abspath(python)
    if not any(Path(literal).is_relative_to(t) for _, t in binds):
        binds.append((os.path.realpath(python), literal))  # an interpreter outside its prefix: just the file
    binds.sort(key=lambda pair: len(Path(pair[1]).parts))
    return binds


def gpu_device_nodes(dev_root: str = DEV_ROOT) -> list[str]:
    """The NVIDIA device nodes (and the nvidia-caps dir) under ``dev_root``."""
    return sorted(glob.glob(os.path.join(glob.escape(dev_root), GPU_NODES)))


# -- limits -------------------------------------------------------------------------------------------------
def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the platform has one)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return max(1, len(getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def cpu_limit_s(spec: SandboxSpec) -> int:
    """RLIMIT_CPU, a backstop and never the time limit: the host's wall-clock kill is the limit.

    RLIMIT_CPU counts the CPU seconds of all of a process's threads, so a process on n CPUs spends up to n of
    them per wall second. Nothing here holds it to ``spec.cpus`` (no cgroup), so n is the larger of
    ``ceil(cpus)`` and the CPUs it may run on; timeout x n + a margin cannot fire before the wall clock does,
    and still ends a run whose host-side kill never came (the engine died and there is no bubblewrap).
    """
    return math.ceil(spec.timeout_s * max(math.ceil(spec.cpus), usable_cpus())) + CPU_MARGIN_S


def uid_task_count(uid: int) -> int | None:
    """How many tasks of ``uid`` RLIMIT_NPROC already counts: threads on Linux (from /proc), processes
    elsewhere (from ``ps``); None when that cannot be read."""
    if os.path.isdir("/proc/self/task"):
        total = 0
        try:
            entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
        except OSError:
            return None
        for pid in entries:
            try:
                with open(f"/proc/{pid}/status", "rb") as fh:
                    status = fh.read()
            except OSError:  # gone meanwhile
                continue
            ruid, threads = None, 1
            for line in status.splitlines():
                if line.startswith(b"Uid:"):
                    ruid = int(line.split()[1])
                elif line.startswith(b"Threads:"):
                    threads = int(line.split()[1])
            if ruid == uid:
                total += threads
        return total
    ps = shutil.which("ps")
    if ps is None:
        return None
    try:
        out = subprocess.run([ps, "-A", "-o", "ruid="], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(1 for item in out.split() if item == str(uid))


def _walkable(path: Path, uid: int, gid: int) -> bool:
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


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid`` could traverse every directory up to ``path`` and read it (mode bits only), along the
    path as written (a venv's ``bin/python`` symlink) and along its real location."""
    literal, real = Path(os.path.abspath(path)), Path(os.path.realpath(path))
    return all(_walkable(p, uid, gid) for p in dict.fromkeys((literal, real)))


def hidden_targets(binds: list[tuple[str, str]], engine: Path | None) -> list[str]:
    """Sandbox paths where ``binds`` (host, sandbox) would show the engine checkout; they get an empty tmpfs."""
    if engine is None:
        return []
    masks = []
    for source, target in binds:
        real = Path(os.path.realpath(source))
        if engine.is_relative_to(real):
            masks.append(str(Path(target) / engine.relative_to(real)))
    return list(dict.fromkeys(masks))


def _within_hard(resource: object, which: int, soft: int, hard: int) -> tuple[int, int, int]:
    """(which, soft, hard) lowered to the current hard limit, which an unprivileged process cannot raise."""
    _, current = resource.getrlimit(which)  # type: ignore[attr-defined]
    if current != resource.RLIM_INFINITY:  # type: ignore[attr-defined]
        hard = min(hard, current)
        soft = min(soft, hard)
    return which, soft, hard


def _signal_exit(code: int) -> int:
    """Popen's -N for a signal becomes Docker's 128+N."""
    return 128 - code if code < 0 else code


class LocalBackend:
    """A hardened subprocess; under bubblewrap it gets its own network, pid, ipc and mount namespaces."""

    name = "local"

    def __init__(self, *, use_bwrap: bool | None = None, warn: Warn | None = None, allow_root: bool = False) -> None:
        linux = sys.platform.startswith("linux")
        bwrap = shutil.which("bwrap") if linux else None
        if use_bwrap and bwrap is None:
            raise RuntimeError("use_bwrap=True but " + ("bubblewrap (bwrap) is not installed" if linux
                                                        else f"bubblewrap needs Linux, not {sys.platform}"))
        self.bwrap = bwrap if use_bwrap in (None, True) else None
        self.setpriv = shutil.which("setpriv")
        self.warn = warn
        # The interpreter as it was started, not its realpath: a venv's bin/python is a symlink to the base
        # interpreter, which finds the venv (pyvenv.cfg, its site-packages) only when started through it.
        self.python = sys.executable or shutil.which("python3") or "python3"
        self.allow_root = allow_root
        self.dev_root = DEV_ROOT

    # -- what is and is not in force -------------------------------------------------------------
    def _drop_uid(self, uid: int) -> bool:
        ids = host_ids()
        return ids is None or uid != ids[0]

    def describe(self, spec: SandboxSpec) -> tuple[list[str], list[str]]:
        unsupported = platform_unsupported_reason()
        if unsupported is not None:
            return [], [unsupported]
        uid, gid = sandbox_ids()
        darwin = sys.platform == "darwin"
        cpus = max(math.ceil(spec.cpus), usable_cpus())
        isolation = [
            "own session, process group killed on timeout",
            f"wall clock {spec.timeout_s:g}s (host kills)",
            f"RLIMIT_CPU {cpu_limit_s(spec)}s as a backstop (all threads count: timeout x {cpus} CPUs "
            f"+ {CPU_MARGIN_S}s)",
            f"file size <= {spec.disk_mb} MiB (RLIMIT_FSIZE)",
            f"only writable mount: output dir (quota {spec.disk_mb} MiB, host-polled)",
            "no core dumps",
            "environment = spec.env only (no host variables)",
        ]
        missing = [("memory limit (RLIMIT_AS is off with GPUs: CUDA reserves huge virtual memory)" if spec.gpus
                    else "memory limit (macOS does not enforce RLIMIT_AS)" if darwin
                    else "memory cgroup (no OOM kill; RLIMIT_AS only)"),
                   "CPU share limit (cpus)",
                   f"pids cgroup (RLIMIT_NPROC counts every task of uid {uid} on the host: the sandbox may have "
                   f"pids more than uid {uid} had when it started, fewer while that uid's other processes grow)",
                   "capability dropping / seccomp"]
        if not spec.gpus and not darwin:
            isolation.append(f"address space <= {spec.memory_mb} MiB (RLIMIT_AS)")
        runs_unprivileged = not self._drop_uid(uid) or self.bwrap is not None or self._no_bwrap_can_drop(uid, gid)
        if runs_unprivileged:
            isolation.append(f"non-root uid {uid}, RLIMIT_NPROC = uid {uid}'s tasks at start + {spec.pids}")
        else:
            missing.append(f"unprivileged user: uid {uid} cannot reach the interpreter {self.python}, so the "
                           + ("command runs as root (allow_root=True) and RLIMIT_NPROC is not enforced"
                              if self.allow_root else "runs are refused (install bubblewrap or use Docker)"))
        if self.bwrap:
            isolation += ["bubblewrap: no network (own net namespace)",
                          "own pid namespace (every process dies with the sandbox), ipc, uts namespaces",
                          "only /usr, the python install (venv and base) and the mounts visible, all read-only; "
                          "the engine checkout hidden",
                          f"private /tmp tmpfs ({spec.disk_mb} MiB)", "no-new-privileges"]
            if spec.gpus:
                isolation.append(f"GPUs: the {self.dev_root}/{GPU_NODES} device nodes bound in")
        else:
            missing += ["network isolation (bubblewrap missing)", "file system isolation: the host is readable",
                        "pid namespace (a process that calls setsid escapes the kill)", "private /tmp",
                        "read-only inputs (only file modes protect them)"]
        return isolation, missing

    def refusal_reason(self) -> str | None:
        """Why every run would be refused on this host (not Linux/macOS; root without bubblewrap), or None."""
        unsupported = platform_unsupported_reason()
        if unsupported is not None:
            return unsupported
        uid, gid = sandbox_ids()
        if self.bwrap or self.allow_root or not self._drop_uid(uid) or self._no_bwrap_can_drop(uid, gid):
            return None
        return (f"refusing to run the candidate as root: without bubblewrap uid {uid} cannot reach {self.python}; "
                "install bubblewrap (apt-get install bubblewrap), use Docker, or pass allow_root=True")

    def _no_bwrap_can_drop(self, uid: int, gid: int) -> bool:
        roots = [sys.prefix, sys.base_prefix]
        return all(_reachable_by(Path(p), uid, gid) for p in [self.python, *roots])

    # -- command lines -----------------------------------------------------------------------------
    def _bwrap_argv(self, spec: SandboxSpec, uid: int, gid: int) -> list[str]:
        """bwrap's arguments; raises SetupError where the spec cannot be met (GPUs without device nodes)."""
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
        shown: list[tuple[str, str]] = []  # (host dir, sandbox path) bound whole

        def parents(target: str) -> None:
            for parent in reversed(Path(target).parents):
                p = str(parent)
                if p not in made:
                    argv.extend(["--perms", "0755", "--dir", p])
                    made.add(p)

        def covered(target: str) -> bool:
            return any(Path(target).is_relative_to(t) for _, t in shown) or any(
                Path(target).is_relative_to(d) for d in SYSTEM_DIRS if os.path.islink(d))

        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                argv += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
                shown.append((d, d))
            made.add(d)
        argv += ["--proc", "/proc", "--dev", "/dev"]
        if spec.gpus:
            nodes = gpu_device_nodes(self.dev_root)
            if not nodes:
                raise SetupError(f"spec.gpus is set but this host has no NVIDIA device nodes "
                                 f"({self.dev_root}/{GPU_NODES}): install the driver or run without GPUs")
            for node in nodes:
                argv += ["--dev-bind", node, "/dev/" + os.path.relpath(node, self.dev_root)]
        argv += ["--perms", "1777", "--size", str(spec.disk_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        made |= {"/proc", "/dev", "/tmp"}
        # The interpreter after the private /tmp, which would otherwise hide a venv under /tmp.
        engine = engine_checkout()
        for source, target in interpreter_binds(self.python, engine):
            if covered(target):
                continue
            parents(target)
            argv += ["--ro-bind", source, target]
            made.add(target)
            if os.path.isdir(source):
                shown.append((source, target))
        for mask in hidden_targets(shown, engine):
            argv += ["--perms", "0555", "--tmpfs", mask, "--remount-ro", mask]
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

    def _preexec(self, spec: SandboxSpec, uid: int, gid: int, setuid_here: bool,
                 tasks: int | None) -> Callable[[], None]:
        """The rlimits (and the uid drop without bubblewrap) applied in the child before it execs.

        RLIMIT_NPROC counts all tasks of the uid on the host, not only the sandbox's, so it is set to ``tasks``
        (the uid's count now) + ``spec.pids``: a fork bomb gets at most pids more, and a desktop whose user
        already runs thousands of threads can still start the sandbox. None (uncountable) leaves it unset.
        """
        import resource

        cpu = cpu_limit_s(spec)
        fsize = spec.disk_mb * 1024 * 1024
        memory = spec.memory_mb * 1024 * 1024
        limits = [_within_hard(resource, resource.RLIMIT_CORE, 0, 0),
                  _within_hard(resource, resource.RLIMIT_CPU, cpu, cpu + int(KILL_GRACE_S)),
                  _within_hard(resource, resource.RLIMIT_FSIZE, fsize, fsize),
                  _within_hard(resource, resource.RLIMIT_NOFILE, NOFILE, NOFILE)]
        if tasks is not None:
            nproc = tasks + spec.pids
            limits.append(_within_hard(resource, resource.RLIMIT_NPROC, nproc, nproc))
        optional: list[tuple[int, int, int]] = []
        if not spec.gpus:
            address_space = _within_hard(resource, resource.RLIMIT_AS, memory, memory)
            (optional if sys.platform == "darwin" else limits).append(address_space)

        def preexec() -> None:
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))
            for which, soft, hard in optional:
                try:
                    resource.setrlimit(which, (soft, hard))
                except (ValueError, OSError):
                    pass
            if setuid_here:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        return preexec

    # -- run -----------------------------------------------------------------------------------------
    def run(self, spec: SandboxSpec) -> SandboxResult:
        spec.validate()
        t_begin = time.monotonic()
        isolation, missing = self.describe(spec)

        def refused(error: str) -> SandboxResult:
            return SandboxResult(None, False, False, 0.0, time.monotonic() - t_begin, "", self.name, isolation,
                                 missing, error=error)

        unsupported = platform_unsupported_reason()
        if unsupported is not None:
            return refused(unsupported)
        uid, gid = sandbox_ids()
        command = list(spec.command)
        if command[0] == "python":
            command[0] = self.python
        env = dict(spec.env)
        if spec.gpus and spec.gpu_ids:  # the device nodes are all bound; CUDA sees only these
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
        setuid_here = False
        if self.bwrap:
            try:
                argv = self._bwrap_argv(spec, uid, gid) + command
            except SetupError as exc:
                return refused(str(exc))
            cwd = str(spec.output_dir)
        else:
            refusal = self.refusal_reason()
            if refusal is not None:
                return refused(refusal)
            argv = [self._host_path(spec, a) for a in command]
            env = {k: self._host_path(spec, v) for k, v in env.items()}
            cwd = self._host_path(spec, spec.workdir)
            setuid_here = self._drop_uid(uid) and self._no_bwrap_can_drop(uid, gid)
        grant_access(spec, uid)
        tasks = uid_task_count(uid)
        if tasks is None:
            missing.append(f"RLIMIT_NPROC (the tasks of uid {uid} could not be counted, so it is not set)")
        log_fd, log_path = tempfile.mkstemp(prefix="hrm-evolve-sandbox-", suffix=".log")
        timed_out = False
        exit_code: int | None = None
        try:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                        cwd=cwd, env=env, start_new_session=True, close_fds=True,
                                        preexec_fn=self._preexec(spec, uid, gid, setuid_here, tasks))
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                total = time.monotonic() - t_begin
                return SandboxResult(None, False, False, 0.0, total, "", self.name, isolation, missing,
                                     error=f"could not start the sandboxed process: {exc}")
            t_cmd0 = time.monotonic()

            def kill(reason: str) -> None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            with OutputQuota(spec.output_dir, spec.disk_mb, kill, stop=spec.stop) as quota:
                try:
                    proc.wait(timeout=spec.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    kill("timeout")
                    try:
                        proc.wait(timeout=KILL_GRACE_S)
                    except subprocess.TimeoutExpired:
                        pass
                except BaseException:  # interrupted while waiting (a cancelled Ray task): the sandbox goes too
                    kill("interrupted")
                    raise
                quota_msg = quota.exceeded
                stopped = quota.stopped
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
                               total_s=time.monotonic() - t_begin, isolation=isolation, missing=missing,
                               stopped=stopped)
