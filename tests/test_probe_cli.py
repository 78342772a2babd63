"""`kubectl grpcprobe POD` end to end: sandbox API over HTTPS, WebSocket port-forward, real grpcio servers."""

from __future__ import annotations

import json
import urllib.request

import pytest
from grpc_health.v1 import health_pb2

from kubectl_grpcprobe.errors import ExitCode

from .helpers import (
    agnhost_container,
    bare_grpc_server,
    closed_port,
    container,
    grpcprobe,
    hanging_health_server,
    health_server,
    http1_server,
    pod_manifest,
    tcp_server,
)

READINESS_5000 = {"readinessProbe": {"grpc": {"port": 5000}}}


def toggle(sandbox, path: str, pod: str = "test-grpc", name: str = "agnhost") -> str:
    """Call the agnhost server's control endpoint directly (the toggle command is tested elsewhere)."""
    server = sandbox.server_for(pod, name)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}") as response:
        return response.read().decode()


def pods_with(sandbox, name: str, port: int, probes: dict | None = None) -> None:
    sandbox.apply(pod_manifest(name, [container("app", **(probes or READINESS_5000))], ports={5000: port}))


def test_blog_pod_serving(sandbox, leak_check) -> None:
    run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.OK, run.err
    assert run.out.startswith("pod/test-grpc container=agnhost: Readiness probe succeeded: service healthy (rpc ")
    assert run.err == ""


def test_blog_pod_not_serving(sandbox, leak_check) -> None:
    toggle(sandbox, "/make-not-serving")
    run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.UNHEALTHY
    assert 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")' in run.out
    toggle(sandbox, "/make-serving")
    assert grpcprobe(sandbox, "pod/test-grpc").code == ExitCode.OK


