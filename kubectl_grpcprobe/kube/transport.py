"""HTTP/1.1 to the API server, held to kubectl: proxies, one deadline per request, bounded memory.

Why our own, and not http.client or urllib3 (docs/ARCHITECTURE.md has the figures): a probe makes two GETs
and an upgrade, and an import is latency. More importantly, every byte this module sends goes out on a
socket that `open_connection` returned: the TLS connection to the API server, possibly through the
proxy kubectl would use. There is no reconnect path that could skip TLS (http.client's `auto_open`
reconnected in plaintext after `Connection: close`, with the bearer token).

- Proxies as kubectl: the cluster's `proxy-url` (http, https, socks5), else `HTTPS_PROXY`/`HTTP_PROXY` and
  `NO_PROXY` as Go's net/http reads them (never for localhost or a loopback address).
- A deadline covers connect, proxy negotiation, TLS handshake, request, head and body: every blocking step is
  given the time left as its timeout (CPython's ssl counts a timeout over the whole handshake, and sendall over
  the whole send), so a trickling peer cannot stretch the request past it.
- Heads are capped at 64 KiB and bodies at MAX_BODY; nothing a peer sends can grow memory past that.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .. import stop
from ..errors import ConnectError

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024  # a pod list page of 500 pods is ~3 MiB; anything near this is not an API answer


class DeadlineExceeded(ConnectError):
    """The whole request did not finish within its deadline."""


class Deadline:
    """A monotonic point in time, or none (no --request-timeout)."""

    def __init__(self, seconds: float | None) -> None:
        self.at = time.monotonic() + seconds if seconds else None

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left


# -- proxies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    scheme: str  # http, https, socks5
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # for messages and -v: never the credentials
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_proxy(url: str, origin: str) -> Proxy:
    from ..errors import ConfigError

    if "://" not in url:  # Go's httpproxy accepts a bare host:port as http
        url = "http://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "socks5h":
        scheme = "socks5"
    if scheme not in ("http", "https", "socks5") or not parts.hostname:
        raise ConfigError(f"error: {origin}: unsupported proxy URL scheme {parts.scheme!r} (use http, https or socks5)")
    try:
        port = parts.port or {"http": 80, "https": 443, "socks5": 1080}[scheme]
    except ValueError:
        raise ConfigError(f"error: {origin}: the proxy URL has an invalid port") from None
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy(scheme, parts.hostname, port, user, password)


def _env(name: str) -> str:
    return os.environ.get(name) or os.environ.get(name.lower()) or ""


def proxy_from_environment(scheme: str, host: str, port: int) -> Proxy | None:
    """Go's net/http ProxyFromEnvironment (golang.org/x/net/http/httpproxy), which kubectl uses."""
    if host == "localhost" or _is_loopback(host):
        return None
    url = _env("HTTPS_PROXY") if scheme == "https" else _env("HTTP_PROXY")
    if not url or not _use_proxy(host, port, _env("NO_PROXY")):
        return None
    return parse_proxy(url, "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _use_proxy(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return False
        if "/" in entry and ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return False
            except ValueError:
                pass
            continue
        entry_host, entry_port = entry, None
        if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
            entry_host, _, p = entry.rpartition(":")
            entry_port = int(p) if p.isdigit() else None
        entry_host = entry_host.strip("[]")
        if entry_port is not None and entry_port != port:
            continue
        if ip is not None:
            try:
                if ipaddress.ip_address(entry_host) == ip:
                    return False
            except ValueError:
                pass
            continue
        if entry_host.startswith("*."):
            entry_host = entry_host[1:]
        if entry_host.startswith("."):
            if host.endswith(entry_host) or host == entry_host[1:]:
                return False
        elif host == entry_host or host.endswith("." + entry_host):
            return False
    return True


# -- connections ---------------------------------------------------------------------------------


def _tcp(host: str, port: int, deadline: Deadline, where: str) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=deadline.remaining())
    except TimeoutError:
        raise ConnectError(f"error: unable to connect to the server {where}: i/o timeout") from None
    except ConnectionRefusedError:
        raise ConnectError(f"error: the connection to the server {where} was refused - did you specify the right host or port?") from None
    except socket.gaierror as exc:
        raise ConnectError(f"error: unable to connect to the server: lookup {host}: {exc.strerror}") from None
    except OSError as exc:
        raise ConnectError(f"error: unable to connect to the server {where}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stop.track_socket(sock)  # a stop (Ctrl-C, a fleet's deadline) shuts it under any thread blocked on it


def _http_connect(sock: socket.socket, proxy: Proxy, host: str, port: int, deadline: Deadline) -> None:
    """An HTTP CONNECT tunnel, as Go's transport opens one (Host = the target, Proxy-Authorization if set)."""
    import base64

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        pair = f"{proxy.username}:{proxy.password or ''}".encode()
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(pair).decode())
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head, rest = read_head(sock, deadline)
    status, reason, _ = parse_head(head)
    if status != 200:
        raise ConnectError(f"error: proxy {proxy} refused to connect to {target}: {status} {reason}".rstrip())
    if rest:  # a proxy must not speak before the tunnel's first byte
        raise ConnectError(f"error: proxy {proxy} sent data before the tunnel was established")


