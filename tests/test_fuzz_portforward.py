"""The port-forward client against a hostile API server: arbitrary frames after the upgrade.

Whatever the server sends, the bridge must end with a clean outcome (data, error-channel text, or a
closed connection), never a crashed thread, a hang, or an exception other than our own errors.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubectl_grpcprobe.errors import GrpcProbeError
from kubectl_grpcprobe.kube.client import KubeClient
from kubectl_grpcprobe.kube.config import ClusterConfig
from kubectl_grpcprobe.kube.portforward import port_forward
from kubectl_grpcprobe.wire import wsframe


@contextmanager
def hostile_server(script: bytes, protocol: str) -> Iterator[int]:
    """A plain-HTTP 'API server' that upgrades every request and then sends `script` verbatim."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conns.append(conn)
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                key = next(
                    (line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:")),
                    "",
                )
                conn.sendall(
                    (
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Accept: {wsframe.accept_key(key)}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
                    ).encode()
                    + script
                )
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in conns:
            conn.close()


channel_messages = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5), st.binary(max_size=64), st.sampled_from([wsframe.OP_BINARY, wsframe.OP_TEXT, wsframe.OP_PING, wsframe.OP_CLOSE])),
    max_size=8,
)


def _script(preamble: bool, messages: list[tuple[int, bytes, int]], junk: bytes) -> bytes:
    out = b""
    if preamble:
        out += wsframe.encode_frame(wsframe.OP_BINARY, b"\x00\x88\x13", mask=False)
        out += wsframe.encode_frame(wsframe.OP_BINARY, b"\x01\x88\x13", mask=False)
    for channel, payload, opcode in messages:
        body = payload[:125] if opcode >= 0x8 else bytes([channel]) + payload
        out += wsframe.encode_frame(opcode, body, mask=False)
    return out + junk


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    preamble=st.booleans(),
    messages=channel_messages,
    junk=st.binary(max_size=32),
    protocol=st.sampled_from(["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""]),
)
def test_arbitrary_frames_end_cleanly(preamble: bool, messages: list, junk: bytes, protocol: str) -> None:
    script = _script(preamble, messages, junk)
    with hostile_server(script, protocol) as port:
        client = KubeClient(ClusterConfig(server=f"http://127.0.0.1:{port}"), request_timeout=5)
        try:
            with port_forward(client, "default", "p", 5000, timeout=5) as fwd:
                with socket.create_connection(("127.0.0.1", fwd.local_port), timeout=5) as conn:
                    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    received = b""
                    while True:
                        try:
                            chunk = conn.recv(65536)
                        except ConnectionResetError:
                            break
                        if not chunk:
                            break  # the bridge closed the connection: the forward is over
                        received += chunk
            # Error-channel text and stream errors are kept as text for the diagnostics, never as exceptions.
            assert all(isinstance(e, str) and e for e in fwd.errors)
        except GrpcProbeError:
            pass  # a clean, user-facing error is an acceptable outcome
        finally:
            client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("grpcprobe-portforward")]