def test_unknown_service_against_agnhost(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", "--service", "grpc.health.v1.Nope")
    assert run.code == ExitCode.RPC_FAILED
    assert "Readiness probe failed: error: health rpc probe failed: rpc error: code = NotFound desc = unknown service" in run.out


def test_server_without_health_service(sandbox) -> None:
    with bare_grpc_server() as port:
        pods_with(sandbox, "bare", port)
        run = grpcprobe(sandbox, "bare")
    assert run.code == ExitCode.RPC_FAILED
    assert "Readiness probe failed: error: this server does not implement the grpc health protocol (grpc.health.v1.Health): " in run.out


def test_server_that_never_answers(sandbox, leak_check) -> None:
    with tcp_server("silent") as port:
        pods_with(sandbox, "silent", port)
        ip = sandbox.pod("silent")["status"]["podIP"]
        run = grpcprobe(sandbox, "silent")
    assert run.code == ExitCode.UNREACHABLE
    assert f'Readiness probe failed: timeout: failed to connect service "{ip}:5000" within 1s: context deadline exceeded' in run.out


def test_rpc_that_hangs_uses_timeout_seconds(sandbox) -> None:
    with hanging_health_server() as (port, _):
        pods_with(sandbox, "slow", port, {"readinessProbe": {"grpc": {"port": 5000}, "timeoutSeconds": 2}})
        run = grpcprobe(sandbox, "slow")
    assert run.code == ExitCode.RPC_FAILED
    assert "Readiness probe failed: timeout: health rpc did not complete within 2s" in run.out


def test_closed_port_shows_the_error_channel(sandbox, leak_check) -> None:
    pods_with(sandbox, "closed", closed_port())
    ip = sandbox.pod("closed")["status"]["podIP"]
    run = grpcprobe(sandbox, "closed")
    assert run.code == ExitCode.UNREACHABLE
    assert f'Readiness probe failed: timeout: failed to connect service "{ip}:5000" within 1s: context deadline exceeded' in run.out
    assert "port-forward: error forwarding port 5000 to pod " in run.err
    assert "connect: connection refused" in run.err


def test_http1_server(sandbox) -> None:
    with http1_server() as port:
        pods_with(sandbox, "web", port)
        run = grpcprobe(sandbox, "web")
    assert run.code == ExitCode.UNREACHABLE
    assert "context deadline exceeded" in run.out


def test_several_containers_and_kinds_most_severe_wins(sandbox) -> None:
    statuses = {"": health_pb2.HealthCheckResponse.SERVING, "db": health_pb2.HealthCheckResponse.NOT_SERVING}
    with health_server(statuses) as (port, _):
        manifest = pod_manifest(
            "multi",
            [
                container(
                    "app",
                    readinessProbe={"grpc": {"port": 5000}},
                    livenessProbe={"grpc": {"port": 5000}},
                    startupProbe={"grpc": {"port": 5000}},
                ),
                container("db", readinessProbe={"grpc": {"port": 5000, "service": "db"}}),
            ],
            ports={5000: port},
        )
        sandbox.apply(manifest)
        run = grpcprobe(sandbox, "multi", "-o", "json")
        only_db = grpcprobe(sandbox, "multi", "-c", "db")
        only_liveness = grpcprobe(sandbox, "multi", "--probe", "liveness,startup")
    assert run.code == ExitCode.UNHEALTHY
    doc = json.loads(run.out)
    assert [(p["container"], p["probe"], p["result"]) for p in doc["probes"]] == [
        ("app", "startup", "success"),
        ("app", "liveness", "success"),
        ("app", "readiness", "success"),
        ("db", "readiness", "failure"),
    ]
    assert doc["exitCode"] == ExitCode.UNHEALTHY
    assert only_db.code == ExitCode.UNHEALTHY and only_db.out.count("\n") == 1
    assert only_liveness.code == ExitCode.OK
    assert "Startup probe succeeded" in only_liveness.out and "Liveness probe succeeded" in only_liveness.out


def test_native_sidecar_probe(sandbox) -> None:
    with health_server() as (port, _):
        sidecar = {**container("proxy", readinessProbe={"grpc": {"port": 5000}}), "restartPolicy": "Always"}
        plain_init = container("migrate")
        manifest = pod_manifest("sidecar", [container("app")], init_containers=[plain_init, sidecar], ports={5000: port})
        sandbox.apply(manifest)
        run = grpcprobe(sandbox, "sidecar")
    assert run.code == ExitCode.OK
    assert run.out.startswith("pod/sidecar container=proxy: Readiness probe succeeded")


def test_pending_pod_opens_no_tunnel(sandbox) -> None:
    sandbox.set_phase("test-grpc", "Pending")
    run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    assert run.err == "error: unable to forward port because pod is not running. Current status=Pending\n"
    assert not [p for _, p in sandbox.requests if p.endswith("/portforward")]


def test_missing_pod(sandbox) -> None:
    run = grpcprobe(sandbox, "nope")
    assert run.code == ExitCode.UNREACHABLE
    assert run.err == 'Error from server (NotFound): pods "nope" not found\n'
    assert run.out == ""


def test_nothing_to_probe_lists_the_pods_probes(sandbox) -> None:
    sandbox.apply(
        pod_manifest(
            "http",
            [
                container("web", readinessProbe={"httpGet": {"port": 8080, "path": "/"}}, livenessProbe={"tcpSocket": {"port": 8080}}),
                container("worker", livenessProbe={"exec": {"command": ["true"]}}),
                container("plain"),
            ],
        )
    )
    run = grpcprobe(sandbox, "http")
    assert run.code == ExitCode.USAGE
    assert run.err == (
        "error: pod http has no gRPC probe to run: container web has livenessProbe tcpSocket :8080, readinessProbe httpGet :8080; "
        "container worker has livenessProbe exec; container plain has no probes. Use --port to check a port directly.\n"
    )


def test_adhoc_port_and_several_services(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", "--port", "5000", "--service", "", "--service", "other", "--timeout", "1500ms", "-o", "json")
    doc = json.loads(run.out)
    assert [(p["service"], p["result"], p["probe"], p["timeoutSeconds"]) for p in doc["probes"]] == [
        ("", "success", "adhoc", 1.5),
        ("other", "failure", "adhoc", 1.5),
    ]
    assert run.code == ExitCode.RPC_FAILED


def test_user_agent_is_the_clusters_kube_probe(sandbox_no_kubelet) -> None:
    sandbox = sandbox_no_kubelet
    with health_server() as (port, servicer):
        pods_with(sandbox, "ua", port)
        assert grpcprobe(sandbox, "ua").code == ExitCode.OK
        assert grpcprobe(sandbox, "ua", "--user-agent", "kube-probe/1.29").code == ExitCode.OK
    assert servicer.metadata[0]["user-agent"].startswith("kube-probe/1.33 ")
    assert servicer.metadata[1]["user-agent"].startswith("kube-probe/1.29 ")


def test_json_schema(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", "-o", "json")
    doc = json.loads(run.out)
    assert doc["apiVersion"] == "kubectl-grpcprobe/v1" and doc["kind"] == "ProbeReport" and doc["exitCode"] == 0
    (probe,) = doc["probes"]
    ip = sandbox.pod("test-grpc")["status"]["podIP"]
    assert probe == {
        **probe,
        "namespace": "default",
        "pod": "test-grpc",
        "container": "agnhost",
        "probe": "readiness",
        "port": 5000,
        "service": "",
        "podIP": ip,
        "address": f"{ip}:5000",
        "timeoutSeconds": 1.0,
        "result": "success",
        "outcome": "healthy",
        "output": "service healthy",
        "event": "Readiness probe succeeded: service healthy",
        "status": "SERVING",
        "code": None,
        "exitCode": 0,
        "diagnostics": [],
        "kubeletEvents": [],  # looked up for JSON; none: the kubelet has not seen this probe fail
    }
    assert set(probe["timings"]) == {"apiMs", "tunnelMs", "connectMs", "rpcMs", "totalMs"}
    assert all(v >= 0 for v in probe["timings"].values())


def test_wide_and_quiet(sandbox) -> None:
    wide = grpcprobe(sandbox, "test-grpc", "-o", "wide")
    header, row = wide.out.splitlines()
    assert header.split() == ["POD", "CONTAINER", "PROBE", "TARGET", "SERVICE", "TIMEOUT", "RESULT", "API", "TUNNEL", "CONNECT", "RPC", "KUBELET", "OUTPUT"]
    assert row.split()[:7] == ["test-grpc", "agnhost", "readiness", sandbox.pod("test-grpc")["status"]["podIP"] + ":5000", '""', "1s", "success"]
    quiet = grpcprobe(sandbox, "test-grpc", "-q")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")


def test_ipv6_pod_ip_in_brackets(sandbox) -> None:
    sandbox.set_pod_ip("test-grpc", "fd00:10:244::7")
    sandbox.server_for("test-grpc", "agnhost").force_unhealthy = False
    with tcp_server("silent") as port:
        pods_with(sandbox, "v6", port)
        sandbox.set_pod_ip("v6", "fd00:10:244::8")
        run = grpcprobe(sandbox, "v6")
    assert 'failed to connect service "[fd00:10:244::8]:5000" within 1s' in run.out


def test_namespace_flag_and_context_default(sandbox) -> None:
    with health_server() as (port, _):
        sandbox.apply(pod_manifest("other", [container("app", **READINESS_5000)], ports={5000: port}, namespace="team-a"))
        assert grpcprobe(sandbox, "other").code == ExitCode.UNREACHABLE
        assert grpcprobe(sandbox, "-n", "team-a", "other").code == ExitCode.OK


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test-grpc", "--port", "0"], "invalid port 0: must be between 1 and 65535, inclusive"),
        (["test-grpc", "--port", "70000"], "invalid port 70000"),
        (["test-grpc", "--probe", "ready"], "invalid probe kind 'ready'"),
        (["test-grpc", "--timeout", "soon"], "invalid duration 'soon'"),
        (["cronjob/x"], "'cronjob/x': unsupported type 'cronjob' (use pod, deploy, rs, sts, ds, job or svc)"),
        ([], "error: say which pods: POD, TYPE/NAME, -l/--selector, --field-selector or -A"),
    ],
)
def test_bad_flags(sandbox, args: list[str], message: str) -> None:
    run = grpcprobe(sandbox, *args)
    assert run.code == ExitCode.USAGE
    assert message in run.err
    assert len(run.err.strip().splitlines()) <= 2 and "Traceback" not in run.err


def test_container_not_found(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", "-c", "nope")
    assert run.code == ExitCode.USAGE
    assert run.err == 'error: container "nope" not found in pod "test-grpc" (containers: agnhost)\n'


def test_pod_named_like_a_subcommand(sandbox) -> None:
    sandbox.apply(pod_manifest("sandbox", [agnhost_container(readinessProbe={"grpc": {"port": 5000}})]))
    run = grpcprobe(sandbox, "pod/sandbox")
    assert run.code == ExitCode.OK, run.err
