"""The blog's walkthrough on a real cluster: set GRPCPROBE_E2E_KUBECONFIG to a kubeconfig to run it.

It creates pod test-grpc-e2e (agnhost, the blog's manifest) in the kubeconfig's namespace, waits for
it to be Ready, toggles it with --wait both ways, and deletes it. Skipped when the variable is unset.
"""

from __future__ import annotations

import io
import os
import time
import uuid

import pytest

from kubectl_grpcprobe.cli import main
from kubectl_grpcprobe.render.output import Environment

KUBECONFIG = os.environ.get("GRPCPROBE_E2E_KUBECONFIG")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason="set GRPCPROBE_E2E_KUBECONFIG to a real cluster's kubeconfig to run"),
]


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*args, "--kubeconfig", KUBECONFIG or ""], Environment(stdout=out, stderr=err, colors=False))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def blog_pod():
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=KUBECONFIG)
    core = client.CoreV1Api(api_client)
    _, active = config.list_kube_config_contexts(config_file=KUBECONFIG)
    namespace = active["context"].get("namespace", "default")
    name = f"test-grpc-e2e-{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "agnhost",
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.35",
                    "command": ["/agnhost", "grpc-health-checking"],
                    "ports": [{"containerPort": 5000}, {"containerPort": 8080}],
                    "readinessProbe": {"grpc": {"port": 5000}, "periodSeconds": 2},
                }
            ]
        },
    }
    core.create_namespaced_pod(namespace, manifest)
    try:
        w = __import__("kubernetes.watch", fromlist=["Watch"]).Watch()
        for event in w.stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}", timeout_seconds=180):
            conds = {c.type: c.status for c in (event["object"].status.conditions or [])}
            if conds.get("Ready") == "True":
                w.stop()
                break
        yield name
    finally:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        api_client.close()


def test_blog_walkthrough_on_a_real_cluster(blog_pod) -> None:
    code, out, err = _run(blog_pod)
    assert code == 0, err
    assert "Readiness probe succeeded: service healthy" in out
    started = time.monotonic()
    code, out, err = _run("toggle", blog_pod, "--not-serving", "--wait", "--wait-timeout", "120s")
    assert code == 0, err
    assert 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")' in out
    assert "Ready=False" in out.splitlines()[-1]
    code, out, err = _run("toggle", blog_pod, "--serving", "--wait", "--wait-timeout", "120s")
    assert code == 0, err
    assert out.splitlines()[-1].endswith("Ready=True")
    assert time.monotonic() - started < 300
