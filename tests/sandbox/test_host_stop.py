"""The host's stop event (SandboxSpec.stop, the learning-curve early stop's lever) ends a running sandbox at
once, on both backends, and its result says it was stopped, not timed out or failed by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sandbox import Backend, SandboxSpec

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(60)\nprint('never')\n"


def test_a_host_stop_ends_a_running_sandbox(backend: Backend, make_spec: Callable[..., SandboxSpec]) -> None:
    stop = threading.Event()
    spec = make_spec(SLEEPER, timeout_s=40.0, stop=stop)
    timer = threading.Timer(2.0, stop.set)
    timer.start()
    t0 = time.monotonic()
    try:
        res = backend.run(spec)
    finally:
        timer.cancel()
    assert res.error is None, res.error
    assert res.stopped and not res.timed_out and not res.ok, res
    assert time.monotonic() - t0 < 25  # far from the 40 s wall clock and the 60 s sleep
    assert "never" not in res.log_tail and "stopped by the host" in res.log_tail


def test_without_a_stop_the_run_ends_by_itself(backend: Backend, make_spec: Callable[..., SandboxSpec]) -> None:
    res = backend.run(make_spec("print('done')\n", stop=threading.Event()))
    assert res.ok and not res.stopped, res
