"""The sandbox's HTTPS front: discovery, pods, events, namespaces, watch and port-forward.

HTTP/1.1 over TLS on 127.0.0.1, one thread per connection (ThreadingHTTPServer). Everything
that holds a connection open (watches, port-forwards) checks the stop event at least twice a
second so that shutdown can join every thread.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ...wire import wsframe
from . import forwarding
from .selectors import SelectorError, field_selector, label_selector

if TYPE_CHECKING:
    from .. import Sandbox

WEBSOCKET_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_object(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        obj["details"] = details
    return obj


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


class ApiServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every connection thread
    block_on_close = True
    request_queue_size = 128

    def __init__(self, sandbox: Sandbox, ssl_context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.sandbox = sandbox
        self.ssl_context = ssl_context
        self.stop_event = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__((host, 0), Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # Headers and body go out in separate writes: without NODELAY, Nagle and delayed ACKs
        # would add ~40 ms to every response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake happens in the connection's own thread (Handler.setup), so one slow
        # client cannot hold up accept().
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._conns_lock:
            self._conns.add(tls)
        return tls, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        self.stop_event.set()
        self.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-response is normal; anything else is a sandbox bug
        # and must be visible.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    rbufsize = 0  # unbuffered, so an upgraded connection has no bytes hidden in a read buffer
    server: ApiServer
    server_version = "kube-apiserver"
    sys_version = ""

    def setup(self) -> None:
        threading.current_thread().name = "sandbox-conn"
        self.request.settimeout(10)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.handshake_failed = True
        else:
            self.handshake_failed = False
        self.request.settimeout(None)
        super().setup()

    def handle(self) -> None:
        if self.handshake_failed:
            return
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------------------------

    def _send_json(self, code: int, obj: Any) -> None:
        self._send_bytes(code, "application/json", json.dumps(obj, separators=(",", ":")).encode())

    def _send_bytes(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: ApiError) -> None:
        self._send_json(err.code, status_object(err.code, err.reason, err.message, err.details))

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            import yaml

            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"the body of the request was in an unknown format: {exc}") from exc

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        path = url.path.rstrip("/") or "/"
        sandbox.requests.append((self.command, path))
        sandbox.api_requested.set()
        try:
            if sandbox.faults.stall_api and self.server.stop_event.wait(sandbox.faults.stall_api):
                return
            user = sandbox.authenticate(self.headers.get("Authorization"))
            if user is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            from .api import route

            route(self, sandbox, user, self.command, path)
        except ApiError as err:
            self._send_error(err)
        except SelectorError as exc:
            self._send_error(ApiError(400, "BadRequest", str(exc)))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    # -- watch -----------------------------------------------------------------------------

    def stream_watch(self, resource: str, namespace: str | None, render: Any) -> None:
        """Newline-delimited watch events over chunked encoding until the client leaves or timeout."""
        import select
        import time

        sandbox = self.server.sandbox
        labels = label_selector(self.q("labelSelector"))
        fields = field_selector(self.q("fieldSelector"))
        timeout = float(self.q("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()
        try:
            for event in sandbox.store.watch(resource, namespace, self.q("resourceVersion"), self.server.stop_event):
                if event is not None:
                    kind, obj = event
                    if labels(obj["metadata"].get("labels") or {}) and fields(obj):
                        line = json.dumps({"type": kind, "object": render(obj)}, separators=(",", ":")) + "\n"
                        data = line.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                # A readable socket during a streamed response means the client closed it.
                if select.select([self.connection], [], [], 0)[0] or time.monotonic() > deadline:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    # -- port-forward ----------------------------------------------------------------------

    def _network(self, pod: dict[str, Any]) -> Any:
        sandbox = self.server.sandbox
        net = sandbox.runtime.network(pod["metadata"]["namespace"], pod["metadata"]["name"])
        return net if net is not None else sandbox.runtime.start(pod)

    def upgrade_spdy(self, pod: dict[str, Any]) -> None:
        """Classic kubectl port-forward: HTTP upgrade to SPDY/3.1 with protocol negotiation."""
        from . import spdy

        offered = [p.strip() for value in self.headers.get_all("X-Stream-Protocol-Version") or [] for p in value.split(",") if p.strip()]
        if spdy.PROTOCOL not in offered:
            body = (
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, server accepts {[spdy.PROTOCOL]}"
            ).encode()
            self._send_bytes(403, "text/plain; charset=utf-8", body)
            return
        net = self._network(pod)
        self.send_response(101, "Switching Protocols")
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        self.send_header("X-Stream-Protocol-Version", spdy.PROTOCOL)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sandbox = self.server.sandbox
        spdy.Session(spdy.SocketTransport(self.connection), net, sandbox.faults, self.server.stop_event).run()

    def upgrade_portforward(self, pod: dict[str, Any]) -> None:
        from . import spdy

        sandbox = self.server.sandbox
        offered = [
            p.strip()
            for value in self.headers.get_all("Sec-WebSocket-Protocol") or []
            for p in value.split(",")
            if p.strip()
        ]
        tunnel = spdy.TUNNEL_PROTOCOL in offered  # KEP-4006: SPDY inside the WebSocket (kubectl >= 1.31)
        chosen = spdy.TUNNEL_PROTOCOL if tunnel else next((p for p in offered if p in WEBSOCKET_PROTOCOLS), None)
        if offered and chosen is None:
            raise ApiError(
                400,
                "BadRequest",
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, server supports {list(WEBSOCKET_PROTOCOLS)}",
            )
        key = self.headers.get("Sec-WebSocket-Key")
        if not key:
            raise ApiError(400, "BadRequest", "unable to upgrade: missing Sec-WebSocket-Key")
        from .api import ports_query

        ports = [] if tunnel else ports_query(self)  # the tunnel names ports per stream, not in the query
        net = self._network(pod)
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", wsframe.accept_key(key))
        if chosen:
            self.send_header("Sec-WebSocket-Protocol", chosen)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        ws = wsframe.WebSocket(self.connection, client=False)
        if tunnel:
            spdy.Session(spdy.WebSocketTransport(ws), net, sandbox.faults, self.server.stop_event).run()
            return
        sandbox.active_forwards.add(ws)  # so a test can drop it (Sandbox.drop_forwards)
        try:
            forwarding.serve(ws, ports, chosen == "v4.base64.channel.k8s.io", net, sandbox.faults, self.server.stop_event)
        finally:
            sandbox.active_forwards.discard(ws)
