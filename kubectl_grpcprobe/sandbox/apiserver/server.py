"""The sandbox's HTTPS front: discovery, pods, events, namespaces, watch and port-forward.

HTTP/1.1 over TLS on 127.0.0.1, one thread per connection (ThreadingHTTPServer). Everything
that holds a connection open (watches, port-forwards) checks the stop event at least twice a
second so that shutdown can join every thread.
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..tlsserver import TlsHandler, TlsServer
from .selectors import SelectorError, field_selector, label_selector

if TYPE_CHECKING:
    from .. import Sandbox


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


class ApiServer(TlsServer):
    def __init__(self, sandbox: Sandbox, ssl_context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.sandbox = sandbox
        super().__init__(Handler, ssl_context, host)


class Handler(TlsHandler):
    server: ApiServer
    server_version = "kube-apiserver"

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
        self.query = parse_qs(url.query, keep_blank_values=True)  # `?ports=` is not `?`: the real server says so
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
        from . import streaming

        try:
            streaming.serve_spdy(self, self._network(pod), self.server.sandbox.faults, self.server.stop_event)
        except streaming.Refused as refused:
            self._send_bytes(refused.code, "text/plain; charset=utf-8", refused.message.encode())

    def upgrade_portforward(self, pod: dict[str, Any]) -> None:
        from . import spdy, streaming
        from .api import ports_query

        ports = ports_query(self)  # the API server's conversion, before anything reaches the kubelet
        try:
            if spdy.TUNNEL_PROTOCOL not in streaming.offered(self, "Sec-WebSocket-Protocol"):  # the tunnel names ports per stream
                ports = streaming.kubelet_ports([str(p) for p in ports])  # the kubelet checks them before its handshake
            chosen = streaming.websocket_protocol(self)
        except streaming.Refused as refused:  # the kubelet's answer, which the API server passes through
            return streaming.refuse(self, refused)
        sandbox = self.server.sandbox
        return streaming.serve_websocket(self, chosen, ports, self._network(pod), sandbox.faults, self.server.stop_event, sandbox.active_forwards)
