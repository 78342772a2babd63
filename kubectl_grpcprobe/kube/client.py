"""The few API calls a probe makes, over one keep-alive HTTPS connection, plus the WebSocket upgrade.

Our own small HTTP/1.1 (kube/transport.py) rather than the official client's generated API: a probe needs
two GETs and an upgrade, and CoreV1Api alone takes ~0.5 s to import.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .. import __version__
from ..errors import ApiError, ConfigError, ConnectError
from .config import ClusterConfig
from .transport import BodyReader, Deadline, DeadlineExceeded, Proxy, open_connection, parse_head, read_head

USER_AGENT = f"kubectl-grpcprobe/{__version__}"
MAX_RETRIES = 10  # client-go's rest.Request maxRetries for 429/5xx answers that carry Retry-After


def _check_header_value(name: str, value: str) -> str:
    """Go's net/http refuses a header value with a control character; so do we, without printing the value."""
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ConfigError(
            f'error: the {name} header value contains a line break or control character '
            f'(net/http: invalid header field value for "{name}"); check the token, tokenFile, exec plugin output or --as flags'
        )
    return value


def valid_name(what: str, name: str) -> str:
    """client-go's IsValidPathSegmentName, checked before any request as client-go's request builder does:
    `.`, `..` or a `/` or `%` would change the URL path instead of naming an object."""
    problems = [f"may not be '{name}'"] if name in (".", "..") else []
    problems += [f"may not contain '{c}'" for c in "/%" if c in name]
    if problems:
        raise ConfigError(f'error: invalid {what} "{name}": [{", ".join(problems)}]')
    return name


