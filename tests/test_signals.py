"""The signal contract: SIGINT exits 130 and SIGTERM 143 within 1 s, in every phase of a run.

Each case runs the plugin as a real process, waits for an event that proves it is in the phase
(a connection accepted, a request seen, a line printed), sends a real signal and times the exit.
The 1 s bound is the contract a runbook's timeout relies on, not a speed goal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from kubectl_grpcprobe.errors import ExitCode

from .helpers import closed_port, container, hanging_health_server, health_server, pod_manifest, tcp_server

ROOT = Path(__file__).resolve().parent.parent
BOUND = 1.0  # seconds from the signal to the exit
SIGNALS = [(signal.SIGINT, ExitCode.INTERRUPTED, "interrupted"), (signal.SIGTERM, ExitCode.TERMINATED, "terminated")]
SIGNAL_IDS = ["SIGINT", "SIGTERM"]


def spawn(*args: str, kubeconfig: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubectl_grpcprobe", *args, "--kubeconfig", kubeconfig],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "PYTHONFAULTHANDLER": "1", **(env or {})},
    )


def signal_and_reap(proc: subprocess.Popen[str], signum: int) -> tuple[str, str, float]:
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack, for the failure message
        out, err = proc.communicate()
        pytest.fail(f"still running 20 s after the signal; stderr: {err[-8000:]}")
    return out, err, time.monotonic() - sent


def read_until(stream, marker: str, deadline: float = 20.0) -> list[str]:
    """Lines of a child's pipe up to the first that contains `marker` (each readline waits on the child)."""
    lines = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    pytest.fail(f"{marker!r} never appeared: {lines}")


def pod_on(sandbox, port: int, name: str = "peer") -> None:
    sandbox.apply(pod_manifest(name, [container("app", readinessProbe={"grpc": {"port": 5000}})], ports={5000: port}))


def assert_contract(result: tuple[str, str, float], code: int, word: str, proc: subprocess.Popen[str], *, stdout: str = "") -> None:
    out, err, took = result
    assert proc.returncode == code, (out, err)
    assert err.splitlines()[-1] == f"error: {word}", err
    assert "Traceback" not in err
    if stdout is not None:
        assert out == stdout
    assert took < BOUND, f"exited {took:.2f}s after the signal"


@contextmanager
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(20)
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_reading_the_kubeconfig(tmp_path, sandbox, signum, code, word) -> None:
    """A kubeconfig that never arrives (a FIFO nobody writes): the open itself blocks."""
    fifo = tmp_path / "kubeconfig"
    os.mkfifo(fifo)
    proc = spawn("test-grpc", kubeconfig=str(fifo))
    writer = os.open(fifo, os.O_WRONLY)  # returns once the plugin has opened it for reading
    try:
        assert_contract(signal_and_reap(proc, signum), code, word, proc)
    finally:
        os.close(writer)


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_in_the_exec_plugin(tmp_path, sandbox, signum, code, word) -> None:
    """An exec credential plugin that hangs; the plugin process is ended with us."""
    with listener() as lsn:
        plugin = tmp_path / "hang-plugin"
        plugin.write_text(
            f"#!{sys.executable}\nimport socket\ns = socket.create_connection(('127.0.0.1', {lsn.getsockname()[1]}))\ns.recv(1)\n"
        )
        plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
        config = yaml.safe_load(Path(sandbox.kubeconfig_path).read_text())
        config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin), "interactiveMode": "Never"}}
        path = tmp_path / "config"
        path.write_text(yaml.safe_dump(config))
        proc = spawn("test-grpc", kubeconfig=str(path))
        conn, _ = lsn.accept()  # the plugin is running
        with conn:
            assert_contract(signal_and_reap(proc, signum), code, word, proc)
            conn.settimeout(5)
            assert conn.recv(1) == b""  # the plugin was killed with the run: its end of the connection closed


@pytest.mark.parametrize(("fault", "event"), [("stall_api", "api_requested"), ("stall_portforward", "portforward_requested")], ids=["api-call", "upgrade"])
@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_in_an_api_call_or_the_upgrade(sandbox, fault, event, signum, code, word) -> None:
    setattr(sandbox.faults, fault, 30)
    getattr(sandbox, event).clear()
    proc = spawn("test-grpc", kubeconfig=sandbox.kubeconfig_path)
    assert getattr(sandbox, event).wait(20)  # the request is at the server, which stalls it
    assert_contract(signal_and_reap(proc, signum), code, word, proc)


