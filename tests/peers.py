"""Peers with scripted behaviour for the differential tests: one gRPC server whose Check does what the
current case says, and raw TCP peers that are not (or not quite) gRPC.

The server is started once and re-scripted per case (`server.behaviour = ...`), so hundreds of cases
cost no server start-ups. It listens on 127.0.0.1 and [::1].
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubectl_grpcprobe.kubelet.probe import _varint as varint  # the protobuf base-128 varint

CHECK = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class Behaviour:
    """What Check does. `status` is the raw enum value sent (any int32); `code` aborts with that status code."""

    status: int = 1
    delay: float = 0.0  # seconds before answering
    code: grpc.StatusCode | None = None
    details: str = ""
    trailers_only: bool = True  # abort before any header frame (else: headers first, then the error)
    compress: bool = False  # gzip the response message
    oversized: int = 0  # bytes of an unknown field added to the response


def encode_response(status: int, padding: int = 0) -> bytes:
    """HealthCheckResponse{status} by hand: any int32, negative ones as 10-byte varints, as protobuf does;
    `padding` bytes of field 15 (length-delimited, unknown: skipped by both clients) make it large."""
    out = b"\x08" + varint(status & 0xFFFFFFFFFFFFFFFF)
    if padding:
        out += b"\x7a" + varint(padding) + b"\x00" * padding
    return out


class ScriptedServer:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self._stop = threading.Event()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8), options=[("grpc.max_send_message_length", 64 << 20)])
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(self._check, request_deserializer=None, response_serializer=None)},
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port4 = self.server.add_insecure_port("127.0.0.1:0")
        self.port6 = self.server.add_insecure_port("[::1]:0")
        self.server.start()

    def _check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        b = self.behaviour
        if b.delay:
            self._stop.wait(b.delay)
        if b.code is not None:
            if not b.trailers_only:
                context.send_initial_metadata(())
            context.abort(b.code, b.details)
        if b.compress:
            context.set_compression(grpc.Compression.Gzip)
        return encode_response(b.status, b.oversized)

    def close(self) -> None:
        self._stop.set()
        self.server.stop(None).wait()


@contextmanager
def unimplemented_server() -> Iterator[tuple[int, int]]:
    """A gRPC server with no services: every method is Unimplemented."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    ports = server.add_insecure_port("127.0.0.1:0"), server.add_insecure_port("[::1]:0")
    server.start()
    try:
        yield ports
    finally:
        server.stop(None).wait()


@contextmanager
def tls_only_server(tmp: Path) -> Iterator[tuple[int, int]]:
    from kubectl_grpcprobe.sandbox.certs import make_pki

    pki = make_pki("differential")
    creds = grpc.ssl_server_credentials([(pki.key_pem, pki.cert_pem)])
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    from grpc_health.v1 import health, health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    ports = server.add_secure_port("127.0.0.1:0", creds), server.add_secure_port("[::1]:0", creds)
    server.start()
    try:
        yield ports
    finally:
        server.stop(None).wait()


SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack("!II", 0, 0)  # last stream 0, NO_ERROR


class RawPeer:
    """A TCP listener on both families whose connections get `mode`:
    accept-close (closed at once), accept-hang (never a byte), http1 (an HTTP/1.1 answer to anything),
    goaway (HTTP/2 SETTINGS, then GOAWAY, then silence)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listeners = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock = socket.socket(family)
            sock.bind((host, 0))
            sock.listen(64)
            self.listeners.append(sock)
        self.port4, self.port6 = (s.getsockname()[1] for s in self.listeners)
        self._held: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.listeners]
        for t in self._threads:
            t.start()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                if self.mode == "accept-close":
                    conn.close()
                    continue
                if self.mode == "http1":
                    conn.settimeout(2)
                    try:
                        conn.recv(65536)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    except OSError:
                        pass
                    conn.close()
                    continue
                if self.mode == "goaway":
                    conn.sendall(SETTINGS + GOAWAY)
            except OSError:
                conn.close()
                continue
            self._held.append(conn)  # accept-hang and goaway: keep it open, say nothing more

    def close(self) -> None:
        for sock in self.listeners + self._held:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def closed_ports() -> tuple[int, int]:
    """A port on each family with nothing listening (bound, then released)."""
    ports = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as s:
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
    return ports[0], ports[1]


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False

