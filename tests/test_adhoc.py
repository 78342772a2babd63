"""grpc_health_probe's ad hoc controls: separate connect and RPC deadlines, request headers, gzip.

The kubelet-identical check stays the default; any control that changes it is named in the output
(stderr note, and `differsFromKubelet` in JSON), and header values never appear anywhere.
"""

from __future__ import annotations

import json

import pytest

from kubectl_grpcprobe.errors import ExitCode

from .helpers import container, grpcprobe, hanging_health_server, health_server, pod_manifest, tcp_server


def pod_on(sandbox, port: int, name: str = "adhoc") -> str:
    sandbox.apply(pod_manifest(name, [container("app", readinessProbe={"grpc": {"port": 5000}})], ports={5000: port}))
    return sandbox.pod(name)["status"]["podIP"]


def test_the_default_is_the_kubelets_check(sandbox_no_kubelet) -> None:
    with health_server() as (port, servicer):
        pod_on(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "adhoc", "-o", "json")
    (probe,) = json.loads(run.out)["probes"]
    assert probe["differsFromKubelet"] == [] and "differs" not in run.err
    assert not any(k.startswith("x-") for k in servicer.metadata[-1])


def test_headers_reach_the_server_and_their_values_are_never_printed(sandbox_no_kubelet) -> None:
    secret = "Bearer s3cr3t-value"
    with health_server() as (port, servicer):
        pod_on(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "adhoc", "--rpc-header", f"Authorization: {secret}", "--rpc-header", "x-team:sre", "-o", "json")
        text = grpcprobe(sandbox_no_kubelet, "adhoc", "--rpc-header", f"authorization:{secret}", "-v")
    assert run.code == ExitCode.OK, run.err
    assert servicer.metadata[-2]["authorization"] == secret and servicer.metadata[-2]["x-team"] == "sre"
    (probe,) = json.loads(run.out)["probes"]
    assert probe["differsFromKubelet"] == ["request headers authorization, x-team"]
    assert "note: this check differs from the kubelet's: request headers authorization, x-team" in probe["diagnostics"]
    assert "note: this check differs from the kubelet's: request headers authorization\n" in text.err
    for out in (run.out, run.err, text.out, text.err):
        assert "s3cr3t" not in out


def test_separate_connect_and_rpc_deadlines(sandbox_no_kubelet) -> None:
    with tcp_server("silent") as silent:
        ip = pod_on(sandbox_no_kubelet, silent, "silent")
        dial = grpcprobe(sandbox_no_kubelet, "silent", "--connect-timeout", "300ms", "--timeout", "5s", "-o", "json")
    (probe,) = json.loads(dial.out)["probes"]
    assert dial.code == ExitCode.UNREACHABLE
    assert probe["output"] == f'timeout: failed to connect service "{ip}:5000" within 300ms: context deadline exceeded'
    assert probe["timings"]["totalMs"] < 5000 / 2  # the dial's own deadline, not the 5 s
    with hanging_health_server() as (port, _):
        pod_on(sandbox_no_kubelet, port, "hang")
        rpc = grpcprobe(sandbox_no_kubelet, "hang", "--rpc-timeout", "200ms", "--timeout", "5s", "-o", "json")
    (probe,) = json.loads(rpc.out)["probes"]
    assert rpc.code == ExitCode.RPC_FAILED
    assert probe["output"] == "timeout: health rpc did not complete within 200ms"
    assert probe["differsFromKubelet"] == ["separate timeouts (rpc 200ms)"]


def test_gzip_request(sandbox_no_kubelet) -> None:
    with health_server() as (port, _):
        pod_on(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "adhoc", "--gzip", "--service", "", "-o", "json")
    (probe,) = json.loads(run.out)["probes"]
    assert run.code == ExitCode.OK and probe["differsFromKubelet"] == ["a gzip-compressed request"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("nocolon", "invalid header 'nocolon': use KEY:VALUE"),
        ("grpc-timeout:1", "invalid header 'grpc-timeout': reserved by gRPC (or binary)"),
        ("x-bin:abc", "invalid header 'x-bin': reserved by gRPC (or binary)"),
        ("x:line\u0007bell", "invalid header 'x': the value must be printable ASCII"),
    ],
)
def test_bad_headers_are_usage_errors_that_never_echo_the_value(sandbox, header: str, message: str) -> None:
    run = grpcprobe(sandbox, "test-grpc", "--rpc-header", header)
    assert run.code == ExitCode.USAGE and message in run.err
    assert "bell" not in run.err


def test_verbose_traces_the_grpc_level_never_header_values(sandbox_no_kubelet) -> None:
    """-v: the dial target, :authority, user agent, the connection's states with times, the status, the server's trailers."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    class Trailing(health.HealthServicer):
        def Check(self, request, context):  # noqa: N802
            context.set_trailing_metadata((("x-served-by", "replica-7"),))  # printable ASCII: gRPC allows no more
            return super().Check(request, context)

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(Trailing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        ip = pod_on(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "adhoc", "-v", "--rpc-header", "authorization:Bearer s3cr3t")
    finally:
        server.stop(None).wait()
    assert run.code == ExitCode.OK, run
    lines = [line for line in run.err.splitlines() if line.startswith("[grpcprobe] grpc: ")]
    assert lines[0].startswith("[grpcprobe] grpc: dial 127.0.0.1:")
    assert f"(for {ip}:5000): :authority {ip}:5000, user-agent 'kube-probe/1.33', one deadline 1s over dial and rpc, headers authorization" in lines[0]
    states = [line.split("connection ")[1].split(" at ")[0] for line in lines if " connection " in line]
    assert states[-1] == "READY" and states[0] in ("IDLE", "CONNECTING")  # a fast connect may be seen only as it ends
    assert any(line.startswith('[grpcprobe] grpc: status OK "" at +') for line in lines)
    assert '[grpcprobe] grpc: response trailers: x-served-by: "replica-7"' in lines
    assert "s3cr3t" not in run.err + run.out
