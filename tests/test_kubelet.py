"""The kubelet's worker arithmetic, the sandbox kubelet acting on it, and what users see of it."""

from __future__ import annotations

import json
import re
import subprocess
import threading

import pytest

from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.kubelet.worker import FAILURE, SUCCESS, UNKNOWN, ProbeWorker
from kubectl_grpcprobe.sandbox import Sandbox

from .helpers import (
    BLOG_MANIFEST,
    agnhost_container,
    closed_port,
    container,
    grpcprobe,
    health_server,
    kubectl_binary,
    pod_manifest,
)

# -- the worker, without a clock -----------------------------------------------------------


def test_initial_results_are_the_kubelets() -> None:
    assert ProbeWorker("readiness", "c").result == FAILURE
    assert ProbeWorker("liveness", "c").result == SUCCESS
    assert ProbeWorker("startup", "c").result == UNKNOWN


def test_failure_threshold_counts_consecutive_results() -> None:
    w = ProbeWorker("readiness", "app", failure_threshold=3)
    assert w.observe(True).describe() == "readiness → Ready after 1 consecutive success"
    assert w.observe(False) is None
    assert w.observe(False) is None
    assert w.observe(True) is None  # the run of failures is broken
    assert [w.observe(False) for _ in range(2)] == [None, None]
    decision = w.observe(False)
    assert decision.describe() == "readiness → NotReady after 3 consecutive failures"
    assert w.observe(False) is None  # unchanged cached result: no new decision


def test_success_threshold() -> None:
    w = ProbeWorker("readiness", "app", success_threshold=2, failure_threshold=1)
    assert w.observe(True) is None
    assert w.observe(True).describe() == "readiness → Ready after 2 consecutive successes"


def test_liveness_failure_restarts_and_holds() -> None:
    w = ProbeWorker("liveness", "app", failure_threshold=2)
    assert w.observe(False) is None
    decision = w.observe(False)
    assert decision.restart and decision.describe() == "liveness → Container app failed liveness probe, will be restarted"
    assert w.due(100, True) == "on hold until the container restarts"
    w.reset()
    assert w.due(100, True) is None and w.result == SUCCESS


def test_initial_delay_and_startup_gating() -> None:
    readiness = ProbeWorker("readiness", "app", initial_delay=5)
    assert readiness.due(4.9, True) == "initialDelaySeconds (5s) not yet passed"
    assert readiness.due(5.0, False) == "waiting for the startup probe to succeed"
    assert readiness.due(5.0, True) is None
    startup = ProbeWorker("startup", "app", failure_threshold=2)
    assert startup.due(0, False) is None
    assert startup.due(0, True) == "container already started"
    assert startup.observe(False) is None
    assert startup.observe(False).describe() == "startup → Container app failed startup probe, will be restarted"


# -- the sandbox kubelet ---------------------------------------------------------------------

FAST = 0.05  # 1 s periods become 50 ms; timeouts stay real


@pytest.fixture
def fast_sandbox():
    with Sandbox([BLOG_MANIFEST], kubelet_time_scale=FAST) as sb:
        yield sb


def _events(sandbox: Sandbox, pod: str) -> list[dict]:
    items, _ = sandbox.store.list("events", "default")
    return [e for e in items if e["involvedObject"]["name"] == pod]


def test_blog_walkthrough_ready_flips(fast_sandbox) -> None:
    sb = fast_sandbox
    sb.wait_ready("test-grpc", True)
    sb.server_for("test-grpc", "agnhost").force_unhealthy = True
    pod = sb.wait_ready("test-grpc", False)
    statuses = pod["status"]["containerStatuses"]
    assert statuses[0]["ready"] is False
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["ContainersReady"] == "False"
    (unhealthy,) = [e for e in _events(sb, "test-grpc") if e["reason"] == "Unhealthy"]
    assert unhealthy["type"] == "Warning"
    assert unhealthy["message"] == 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'
    assert unhealthy["count"] >= 3  # NotReady only after failureThreshold (3) consecutive failures
    assert unhealthy["involvedObject"]["fieldPath"] == "spec.containers{agnhost}"
    sb.server_for("test-grpc", "agnhost").force_unhealthy = False
    sb.wait_ready("test-grpc", True)


