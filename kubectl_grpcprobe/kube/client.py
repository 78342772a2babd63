"""The few API calls a probe makes, over one keep-alive HTTPS connection, plus the WebSocket upgrade.

Plain http.client rather than the official client's generated API: a probe needs two GETs and an
upgrade, and CoreV1Api alone takes ~0.5 s to import.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .. import __version__
from ..errors import ApiError, ConnectError
from .config import ClusterConfig

USER_AGENT = f"kubectl-grpcprobe/{__version__}"


class KubeClient:
    def __init__(self, cfg: ClusterConfig, request_timeout: float | None = 30.0, trace: Any = None) -> None:
        """trace: optional callable taking one line (-v). It never receives headers or credentials."""
        self.cfg = cfg
        self.trace = trace or (lambda line: None)
        url = urlsplit(cfg.server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConnectError(f'error: server "{cfg.server}" in the kubeconfig is not an http(s) URL')
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.base_path = url.path.rstrip("/")
        self.timeout = request_timeout or None
        self._ssl: ssl.SSLContext | None = None
        self._conn: http.client.HTTPConnection | None = None

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- connections ---------------------------------------------------------------------------

    def connect(self, timeout: float | None) -> socket.socket:
        """A new TCP (+TLS) connection to the API server, with kubectl-like failure messages."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except TimeoutError:
            raise ConnectError(f"error: unable to connect to the server {self.where}: i/o timeout") from None
        except ConnectionRefusedError:
            raise ConnectError(
                f"error: the connection to the server {self.where} was refused - did you specify the right host or port?"
            ) from None
        except socket.gaierror as exc:
            raise ConnectError(f"error: unable to connect to the server: lookup {self.host}: {exc.strerror}") from None
        except OSError as exc:
            raise ConnectError(f"error: unable to connect to the server {self.where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.trace(f"connected to {self.where}{' (TLS)' if self.tls else ''}")
        if not self.tls:
            return sock
        if self._ssl is None:
            self._ssl = self.cfg.ssl_context()
        try:
            return self._ssl.wrap_socket(sock, server_hostname=self.cfg.tls_server_name or self.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ConnectError(
                f"error: unable to connect to the server {self.where}: tls: failed to verify certificate: {exc.verify_message}"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            if isinstance(exc, (TimeoutError, socket.timeout)):
                raise ConnectError(f"error: unable to connect to the server {self.where}: TLS handshake timeout") from None
            raise ConnectError(f"error: unable to connect to the server {self.where}: TLS handshake failed") from None

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("User-Agent", USER_AGENT), ("Accept", "application/json")]
        headers += list(self.cfg.auth_headers().items())
        headers += self.cfg.impersonate_group_headers()
        return headers

    def _path(self, path: str, query: dict[str, Any] | list[tuple[str, Any]] | None) -> str:
        full = self.base_path + path
        if query:
            full += "?" + urlencode(query, doseq=True)
        return full

    # -- requests ------------------------------------------------------------------------------

    def get(self, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in (0, 1):
            if self._conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn.sock = self.connect(self.timeout)
                self._conn = conn
            conn = self._conn
            started = time.perf_counter()
            try:
                conn.putrequest("GET", self._path(path, query), skip_host=False, skip_accept_encoding=True)
                for key, value in self._headers():
                    conn.putheader(key, value)
                conn.endheaders()
                response = conn.getresponse()
                body = response.read()
                self.trace(f"GET {path} -> {response.status} in {(time.perf_counter() - started) * 1000:.1f}ms")
            except TimeoutError:
                self.close()
                raise ConnectError(
                    f"error: the API server at {self.where} did not answer within {_seconds(self.timeout)} (--request-timeout)"
                ) from None
            except (http.client.HTTPException, ConnectionError, ssl.SSLError, OSError):
                # A kept-alive connection the server closed: retry once on a fresh one.
                self.close()
                if attempt:
                    raise ConnectError(f"error: the connection to the server {self.where} was lost") from None
                continue
            if response.status >= 400:
                raise _status_error(response.status, response.reason, body)
            try:
                return json.loads(body)
            except ValueError:
                raise ConnectError(f"error: the server at {self.where} answered {path} with something that is not JSON") from None
        raise AssertionError("unreachable")

    def watch(self, path: str, query: dict[str, Any], deadline: float) -> Iterator[dict[str, Any]]:
        """Watch events (type, object) from a `?watch=1` stream on its own connection, until `deadline`."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=max(0.1, deadline - time.monotonic()))
        conn.sock = self.connect(self.timeout)
        try:
            conn.putrequest("GET", self._path(path, {**query, "watch": "1"}), skip_accept_encoding=True)
            for key, value in self._headers():
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            if response.status >= 400:
                raise _status_error(response.status, response.reason, response.read())
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                conn.sock.settimeout(remaining)
                try:
                    line = response.readline()
                except TimeoutError:
                    return
                except (OSError, http.client.HTTPException):
                    raise ConnectError(f"error: the watch on {self.where} was cut") from None
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self.get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}")
        except ApiError as err:
            if err.code == 404 and self._namespace_missing(namespace):
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found (pod "{name}" looked up there)') from None
            raise

    def _namespace_missing(self, namespace: str) -> bool:
        """Only on the error path: a clearer message than `pods "x" not found` for a mistyped -n."""
        try:
            self.get(f"/api/v1/namespaces/{quote(namespace, safe='')}")
        except ApiError as err:
            return err.code == 404
        return False

    def server_version(self) -> dict[str, Any]:
        return self.get("/version")

    def upgrade_websocket(
        self, path: str, query: list[tuple[str, Any]], protocols: list[str], timeout: float | None
    ) -> tuple[socket.socket, str, bytes]:
        """Open a WebSocket; returns (socket, chosen subprotocol, bytes already read past the headers)."""
        from ..wire import wsframe

        deadline = time.monotonic() + timeout if timeout else None
        sock = self.connect(timeout)
        try:
            key = wsframe.new_client_key()
            lines = [
                f"GET {self._path(path, query)} HTTP/1.1",
                f"Host: {self.where}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                f"Sec-WebSocket-Protocol: {', '.join(protocols)}",
            ]
            lines += [f"{k}: {v}" for k, v in self._headers()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            head, rest = _read_head(sock, deadline, self.where)
            status_line, _, header_block = head.partition("\r\n")
            parts = status_line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.trace(f"upgrade {path} (ports {', '.join(str(v) for k, v in query if k == 'ports')}) -> {status}")
            headers = {}
            for line in header_block.split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status != 101:
                body = _read_body(sock, headers, rest, deadline)
                raise _status_error(status, parts[2] if len(parts) > 2 else "", body)
            if headers.get("sec-websocket-accept") != wsframe.accept_key(key):
                raise ConnectError("error: the API server answered the port-forward upgrade with a bad Sec-WebSocket-Accept")
            sock.settimeout(None)
            return sock, headers.get("sec-websocket-protocol", ""), rest
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _seconds(timeout: float | None) -> str:
    from ..kubelet.gostr import duration

    return duration(int((timeout or 0) * 10**9))


def _read_head(sock: socket.socket, deadline: float | None, where: str) -> tuple[str, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectError(f"error: the API server at {where} did not answer the port-forward upgrade in time")
            sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise ConnectError(f"error: the API server at {where} did not answer the port-forward upgrade in time") from None
        except (ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            raise ConnectError(f"error: the API server at {where} closed the connection during the port-forward upgrade")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectError("error: the API server sent an oversized response to the port-forward upgrade")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def _read_body(sock: socket.socket, headers: dict[str, str], rest: bytes, deadline: float | None) -> bytes:
    length = int(headers.get("content-length") or 0) if headers.get("content-length", "").isdigit() else None
    body = rest
    while length is None or len(body) < length:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        body += chunk
        if len(body) > 1 << 20:
            break
    return body if length is None else body[:length]


def _status_error(code: int, reason: str, body: bytes) -> ApiError:
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        message = str(status.get("message") or reason)
        api_reason = str(status.get("reason") or "")
    else:
        text = body.decode("utf-8", "replace").strip().splitlines()
        message = text[0][:300] if text else reason
        api_reason = ""
    if code == 401:
        return ApiError(401, "", "You must be logged in to the server (Unauthorized)")
    if not api_reason:
        api_reason = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(code, "")
    return ApiError(code, api_reason, message)
