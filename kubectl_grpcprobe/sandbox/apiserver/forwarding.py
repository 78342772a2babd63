"""The kubelet's side of a WebSocket port-forward (reference/portforward.md part A).

One TCP connection to the "container" per requested port, made as soon as the upgrade is done;
the port number goes first on both channels of every port; errors are written on the port's
error channel in containerd's words; the WebSocket closes once every port is finished.
"""

from __future__ import annotations

import base64
import errno
import selectors
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from ...wire import wsframe


@dataclass
class Faults:
    """Knobs for failure tests; all off by default."""

    chunk_latency: float = 0.0  # seconds added before each forwarded chunk, both directions
    drop_after_bytes: int | None = None  # drop the WebSocket (no close frame) after this many bytes
    stall_api: float = 0.0  # seconds every API request waits before it is answered
    stall_portforward: float = 0.0  # seconds a port-forward upgrade waits before it is answered


def _dial_error(port: int, exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED or isinstance(exc, ConnectionRefusedError):
        return f"dial tcp4 127.0.0.1:{port}: connect: connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"dial tcp4 127.0.0.1:{port}: i/o timeout"
    return f"dial tcp4 127.0.0.1:{port}: {exc.strerror or exc}"


def forward_error_text(net: Any, port: int, cause: str) -> str:
    """containerd's error, wrapped by the kubelet's `error forwarding port` prefix."""
    return (
        f"error forwarding port {port} to pod {net.sandbox_id}, uid : "
        f'failed to execute portforward in network namespace "{net.netns}": '
        f'failed to connect to localhost:{port} inside namespace "{net.sandbox_id}", '
        f"IPv4: {cause} IPv6 dial tcp6: address localhost: no suitable address found "
    )


class ChannelWriter:
    def __init__(self, ws: wsframe.WebSocket, base64_mode: bool) -> None:
        self.ws = ws
        self.base64_mode = base64_mode

    def send(self, channel: int, payload: bytes) -> None:
        if self.base64_mode:
            self.ws.send(wsframe.OP_TEXT, bytes([ord("0") + channel]) + base64.b64encode(payload))
        else:
            self.ws.send(wsframe.OP_BINARY, bytes([channel]) + payload)


def decode_message(opcode: int, payload: bytes, base64_mode: bool) -> tuple[int, bytes] | None:
    if not payload:
        return None
    if base64_mode or opcode == wsframe.OP_TEXT:
        return payload[0] - ord("0"), base64.b64decode(payload[1:])
    return payload[0], payload[1:]


def serve(
    ws: wsframe.WebSocket,
    ports: list[int],
    base64_mode: bool,
    net: Any,
    faults: Faults,
    stop: threading.Event,
) -> None:
    out = ChannelWriter(ws, base64_mode)
    for index, port in enumerate(ports):
        out.send(2 * index, struct.pack("<H", port))
        out.send(2 * index + 1, struct.pack("<H", port))

    conns: dict[int, socket.socket] = {}
    for index, port in enumerate(ports):
        target = net.ports.get(port)
        try:
            if target is None:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
            conn = socket.create_connection(target, timeout=5)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            out.send(2 * index + 1, forward_error_text(net, port, _dial_error(port, exc)).encode())
            continue
        conn.settimeout(30)
        conns[index] = conn

    forwarded = 0
    sel = selectors.DefaultSelector()
    sel.register(ws.sock, selectors.EVENT_READ, None)
    for index, conn in conns.items():
        sel.register(conn, selectors.EVENT_READ, index)

    def count(n: int) -> bool:
        """Account for n forwarded bytes; False once the drop fault fires."""
        nonlocal forwarded
        forwarded += n
        return faults.drop_after_bytes is None or forwarded < faults.drop_after_bytes

    try:
        while conns and not stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                if key.data is None:
                    try:
                        messages = ws.receive()
                    except (wsframe.ConnectionClosed, wsframe.ProtocolError, OSError):
                        return
                    for opcode, payload in messages:
                        decoded = decode_message(opcode, payload, base64_mode)
                        if decoded is None:
                            continue
                        channel, data = decoded
                        conn = conns.get(channel // 2)
                        if channel % 2 or conn is None or not data:
                            continue
                        if faults.chunk_latency and stop.wait(faults.chunk_latency):
                            return
                        if not count(len(data)):
                            ws.abort()
                            return
                        try:
                            conn.sendall(data)
                        except OSError:
                            _finish(sel, conns, channel // 2)
                    if ws.peer_closed:  # the client ended the forward; data before its close is delivered
                        return
                else:
                    index = key.data
                    if index not in conns:  # finished earlier in this same batch
                        continue
                    try:
                        data = conns[index].recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        _finish(sel, conns, index)
                        continue
                    if faults.chunk_latency and stop.wait(faults.chunk_latency):
                        return
                    if not count(len(data)):
                        ws.abort()
                        return
                    out.send(2 * index, data)
    except (OSError, TimeoutError):
        ws.abort()
    finally:
        for conn in conns.values():
            conn.close()
        sel.close()
        if not ws.closed:
            ws.close()


def _finish(sel: selectors.BaseSelector, conns: dict[int, socket.socket], index: int) -> None:
    conn = conns.pop(index)
    sel.unregister(conn)
    conn.close()
