"""The plugin against the real Kubernetes control plane: kube-apiserver, etcd, scheduler and controller-manager
built from the official Go modules (`make k8s`), with two sandbox node agents as its nodes.

Every path here goes through the real API server: its authentication and RBAC, its pods/portforward proxy
(WebSocket passed through, SPDY tunnelled for kubectl >= 1.31) to the node's kubelet API, and the real
agnhost binary in the blog's pod. Skipped, saying why, when the components are not built; CI builds them
and sets GRPCPROBE_REQUIRE_REAL=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from kubectl_grpcprobe.sandbox import Sandbox

from .conftest import REAL_MISSING
from .helpers import (
    BLOG_MANIFEST,
    ROOT,
    agnhost_container,
    bare_grpc_server,
    container,
    grpcprobe,
    hanging_health_server,
    kubectl_binary,
    official_client_check,
    pod_manifest,
    tcp_server,
)

pytestmark = [pytest.mark.real, pytest.mark.skipif(bool(REAL_MISSING), reason=f"the real control plane: {REAL_MISSING}")]


# -- every verdict, on real pods, the same as through the fake ------------------------------------

def _probe(port: int, **extra: Any) -> dict[str, Any]:
    return {"grpc": {"port": port, **extra}, "periodSeconds": 600}


VERDICTS: dict[str, tuple[int, str]] = {
    "serving": (0, "Readiness probe succeeded: service healthy"),
    "not-serving": (4, 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'),
    "refused": (2, "connection refused"),
    "hung": (2, "timeout: failed to connect service"),
    "unknown-service": (3, "Readiness probe failed: error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"),
    "unimplemented": (3, "Readiness probe failed: error: this server does not implement the grpc health protocol (grpc.health.v1.Health)"),
    "rpc-deadline": (3, "Readiness probe failed: timeout: health rpc did not complete within 1s"),
    "sidecar": (4, 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'),
}


def _verdict_pods(stack: ExitStack) -> list[dict[str, Any]]:
    bare = stack.enter_context(bare_grpc_server())
    silent = stack.enter_context(tcp_server("silent"))
    hanging, _ = stack.enter_context(hanging_health_server())
    return [
        pod_manifest("serving", [agnhost_container(readinessProbe=_probe(5000))]),
        pod_manifest("not-serving", [agnhost_container("agnhost", "--delay-unhealthy-sec=0", readinessProbe=_probe(5000))]),
        pod_manifest("refused", [agnhost_container(readinessProbe=_probe(5001))]),
        pod_manifest("hung", [container("app", readinessProbe=_probe(7000))], ports={7000: silent}),
        pod_manifest("unknown-service", [agnhost_container(readinessProbe=_probe(5000, service="nope"))]),
        pod_manifest("unimplemented", [container("app", readinessProbe=_probe(7000))], ports={7000: bare}),
        pod_manifest("rpc-deadline", [container("app", readinessProbe=_probe(7000))], ports={7000: hanging}),
        pod_manifest(
            "sidecar",
            [agnhost_container()],
            init_containers=[
                {**agnhost_container("proxy", "--port=5001", "--http-port=8081", "--delay-unhealthy-sec=0",
                                     readinessProbe=_probe(5001)), "restartPolicy": "Always"}
            ],
        ),
    ]


def _normalized(text: str) -> str:
    text = re.sub(r"\(rpc [\d.]+m?s\)", "(rpc T)", text)
    text = re.sub(r"10\.244\.\d+\.\d+", "POD_IP", text)
    return re.sub(r"[0-9a-f]{64}|cni-[0-9a-f-]{36}|uid [0-9a-f-]*", "ID", text)


@pytest.mark.timeout(300)
def test_every_verdict_on_real_pods_matches_the_fake(real) -> None:
    with ExitStack() as stack:
        manifests = _verdict_pods(stack)
        for manifest in manifests:
            real.apply(manifest)
        for manifest in manifests:
            real.wait_for("/api/v1/namespaces/default/pods", manifest["metadata"]["name"],
                          lambda pod: (pod.get("status") or {}).get("phase") == "Running")
        real.wait_ready("serving")  # the node's first probe is in: every pod's status is what the kubelet decided
        wrong = []
        with Sandbox(manifests) as fake:  # its kubelet too: the plugin reads the pod's Ready against its verdict
            fake.wait_ready("serving")
            for manifest in manifests:
                name = manifest["metadata"]["name"]
                code, words = VERDICTS[name]
                on_real = grpcprobe(real, name)
                on_fake = grpcprobe(fake, name)
                if on_real.code != code or words not in on_real.out + on_real.err:
                    wrong.append(f"{name}: exit {on_real.code}, {on_real.out!r} {on_real.err!r}")
                if (_normalized(on_real.out), _normalized(on_real.err)) != (_normalized(on_fake.out), _normalized(on_fake.err)):
                    wrong.append(f"{name}: real {on_real.out!r} {on_real.err!r} != fake {on_fake.out!r} {on_fake.err!r}")
        if wrong:  # what each node registered and logged: for a failure here to say where the API server went
            nodes = {n["metadata"]["name"]: n["status"]["daemonEndpoints"] for n in real.request("GET", "/api/v1/nodes")["items"]}
            logs = {a.name: Path(a.log_path).read_text() if a.log_path and Path(a.log_path).exists() else "" for a in real.nodes}
            wrong += [f"nodes: {nodes}", f"node logs: {logs}"]
        assert not wrong, "\n".join(wrong)
        for manifest in manifests:
            real.request("DELETE", f"/api/v1/namespaces/default/pods/{manifest['metadata']['name']}")


# -- the real RBAC ----------------------------------------------------------------------------------

def test_real_rbac_denials(real) -> None:
    no_get = grpcprobe(real, "test-grpc", context="sandbox-no-get-pods")
    assert no_get.code == 2
    assert 'pods "test-grpc" is forbidden: User "sandbox-no-get-pods" cannot get resource "pods" in API group "" in the namespace "default"' in no_get.err
    no_pf = grpcprobe(real, "test-grpc", context="sandbox-no-portforward")
    assert no_pf.code == 2
    assert 'User "sandbox-no-portforward" cannot get resource "pods/portforward" in API group "" in the namespace "default"' in no_pf.err
    assert len(no_pf.err.strip().splitlines()) == 1


# -- toggle, watch, fleet -----------------------------------------------------------------------------

def test_toggle_wait_sees_the_ready_flip_and_the_unhealthy_event_of_the_real_agnhost(real) -> None:
    off = grpcprobe(real, "toggle", "test-grpc", "--not-serving", "--wait", "--wait-timeout", "60s")
    assert off.code == 0, off
    assert "Ready=False" in off.out + off.err
    assert 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")' in off.out + off.err
    pod = real.request("GET", "/api/v1/namespaces/default/pods/test-grpc")
    assert [c["status"] for c in pod["status"]["conditions"] if c["type"] == "Ready"] == ["False"]
    on = grpcprobe(real, "toggle", "test-grpc", "--serving", "--wait", "--wait-timeout", "60s")
    assert on.code == 0, on
    real.wait_ready("test-grpc")


def test_liveness_restart_of_the_real_agnhost_process(real) -> None:
    """toggle --wait sees the node kill and restart the container: restartCount, Killing, and a fresh (SERVING) process."""
    real.apply(pod_manifest("liveness", [agnhost_container(livenessProbe={"grpc": {"port": 5000}, "periodSeconds": 2, "failureThreshold": 1})]))
    try:
        real.wait_for("/api/v1/namespaces/default/pods", "liveness", lambda pod: (pod.get("status") or {}).get("phase") == "Running")
        run = grpcprobe(real, "toggle", "liveness", "--not-serving", "--wait", "--wait-timeout", "60s")
        assert run.code == 0, run
        assert "restartCount 0 -> 1" in run.out + run.err, run
        pod = real.request("GET", "/api/v1/namespaces/default/pods/liveness")
        assert pod["status"]["containerStatuses"][0]["restartCount"] >= 1
        after = grpcprobe(real, "liveness")
        assert after.code == 0, after  # the restarted process starts SERVING again
    finally:
        real.request("DELETE", "/api/v1/namespaces/default/pods/liveness")


def test_daemonset_spans_both_nodes(real) -> None:
    template = {
        "metadata": {"labels": {"app": "ds"}},
        "spec": {"containers": [agnhost_container(readinessProbe={"grpc": {"port": 5000}, "periodSeconds": 2})]},
    }
    real.apply({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "ds"},
        "spec": {"selector": {"matchLabels": {"app": "ds"}}, "template": template},
    })
    try:
        real.wait_for("/apis/apps/v1/namespaces/default/daemonsets", "ds", lambda d: (d.get("status") or {}).get("numberReady") == 2, timeout=120)
        run = grpcprobe(real, "daemonset.apps/ds", "-o", "wide")
        assert run.code == 0, run
        assert "2 probes: 2 healthy" in run.out, run
    finally:
        real.request("DELETE", "/apis/apps/v1/namespaces/default/daemonsets/ds")


def test_watch_through_the_real_api(real) -> None:
    run = grpcprobe(real, "test-grpc", "--watch", "--count", "2", "-o", "json")
    assert run.code == 0, run
    assert run.out.count('"verdict"') >= 2 or run.out.count("SERVING") >= 2, run.out


@pytest.mark.timeout(300)
def test_fleet_over_a_real_50_replica_deployment(real) -> None:
    template = {
        "metadata": {"labels": {"app": "fleet"}},
        "spec": {"containers": [agnhost_container(readinessProbe={"grpc": {"port": 5000}, "periodSeconds": 2})]},
    }
    real.apply({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fleet"},
        "spec": {"replicas": 50, "selector": {"matchLabels": {"app": "fleet"}}, "template": template},
    })
    try:
        real.wait_for("/apis/apps/v1/namespaces/default/deployments", "fleet",
                      lambda d: (d.get("status") or {}).get("readyReplicas") == 50, timeout=180)
        pods = real.request("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dfleet")["items"]
        assert len(pods) == 50
        assert {p["spec"]["nodeName"] for p in pods} == {"sandbox-node-1", "sandbox-node-2"}  # the real scheduler spreads them
        run = grpcprobe(real, "-l", "app=fleet")
        assert run.code == 0, run
        assert "50 probes: 50 healthy" in run.out, run
        assert len(re.findall(r" readiness +success ", run.out)) == 50, run.out
    finally:
        real.request("DELETE", "/apis/apps/v1/namespaces/default/deployments/fleet")


# -- clients nobody here wrote, through the real API server to the node -----------------------------

@pytest.mark.parametrize(("version", "websockets"), [("1.27", None), ("1.32", None), ("1.32", "false"), ("1.33", None)])
def test_real_kubectl_port_forward_through_the_real_api_server(real, version: str, websockets: str | None) -> None:
    """1.27 speaks SPDY, passed through to the node; 1.32 and 1.33 tunnel SPDY in a WebSocket, translated by the API server."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version} is not on this machine")
    env = dict(os.environ)
    if websockets:
        env["KUBECTL_PORT_FORWARD_WEBSOCKETS"] = websockets
    proc = subprocess.Popen(
        [binary, "--kubeconfig", real.kubeconfig_path, "port-forward", "pod/test-grpc", ":5000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 5000": the listener is bound
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        proc.wait(10)


def test_official_python_client_portforward_through_the_real_api_server(real) -> None:
    from grpc_health.v1 import health_pb2
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=real.kubeconfig_path, client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:
        assert official_client_check(client.CoreV1Api(api_client), "test-grpc", 5000) == health_pb2.HealthCheckResponse.SERVING


def test_kubectl_get_raw_version_shows_the_real_build(real) -> None:
    out = subprocess.run(
        [kubectl_binary() or "kubectl", "--kubeconfig", real.kubeconfig_path, "get", "--raw", "/version"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert '"gitVersion": "v1.37.2"' in out


@pytest.mark.timeout(600)
def test_e2e_suite_in_full_against_the_real_control_plane(real) -> None:
    env = {**os.environ, "GRPCPROBE_E2E_KUBECONFIG": real.kubeconfig_path}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "e2e")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "skipped" not in done.stdout.splitlines()[-1], done.stdout[-500:]


@pytest.mark.timeout(180)
def test_sandbox_up_real_brings_up_the_blog_pod(tmp_path) -> None:
    """The README's walkthrough on the real control plane: up, kubectl sees the real build, the plugin the verdict, SIGTERM stops all."""
    import signal

    kubeconfig = tmp_path / "K"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubectl_grpcprobe", "sandbox", "up", "--real", "-f", str(BLOG_MANIFEST), "--kubeconfig-out", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(kubeconfig), proc.stderr.read() if proc.poll() is not None else ""
        kubectl = kubectl_binary() or "kubectl"
        version = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", "/version"], capture_output=True, text=True, check=True)
        assert '"gitVersion": "v1.37.2"' in version.stdout
        subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "wait", "--for=condition=Ready", "pod/test-grpc", "--timeout=60s"],
                       capture_output=True, check=True)
        probe = subprocess.run([sys.executable, "-m", "kubectl_grpcprobe", "--kubeconfig", str(kubeconfig), "test-grpc"],
                               capture_output=True, text=True)
        assert probe.returncode == 0, probe
        assert "pod/test-grpc container=agnhost: Readiness probe succeeded: service healthy" in probe.stdout
        port = re.search(r"server: https://127\.0\.0\.1:(\d+)", kubeconfig.read_text()).group(1)  # type: ignore[union-attr]
        apiserver = subprocess.run(["pgrep", "-af", f"secure-port={port} "], capture_output=True, text=True).stdout
        workdir = re.search(r"--tls-cert-file=(\S+)/apiserver\.crt", apiserver).group(1)  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    leftovers = subprocess.run(["pgrep", "-af", workdir], capture_output=True, text=True).stdout  # etcd and all, by their work dir
    assert not leftovers.strip(), leftovers
    assert not os.path.exists(workdir)
