"""The scripting contract and the messages: what a runbook or a CI job reads from the plugin.

JSON's exitCode is the process's exit status; errors are JSON documents too with -o json; each
outcome is counted under its own name; every form `kubectl get -o name` prints is accepted; text
from a peer cannot break a line or drive the terminal; a missing package is one line.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.render.output import Environment, printable

from .helpers import bare_grpc_server, container, grpcprobe, health_server, kubectl_binary, pod_manifest, tcp_server
from .test_fleet import workload

ROOT = Path(__file__).resolve().parent.parent


def pod_on(sandbox, port: int, name: str, **labels: str) -> None:
    sandbox.apply(pod_manifest(name, [container("app", readinessProbe={"grpc": {"port": 5000}})], ports={5000: port}, labels=labels or None))


def test_summary_counts_each_outcome_under_its_own_name(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server({"": 1}) as (good, _), health_server({"": 2}) as (bad, _), bare_grpc_server() as bare:
        pod_on(sb, good, "p-good", app="mix")
        pod_on(sb, bad, "p-bad", app="mix")
        pod_on(sb, bare, "p-bare", app="mix")
        run = grpcprobe(sb, "-l", "app=mix", "-o", "json")
        text = grpcprobe(sb, "-l", "app=mix")
    doc = json.loads(run.out)
    assert {p["pod"]: p["outcome"] for p in doc["probes"]} == {"p-good": "healthy", "p-bad": "unhealthy", "p-bare": "rpc-failed"}
    assert doc["summary"] == {
        "probes": 3, "healthy": 1, "unhealthy": 1, "rpcFailed": 1, "unreachable": 0,
        "podsNotProbed": 0, "podsWithoutGrpcProbe": 0, "stopped": None,
    }
    assert doc["exitCode"] == run.code == ExitCode.RPC_FAILED
    assert text.out.splitlines()[-1] == "3 probes: 1 healthy, 1 unhealthy, 1 rpc failed, 0 unreachable"


def test_json_exit_code_is_the_process_exit_code_when_nothing_has_a_grpc_probe(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    sb.apply(pod_manifest("plain", [container("c")], labels={"app": "plain"}))
    run = grpcprobe(sb, "-l", "app=plain", "-o", "json")
    assert run.code == ExitCode.USAGE and json.loads(run.out)["exitCode"] == ExitCode.USAGE
    text = grpcprobe(sb, "-l", "app=plain", "-o", "wide")
    assert "1 pod without a gRPC probe" in text.out  # one pod, not "1 pods"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nosuch"], ExitCode.UNREACHABLE, 'Error from server (NotFound): pods "nosuch" not found'),
        ([""], ExitCode.USAGE, "error: resource name may not be empty"),
        (["pod/"], ExitCode.USAGE, "error: arguments in resource/name form must have a single resource and name"),
        (["test-grpc", "--timeout", "x"], ExitCode.USAGE, None),
    ],
)
def test_errors_are_json_documents_with_the_exit_code(sandbox, args, code, message) -> None:
    run = grpcprobe(sandbox, *args, "-o", "json")
    assert run.code == code
    doc = json.loads(run.out)
    assert doc["kind"] == "Error" and doc["exitCode"] == code and doc["apiVersion"] == "kubectl-grpcprobe/v1"
    assert run.err.splitlines()[0].removeprefix("error: ") == doc["message"].splitlines()[0].removeprefix("error: ")
    if message:
        assert run.err == message + "\n"
    assert grpcprobe(sandbox, *args).out == ""  # text: stdout stays empty; the line is on stderr


def test_every_form_kubectl_get_o_name_prints(sandbox_no_kubelet) -> None:
    """`kubectl get deploy,sts,ds,job,svc,rs,pod -o name | xargs kubectl grpcprobe` works as written."""
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not installed")
    sb = sandbox_no_kubelet
    with health_server({"": 1}) as (good, _):
        sb.apply(workload("Deployment", "web", good, replicas=1))
        sb.apply(workload("StatefulSet", "db", good, replicas=1))
        sb.apply(workload("DaemonSet", "agent", good))
        sb.apply(workload("Job", "batch", good, replicas=1))
        sb.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}})
        env = {"KUBECONFIG": sb.kubeconfig_path, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        listed = subprocess.run(
            [binary, "get", "deploy,sts,ds,job,svc,rs,pod", "-o", "name"], capture_output=True, text=True, env=env, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        names = [n for n in listed.stdout.split() if n != "service/kubernetes"]
        assert {n.split("/")[0] for n in names} >= {
            "deployment.apps", "statefulset.apps", "daemonset.apps", "job.batch", "service", "replicaset.apps", "pod",
        }
        run = grpcprobe(sb, *names, "-o", "json")
    assert run.code == ExitCode.OK, run.err
    assert {p["outcome"] for p in json.loads(run.out)["probes"]} == {"healthy"}
    wrong_group = grpcprobe(sb, "deployment.batch/web")
    assert wrong_group.code == ExitCode.USAGE and "is not in the API group 'apps'" in wrong_group.err


def test_text_escapes_control_bytes_from_the_peer_and_json_keeps_them(sandbox_no_kubelet) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health_pb2_grpc

    details = "bad\x1b[31m red\nsecond line\x00"

    class Hostile(health_pb2_grpc.HealthServicer):
        def Check(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.INTERNAL, details)

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(Hostile(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        pod_on(sandbox_no_kubelet, port, "hostile")
        text = grpcprobe(sandbox_no_kubelet, "hostile")
        wide = grpcprobe(sandbox_no_kubelet, "hostile", "-o", "wide")
        doc = json.loads(grpcprobe(sandbox_no_kubelet, "hostile", "-o", "json").out)
    finally:
        server.stop(None).wait()
    for run in (text, wide):
        assert "\x1b" not in run.out and "\x00" not in run.out
        assert "bad\\x1b[31m red\\nsecond line\\x00" in run.out
    assert len(text.out.splitlines()) == 1
    # gRPC carries details percent-encoded; what grpcio decodes is what the kubelet's output holds, byte for byte.
    assert doc["probes"][0]["output"] == f"error: health rpc probe failed: rpc error: code = Internal desc = {details}"


def test_port_and_probe_are_not_silently_half_obeyed(sandbox) -> None:
    run = grpcprobe(sandbox, "test-grpc", "--port", "5000", "--probe", "liveness")
    assert run.code == ExitCode.USAGE
    assert run.err.splitlines()[0] == "error: --probe picks the pod's own gRPC probes and --port checks a port ad hoc; use one or the other"


def test_printable() -> None:
    assert printable("a\tb\r\n\x07\x7f\x9b ok é") == "a\\tb\\r\\n\\x07\\x7f\\x9b ok é"


def test_control_port_that_speaks_http2_is_named_not_dumped(sandbox) -> None:
    run = grpcprobe(sandbox, "toggle", "test-grpc", "--not-serving", "--control-port", "5000")
    assert run.code == ExitCode.UNREACHABLE
    assert run.err == (
        "error: cannot reach the control port 5000 of pod test-grpc: it answered in HTTP/2 (a gRPC port?), not HTTP/1.1; "
        "--control-port is the server's HTTP control port (agnhost's: 8080)\n"
    )


def test_a_timeout_too_short_for_the_tunnel_is_not_called_no_server(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    with health_server({"": 1}) as (port, _):
        pod_on(sb, port, "slowpath")
        sb.faults.chunk_latency = 0.02  # every forwarded chunk: the HTTP/2 handshake cannot finish in 5 ms
        run = grpcprobe(sb, "slowpath", "--timeout", "5ms")
    assert run.code == ExitCode.UNREACHABLE
    assert "no gRPC (HTTP/2) server answered" not in run.err
    assert re.search(r"hint: a gRPC \(HTTP/2\) server does answer on this port, in [\d.]+ms through the port-forward, "
                     r"which is longer than the probe's timeout \(5ms\)", run.err), run.err


def test_time_shown_without_an_answer_is_the_checks_own(sandbox_no_kubelet) -> None:
    with tcp_server("silent") as port:
        pod_on(sandbox_no_kubelet, port, "silent")
        run = grpcprobe(sandbox_no_kubelet, "silent", "--timeout", "1s")
    assert re.search(r"\(after 1\.0\ds\)$", run.out.splitlines()[0]), run.out  # the 1 s deadline, not 1.34 s of everything


@pytest.mark.parametrize(("variables", "coloured"), [({"TERM": "xterm"}, True), ({"TERM": "dumb"}, False), ({"TERM": "xterm", "NO_COLOR": "1"}, False), ({}, False)])
def test_colour_only_on_a_terminal_that_has_it(monkeypatch, variables, coloured) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in ("TERM", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert Environment(stdout=Tty(), stderr=Tty()).colors is coloured


def test_sandbox_manifest_errors_name_the_file_and_the_field(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {}\nspec:\n  containers: [{name: c, image: x}]\n")
    run = subprocess.run(
        [sys.executable, "-m", "kubectl_grpcprobe", "sandbox", "up", "-f", str(bad)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == ExitCode.USAGE
    assert run.stderr == f"error: cannot start the sandbox: {bad}: document 1 (Pod): metadata.name is required\n"


def test_a_missing_package_is_one_line_that_says_how_to_install(tmp_path, sandbox) -> None:
    fake = tmp_path / "grpc"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'grpc'\", name='grpc')\n")
    run = subprocess.run(
        [sys.executable, str(ROOT / "plugin" / "kubectl-grpcprobe"), "test-grpc", "--kubeconfig", sandbox.kubeconfig_path],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert run.returncode == ExitCode.USAGE
    assert run.stderr.startswith(f"error: the Python package grpcio is missing from {sys.executable}; install the plugin with krew")
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr


def test_sandbox_up_real_without_the_components_is_one_line(tmp_path, monkeypatch) -> None:
    import io

    from kubectl_grpcprobe.cli import main
    from kubectl_grpcprobe.render.output import Environment

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there
    for argv, words in (
        (["sandbox", "up", "--real"], "error: the real control plane is not built: etcd, kube-apiserver, kube-controller-manager, "
         f"kube-scheduler not built in {tmp_path}/kubectl-grpcprobe/k8s/v1.37.2/bin: run `make k8s` (needs Go)"),
        (["sandbox", "up", "--real", "--no-kubelet"], "error: --no-kubelet applies to the fake API server only; the real one needs its nodes"),
    ):
        out, err = io.StringIO(), io.StringIO()
        assert main(argv, Environment(stdout=out, stderr=err, colors=False)) == 1
        assert err.getvalue().splitlines()[0] == words and out.getvalue() == ""
