from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported anywhere

from kubectl_grpcprobe.sandbox import Sandbox

from .helpers import BLOG_MANIFEST


def _listening_inodes() -> set[str]:
    """Inodes of TCP sockets in LISTEN state that this process holds open."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    listening = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A" and parts[9] in mine:  # 0A = LISTEN
                        listening.add(parts[9])
        except OSError:
            continue
    return listening


def _non_daemon_threads() -> set[threading.Thread]:
    """Threads that would keep a process alive, except the test's own servers (sandbox, agnhost)."""
    return {
        t
        for t in threading.enumerate()
        if not t.daemon and t is not threading.main_thread() and not t.name.startswith(("sandbox-", "agnhost"))
    }


@pytest.fixture
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves a listening socket or a non-daemon thread behind."""
    before_threads = _non_daemon_threads()
    before_sockets = _listening_inodes()
    yield
    leaked_threads = _non_daemon_threads() - before_threads
    leaked_sockets = _listening_inodes() - before_sockets
    portforward_threads = [t for t in threading.enumerate() if t.name.startswith("grpcprobe-portforward")]
    assert not leaked_threads, f"threads left running: {leaked_threads}"
    assert not leaked_sockets, f"listening sockets left open: {leaked_sockets}"
    assert not portforward_threads, f"port-forward threads left running: {portforward_threads}"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh sandbox with the blog's test-grpc pod, Ready (its kubelet's first probe done), as a user finds it."""
    with Sandbox([BLOG_MANIFEST]) as sb:
        sb.wait_ready("test-grpc")
        yield sb


@pytest.fixture
def sandbox_no_kubelet() -> Iterator[Sandbox]:
    """A sandbox whose kubelet probes nothing: servers see only the traffic a test makes."""
    with Sandbox([BLOG_MANIFEST], kubelet=False) as sb:
        yield sb


# -- the real control plane (tests/test_real_control_plane.py, tests/test_fidelity.py) -----------------

try:
    from kubectl_grpcprobe.sandbox.controlplane import ComponentsMissing, find_binaries

    find_binaries(("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "agnhost"))
    REAL_MISSING = ""
except ComponentsMissing as exc:
    REAL_MISSING = str(exc)
    if os.environ.get("GRPCPROBE_REQUIRE_REAL"):  # CI builds them: a skip there would hide a broken build
        raise

REAL_SPEED = 0.25  # probe periods 4x faster (timeouts unchanged), as `sandbox up --kubelet-speed 4`


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> Iterator[Any]:
    """One real control plane with two sandbox nodes for the session, the blog's pod Ready on it."""
    import subprocess

    from kubectl_grpcprobe.sandbox.real import RealSandbox

    logs = tmp_path_factory.mktemp("real-logs")
    sandbox = RealSandbox([BLOG_MANIFEST], kubelet_time_scale=REAL_SPEED, log_dir=str(logs))
    sandbox.start()
    try:
        sandbox.wait_ready("test-grpc")
        yield sandbox
        sandbox.check_alive()
    finally:
        sandbox.stop()
    from kubectl_grpcprobe.sandbox.controlplane import bin_dir

    for pattern in ("grpcprobe-real-", str(bin_dir() / "agnhost")):  # the components, and the pods' agnhost processes
        leftovers = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
        assert not leftovers.strip(), f"processes left running: {leftovers}"