SOCKS_ERRORS = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def _recv_exact(sock: socket.socket, n: int, deadline: Deadline) -> bytes:
    buf = b""
    while len(buf) < n:
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _socks5_connect(sock: socket.socket, proxy: Proxy, host: str, port: int, deadline: Deadline) -> None:
    """RFC 1928 CONNECT with the name resolved by the proxy, as Go's SOCKS5 dialer (x/net/proxy) does."""
    methods = b"\x00\x02" if proxy.username is not None else b"\x00"
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = _recv_exact(sock, 2, deadline)
    if version != 5 or method == 0xFF or method not in methods:
        raise ConnectError(f"error: SOCKS5 proxy {proxy} accepted none of our authentication methods")
    if method == 2:  # RFC 1929 username/password
        user, password = (proxy.username or "").encode(), (proxy.password or "").encode()
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        if _recv_exact(sock, 2, deadline)[1] != 0:
            raise ConnectError(f"error: SOCKS5 proxy {proxy} rejected the username and password")
    try:
        ip = ipaddress.ip_address(host)
        address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        name = host.encode("idna")
        address = b"\x03" + bytes([len(name)]) + name
    sock.sendall(b"\x05\x01\x00" + address + struct.pack("!H", port))
    version, reply, _, atyp = _recv_exact(sock, 4, deadline)
    if version != 5 or reply != 0:
        why = SOCKS_ERRORS.get(reply, f"unknown error {reply}")
        raise ConnectError(f"error: SOCKS5 proxy {proxy} could not connect to {host}:{port}: {why}")
    if atyp == 1:
        bound_address = 4
    elif atyp == 4:
        bound_address = 16
    elif atyp == 3:
        bound_address = _recv_exact(sock, 1, deadline)[0]
    else:
        raise ConnectError(f"error: SOCKS5 proxy {proxy} answered with an unknown address type {atyp}")
    _recv_exact(sock, bound_address + 2, deadline)  # the address and port the proxy bound: not needed


def open_connection(
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    server_name: str,
    proxy: Proxy | None,
    deadline: Deadline,
    where: str,
    pinned_server_name: str | None = None,
) -> socket.socket:
    """A connection ready for HTTP/1.1 to host:port: direct or through `proxy`, then TLS when `tls` is set.

    `pinned_server_name` is the kubeconfig's tls-server-name, which an https:// proxy is verified against too.

    Any failure raises ConnectError with one kubectl-like line; a deadline that passes anywhere in
    between ends it, whatever the peers do.
    """
    first_hop = (proxy.host, proxy.port) if proxy else (host, port)
    hop_where = str(proxy) if proxy else where
    sock = _tcp(*first_hop, deadline, hop_where)  # its timeout is the time left: it bounds the proxy steps too
    stage = "proxy"
    try:
        if proxy and proxy.scheme == "https":
            # TLS to the proxy itself, with the cluster's TLS settings as Go's http.Transport does (client-go's
            # TLSClientConfig serves both): the kubeconfig's CA, and tls-server-name if set, else the proxy's name.
            context = tls or ssl.create_default_context()
            try:
                sock = stop.track_socket(context.wrap_socket(sock, server_hostname=pinned_server_name or proxy.host))
            except ssl.SSLCertVerificationError as exc:
                raise ConnectError(f"error: proxy {proxy}: tls: failed to verify certificate: {exc.verify_message}") from None
        if proxy and proxy.scheme == "socks5":
            _socks5_connect(sock, proxy, host, port, deadline)
        elif proxy:
            _http_connect(sock, proxy, host, port, deadline)
        if tls is not None:
            stage = "tls"
            if isinstance(sock, ssl.SSLSocket):  # TLS to an https:// proxy already: the server's TLS goes inside it
                from ..wire.nested import through

                sock = stop.track_socket(through(sock))
            sock.settimeout(deadline.remaining())
            sock = tls.wrap_socket(sock, server_hostname=server_name)
        sock.settimeout(None)
        return stop.track_socket(sock)
    except ConnectError:
        sock.close()
        raise
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ConnectError(f"error: unable to connect to the server {where}: tls: failed to verify certificate: {exc.verify_message}") from None
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        if isinstance(exc, TimeoutError):
            what = "TLS handshake timeout" if stage == "tls" else f"proxy {proxy} did not answer in time"
            raise DeadlineExceeded(f"error: unable to connect to the server {where}: {what}") from None
        if stage == "tls":
            raise ConnectError(f"error: unable to connect to the server {where}: TLS handshake failed") from None
        raise ConnectError(f"error: unable to connect to the server {where}: proxy {proxy} closed the connection") from None


