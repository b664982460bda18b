"""Limits that must not hit honest candidates: RLIMIT_CPU with several threads, RLIMIT_NPROC on a uid that is
already busy; and the GPU device nodes bubblewrap binds in."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import Backend, SandboxSpec, get_backend
from sandbox.hostfs import sandbox_ids
from sandbox.local_backend import (
    CPU_MARGIN_S,
    LocalBackend,
    SetupError,
    _within_hard,
    cpu_limit_s,
    gpu_device_nodes,
    uid_task_count,
    usable_cpus,
)

MakeSpec = Callable[..., SandboxSpec]

BURN = """
import sys, time
t0 = time.monotonic()
import torch
torch.set_num_threads(2)
target, wall_cap = float(sys.argv[1]), float(sys.argv[2])
a = torch.randn(512, 512)
while time.process_time() < target:  # CPU seconds of all threads
    if time.monotonic() - t0 > wall_cap:
        print("TOO_SLOW", round(time.process_time(), 1), round(time.monotonic() - t0, 1), flush=True)
        sys.exit(3)
    for _ in range(10):
        b = a @ a
print("CPU_DONE", round(time.process_time(), 1), round(time.monotonic() - t0, 1), flush=True)
"""


@pytest.fixture
def cpu_share() -> Iterator[str]:
    """A marker to put in a stage's command line. As root, with the scheduler's autogroups on, the stage's
    session gets the top autogroup priority, so that other sessions on a shared machine (every sandbox is a
    session of its own) cannot keep two threads from outrunning the wall clock. Only the share changes."""
    import threading
    import uuid

    marker = f"cpu-share-{uuid.uuid4().hex}".encode()
    autogroups = Path("/proc/sys/kernel/sched_autogroup_enabled")
    active = os.getuid() == 0 and autogroups.exists() and autogroups.read_text().strip() == "1"
    stop = threading.Event()

    def boost() -> None:
        done: set[str] = set()
        while not stop.wait(0.05):
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid in done:
                    continue
                try:
                    if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                        Path(f"/proc/{pid}/autogroup").write_text("-19")
                        done.add(pid)
                except OSError:
                    continue

    thread = threading.Thread(target=boost, daemon=True)
    if active:
        thread.start()
    try:
        yield marker.decode()
    finally:
        stop.set()
        if active:
            thread.join(timeout=5)


def test_two_threads_past_timeout_over_threads_survive(backend: Backend, make_spec: MakeSpec,
                                                       cpu_share: str) -> None:
    """Two busy threads for longer than timeout/2 wall seconds spend more CPU seconds than the timeout; the
    old RLIMIT_CPU (timeout + 1) killed such a stage with SIGXCPU (exit 152) long before its wall clock."""
    if usable_cpus() < 2:
        pytest.skip("needs two CPUs to burn CPU time faster than the wall clock")
    timeout = 20.0
    target = timeout + 2  # past the old RLIMIT_CPU of ceil(timeout) + 1
    spec = make_spec(BURN, str(target), str(timeout - 2), cpu_share, timeout_s=timeout, cpus=2.0, memory_mb=4096,
                     env={"PYTHONPATH": "/candidate", "OMP_NUM_THREADS": "2"})
    res = backend.run(spec)
    assert res.error is None, res.error
    if "TOO_SLOW" in res.log_tail:
        pytest.skip(f"the host is too loaded for two threads to outrun the wall clock: {res.log_tail[-200:]}")
    assert res.exit_code == 0 and not res.timed_out, (res.exit_code, res.log_tail)
    cpu_s, wall_s = (float(x) for x in res.log_tail.split("CPU_DONE")[1].split()[:2])
    assert cpu_s > timeout + 1 and timeout / 2 < wall_s < timeout, (cpu_s, wall_s)


def test_cpu_limit_is_a_backstop_past_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SandboxSpec(command=["python"], mounts=[], output_dir=Path("/nonexistent"), timeout_s=10.5, cpus=1.5)
    monkeypatch.setattr("sandbox.local_backend.usable_cpus", lambda: 1)
    assert cpu_limit_s(spec) == 21 + CPU_MARGIN_S  # ceil(cpus) = 2 CPUs x 10.5 s
    monkeypatch.setattr("sandbox.local_backend.usable_cpus", lambda: 16)
    assert cpu_limit_s(spec) == 168 + CPU_MARGIN_S  # nothing holds it to cpus: all 16 it may run on


def test_limits_stay_below_the_current_hard_limit() -> None:
    class FakeResource:
        RLIM_INFINITY = -1

        def __init__(self, hard: int) -> None:
            self.hard = hard

        def getrlimit(self, which: int) -> tuple[int, int]:
            return (0, self.hard)

    assert _within_hard(FakeResource(-1), 7, 50, 60) == (7, 50, 60)
    assert _within_hard(FakeResource(55), 7, 50, 60) == (7, 50, 55)
    assert _within_hard(FakeResource(40), 7, 50, 60) == (7, 40, 40)


def test_uid_task_count_counts_threads() -> None:
    count = uid_task_count(os.getuid())
    assert count is not None
    threads = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                       if line.startswith("Threads:")))
    assert count >= threads


def test_rlimits_seen_inside_the_sandbox(require_local_sandbox: None, make_spec: MakeSpec) -> None:
    source = ("import resource\n"
              "print('LIMITS', resource.getrlimit(resource.RLIMIT_NPROC)[0], "
              "resource.getrlimit(resource.RLIMIT_CPU)[0], flush=True)\n")
    spec = make_spec(source, pids=40, timeout_s=20.0, cpus=2.0)
    uid, _ = sandbox_ids()
    before = uid_task_count(uid)
    res = get_backend("local").run(spec)
    after = uid_task_count(uid)
    assert res.ok, res
    nproc, cpu = (int(x) for x in res.log_tail.split("LIMITS")[1].split()[:2])
    assert before is not None and after is not None
    assert min(before, after) + 40 - 8 <= nproc <= max(before, after) + 40 + 8, (before, nproc, after)
    assert cpu == cpu_limit_s(spec)


@pytest.fixture
def busy_uid() -> Iterator[int]:
    """Keep 96 extra tasks of the sandbox uid alive, as a desktop full of threads would."""
    uid, gid = sandbox_ids()
    extra = 96
    before = uid_task_count(uid) or 0
    kwargs: dict[str, object] = {}
    if uid != os.getuid():
        kwargs = {"user": uid, "group": gid, "extra_groups": []}
    script = f"i=0; while [ $i -lt {extra} ]; do sleep 120 & i=$((i+1)); done; wait"
    helper = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", **kwargs)
    try:
        deadline = time.monotonic() + 20
        while (uid_task_count(uid) or 0) < before + extra and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (uid_task_count(uid) or 0) >= before + extra
        yield extra
    finally:
        os.killpg(helper.pid, signal.SIGKILL)
        helper.wait(timeout=10)


def test_a_busy_uid_leaves_the_sandbox_its_pids(require_local_sandbox: None, busy_uid: int,
                                                make_spec: MakeSpec) -> None:
    """RLIMIT_NPROC counts the uid's tasks host-wide; with 96 of them alive, pids=32 used to stop the first
    fork. Now the sandbox gets pids more than the uid had, and a fork bomb is still held to pids."""
    source = """