def test_liveness_failure_restarts_the_container(fast_sandbox) -> None:
    sb = fast_sandbox
    sb.apply(pod_manifest("live", [agnhost_container(livenessProbe={"grpc": {"port": 5000}, "periodSeconds": 1, "failureThreshold": 2})]))
    first = sb.server_for("live", "agnhost")
    first.force_unhealthy = True
    pod = sb.wait_for_pod("live", lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1)
    cs = pod["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    events = _events(sb, "live")
    assert any(e["reason"] == "Killing" and e["message"] == "Container agnhost failed liveness probe, will be restarted" for e in events)
    assert any(e["reason"] == "Unhealthy" and e["message"] == 'Liveness probe failed: service unhealthy (responded with "NOT_SERVING")' for e in events)
    # The restarted container is a fresh process: its forced state is gone, and it stays up.
    assert sb.server_for("live", "agnhost") is not first and not sb.server_for("live", "agnhost").force_unhealthy


def test_startup_gates_readiness(fast_sandbox) -> None:
    sb = fast_sandbox
    with health_server() as (port, servicer):
        gated = container(
            "app",
            startupProbe={"grpc": {"port": 5000, "service": "boot"}, "periodSeconds": 1, "failureThreshold": 1000},
            readinessProbe={"grpc": {"port": 5000}, "periodSeconds": 1},
        )
        sb.apply(pod_manifest("gated", [gated], ports={5000: port}))
        # Until "boot" answers, only the startup probe runs: it fails (NotFound), readiness never runs.
        sb.wait_for_pod("gated", lambda p: any(e["message"].startswith("Startup probe failed") and e["count"] >= 3 for e in _events(sb, "gated")) or False)
        assert not any(e["message"].startswith("Readiness probe") for e in _events(sb, "gated"))
        assert sb.pod("gated")["status"]["containerStatuses"][0]["ready"] is False
        servicer.set("boot", 1)  # SERVING
        pod = sb.wait_ready("gated", True)
        assert pod["status"]["containerStatuses"][0]["started"] is True


@pytest.mark.kubectl
def test_kubectl_describe_shows_the_walkthrough(fast_sandbox) -> None:
    sb = fast_sandbox
    sb.wait_ready("test-grpc", True)
    sb.server_for("test-grpc", "agnhost").force_unhealthy = True
    sb.wait_ready("test-grpc", False)
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not installed")
    env = {"KUBECONFIG": sb.kubeconfig_path, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run([binary, "describe", "pod", "test-grpc"], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    assert "Ready:          False" in out
    unhealthy = [line for line in out.splitlines() if "Unhealthy" in line]
    assert len(unhealthy) == 1
    assert "Warning  Unhealthy" in unhealthy[0] and "kubelet" in unhealthy[0]
    assert "(x" in unhealthy[0] and " over " in unhealthy[0]
    assert unhealthy[0].endswith('Readiness probe failed: service unhealthy (responded with "NOT_SERVING")')
    got = subprocess.run([binary, "get", "pod", "test-grpc", "-o", "json"], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    assert {c["type"]: c["status"] for c in json.loads(got)["status"]["conditions"]}["Ready"] == "False"


# -- toggle, --wait and --watch through the CLI ---------------------------------------------


def test_toggle_through_the_real_endpoints(sandbox) -> None:
    run = grpcprobe(sandbox, "toggle", "test-grpc", "--not-serving")
    assert run.code == ExitCode.OK, run.err
    first, second = run.out.splitlines()
    assert first.startswith("pod/test-grpc: GET /make-not-serving on port 8080 answered 200 OK (server says: ")
    assert 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")' in second
    assert sandbox.server_for("test-grpc", "agnhost").force_unhealthy is True
    back = grpcprobe(sandbox, "toggle", "pod/test-grpc", "--serving")
    assert back.code == ExitCode.OK and "Readiness probe succeeded" in back.out
    assert sandbox.server_for("test-grpc", "agnhost").force_unhealthy is False


def test_toggle_wait_reports_the_kubelets_action(fast_sandbox) -> None:
    sb = fast_sandbox
    sb.wait_ready("test-grpc", True)
    run = grpcprobe(sb, "toggle", "test-grpc", "--not-serving", "--wait", "--wait-timeout", "30s")
    assert run.code == ExitCode.OK, run.err
    line = run.out.splitlines()[-1]
    assert line.startswith("pod/test-grpc: the kubelet acted ")
    assert re.search(r'Ready=False; event: Warning Unhealthy: Readiness probe failed: service unhealthy \(responded with "NOT_SERVING"\) \(x\d+\)$', line)
    back = grpcprobe(sb, "toggle", "test-grpc", "--serving", "--wait")
    assert back.code == ExitCode.OK and back.out.splitlines()[-1].endswith("Ready=True")


def test_toggle_wait_times_out_without_a_kubelet(sandbox_no_kubelet) -> None:
    run = grpcprobe(sandbox_no_kubelet, "toggle", "test-grpc", "--not-serving", "--wait", "--wait-timeout", "300ms")
    assert run.code == ExitCode.UNHEALTHY
    assert run.err.strip().splitlines()[-1] == "error: the kubelet did not act on pod test-grpc within 0.3s (--wait-timeout)"


def test_toggle_errors(sandbox) -> None:
    closed = grpcprobe(sandbox, "toggle", "test-grpc", "--serving", "--control-port", str(closed_port() % 1000 + 9000))
    assert closed.code == ExitCode.UNREACHABLE
    assert closed.err.startswith("error: cannot reach the control port ") and "connection refused" in closed.err
    missing = grpcprobe(sandbox, "toggle", "test-grpc", "--serving", "--serving-path", "/nope")
    assert missing.code == ExitCode.USAGE
    assert "answered /nope on port 8080 with 404 Not Found (404 page not found)" in missing.err
    both = grpcprobe(sandbox, "toggle", "test-grpc")
    assert both.code == ExitCode.USAGE and "one of the arguments --serving --not-serving is required" in both.err


def test_watch_prints_executions_decisions_and_summary(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    run = grpcprobe(sb, "test-grpc", "--watch", "--period", "50ms", "--count", "3")
    assert run.code == ExitCode.OK, run.err
    lines = run.out.splitlines()
    assert sum("Readiness probe succeeded: service healthy" in line for line in lines) == 3
    assert sum("kubelet decision: readiness → Ready after 1 consecutive success" in line for line in lines) == 1
    assert lines[-2] == "--- pod/test-grpc summary"
    assert lines[-1].startswith("agnhost readiness: 3 executions, 0 failed; rpc latency min ")


def test_watch_applies_failure_threshold(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    sb.server_for("test-grpc", "agnhost").force_unhealthy = True
    run = grpcprobe(sb, "test-grpc", "-w", "--period", "20ms", "--count", "4", "-o", "json")
    assert run.code == ExitCode.UNHEALTHY
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert [d["type"] for d in docs] == ["execution"] * 4 + ["summary"]
    # Readiness starts at Failure, so 3 more failures change nothing the kubelet would show.
    assert docs[-1]["probes"][0] == {"container": "agnhost", "probe": "readiness", "executions": 4, "failures": 4, "skipped": 0, "rpcLatencyMs": docs[-1]["probes"][0]["rpcLatencyMs"]}


def test_watch_liveness_decision(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    sb.apply(pod_manifest("live", [agnhost_container(livenessProbe={"grpc": {"port": 5000}, "failureThreshold": 2})]))
    sb.server_for("live", "agnhost").force_unhealthy = True
    run = grpcprobe(sb, "live", "-w", "--period", "20ms", "--count", "2")
    assert "kubelet decision: liveness → Container agnhost failed liveness probe, will be restarted" in run.out


def test_watch_respects_initial_delay(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    sb.apply(pod_manifest("late", [agnhost_container(readinessProbe={"grpc": {"port": 5000}, "initialDelaySeconds": 2})]))
    run = grpcprobe(sb, "late", "-w", "--period", "50ms", "--count", "1", "-o", "json")
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert docs[0] == {**docs[0], "type": "skipped", "probe": "readiness", "reason": "initialDelaySeconds (2s) not yet passed"}
    assert [d["type"] for d in docs[1:]] == ["execution", "decision", "summary"]
    assert run.code == ExitCode.OK


def test_watch_rpc_falls_back_on_agnhost(sandbox_no_kubelet) -> None:
    run = grpcprobe(sandbox_no_kubelet, "test-grpc", "-w", "--watch-rpc", "--period", "20ms", "--count", "2")
    assert run.code == ExitCode.OK
    assert "Health/Watch is not implemented by the server (as agnhost); polling Check every period instead" in run.err
    assert run.out.count("Readiness probe succeeded") == 2


def test_watch_rpc_streams_updates(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server() as (port, servicer):
        sb.apply(pod_manifest("streamer", [container("app", readinessProbe={"grpc": {"port": 5000}})], ports={5000: port}))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.setdefault("run", grpcprobe(sb, "streamer", "-w", "--watch-rpc", "--count", "2")))
        thread.start()
        # grpcio's standard servicer implements Watch: flip the status once the stream is up.
        assert servicer.watching.wait(10)
        servicer.set("", 2)  # NOT_SERVING
        thread.join(timeout=10)
    run = result["run"]
    assert run.code == ExitCode.UNHEALTHY, run.err
    assert "Health/Watch says SERVING" in run.out and "Health/Watch says NOT_SERVING" in run.out
