"""`--watch` follows the pod: deletion, restarts, probes that cannot run, --count always ends, JSON lines a script can use."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from kubectl_grpcprobe.errors import ExitCode

from .helpers import container, grpcprobe, health_server, pod_manifest

ROOT = Path(__file__).resolve().parent.parent


def spawn(sandbox, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubectl_grpcprobe", *args, "--kubeconfig", sandbox.kubeconfig_path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},
    )


def next_doc(proc: subprocess.Popen[str], kind: str) -> tuple[dict, list[dict]]:
    """Read JSON lines until one of `kind`; returns it and everything read before it."""
    seen = []
    while True:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the watch ended before a {kind!r} line: {seen} {proc.stderr.read()}"  # type: ignore[union-attr]
        doc = json.loads(line)
        if doc["type"] == kind:
            return doc, seen
        seen.append(doc)


def pod_on(sandbox, port: int, name: str = "peer", **probes) -> None:
    probes = probes or {"readinessProbe": {"grpc": {"port": 5000}}}
    sandbox.apply(pod_manifest(name, [container("app", **probes)], ports={5000: port}))


def test_deletion_ends_the_watch_with_exit_2(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server() as (port, _):
        pod_on(sb, port)
        proc = spawn(sb, "peer", "--watch", "--period", "1h", "-o", "json")
        next_doc(proc, "execution")
        sb.delete("pods", "default", "peer")
        summary, _ = next_doc(proc, "summary")
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.UNREACHABLE
    assert summary["exitCode"] == ExitCode.UNREACHABLE and summary["ended"] == 'pod "peer" was deleted'
    assert err == 'error: pod "peer" was deleted; the watch ends\n'
    assert "kubelet decision" not in out  # nothing invented after the pod went


def test_a_restart_during_the_watch_is_reported_and_the_worker_starts_over(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server() as (port, _):
        pod_on(sb, port, readinessProbe={"grpc": {"port": 5000}, "successThreshold": 1})
        proc = spawn(sb, "peer", "--watch", "--period", "1h", "-o", "json")
        decision, _ = next_doc(proc, "decision")
        assert decision["text"] == "readiness → Ready after 1 consecutive success"

        def restart(pod: dict) -> None:
            status = pod["status"]["containerStatuses"][0]
            status["restartCount"] = 1
            status["containerID"] = "containerd://" + "ab" * 32

        sb.update_pod("peer", restart)
        note, _ = next_doc(proc, "note")
        assert note["text"] == "container restarted (restartCount 0 -> 1, new container abababababab); probing the new container from the start"
        # The new container's worker starts from Failure, so the first success is a decision again.
        again, between = next_doc(proc, "decision")
        assert again["text"] == "readiness → Ready after 1 consecutive success"
        assert [d["type"] for d in between] == ["execution"]
        proc.terminate()
        proc.communicate(timeout=20)


def test_a_startup_probe_that_cannot_run_still_ends_with_count(sandbox_no_kubelet) -> None:
    """The container has started: the kubelet never runs its startup probe again, and --count must not wait for it."""
    sb = sandbox_no_kubelet
    with health_server() as (port, _):
        pod_on(sb, port, startupProbe={"grpc": {"port": 5000}}, readinessProbe={"grpc": {"port": 5000}})
        run = grpcprobe(sb, "peer", "--watch", "--period", "20ms", "--count", "3", "-o", "json")
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert run.code == ExitCode.OK, run.err
    skipped = [d for d in docs if d["type"] == "skipped"]
    assert [(d["probe"], d["reason"]) for d in skipped] == [("startup", "container already started")]
    summary = {p["probe"]: p for p in docs[-1]["probes"]}
    assert summary["startup"]["executions"] == 0 and summary["startup"]["skipped"] >= 3
    assert summary["readiness"]["executions"] >= 3


def test_watch_rpc_count_ends_when_the_status_never_changes(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server() as (port, _):
        pod_on(sb, port)
        run = grpcprobe(sb, "peer", "--watch", "--watch-rpc", "--period", "20ms", "--count", "3", "-o", "json")
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert run.code == ExitCode.OK, run.err
    assert [d["type"] for d in docs] == ["update", "summary"]  # one update (SERVING), then two quiet periods
    assert docs[-1]["probes"][0]["executions"] == 1


def test_json_lines_have_rfc3339_times_timings_and_rounded_latencies(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server() as (port, _):
        pod_on(sb, port)
        run = grpcprobe(sb, "peer", "--watch", "--period", "20ms", "--count", "2", "-o", "json")
    docs = [json.loads(line) for line in run.out.splitlines()]
    for doc in docs:
        stamp = datetime.datetime.fromisoformat(doc["time"])
        assert stamp.tzinfo is not None and "T" in doc["time"]
    execution = next(d for d in docs if d["type"] == "execution")
    assert set(execution["timings"]) >= {"tunnelMs", "connectMs", "rpcMs", "totalMs"}
    latency = docs[-1]["probes"][0]["rpcLatencyMs"]
    assert all(round(v, 3) == v for v in latency.values())
    assert docs[-1]["exitCode"] == run.code == ExitCode.OK and docs[-1]["ended"] is None


def test_several_containers_and_kinds_end_with_count(sandbox_no_kubelet) -> None:
    """The `multi` pod of the report: startup, liveness and readiness of one container, readiness of another."""
    sb = sandbox_no_kubelet
    with health_server({"": 1, "db": 2}) as (port, _):
        sb.apply(
            pod_manifest(
                "multi",
                [
                    container("app", readinessProbe={"grpc": {"port": 5000}}, livenessProbe={"grpc": {"port": 5000}}, startupProbe={"grpc": {"port": 5000}}),
                    container("db", readinessProbe={"grpc": {"port": 5000, "service": "db"}}),
                ],
                ports={5000: port},
            )
        )
        for _ in range(3):
            run = grpcprobe(sb, "multi", "--watch", "--period", "100ms", "--count", "2")
            assert run.code == ExitCode.UNHEALTHY, run.err
            assert "--- pod/multi summary" in run.out