import os, time
n = 0
try:
    while n < 5000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
    print("FORK_UNBOUNDED", n)
except OSError as exc:
    print("FORK_STOPPED", n, exc.errno, flush=True)
"""
    res = get_backend("local").run(make_spec(source, pids=32, timeout_s=15))
    assert res.error is None, res.error
    assert "FORK_STOPPED" in res.log_tail, res.log_tail
    forks = int(res.log_tail.split("FORK_STOPPED")[1].split()[0])
    assert 16 <= forks <= 32, res.log_tail
    assert not res.timed_out


def _gpu_backend(dev_root: Path) -> LocalBackend:
    b = LocalBackend(use_bwrap=False, allow_root=True)
    b.bwrap = "bwrap"  # only the argument list is built
    b.dev_root = str(dev_root)
    return b


def test_gpu_device_nodes_are_bound_under_bwrap(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "null", "dri"):
        (dev / name).touch()
    assert gpu_device_nodes(str(dev)) == [str(dev / n) for n in
                                          ("nvidia-caps", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1",
                                           "nvidiactl")]
    b = _gpu_backend(dev)
    spec = SandboxSpec(command=["python"], mounts=[], output_dir=tmp_path / "out", gpus=True)
    argv = b._bwrap_argv(spec, 65534, 65534)
    binds = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--dev-bind"]
    assert binds == [(str(dev / n), f"/dev/{n}") for n in
                     ("nvidia-caps", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1", "nvidiactl")]
    assert argv.index("--dev") < argv.index("--dev-bind") < argv.index("--tmpfs")  # on top of the private /dev
    assert "--setenv" not in argv
    assert any("GPUs" in item for item in b.describe(spec)[0])
    spec.gpus = False
    assert "--dev-bind" not in b._bwrap_argv(spec, 65534, 65534)


def test_gpus_without_device_nodes_is_a_clear_error(tmp_path: Path) -> None:
    b = _gpu_backend(tmp_path / "empty-dev")
    spec = SandboxSpec(command=["python", "-c", "pass"], mounts=[], output_dir=tmp_path / "out", gpus=True)
    with pytest.raises(SetupError, match="no NVIDIA device nodes"):
        b._bwrap_argv(spec, 65534, 65534)
    res = b.run(spec)
    assert res.exit_code is None and res.error and "no NVIDIA device nodes" in res.error


UNPRIVILEGED_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from sandbox import SandboxSpec
from sandbox.local_backend import LocalBackend, uid_task_count

source = '''
import os, time
n = 0
try:
    while n < 5000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
    print("FORK_UNBOUNDED", n)
except OSError as exc:
    print("FORK_STOPPED", n, exc.errno, flush=True)
'''
backend = LocalBackend(use_bwrap=True)
res = backend.run(SandboxSpec(command=["python", "-c", source], mounts=[], output_dir=Path(sys.argv[2]),
                              timeout_s=20, pids=32, memory_mb=512))
print("RESULT", json.dumps({"tasks": uid_task_count(int(sys.argv[3])), "error": res.error,
                            "exit_code": res.exit_code, "log": res.log_tail}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that another uid can reach (pytest's own tmp dirs are 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="hrm-evolve-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_user_with_hundreds_of_tasks(shared_dir: Path) -> None:
    """A desktop user (here: an unused uid with 300 sleeping tasks) runs the engine with a system python. bwrap
    then uses a user namespace, which inherits RLIMIT_NPROC and checks the uid's host-wide count against it:
    pids=32 used to fail with 'Creating new namespace failed: Resource temporarily unavailable'."""
    import pwd
    import shutil

    from sandbox.local_backend import _reachable_by, engine_checkout

    uid = 23456
    python = shutil.which("python3", path="/usr/bin:/bin")
    engine = engine_checkout()
    if os.getuid() != 0 or not shutil.which("bwrap") or not shutil.which("setpriv") or python is None:
        pytest.skip("needs root (to become an unprivileged uid), bwrap, setpriv and /usr/bin/python3")
    try:
        pwd.getpwuid(uid)
        pytest.skip(f"uid {uid} exists here")
    except KeyError:
        pass
    if engine is None or not _reachable_by(engine / "sandbox" / "local_backend.py", uid, uid):
        pytest.skip("the engine checkout is not readable by an unprivileged uid")
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    if version != "True":
        pytest.skip(f"{python} is older than 3.10")
    become = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    userns = subprocess.run([*become, "bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"],
                            capture_output=True, text=True, timeout=30)
    if userns.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are unavailable: {userns.stderr.strip()}")
    work = shared_dir / "work"
    work.mkdir()
    os.chown(work, uid, uid)
    driver = work / "driver.py"
    driver.write_text(UNPRIVILEGED_DRIVER)
    os.chmod(driver, 0o644)
    busy = subprocess.Popen([*become, "/bin/sh", "-c", "i=0; while [ $i -lt 300 ]; do sleep 120 & i=$((i+1)); "
                             "done; wait"], start_new_session=True, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while (uid_task_count(uid) or 0) < 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc = subprocess.run([*become, python, str(driver), str(engine), str(work / "out"), str(uid)],
                              capture_output=True, text=True, timeout=120, cwd="/",
                              env={"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work)})
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        busy.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    res = json_line(proc.stdout)
    assert res["tasks"] >= 300
    assert res["error"] is None and res["exit_code"] == 0, res
    assert "FORK_STOPPED" in res["log"], res["log"]
    forks = int(res["log"].split("FORK_STOPPED")[1].split()[0])
    assert 16 <= forks <= 32, res["log"]


def json_line(stdout: str) -> dict:
    import json

    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])
