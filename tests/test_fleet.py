"""Fleet probing: selection as kubectl selects, bounded concurrency, a sorted table and a summary."""

from __future__ import annotations

import io
import json
import subprocess
import time

import pytest
from grpc_health.v1 import health_pb2

from kubectl_grpcprobe.cli import main
from kubectl_grpcprobe.commands.fleet import selector_string
from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.render.output import Environment
from kubectl_grpcprobe.sandbox import PORTS_ANNOTATION

from .helpers import agnhost_container, container, grpcprobe, hanging_health_server, health_server, kubectl_binary, pod_manifest

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def workload(kind: str, name: str, port: int, *, replicas: int = 2, labels: dict | None = None, namespace: str = "default") -> dict:
    """A workload whose pods' container port 5000 is the local server on `port`."""
    labels = labels or {"app": name}
    template = {
        "metadata": {"labels": labels, "annotations": {PORTS_ANNOTATION: f"5000=127.0.0.1:{port}"}},
        "spec": {"containers": [container("app", readinessProbe={"grpc": {"port": 5000}})]},
    }
    api = "batch/v1" if kind == "Job" else "apps/v1"
    spec: dict = {"template": template}
    if kind != "Job":
        spec["selector"] = {"matchLabels": labels}
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        spec["replicas"] = replicas
    if kind == "Job":
        spec["parallelism"] = replicas
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.fixture
def fleet(sandbox_no_kubelet):
    """Two real servers: `good` SERVING, `bad` NOT_SERVING, behind workloads of every kind."""
    sb = sandbox_no_kubelet
    with health_server({"": SERVING}) as (good, _), health_server({"": NOT_SERVING}) as (bad, _):
        sb.apply(workload("Deployment", "web", good, replicas=3))
        sb.apply(workload("StatefulSet", "db", bad, replicas=2))
        sb.apply(workload("DaemonSet", "agent", good))
        sb.apply(workload("Job", "batch", good, replicas=1))
        sb.apply(workload("ReplicaSet", "legacy", bad, replicas=1, namespace="team-b"))
        sb.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}})
        yield sb


def names(run) -> list[str]:
    return [p["pod"] for p in json.loads(run.out)["probes"]]


def test_workloads_resolve_to_their_pods(fleet) -> None:
    deploy = grpcprobe(fleet, "deploy/web", "-o", "json")
    assert deploy.code == ExitCode.OK
    assert len(names(deploy)) == 3 and all(n.startswith("web-") for n in names(deploy))
    assert names(grpcprobe(fleet, "svc/web", "-o", "json")) == names(deploy)
    assert names(grpcprobe(fleet, "sts/db", "-o", "json")) == ["db-0", "db-1"]
    assert len(names(grpcprobe(fleet, "ds/agent", "-o", "json"))) == 1
    assert len(names(grpcprobe(fleet, "job/batch", "-o", "json"))) == 1
    rs = fleet.store.list("replicasets", "default")[0][0]["metadata"]["name"]
    assert names(grpcprobe(fleet, f"rs/{rs}", "-o", "json")) == names(deploy)
    legacy = grpcprobe(fleet, "-n", "team-b", "replicaset/legacy", "-o", "json")
    assert legacy.code == ExitCode.UNHEALTHY and len(names(legacy)) == 1


def test_selector_table_and_summary(fleet) -> None:
    run = grpcprobe(fleet, "-l", "app in (web,db)")
    assert run.code == ExitCode.UNHEALTHY
    lines = run.out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "CONTAINER", "PROBE", "RESULT", "RPC", "OUTPUT"]
    pods = [line.split()[1] for line in lines[1:-1]]
    assert pods == sorted(pods) and len(pods) == 5
    assert lines[-1] == "5 probes: 3 healthy, 2 unhealthy, 0 rpc failed, 0 unreachable"


def test_all_namespaces_and_field_selector(fleet) -> None:
    run = grpcprobe(fleet, "-A", "-o", "json")
    doc = json.loads(run.out)
    assert {p["namespace"] for p in doc["probes"]} == {"default", "team-b"}
    # web 3 + agent 1 + batch 1 SERVING; db 2 + legacy 1 NOT_SERVING; test-grpc (agnhost) SERVING.
    assert doc["summary"] == {
        "probes": 9, "healthy": 6, "unhealthy": 3, "rpcFailed": 0, "unreachable": 0, "podsNotProbed": 0, "podsWithoutGrpcProbe": 0, "stopped": None,
    }
    assert doc["exitCode"] == ExitCode.UNHEALTHY
    fleet.set_phase("db-0", "Failed")
    run = grpcprobe(fleet, "--field-selector", "status.phase=Running", "-l", "app=db", "-o", "json")
    assert names(run) == ["db-1"]


def test_pods_not_running_and_missing_are_rows(fleet) -> None:
    fleet.set_phase("db-0", "Pending")
    run = grpcprobe(fleet, "sts/db", "nope", "-o", "json")
    doc = json.loads(run.out)
    assert doc["exitCode"] == ExitCode.UNREACHABLE == run.code
    assert [(p["pod"], p["message"]) for p in doc["pods"]] == [
        ("db-0", "error: unable to forward port because pod is not running. Current status=Pending"),
        ("nope", 'Error from server (NotFound): pods "nope" not found'),
    ]
    assert doc["summary"]["podsNotProbed"] == 2


