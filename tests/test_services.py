"""--list-services through server reflection, and the hint a NotFound verdict gets from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubectl_grpcprobe.commands.services import decode_list
from kubectl_grpcprobe.errors import ExitCode

from .helpers import bare_grpc_server, container, grpcprobe, pod_manifest, tcp_server


@contextmanager
def reflecting_server(*extra: str) -> Iterator[int]:
    """grpcio's standard health service plus the official reflection service (v1 and v1alpha), naming `extra` too."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("known.Service", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, *extra, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()


def pod_on(sandbox, port: int, name: str = "refl", service: str = "") -> None:
    probe = {"grpc": {"port": 5000, **({"service": service} if service else {})}}
    sandbox.apply(pod_manifest(name, [container("app", readinessProbe=probe)], ports={5000: port}))


def test_list_services_through_reflection(sandbox_no_kubelet) -> None:
    with reflecting_server("my.pkg.Greeter") as port:
        pod_on(sandbox_no_kubelet, port)
        text = grpcprobe(sandbox_no_kubelet, "refl", "--list-services")
        doc = json.loads(grpcprobe(sandbox_no_kubelet, "refl", "--list-services", "-o", "json").out)
    expected = ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "my.pkg.Greeter"]
    assert text.code == ExitCode.OK, text.err
    assert text.out.splitlines()[0].startswith("pod/refl port 5000: ")
    assert [line.strip() for line in text.out.splitlines()[1:]] == [s for s in doc["ports"][0]["services"]]
    assert set(expected) <= set(doc["ports"][0]["services"])
    assert doc["kind"] == "ServiceList" and doc["exitCode"] == 0 and doc["ports"][0]["reflection"] in ("v1", "v1alpha")


def test_without_reflection_and_without_a_server(sandbox_no_kubelet) -> None:
    with bare_grpc_server() as bare:
        pod_on(sandbox_no_kubelet, bare, "bare")
        run = grpcprobe(sandbox_no_kubelet, "bare", "--list-services", "--timeout", "1s")
    assert run.code == ExitCode.RPC_FAILED
    assert run.err == "pod/bare port 5000: no service list: server reflection is not enabled (v1 and v1alpha: Unimplemented)\n"
    with tcp_server("silent") as silent:
        pod_on(sandbox_no_kubelet, silent, "silent")
        run = grpcprobe(sandbox_no_kubelet, "silent", "--list-services", "--timeout", "1s")
    assert run.code == ExitCode.UNREACHABLE, run.err


def test_not_found_verdict_says_whether_the_service_exists(sandbox_no_kubelet) -> None:
    with reflecting_server("my.pkg.Greeter") as port:
        pod_on(sandbox_no_kubelet, port, "typo", service="my.pkg.Greter")
        typo = grpcprobe(sandbox_no_kubelet, "typo")
        pod_on(sandbox_no_kubelet, port, "untold", service="my.pkg.Greeter")
        untold = grpcprobe(sandbox_no_kubelet, "untold")
    assert typo.code == untold.code == ExitCode.RPC_FAILED
    assert "rpc error: code = NotFound desc = " in typo.out  # the verdict stays the kubelet's (grpcio's health server sends no details)
    assert '"my.pkg.Greter" is not among them' in typo.err
    assert '"my.pkg.Greeter" is among them: the health service was not told about it' in untold.err


@pytest.mark.parametrize("junk", [b"\x32\x05\x0a\x03abc", b"\xff", b"\x3a\x02\x0a"])
def test_decode_never_raises_anything_but_value_error(junk: bytes) -> None:
    try:
        decode_list(junk)
    except ValueError:
        pass


def test_conflicting_flags() -> None:
    import io

    from kubectl_grpcprobe.cli import main
    from kubectl_grpcprobe.render.output import Environment

    err = io.StringIO()
    code = main(["a", "b", "--list-services"], Environment(stdout=io.StringIO(), stderr=err, colors=False))
    assert code == ExitCode.USAGE and err.getvalue().startswith("error: --list-services looks at one pod")
