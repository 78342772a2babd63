"""Real servers and real clients for the tests: grpcio servers, misbehaving TCP peers, kubectl lookup."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kubectl_grpcprobe.cli import main
from kubectl_grpcprobe.render.output import Environment
from kubectl_grpcprobe.sandbox import PORTS_ANNOTATION

ROOT = Path(__file__).resolve().parent.parent
BLOG_MANIFEST = ROOT / "examples" / "test-grpc.yaml"


@dataclass
class Run:
    code: int
    out: str
    err: str


def grpcprobe(sandbox: Any, *args: str, context: str | None = None) -> Run:
    """Run the CLI in-process against the sandbox, as a user would from a shell."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [*args, "--kubeconfig", sandbox.kubeconfig_path]
    if context:
        argv += ["--context", context]
    code = main(argv, Environment(stdout=stdout, stderr=stderr, colors=False))
    return Run(code, stdout.getvalue(), stderr.getvalue())


def kubectl_dir() -> Path | None:
    found = shutil.which("kubectl")
    return Path(os.path.realpath(found)).parent if found else None


def kubectl_binary(version: str | None = None) -> str | None:
    """`kubectl` on PATH, or the versioned `kubectl.1.NN` beside it (reference/portforward.md)."""
    if version is None:
        return shutil.which("kubectl")
    folder = kubectl_dir()
    if folder is None:
        return None
    path = folder / f"kubectl.{version}"
    return str(path) if path.exists() else None


def pod_manifest(
    name: str,
    containers: list[dict[str, Any]],
    *,
    ports: dict[int, int] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod whose container ports map to local servers (`ports`: container port -> 127.0.0.1 port)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if ports:
        meta["annotations"] = {PORTS_ANNOTATION: ",".join(f"{p}=127.0.0.1:{lp}" for p, lp in ports.items())}
    if labels:
        meta["labels"] = labels
    spec: dict[str, Any] = {"containers": containers}
    if init_containers:
        spec["initContainers"] = init_containers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def container(name: str, **probes: Any) -> dict[str, Any]:
    """container("app", readinessProbe={"grpc": {"port": 5000}})"""
    return {"name": name, "image": "example.com/app:1.0", **probes}


def agnhost_container(name: str = "agnhost", *flags: str, **probes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.k8s.io/e2e-test-images/agnhost:2.35",
        "command": ["/agnhost", "grpc-health-checking", *flags],
        **probes,
    }


# -- gRPC servers ----------------------------------------------------------------------------


class RecordingHealth(health.HealthServicer):
    """grpcio's own standard health servicer, recording what each Check saw."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, str]] = []
        self.watching = threading.Event()

    def Check(self, request, context):  # noqa: N802
        self.metadata.append(dict(context.invocation_metadata()))
        return super().Check(request, context)

    def Watch(self, request, context, send_response_callback=None):  # noqa: N802
        # The base class registers the stream's callback before it returns; from then on a
        # status change reaches this stream. (Not a generator: grpcio calls it non-blocking.)
        result = super().Watch(request, context, send_response_callback)
        self.watching.set()
        return result


@contextmanager
def health_server(statuses: dict[str, int] | None = None) -> Iterator[tuple[int, RecordingHealth]]:
    """A real grpcio server with the standard health service; statuses: service -> ServingStatus."""
    servicer = RecordingHealth()
    for service, status in (statuses or {"": health_pb2.HealthCheckResponse.SERVING}).items():
        servicer.set(service, status)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None).wait()


@contextmanager
def bare_grpc_server() -> Iterator[int]:
    """A gRPC server with no services at all: Check answers Unimplemented."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()


@contextmanager
def hanging_health_server() -> Iterator[tuple[int, threading.Event]]:
    """Check accepts the RPC and never answers until released (or the client gives up)."""
    release = threading.Event()
    entered = threading.Event()

    class Hang(health_pb2_grpc.HealthServicer):
        def Check(self, request, context):  # noqa: N802
            entered.set()
            while not release.is_set() and context.is_active():
                release.wait(0.05)
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(Hang(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, entered
    finally:
        release.set()
        server.stop(None).wait()


@contextmanager
def tcp_server(behaviour: str = "silent") -> Iterator[int]:
    """A plain TCP peer: 'silent' accepts and never speaks; 'garbage' answers junk bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            if behaviour == "garbage":
                try:
                    conn.sendall(b"\x17\x03\x03garbage-not-http2\r\n" * 8)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, name="test-tcp-server")
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in conns:
            conn.close()


@contextmanager
def http1_server() -> Iterator[int]:
    """An HTTP/1.1 server (not gRPC)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def official_client_check(core_api: Any, pod: str, port: int, namespace: str = "default") -> int:
    """A Check through kubernetes.stream.portforward's socket, bridged to a local listener that grpcio dials."""
    import select
    import socket

    from kubernetes.stream import portforward

    pf = portforward(core_api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
    remote = pf.socket(port)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def bridge() -> None:
        local, _ = listener.accept()
        try:
            while not done.is_set():
                readable, _, _ = select.select([local, remote], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (remote if sock is local else local).sendall(data)
        finally:
            local.close()

    thread = threading.Thread(target=bridge)
    thread.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{listener.getsockname()[1]}")
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    finally:
        channel.close()
        done.set()
        thread.join()
        listener.close()
        # End the official client's proxy thread the way it expects (EOF, not a reset).
        remote.shutdown(socket.SHUT_WR)
        remote.settimeout(5)
        while remote.recv(65536):
            pass
        pf.close()
    assert pf.error(port) is None
    return response.status