def test_exact_counts_with_a_known_fleet(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server({"": SERVING}) as (good, _), health_server({"": NOT_SERVING}) as (bad, _):
        sb.apply(workload("Deployment", "half-a", good, replicas=5, labels={"app": "fleet", "half": "a"}))
        sb.apply(workload("Deployment", "half-b", bad, replicas=5, labels={"app": "fleet", "half": "b"}))
        sb.apply(pod_manifest("nogrpc", [container("c")], labels={"app": "fleet"}))
        run = grpcprobe(sb, "-l", "app=fleet", "--parallel", "4")
    assert run.code == ExitCode.UNHEALTHY
    assert run.out.splitlines()[-1] == "10 probes: 5 healthy, 5 unhealthy, 0 rpc failed, 0 unreachable; 1 pod without a gRPC probe"


def test_overall_deadline_bounds_checks_in_flight(sandbox_no_kubelet, leak_check) -> None:
    """--deadline is the whole run's limit: a check in flight is cut, not waited for (--timeout 8s here)."""
    sb = sandbox_no_kubelet
    with hanging_health_server() as (port, _):
        sb.apply(workload("StatefulSet", "slow", port, replicas=3))
        started = time.monotonic()
        run = grpcprobe(sb, "sts/slow", "--parallel", "1", "--deadline", "300ms", "--timeout", "8s", "-o", "json")
        elapsed = time.monotonic() - started
    doc = json.loads(run.out)
    assert doc["probes"] == []  # nothing finished: no verdict is invented
    why = "error: deadline exceeded: the overall --deadline (0.3s) passed before this pod was done"
    assert [(p["pod"], p["message"]) for p in doc["pods"]] == [("slow-0", why), ("slow-1", why), ("slow-2", why)]
    assert doc["summary"]["stopped"] == "deadline exceeded" and doc["exitCode"] == run.code == ExitCode.UNREACHABLE
    assert elapsed < 2.0, elapsed  # 300 ms, the API calls and at most 0.5 s for workers to unwind; not 8 s


def test_deadline_smaller_than_the_api_calls_probes_nothing(fleet) -> None:
    run = grpcprobe(fleet, "-A", "--deadline", "1ms", "-o", "json")
    doc = json.loads(run.out)
    assert doc["probes"] == [] and doc["summary"]["stopped"] == "deadline exceeded"
    assert all(p["message"].startswith("error: deadline exceeded") for p in doc["pods"] if not p["skipped"])


def test_pods_without_a_grpc_probe_are_never_cut_by_the_deadline(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with hanging_health_server() as (port, _):
        sb.apply(workload("StatefulSet", "slow", port, replicas=1))
        sb.apply(pod_manifest("nogrpc", [container("c")], labels={"app": "slow"}))
        run = grpcprobe(sb, "-l", "app=slow", "--parallel", "1", "--deadline", "300ms", "-o", "json")
    doc = json.loads(run.out)
    pods = {p["pod"]: p for p in doc["pods"]}
    assert pods["nogrpc"]["skipped"] and pods["nogrpc"]["exitCode"] == 0
    assert doc["summary"]["podsWithoutGrpcProbe"] == 1


def test_progress_only_on_a_terminal(fleet) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, err = io.StringIO(), Tty()
    code = main(["-A", "--kubeconfig", fleet.kubeconfig_path], Environment(stdout=out, stderr=err, colors=False))
    assert code == ExitCode.UNHEALTHY
    assert "\rprobing 9/9 pods" in err.getvalue() and err.getvalue().endswith("\r\x1b[K")
    plain = grpcprobe(fleet, "-A")
    assert "probing" not in plain.err


def test_selection_errors(fleet) -> None:
    assert grpcprobe(fleet, "web", "-l", "app=web").err == "error: name cannot be provided when a selector is specified\n"
    assert "unsupported type 'cronjob'" in grpcprobe(fleet, "cronjob/x").err
    assert grpcprobe(fleet, "deploy/nope").err == 'Error from server (NotFound): deployments.apps "nope" not found\n'
    empty = grpcprobe(fleet, "-l", "app=none")
    assert (empty.code, empty.err) == (ExitCode.USAGE, 'error: no pods found in namespace "default"\n')
    assert grpcprobe(fleet, "-A", "-w").code == ExitCode.USAGE


def test_selector_string_from_label_selector() -> None:
    selector = {
        "matchLabels": {"app": "web", "tier": "fe"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "stage"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["a"]},
            {"key": "team", "operator": "Exists"},
        ],
    }
    assert selector_string(selector) == "app=web,tier=fe,env in (prod,stage),!canary,zone notin (a),team"


@pytest.mark.kubectl
def test_kubectl_sees_the_workloads(fleet) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not installed")
    env = {"KUBECONFIG": fleet.kubeconfig_path, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run([binary, "get", "deploy,sts,ds,jobs,svc", "-o", "name"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {"deployment.apps/web", "statefulset.apps/db", "daemonset.apps/agent", "job.batch/batch", "service/web"}
    pods = subprocess.run([binary, "get", "pods", "-l", "app=web", "-o", "name"], capture_output=True, text=True, env=env, timeout=60)
    assert len(pods.stdout.split()) == 3


def test_agnhost_workload(sandbox) -> None:
    tmpl = {"metadata": {"labels": {"app": "ag"}}, "spec": {"containers": [agnhost_container(readinessProbe={"grpc": {"port": 5000}})]}}
    sandbox.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ag"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ag"}}, "template": tmpl}})
    run = grpcprobe(sandbox, "deploy/ag")
    assert run.code == ExitCode.OK and run.out.splitlines()[-1] == "2 probes: 2 healthy, 0 unhealthy, 0 rpc failed, 0 unreachable"
