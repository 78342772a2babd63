"""The reliability matrix (docs/RELIABILITY.md): every failure ends in one clear line and a documented exit code,
within its deadline, with nothing left listening or running."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.sandbox.certs import make_pki

from .helpers import (
    ROOT,
    closed_port,
    container,
    grpcprobe,
    hanging_health_server,
    health_server,
    http1_server,
    pod_manifest,
    tcp_server,
)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def write_kubeconfig(tmp_path: Path, sandbox, mutate) -> str:
    doc = sandbox.kubeconfig()
    mutate(doc)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_with(kubeconfig: str, *args: str):
    class _Sb:
        kubeconfig_path = kubeconfig

    return grpcprobe(_Sb(), *args)


# -- configuration and the API server --------------------------------------------------------


def test_malformed_kubeconfig(tmp_path, leak_check) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nclusters: [\n  - name: x\n")
    run = run_with(str(path), "test-grpc")
    assert run.code == ExitCode.USAGE
    assert one_line(run.err) == f'error: kubeconfig "{path}" is not valid YAML (line 3)'


def test_missing_kubeconfig(tmp_path) -> None:
    run = run_with(str(tmp_path / "nope"), "test-grpc")
    assert run.code == ExitCode.USAGE
    assert one_line(run.err) == f"error: stat {tmp_path / 'nope'}: no such file or directory"


def test_unknown_context(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", context="nope")
    assert run.code == ExitCode.USAGE
    assert one_line(run.err) == 'error: context "nope" does not exist in the kubeconfig'


def test_unknown_namespace(sandbox) -> None:
    run = grpcprobe(sandbox, "-n", "nope", "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == 'Error from server (NotFound): namespaces "nope" not found (pod "test-grpc" looked up there)'


def test_unreachable_api_server(tmp_path, sandbox) -> None:
    port = closed_port()
    path = write_kubeconfig(tmp_path, sandbox, lambda d: d["clusters"][0]["cluster"].update(server=f"https://127.0.0.1:{port}"))
    run = run_with(path, "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == f"error: the connection to the server 127.0.0.1:{port} was refused - did you specify the right host or port?"


def test_certificate_that_fails_verification(tmp_path, sandbox) -> None:
    other_ca = base64.b64encode(make_pki("someone-else").ca_pem).decode()
    path = write_kubeconfig(tmp_path, sandbox, lambda d: d["clusters"][0]["cluster"].update({"certificate-authority-data": other_ca}))
    run = run_with(path, "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    line = one_line(run.err)
    assert line.startswith(f"error: unable to connect to the server 127.0.0.1:{sandbox.port}: tls: failed to verify certificate: ")


def test_insecure_skip_tls_verify_is_respected(tmp_path, sandbox) -> None:
    def insecure(doc: dict) -> None:
        cluster = doc["clusters"][0]["cluster"]
        del cluster["certificate-authority-data"]
        cluster["insecure-skip-tls-verify"] = True

    assert run_with(write_kubeconfig(tmp_path, sandbox, insecure), "test-grpc").code == ExitCode.OK
    # Without the flag and without a CA, the system trust store applies and the sandbox's CA is not in it.
    path = write_kubeconfig(tmp_path, sandbox, lambda d: d["clusters"][0]["cluster"].pop("certificate-authority-data"))
    assert "tls: failed to verify certificate" in run_with(path, "test-grpc").err


def test_bad_token_is_401(tmp_path, sandbox) -> None:
    path = write_kubeconfig(tmp_path, sandbox, lambda d: d["users"][0]["user"].update(token="expired"))
    run = run_with(path, "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == "error: You must be logged in to the server (Unauthorized)"


def test_forbidden_get_pods(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", context="sandbox-no-get-pods")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == (
        'Error from server (Forbidden): pods "test-grpc" is forbidden: User "sandbox-no-get-pods" cannot get resource "pods" '
        'in API group "" in the namespace "default"'
    )


def test_forbidden_portforward_names_the_rule(sandbox, leak_check) -> None:
    run = grpcprobe(sandbox, "test-grpc", context="sandbox-no-portforward")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == (
        'Error from server (Forbidden): pods "test-grpc" is forbidden: User "sandbox-no-portforward" cannot get resource '
        '"pods/portforward" in API group "" in the namespace "default"; a port-forward needs get and create on '
        'pods/portforward (RBAC rule: apiGroups [""], resources ["pods/portforward"], verbs ["get", "create"])'
    )


def test_stalled_api_server_honours_request_timeout(sandbox, leak_check) -> None:
    sandbox.faults.stall_api = 30
    run = grpcprobe(sandbox, "test-grpc", "--request-timeout", "300ms", "-o", "json")
    assert run.code == ExitCode.UNREACHABLE
    message = f"the API server at 127.0.0.1:{sandbox.port} did not answer within 300ms (--request-timeout)"
    assert one_line(run.err) == f"error: {message}"
    # -o json: the error is a document on stdout too, and its exit code is the process's.
    assert json.loads(run.out) == {"apiVersion": "kubectl-grpcprobe/v1", "kind": "Error", "exitCode": 2, "message": message}


def test_stalled_portforward_upgrade_honours_request_timeout(sandbox, leak_check) -> None:
    sandbox.faults.stall_portforward = 30
    run = grpcprobe(sandbox, "test-grpc", "--request-timeout", "300ms")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == f"error: the API server at 127.0.0.1:{sandbox.port} did not answer the port-forward upgrade in time"


# -- the pod --------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed"])
def test_pod_not_running(sandbox, phase: str, leak_check) -> None:
    sandbox.set_phase("test-grpc", phase)
    run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == f"error: unable to forward port because pod is not running. Current status={phase}"


def test_unscheduled_pod(sandbox) -> None:
    sandbox.unschedule("test-grpc")
    run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.UNREACHABLE
    assert one_line(run.err) == "error: unable to forward port because pod is not running. Current status=Pending"


def test_pod_being_deleted_is_still_probed(sandbox) -> None:
    sandbox.mark_deleting("test-grpc")
    run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.OK
    assert "pod is being deleted (Terminating since " in one_line(run.err)


def test_probe_kind_absent(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", "--probe", "liveness")
    assert run.code == ExitCode.USAGE
    assert one_line(run.err) == (
        "error: pod test-grpc has no gRPC liveness probe to run: container agnhost has readinessProbe grpc :5000. "
        "Use --port to check a port directly."
    )


@pytest.mark.parametrize("service", ["a b/c", 'quote"and\\backslash', "ünïcødé.Service", "x" * 4096, "new\nline"])
def test_odd_and_long_service_names(sandbox, service: str) -> None:
    run = grpcprobe(sandbox, "test-grpc", "--service", service, "-o", "json")
    assert run.code == ExitCode.RPC_FAILED
    (probe,) = json.loads(run.out)["probes"]
    assert probe["service"] == service
    assert probe["output"] == "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
    text = grpcprobe(sandbox, "test-grpc", "--service", service)
    assert len(text.out.splitlines()) == 1  # one probe, one line, whatever the name holds


# -- peers that misbehave --------------------------------------------------------------------


def _pod_on(sandbox, port: int, name: str = "peer") -> str:
    sandbox.apply(pod_manifest(name, [container("app", readinessProbe={"grpc": {"port": 5000}})], ports={5000: port}))
    return sandbox.pod(name)["status"]["podIP"]


def _connect_timeout_line(ip: str) -> str:
    return f'Readiness probe failed: timeout: failed to connect service "{ip}:5000" within 1s: context deadline exceeded'


@pytest.mark.parametrize("kind", ["silent", "garbage"])
def test_tcp_peers_that_are_not_grpc(sandbox_no_kubelet, kind: str, leak_check) -> None:
    with tcp_server(kind) as port:
        ip = _pod_on(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "peer", "-o", "json")
    assert run.code == ExitCode.UNREACHABLE
    (probe,) = json.loads(run.out)["probes"]
    assert probe["event"] == _connect_timeout_line(ip)
    assert probe["timings"]["totalMs"] < 1500


def test_http1_server(sandbox_no_kubelet, leak_check) -> None:
    with http1_server() as port:
        ip = _pod_on(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "peer")
    assert run.code == ExitCode.UNREACHABLE and _connect_timeout_line(ip) in run.out


def test_closed_port(sandbox_no_kubelet, leak_check) -> None:
    ip = _pod_on(sandbox_no_kubelet, closed_port())
    run = grpcprobe(sandbox_no_kubelet, "peer")
    assert run.code == ExitCode.UNREACHABLE and _connect_timeout_line(ip) in run.out
    assert "connect: connection refused" in run.err


def test_tunnel_dropped_mid_rpc(sandbox_no_kubelet, leak_check) -> None:
    sb = sandbox_no_kubelet
    with hanging_health_server() as (port, entered):
        _pod_on(sb, port)
        import threading

        result: dict = {}
        thread = threading.Thread(target=lambda: result.setdefault("run", grpcprobe(sb, "peer", "-o", "json", "--timeout", "5s")))
        thread.start()
        assert entered.wait(10)  # the Check reached the server: the RPC is in flight
        assert sb.drop_forwards() >= 1
        thread.join(10)
    run = result["run"]
    assert run.code == ExitCode.RPC_FAILED
    (probe,) = json.loads(run.out)["probes"]
    assert probe["output"].startswith("error: health rpc probe failed: rpc error: code = Unavailable desc = ")
    assert "port-forward: the tunnel through the API server was dropped" in probe["diagnostics"]
    assert probe["timings"]["totalMs"] < 5000 + 500  # a verdict within the deadline (+0.5 s), not a hang


def test_tunnel_dropped_at_once_every_time(sandbox_no_kubelet, leak_check) -> None:
    sb = sandbox_no_kubelet
    sb.faults.drop_after_bytes = 1
    run = grpcprobe(sb, "test-grpc", "-o", "json")
    assert run.code == ExitCode.UNREACHABLE
    (probe,) = json.loads(run.out)["probes"]
    assert probe["output"].startswith("timeout: failed to connect service ")
    assert "port-forward: the tunnel through the API server was dropped" in probe["diagnostics"]
    assert probe["timings"]["totalMs"] < 1000 + 500


def test_slow_tunnel(sandbox_no_kubelet, leak_check) -> None:
    sb = sandbox_no_kubelet
    sb.faults.chunk_latency = 0.02
    assert grpcprobe(sb, "test-grpc").code == ExitCode.OK
    sb.faults.chunk_latency = 0.6
    run = grpcprobe(sb, "test-grpc", "-o", "json")
    (probe,) = json.loads(run.out)["probes"]
    assert run.code in (ExitCode.UNREACHABLE, ExitCode.RPC_FAILED)
    assert probe["output"].startswith(("timeout: failed to connect service ", "timeout: health rpc did not complete within 1s"))
    assert probe["timings"]["totalMs"] < 1000 + 500


# -- Ctrl-C, in a real process ----------------------------------------------------------------


def _spawn(sandbox, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kubectl_grpcprobe", *args, "--kubeconfig", sandbox.kubeconfig_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_ctrl_c_during_tunnel_setup(sandbox) -> None:
    sandbox.faults.stall_portforward = 30
    proc = _spawn(sandbox, "test-grpc")
    assert sandbox.portforward_requested.wait(20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert (out, err) == ("", "error: interrupted\n")


def test_ctrl_c_during_the_rpc(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with hanging_health_server() as (port, entered):
        _pod_on(sb, port)
        proc = _spawn(sb, "peer", "--timeout", "30s")
        assert entered.wait(20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert (out, err) == ("", "error: interrupted\n")


def test_sigterm_during_the_rpc(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with hanging_health_server() as (port, entered):
        _pod_on(sb, port)
        proc = _spawn(sb, "peer", "--timeout", "30s")
        assert entered.wait(20)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.TERMINATED
    assert (out, err) == ("", "error: terminated\n")


def test_ctrl_c_during_watch_prints_the_summary(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server() as (port, servicer):
        _pod_on(sb, port)
        proc = _spawn(sb, "peer", "--watch", "--period", "50ms")
        # Three checks reached the server: the watch is running.
        import time

        deadline = time.monotonic() + 20
        while len(servicer.metadata) < 3 and time.monotonic() < deadline:
            proc.stdout.readline()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert "--- pod/peer summary" in out
    assert err == "error: interrupted\n"


# -- security --------------------------------------------------------------------------------


def test_local_listener_is_loopback_only(sandbox, leak_check) -> None:
    from kubectl_grpcprobe.kube.client import KubeClient
    from kubectl_grpcprobe.kube.config import Overrides, load
    from kubectl_grpcprobe.kube.portforward import port_forward

    client = KubeClient(load(Overrides(kubeconfig=sandbox.kubeconfig_path)))
    try:
        with port_forward(client, "default", "test-grpc", 5000, timeout=10) as fwd:
            listening = []
            for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
                with open(table) as fh:
                    for line in list(fh)[1:]:
                        local, state = line.split()[1], line.split()[3]
                        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == fwd.local_port:
                            listening.append(local.rsplit(":", 1)[0])
            assert listening == ["0100007F"]  # 127.0.0.1, and nothing else
    finally:
        client.close()


def test_credentials_never_printed(tmp_path, sandbox) -> None:
    canary = "CANARY-" + base64.b32encode(os.urandom(10)).decode()
    sandbox.add_user("canary-user", canary)
    sandbox.add_user("canary-denied", canary + "-2", denied=frozenset({("get", "pods/portforward"), ("create", "pods/portforward")}))

    def as_user(token: str):
        def mutate(doc: dict) -> None:
            doc["users"][0]["user"]["token"] = token

        return write_kubeconfig(tmp_path, sandbox, mutate)

    outputs = []
    for token in (canary, canary + "-2", canary + "-wrong"):
        path = as_user(token)
        for args in (["test-grpc", "-v"], ["test-grpc", "-v", "-o", "json"], ["test-grpc", "-v", "-o", "wide"], ["nope", "-v"], ["toggle", "test-grpc", "--serving", "-v"]):
            run = run_with(path, *args)
            outputs += [run.out, run.err]
    sandbox.faults.stall_api = 5
    run = run_with(as_user(canary), "test-grpc", "-v", "--request-timeout", "200ms")
    outputs += [run.out, run.err]
    sandbox.faults.stall_api = 0
    key_canary = base64.b64encode(f"-----BEGIN PRIVATE KEY-----\n{canary}\n-----END PRIVATE KEY-----\n".encode()).decode()
    cert_canary = base64.b64encode(f"-----BEGIN CERTIFICATE-----\n{canary}\n-----END CERTIFICATE-----\n".encode()).decode()
    path = write_kubeconfig(tmp_path, sandbox, lambda d: d["users"][0]["user"].update({"client-key-data": key_canary, "client-certificate-data": cert_canary}))
    run = run_with(path, "test-grpc", "-v")
    assert run.code == ExitCode.USAGE and "invalid client certificate or key" in run.err
    outputs += [run.out, run.err]
    assert any("Readiness probe succeeded" in o for o in outputs)  # the canary user really probed
    assert any("Forbidden" in o for o in outputs) and any("Unauthorized" in o for o in outputs)
    leaked = [o for o in outputs if canary in o or key_canary in o or cert_canary in o or sandbox.ca_pem.decode()[40:80] in o]
    assert not leaked


def test_forwards_sharing_one_loop_each_stay_their_own(sandbox, leak_check) -> None:
    """A fleet's forwards share one TunnelLoop. Each forward still gets a fresh WebSocket per local connection (the
    second one opened off the loop's thread), stopping one leaves the others working, and closing the loop leaves
    no thread and no listener."""
    import http.client
    import threading

    from kubectl_grpcprobe.kube.client import KubeClient
    from kubectl_grpcprobe.kube.config import Overrides, load
    from kubectl_grpcprobe.kube.portforward import port_forward, shared_loop
    from kubectl_grpcprobe.kubelet.probe import check

    def http_status(port: int) -> int:  # agnhost's HTTP side: one connection, one request
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/make-serving")
            return conn.getresponse().status
        finally:
            conn.close()

    client = KubeClient(load(Overrides(kubeconfig=sandbox.kubeconfig_path)))
    try:
        with shared_loop() as loop:
            with port_forward(client, "default", "test-grpc", 5000, timeout=10, loop=loop) as grpc_fwd:
                with port_forward(client, "default", "test-grpc", 8080, timeout=10, loop=loop) as http_fwd:
                    threads = [t.name for t in threading.enumerate() if t.name == "grpcprobe-portforward"]
                    assert threads == ["grpcprobe-portforward"]  # one loop thread for both
                    assert [http_status(http_fwd.local_port) for _ in range(3)] == [200, 200, 200]  # 2nd and 3rd: new WebSockets
                    first = check(f"127.0.0.1:{grpc_fwd.local_port}", service="", timeout_ns=5 * 10**9, user_agent="kube-probe/1.37")
                # the HTTP forward is gone; the gRPC one works on, through the same loop
                second = check(f"127.0.0.1:{grpc_fwd.local_port}", service="", timeout_ns=5 * 10**9, user_agent="kube-probe/1.37")
            assert (first.success, second.success) == (True, True)
            assert not grpc_fwd.errors and not http_fwd.errors
    finally:
        client.close()