# -- messages ------------------------------------------------------------------------------------


def read_head(sock: socket.socket, deadline: Deadline) -> tuple[str, bytes]:
    """The status line and headers (latin-1) and any bytes read past them. Raises OSError/TimeoutError."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
        if len(buf) > MAX_HEAD and b"\r\n\r\n" not in buf[: MAX_HEAD + 4]:
            raise ConnectError("error: the API server sent a response head larger than 64 KiB")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def parse_head(head: str) -> tuple[int, str, dict[str, str]]:
    status_line, _, block = head.partition("\r\n")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in block.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return status, parts[2] if len(parts) > 2 else "", headers


class BodyReader:
    """Reads a response body (Content-Length, chunked, or to EOF) from a socket, within a deadline and a cap."""

    def __init__(self, sock: socket.socket, headers: dict[str, str], rest: bytes, deadline: Deadline, limit: int = MAX_BODY) -> None:
        self.sock, self.deadline, self.limit = sock, deadline, limit
        self.buf = bytearray(rest)
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length", "")
        self.length = int(length) if length.isdigit() and not self.chunked else None
        if self.length is not None and self.length > limit:
            raise ConnectError(f"error: the API server announced a {self.length}-byte response, over the {limit >> 20} MiB limit")
        self.complete = False  # the whole body was read: the connection may be reused

    def _fill(self) -> bool:
        self.sock.settimeout(self.deadline.remaining())
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        if len(self.buf) > self.limit + 64:
            raise ConnectError(f"error: the API server sent more than {self.limit >> 20} MiB in one response")
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > 4096:
                raise ConnectError("error: the API server sent a malformed chunked response")
            if not self._fill():
                raise ConnectionError("the server closed the connection mid-response")
        line, _, rest = bytes(self.buf).partition(b"\r\n")
        self.buf = bytearray(rest)
        return line

    def read_all(self) -> bytes:
        if self.length is not None:
            while len(self.buf) < self.length:
                if not self._fill():
                    raise ConnectionError("the server closed the connection mid-response")
            self.complete = True
            return bytes(self.buf[: self.length])
        if not self.chunked:
            while self._fill():
                pass
            return bytes(self.buf)
        out = bytearray()
        for chunk in self.chunks():
            out += chunk
            if len(out) > self.limit:
                raise ConnectError(f"error: the API server sent more than {self.limit >> 20} MiB in one response")
        return bytes(out)

    def chunks(self) -> Iterator[bytes]:
        """The chunks of a chunked body as they arrive (a watch stream)."""
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ConnectError("error: the API server sent a malformed chunked response") from None
            if size > self.limit:
                raise ConnectError(f"error: the API server sent a chunk over the {self.limit >> 20} MiB limit")
            if size == 0:
                while self._line():  # trailers
                    pass
                self.complete = True
                return
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise ConnectionError("the server closed the connection mid-response")
            data = bytes(self.buf[:size])
            del self.buf[: size + 2]
            yield data
