"""The sandbox held to clients nobody here wrote: the official Python client and real kubectl binaries."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from kubectl_grpcprobe.sandbox import Sandbox

from .helpers import BLOG_MANIFEST, kubectl_binary, official_client_check


@pytest.fixture
def core_api(sandbox):
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=sandbox.kubeconfig_path, client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


def test_official_client_lists_and_reads(core_api) -> None:
    pods = core_api.list_namespaced_pod("default")
    assert [p.metadata.name for p in pods.items] == ["test-grpc"]
    assert [p.metadata.name for p in core_api.list_pod_for_all_namespaces(label_selector="").items] == ["test-grpc"]
    pod = core_api.read_namespaced_pod("test-grpc", "default")
    probe = pod.spec.containers[0].readiness_probe
    assert (probe.grpc.port, probe.grpc.service) == (5000, "")
    assert (probe.timeout_seconds, probe.period_seconds, probe.success_threshold, probe.failure_threshold) == (1, 10, 1, 3)
    assert pod.status.phase == "Running" and pod.status.pod_ip.startswith("10.244.")
    assert pod.status.container_statuses[0].state.running.started_at is not None
    running = core_api.list_namespaced_pod("default", field_selector="status.phase=Running,metadata.name=test-grpc")
    assert len(running.items) == 1
    assert core_api.list_namespaced_pod("default", field_selector="status.phase=Pending").items == []


def test_official_client_portforward_reaches_grpc_health(core_api) -> None:
    """kubernetes.stream.portforward's socket, bridged to a local listener that grpcio dials."""
    assert official_client_check(core_api, "test-grpc", 5000) == health_pb2.HealthCheckResponse.SERVING


def test_official_client_sees_the_error_channel_for_a_closed_port(core_api) -> None:
    from kubernetes.stream import portforward

    pf = portforward(core_api.connect_get_namespaced_pod_portforward, "test-grpc", "default", ports="5001")
    sock = pf.socket(5001)
    sock.settimeout(5)
    assert sock.recv(1) == b""  # the proxy closes its end once the error arrives
    error = pf.error(5001)
    assert error.startswith("error forwarding port 5001 to pod ")
    assert "dial tcp4 127.0.0.1:5001: connect: connection refused" in error
    pf.close()


KUBECTLS = ["kubectl", "1.27", "1.33"]


def _kubectl(version: str, sandbox: Sandbox, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = kubectl_binary(None if version == "kubectl" else version)
    if binary is None:
        pytest.skip(f"kubectl {version} is not installed on this machine")
    env = {**os.environ, "KUBECONFIG": sandbox.kubeconfig_path, "HOME": str(Path(sandbox.kubeconfig_path).parent)}
    return subprocess.run([binary, *args], capture_output=True, text=True, input=stdin, timeout=60, env=env, check=False)


@pytest.mark.kubectl
@pytest.mark.parametrize("version", KUBECTLS)
def test_kubectl_get_pods(sandbox, version: str) -> None:
    sandbox.wait_ready("test-grpc")  # the sandbox kubelet's first readiness probe
    result = _kubectl(version, sandbox, "get", "pods")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert row.split()[:4] == ["test-grpc", "1/1", "Running", "0"]
    one = _kubectl(version, sandbox, "get", "pod", "test-grpc")
    assert one.stdout.split()[:9] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "test-grpc", "1/1", "Running", "0"]
    wide = _kubectl(version, sandbox, "get", "pods", "-o", "wide", "-A")
    assert "sandbox-node" in wide.stdout and sandbox.pod("test-grpc")["status"]["podIP"] in wide.stdout


@pytest.mark.kubectl
@pytest.mark.parametrize("version", KUBECTLS)
def test_kubectl_get_pod_json(sandbox, version: str) -> None:
    result = _kubectl(version, sandbox, "get", "pod", "test-grpc", "-o", "json")
    assert result.returncode == 0, result.stderr
    pod = json.loads(result.stdout)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "test-grpc"
    assert pod["spec"]["containers"][0]["readinessProbe"]["grpc"] == {"port": 5000, "service": ""}


@pytest.mark.kubectl
@pytest.mark.parametrize("version", KUBECTLS)
def test_kubectl_describe_pod(sandbox, version: str) -> None:
    result = _kubectl(version, sandbox, "describe", "pod", "test-grpc")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Readiness:" in out and "grpc <pod>:5000" in out and "timeout=1s period=10s #success=1 #failure=3" in out
    assert "Successfully assigned default/test-grpc to sandbox-node" in out
    assert "Started container agnhost" in out


@pytest.mark.kubectl
@pytest.mark.parametrize("version", KUBECTLS)
def test_kubectl_create_and_delete(sandbox, version: str) -> None:
    manifest = BLOG_MANIFEST.read_text().replace("name: test-grpc", "name: created")
    created = _kubectl(version, sandbox, "create", "-f", "-", stdin=manifest)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "pod/created created"
    assert sandbox.pod("created")["status"]["phase"] == "Running"
    again = _kubectl(version, sandbox, "create", "-f", "-", stdin=manifest)
    assert again.returncode != 0 and 'pods "created" already exists' in again.stderr
    deleted = _kubectl(version, sandbox, "delete", "pod", "created")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == 'pod "created" deleted'
    missing = _kubectl(version, sandbox, "get", "pod", "created")
    assert missing.returncode == 1
    assert 'Error from server (NotFound): pods "created" not found' in missing.stderr


@pytest.mark.kubectl
def test_kubectl_rbac_denial_wording(sandbox) -> None:
    result = _kubectl("kubectl", sandbox, "--context", "sandbox-no-get-pods", "get", "pod", "test-grpc")
    assert result.returncode == 1
    assert (
        'Error from server (Forbidden): pods "test-grpc" is forbidden: User "sandbox-no-get-pods" cannot get resource "pods" '
        'in API group "" in the namespace "default"'
    ) in result.stderr


@pytest.mark.kubectl
def test_kubectl_rejects_invalid_grpc_port(sandbox) -> None:
    manifest = BLOG_MANIFEST.read_text().replace("name: test-grpc", "name: bad").replace("port: 5000", "port: 0")
    result = _kubectl("kubectl", sandbox, "create", "-f", "-", stdin=manifest)
    assert result.returncode == 1
    assert "must be between 1 and 65535, inclusive" in result.stderr