class KubeClient:
    def __init__(self, cfg: ClusterConfig, request_timeout: float | None = 30.0, trace: Any = None) -> None:
        """trace: optional callable taking one line (-v). It never receives headers or credentials."""
        self.cfg = cfg
        self.trace = trace or (lambda line: None)
        self.tracing = trace is not None  # -v: the gRPC level is traced too (kubelet.probe.check)
        url = urlsplit(cfg.server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConnectError(f'error: server "{cfg.display_server}" in the kubeconfig is not an http(s) URL')
        self.tls = url.scheme == "https"
        self.host = url.hostname
        try:
            self.port = url.port or (443 if self.tls else 80)
        except ValueError:
            raise ConnectError(f'error: server "{cfg.display_server}" in the kubeconfig has an invalid port') from None
        self.base_path = url.path.rstrip("/")
        self.timeout = request_timeout or None
        self.proxy: Proxy | None = cfg.proxy_for(url.scheme, self.host, self.port)
        self._ssl: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None  # the kept-alive connection, always one open_connection made
        self._sock_lock = threading.Lock()  # fleet workers take it for their upgrades
        self._prefetched: dict[str, tuple[threading.Event, dict[str, Any]]] = {}  # prefetch(): path -> (done, outcome)

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- connections ---------------------------------------------------------------------------

    def connect(self, deadline: Deadline) -> socket.socket:
        """A new connection to the API server (through its proxy, if any; TLS for https), within `deadline`."""
        if self.tls and self._ssl is None:
            self._ssl = self.cfg.ssl_context()
        try:
            sock = open_connection(
                self.host,
                self.port,
                tls=self._ssl if self.tls else None,
                server_name=self.cfg.tls_server_name or self.host,
                proxy=self.proxy,
                deadline=deadline,
                where=self.where,
                pinned_server_name=self.cfg.tls_server_name or None,
            )
        except TimeoutError:
            raise DeadlineExceeded(f"error: unable to connect to the server {self.where}: i/o timeout") from None
        via = f" through proxy {self.proxy}" if self.proxy else ""
        self.trace(f"connected to {self.where}{via}{' (TLS)' if self.tls else ''}")
        return sock

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("User-Agent", USER_AGENT), ("Accept", "application/json")]
        headers += [(k, _check_header_value(k, v)) for k, v in self.cfg.auth_headers()]
        return headers

    def _path(self, path: str, query: dict[str, Any] | list[tuple[str, Any]] | None) -> str:
        full = self.base_path + path
        if query:
            full += "?" + urlencode(query, doseq=True)
        return full

    def _request_bytes(self, method: str, path: str, query: Any, extra: list[str] | None = None) -> bytes:
        lines = [f"{method} {self._path(path, query)} HTTP/1.1", f"Host: {self.where}"]
        lines += extra or []
        lines += [f"{k}: {v}" for k, v in self._headers()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _timeout_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"error: the API server at {self.where} did not answer within {_seconds(self.timeout)} (--request-timeout)"
        )

    # -- requests ------------------------------------------------------------------------------

    def prefetch(self, path: str) -> None:
        """Start a GET of `path` now, on a connection of its own in a helper thread, so that its round trips
        overlap the next request's; get(path) then takes its answer. Not pipelining: an intermediary that mishandles
        pipelined requests would turn a lost answer into a wait for the whole deadline. Any failure here is
        forgotten, and get() asks again the plain way, so the result is always a plain GET's."""
        from .. import stop

        if path in self._prefetched:
            return
        done, outcome = threading.Event(), {}
        self._prefetched[path] = (done, outcome)
        if self.tls and self._ssl is None:
            self._ssl = self.cfg.ssl_context()  # here, not in two threads at once
        request = self._request_bytes("GET", path, None)

        def fetch() -> None:
            deadline = Deadline(self.timeout)
            try:
                sock = self.connect(deadline)
                try:
                    sock.settimeout(deadline.remaining())
                    sock.sendall(request)
                    head, rest = read_head(sock, deadline)
                    status, _, headers = parse_head(head)
                    body = BodyReader(sock, headers, rest, deadline).read_all()
                finally:
                    sock.close()
                if status == 200:
                    doc = json.loads(body)
                    if isinstance(doc, dict):
                        outcome["doc"] = doc
            except BaseException:
                pass  # forgotten: get() asks again the plain way, and reports what that meets
            finally:
                done.set()

        stop.spawn(fetch, name="grpcprobe-prefetch")

    def get(self, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        """One GET within one --request-timeout deadline, retries for 429/5xx with Retry-After included."""
        if not query and path in self._prefetched:
            from .. import stop

            done, outcome = self._prefetched.pop(path)
            stop.wait(done, self.timeout)
            if "doc" in outcome:
                return outcome["doc"]
        deadline = Deadline(self.timeout)
        request = self._request_bytes("GET", path, query)
        retries = 0
        while True:
            status, reason, headers, body = self._exchange(request, path, deadline)
            wait = _retry_after(status, headers)
            if wait is None or retries >= MAX_RETRIES:
                break
            retries += 1
            if deadline.at is not None and time.monotonic() + wait >= deadline.at:
                break  # the wait would outlast --request-timeout: report the answer we have
            self.trace(f"GET {path} -> {status}; Retry-After {wait:g}s (retry {retries} of {MAX_RETRIES})")
            time.sleep(wait)
        if status >= 400:
            raise _status_error(status, reason, body)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ConnectError(f"error: the server at {self.where} answered {path} with something that is not a JSON object")
        return doc

    def _exchange(self, request: bytes, path: str, deadline: Deadline) -> tuple[int, str, dict[str, str], bytes]:
        """Send one request and read its answer, on the kept-alive connection or a new one."""
        for attempt in (0, 1):
            reused = self._sock is not None
            try:
                if self._sock is None:
                    self._sock = self.connect(deadline)
                sock = self._sock
                started = time.perf_counter()
                sock.settimeout(deadline.remaining())
                sock.sendall(request)
                head, rest = read_head(sock, deadline)
                status, reason, headers = parse_head(head)
                reader = BodyReader(sock, headers, rest, deadline)
                body = reader.read_all()
            except TimeoutError:
                self.close()
                raise self._timeout_error() from None
            except ConnectError:  # refused, over a size cap, deadline: never leave a half-read connection kept
                self.close()
                raise
            except (ssl.SSLError, OSError):
                self.close()
                if reused and attempt == 0:
                    continue  # a kept-alive connection the server had closed: once more, on a new TLS connection
                raise ConnectError(f"error: the connection to the server {self.where} was lost") from None
            self.trace(f"GET {path} -> {status} in {(time.perf_counter() - started) * 1000:.1f}ms")
            if not reader.complete or "close" in headers.get("connection", "").lower():
                self.close()  # the next request opens a new connection through connect(): TLS again
            return status, reason, headers, body
        raise AssertionError("unreachable")

    def watch(self, path: str, query: dict[str, Any], deadline: float) -> Iterator[dict[str, Any]]:
        """Watch events (type, object) from a `?watch=1` stream on its own connection, until `deadline`."""
        until = Deadline(max(0.001, deadline - time.monotonic()))
        try:
            sock = self.connect(until)
        except DeadlineExceeded:
            return
        try:
            sock.settimeout(until.remaining())
            sock.sendall(self._request_bytes("GET", path, {**query, "watch": "1"}))
            head, rest = read_head(sock, until)
            status, reason, headers = parse_head(head)
            reader = BodyReader(sock, headers, rest, until)
            if status >= 400:
                raise _status_error(status, reason, reader.read_all())
            pending = b""
            for chunk in reader.chunks() if reader.chunked else iter(lambda: _read_some(reader), b""):
                pending += chunk
                if len(pending) > reader.limit:
                    raise ConnectError(f"error: the watch on {self.where} sent an event over the size limit")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
        except TimeoutError:
            return
        except (OSError, ValueError):
            raise ConnectError(f"error: the watch on {self.where} was cut") from None
        finally:
            sock.close()

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            valid_name("namespace", namespace)
            valid_name("resource name", name)
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
        """Open a WebSocket; returns (socket, chosen subprotocol, bytes already read past the headers).

        `timeout` bounds the whole upgrade: connect, proxy, TLS, request and response.
        """

        deadline = Deadline(timeout)
        # The kept-alive connection has done its TLS handshake already: upgrading it saves a round trip.
        with self._sock_lock:
            kept, self._sock = self._sock, None
        if kept is not None:
            try:
                return self._upgrade(kept, path, query, protocols, deadline)
            except _StaleConnection:
                pass  # the server had closed it while idle: a new connection, as a first attempt would have
        return self._upgrade(self.connect(deadline), path, query, protocols, deadline, fresh=True)

    def _upgrade(
        self, sock: socket.socket, path: str, query: list[tuple[str, Any]], protocols: list[str], deadline: Deadline, *, fresh: bool = False
    ) -> tuple[socket.socket, str, bytes]:
        from ..wire import wsframe

        try:
            key = wsframe.new_client_key()
            extra = [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                f"Sec-WebSocket-Protocol: {', '.join(protocols)}",
            ]
            sock.settimeout(deadline.remaining())
            try:
                sock.sendall(self._request_bytes("GET", path, query, extra))
                head, rest = read_head(sock, deadline)
            except TimeoutError:
                raise ConnectError(f"error: the API server at {self.where} did not answer the port-forward upgrade in time") from None
            except (ssl.SSLError, OSError):
                if not fresh:
                    raise _StaleConnection() from None
                raise ConnectError(f"error: the API server at {self.where} closed the connection during the port-forward upgrade") from None
            status, reason, headers = parse_head(head)
            self.trace(f"upgrade {path} (ports {', '.join(str(v) for k, v in query if k == 'ports')}) -> {status}")
            if status != 101:
                try:
                    body = BodyReader(sock, headers, rest, deadline, limit=1 << 20).read_all()
                except (OSError, ConnectError):
                    body = b""
                raise _status_error(status, reason, body)
            if headers.get("sec-websocket-accept") != wsframe.accept_key(key):
                raise ConnectError("error: the API server answered the port-forward upgrade with a bad Sec-WebSocket-Accept")
            chosen = headers.get("sec-websocket-protocol", "")
            if chosen and chosen not in protocols:
                raise ConnectError(f"error: the API server chose the subprotocol {chosen!r}, which was not offered")
            sock.settimeout(None)
            return sock, chosen, rest
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _StaleConnection(Exception):
    """A kept-alive connection that the server closed before it answered: try again on a new one."""


def _seconds(timeout: float | None) -> str:
    from ..kubelet.gostr import duration

    return duration(int((timeout or 0) * 10**9))


def _read_some(reader: BodyReader) -> bytes:
    """A body without chunking or length (HTTP/1.0 style): whatever arrives next, b"" at EOF."""
    if not reader.buf and not reader._fill():
        return b""
    data = bytes(reader.buf)
    reader.buf.clear()
    return data


def _retry_after(status: int, headers: dict[str, str]) -> float | None:
    """client-go's checkWait: retry 429 and 5xx answers that carry an integer Retry-After."""
    if status != 429 and not 500 <= status < 600:
        return None
    value = headers.get("retry-after", "").strip()
    if not value.isdigit():
        return None
    return float(min(int(value), 60))


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
