"""SPDY port-forwarding in the sandbox, held to real `kubectl port-forward` (classic and tunnelled)."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubectl_grpcprobe.sandbox.apiserver import spdy

from .helpers import kubectl_binary

pytestmark = pytest.mark.kubectl


@contextmanager
def kubectl_port_forward(sandbox, version: str, port: int, *, websockets: bool | None = None) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version} is not installed")
    env = {"KUBECONFIG": sandbox.kubeconfig_path, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    if websockets is not None:
        env["KUBECTL_PORT_FORWARD_WEBSOCKETS"] = "true" if websockets else "false"
    proc = subprocess.Popen(
        [binary, "port-forward", "pod/test-grpc", f":{port}", "--address", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]  # blocks until kubectl is ready
        assert line.startswith("Forwarding from 127.0.0.1:"), line + proc.stderr.read()  # type: ignore[union-attr]
        yield int(line.split("127.0.0.1:")[1].split(" ")[0]), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def check(port: int) -> int:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    finally:
        channel.close()


@pytest.mark.parametrize(("version", "websockets"), [("1.27", None), ("1.33", None), ("1.33", False)])
def test_kubectl_port_forward_reaches_grpc_health(sandbox, version: str, websockets: bool | None) -> None:
    with kubectl_port_forward(sandbox, version, 5000, websockets=websockets) as (port, _):
        assert check(port) == health_pb2.HealthCheckResponse.SERVING
        assert check(port) == health_pb2.HealthCheckResponse.SERVING  # a second connection, a second stream pair
    paths = [p for _, p in sandbox.requests if p.endswith("/portforward")]
    assert paths, "kubectl never reached the sandbox"


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_two_concurrent_connections_through_one_port_forward(sandbox, version: str) -> None:
    with kubectl_port_forward(sandbox, version, 8080) as (port, _):
        # Two HTTP connections to agnhost's control port, both open at once.
        first = socket.create_connection(("127.0.0.1", port), timeout=5)
        second = socket.create_connection(("127.0.0.1", port), timeout=5)
        replies = []
        # Different endpoints, so each reply proves its own connection was forwarded (arrival order is free).
        for conn, path in ((first, "/make-not-serving"), (second, "/no-such-endpoint")):
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        for conn in (first, second):
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            replies.append(data)
            conn.close()
    assert replies[0].startswith(b"HTTP/1.1 200 OK")
    assert replies[1].startswith(b"HTTP/1.1 404 Not Found") and replies[1].endswith(b"404 page not found\n")
    assert sandbox.server_for("test-grpc", "agnhost").force_unhealthy is True


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_closed_port_loses_the_connection_to_the_pod(sandbox, version: str) -> None:
    with kubectl_port_forward(sandbox, version, 5001) as (port, proc):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.settimeout(10)
            assert conn.recv(1) == b""
        _, err = proc.communicate(timeout=20)
    assert "an error occurred forwarding" in err and "connect: connection refused" in err
    assert "error: lost connection to pod" in err
    assert proc.returncode == 1


def _raw_upgrade(sandbox, protocol: str) -> tuple[int, bytes, ssl.SSLSocket]:
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", sandbox.port), timeout=5), server_hostname="127.0.0.1")
    sock.sendall(
        (
            "POST /api/v1/namespaces/default/pods/test-grpc/portforward HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {sandbox.users['sandbox-admin'].token}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            f"X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read() if response.status != 101 else b""
    return response.status, body, sock


def test_protocol_negotiation_mismatch_is_403(sandbox) -> None:
    status, body, sock = _raw_upgrade(sandbox, "channel.k8s.io")
    sock.close()
    assert status == 403
    assert body == b"unable to upgrade: unable to negotiate protocol: client supports ['channel.k8s.io'], server accepts ['portforward.k8s.io']"


class SpdyClient:
    """A minimal client over the framing module, for what kubectl never sends (PING, a missing port header)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.framer = spdy.Framer()
        self.pending: list[tuple] = []

    def syn(self, sid: int, headers: dict[str, str], fin: bool = False) -> None:
        block = self.framer.encode_headers({k: [v] for k, v in headers.items()})
        payload = struct.pack("!IIH", sid, 0, 0) + block
        self.sock.sendall(spdy.control(spdy.SYN_STREAM, spdy.FLAG_FIN if fin else 0, payload))

    def next(self, want) -> tuple:
        while True:
            for i, frame in enumerate(self.pending):
                if want(frame):
                    return self.pending.pop(i)
            data = self.sock.recv(65536)
            assert data, "the server closed the session"
            self.pending += self.framer.feed(data)


def test_ping_and_missing_port_header(sandbox) -> None:
    status, _, sock = _raw_upgrade(sandbox, "portforward.k8s.io")
    assert status == 101
    client = SpdyClient(sock)
    sock.sendall(spdy.control(spdy.PING, 0, struct.pack("!I", 7)))
    assert client.next(lambda f: f[0] == "control" and f[1] == spdy.PING)[3] == struct.pack("!I", 7)
    client.syn(1, {"streamtype": "error", "requestid": "0"}, fin=True)
    client.syn(3, {"streamtype": "data", "requestid": "0"})
    _, _, _, payload = client.next(lambda f: f[0] == "data" and f[1] == 1 and f[3])
    assert payload == b'"port" header is required'
    sock.close()


def test_data_flows_with_window_updates(sandbox) -> None:
    status, _, sock = _raw_upgrade(sandbox, "portforward.k8s.io")
    assert status == 101
    client = SpdyClient(sock)
    client.syn(1, {"streamtype": "error", "port": "8080", "requestid": "1"}, fin=True)
    client.syn(3, {"streamtype": "data", "port": "8080", "requestid": "1"})
    request = b"GET /make-serving HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sock.sendall(spdy.data_frame(3, spdy.FLAG_FIN, request))
    update = client.next(lambda f: f[0] == "control" and f[1] == spdy.WINDOW_UPDATE and struct.unpack("!I", f[3][:4])[0] == 3)
    assert struct.unpack("!II", update[3]) == (3, len(request))
    reply = b""
    while True:
        _, _, flags, payload = client.next(lambda f: f[0] == "data" and f[1] == 3)
        reply += payload
        if flags & spdy.FLAG_FIN:
            break
    assert reply.startswith(b"HTTP/1.1 200 OK")
    sock.close()


def test_header_block_roundtrip_and_dictionary() -> None:
    assert len(spdy.DICTIONARY) == 1423 and spdy.DICTIONARY.endswith(b"utf-,*,enq=0.")
    writer, reader = spdy.Framer(), spdy.Framer()
    for headers in ({"streamtype": ["data"], "port": ["5000"], "requestid": ["0"]}, {"x": ["a", "b"]}, {}):
        frame = spdy.control(spdy.HEADERS, 0, struct.pack("!I", 1) + writer.encode_headers(headers))
        ((kind, ftype, _, payload),) = reader.feed(frame)
        assert (kind, ftype) == ("control", spdy.HEADERS)
        assert reader.headers(payload[4:]) == headers


def test_no_session_threads_left(sandbox) -> None:
    with kubectl_port_forward(sandbox, "1.27", 5000) as (port, _):
        assert check(port) == health_pb2.HealthCheckResponse.SERVING
    # kubectl is gone; the sandbox's connection thread for it ends with the session.
    names = [t.name for t in threading.enumerate() if t.name == "sandbox-conn" and t.is_alive()]
    sandbox.stop()
    assert not [t for t in threading.enumerate() if t.name == "sandbox-conn" and t.is_alive()], names
