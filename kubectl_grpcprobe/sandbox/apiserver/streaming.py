"""The kubelet's streaming server for port-forward (it lives beside forwarding.py and spdy.py, which it drives): the upgrade, then a SPDY or WebSocket session to the pod.

Shared by the fake API server (which plays API server and kubelet in one) and the node agent's kubelet
API (`/portForward/{namespace}/{pod}`), which the real kube-apiserver proxies to. `handler` is an
http.server request handler whose request line and headers have been read.
"""

from __future__ import annotations

import threading
from typing import Any

from ...wire import wsframe
from . import forwarding, spdy
from .forwarding import Faults

WEBSOCKET_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")


class Refused(Exception):
    """The upgrade is refused before any 101: the caller answers with `code` and `message` in its own format."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def offered(handler: Any, header: str) -> list[str]:
    return [p.strip() for value in handler.headers.get_all(header) or [] for p in value.split(",") if p.strip()]


def refuse_early_data(handler: Any) -> None:
    """A client must wait for the 101 before it speaks the new protocol; bytes that came with the request
    would otherwise be lost, so the sandbox refuses them plainly (Go's servers hand them on; no client does this)."""
    if handler.rfile.early_data():
        raise Refused(400, "unable to upgrade: the client sent data before the upgrade was answered")


def serve_spdy(handler: Any, net: Any, faults: Faults, stop: threading.Event) -> None:
    """Classic kubectl port-forward (and the API server's leg of the KEP-4006 tunnel): SPDY/3.1 after an HTTP upgrade."""
    refuse_early_data(handler)
    protocols = offered(handler, "X-Stream-Protocol-Version")
    if spdy.PROTOCOL not in protocols:
        raise Refused(403, f"unable to upgrade: unable to negotiate protocol: client supports {protocols}, server accepts {[spdy.PROTOCOL]}")
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Upgrade", "SPDY/3.1")
    handler.send_header("X-Stream-Protocol-Version", spdy.PROTOCOL)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    spdy.Session(spdy.SocketTransport(handler.connection), net, faults, stop).run()


def websocket_protocol(handler: Any) -> str | None:
    """The subprotocol the kubelet picks (tunnel first), or Refused; None when the client offered none.

    A subprotocol it does not speak fails golang.org/x/net/websocket's handshake, which answers
    "403 Forbidden" with no body (wsstream's own error text never reaches the client).
    """
    refuse_early_data(handler)
    protocols = offered(handler, "Sec-WebSocket-Protocol")
    tunnel = spdy.TUNNEL_PROTOCOL in protocols  # KEP-4006: SPDY inside the WebSocket (kubectl >= 1.31)
    chosen = spdy.TUNNEL_PROTOCOL if tunnel else next((p for p in protocols if p in WEBSOCKET_PROTOCOLS), None)
    if protocols and chosen is None:
        raise Refused(403, "")
    if not handler.headers.get("Sec-WebSocket-Key"):
        raise Refused(400, "unable to upgrade: missing Sec-WebSocket-Key")
    return chosen


def parse_uint16(text: str) -> int:
    """Go's strconv.ParseUint(text, 10, 16), with its error text."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    if int(text) > 65535:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return int(text)


def apiserver_ports(values: list[str]) -> list[int]:
    """The API server's conversion of `?ports=` (PodPortForwardOptions) to []int32; ValueError in its words."""
    ports = []
    for value in values:
        for item in value.split(","):
            try:
                ports.append(parse_uint16(item))
            except ValueError as exc:
                raise ValueError(f"cannot convert to []int32: {exc}") from None
    return ports


def kubelet_ports(values: list[str]) -> list[int]:
    """The kubelet's `?port=` values (portforward.NewV4Options), or Refused(400) in its words."""
    if not values:
        raise Refused(400, 'query parameter "port" is required')
    ports = []
    for value in values:
        if not value:
            raise Refused(400, 'query parameter "port" cannot be empty')
        for item in value.split(","):
            try:
                port = parse_uint16(item)
            except ValueError as exc:
                raise Refused(400, f'unable to parse "{value}" as a port: {exc}') from None
            if port < 1:
                raise Refused(400, f'port "{value}" must be > 0')
            ports.append(port)
    return ports


def refuse(handler: Any, refused: Refused) -> None:
    """Answer as the kubelet does: go-restful's WriteError (text, no newline), or x/net/websocket's bare 403."""
    body = refused.message.encode()
    handler.send_response(refused.code)
    if body:
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    handler.close_connection = True


def serve_websocket(
    handler: Any, chosen: str | None, ports: list[int], net: Any, faults: Faults, stop: threading.Event, active: set[Any] | None = None
) -> None:
    """The WebSocket channel protocols (ports from the query), or the SPDY tunnel inside the WebSocket (ports per stream)."""
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", wsframe.accept_key(handler.headers["Sec-WebSocket-Key"]))
    if chosen:
        handler.send_header("Sec-WebSocket-Protocol", chosen)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    ws = wsframe.WebSocket(handler.connection, client=False)
    if chosen == spdy.TUNNEL_PROTOCOL:
        spdy.Session(spdy.WebSocketTransport(ws), net, faults, stop).run()
        return
    if active is not None:
        active.add(ws)  # so a test can drop it (Sandbox.drop_forwards)
    try:
        forwarding.serve(ws, ports, chosen == "v4.base64.channel.k8s.io", net, faults, stop)
    finally:
        if active is not None:
            active.discard(ws)