@pytest.mark.parametrize("peer", ["closed", "silent"])
@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_in_the_dial(sandbox_no_kubelet, peer, signum, code, word) -> None:
    """The blocking dial: a closed port (redials with backoff) or a peer that accepts and never speaks."""
    with tcp_server("silent") as silent:
        pod_on(sandbox_no_kubelet, closed_port() if peer == "closed" else silent)
        proc = spawn("peer", "--timeout", "60s", "-v", kubeconfig=sandbox_no_kubelet.kubeconfig_path)
        read_until(proc.stderr, "/portforward")  # the tunnel is up: the check is dialling
        assert_contract(signal_and_reap(proc, signum), code, word, proc)


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_in_the_rpc(sandbox_no_kubelet, signum, code, word) -> None:
    with hanging_health_server() as (port, entered):
        pod_on(sandbox_no_kubelet, port)
        proc = spawn("peer", "--timeout", "60s", kubeconfig=sandbox_no_kubelet.kubeconfig_path)
        assert entered.wait(20)
        assert_contract(signal_and_reap(proc, signum), code, word, proc)


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_in_the_watch_period(sandbox_no_kubelet, signum, code, word) -> None:
    """Between two executions of a long period: the summary is printed and carries the exit status."""
    with health_server() as (port, _):
        pod_on(sandbox_no_kubelet, port)
        proc = spawn("peer", "--watch", "--period", "1h", "-o", "json", kubeconfig=sandbox_no_kubelet.kubeconfig_path)
        first = read_until(proc.stdout, '"type": "execution"')
        out, err, took = signal_and_reap(proc, signum)
    assert_contract((out, err, took), code, word, proc, stdout=None)
    lines = [json.loads(line) for line in first + out.splitlines()]
    assert lines[-1]["type"] == "summary" and lines[-1]["exitCode"] == code and lines[-1]["ended"] == word


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS, ids=SIGNAL_IDS)
def test_in_a_fleet(sandbox_no_kubelet, signum, code, word) -> None:
    """Workers in their RPCs: the rows finished so far, a summary that says the run was stopped, the signal's code."""
    sb = sandbox_no_kubelet
    with health_server() as (good, _), hanging_health_server() as (hang, entered):
        pod_on(sb, good, "a-good")
        pod_on(sb, hang, "b-hang")
        pod_on(sb, hang, "c-hang")
        proc = spawn("a-good", "b-hang", "c-hang", "--parallel", "1", "--timeout", "60s", "-o", "json", kubeconfig=sb.kubeconfig_path)
        assert entered.wait(20)
        out, err, took = signal_and_reap(proc, signum)
    assert_contract((out, err, took), code, word, proc, stdout=None)
    doc = json.loads(out)
    assert doc["exitCode"] == code and doc["summary"]["stopped"] == word
    assert [(p["pod"], p["result"]) for p in doc["probes"]] == [("a-good", "success")]
    assert {p["pod"]: p["message"] for p in doc["pods"]} == {
        name: f"error: {word}: the run was stopped before this pod was done" for name in ("b-hang", "c-hang")
    }


def test_twenty_of_twenty_in_the_connect_phase(sandbox_no_kubelet) -> None:
    """The issue's bar: Ctrl-C while connecting exits within 1 s every time, alone and in a fleet."""
    sb = sandbox_no_kubelet
    with tcp_server("silent") as silent:
        pod_on(sb, silent, "s1")
        pod_on(sb, closed_port(), "s2")
        for i in range(20):
            args = ("s1",) if i % 2 else ("s1", "s2", "--parallel", "2")
            proc = spawn(*args, "--timeout", "60s", "-v", kubeconfig=sb.kubeconfig_path)
            read_until(proc.stderr, "/portforward")
            out, err, took = signal_and_reap(proc, signal.SIGINT)
            assert proc.returncode == ExitCode.INTERRUPTED, (i, proc.returncode, out, err[-3000:])
            assert took < BOUND, (i, took, err[-3000:])
