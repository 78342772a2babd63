"""Hostile loopback peers for the connection tests: an API-server relay that misbehaves on cue, an HTTP
CONNECT proxy and a SOCKS5 proxy that resolve a name only they know, and a process runner that
measures a child's own peak RSS.

The relay terminates TLS with its own certificate (the test's kubeconfig trusts it) and passes each
request on to the sandbox over a fresh verified TLS connection, then answers the plugin the way its
`mode` says. Any connection whose first byte is not a TLS handshake is recorded as plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_grpcprobe.sandbox.certs import make_pki

from .helpers import ROOT

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _read_head(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return buf


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    t = threading.Thread(target=copy, args=(b, a), daemon=True)
    t.start()
    copy(a, b)
    t.join(5)


class _Server:
    """A threaded loopback TCP server; subclasses handle one accepted connection."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._guard, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _guard(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            conn.close()

    def handle(self, conn: socket.socket) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Seen:
    plaintext: list[bytes] = field(default_factory=list)  # first bytes of every non-TLS connection
    requests: list[str] = field(default_factory=list)  # request lines, in order
    headers: list[dict[str, str]] = field(default_factory=list)
    tls_connections: int = 0
    connections: list[list[str]] = field(default_factory=list)  # the request lines of each TLS connection


class HostileApi(_Server):
    """A TLS relay in front of the sandbox. mode:
    - "close":   every answer carries `Connection: close`, and the connection is closed after it
    - "trickle": the pod's body arrives one byte every 100 ms
    - "429":     the first two GETs of the pod answer 429 with Retry-After: 1
    - "ws-continuations": the port-forward upgrade is answered here, then endless continuation frames
    - "ws-data-flood":    the upgrade is answered here, then endless data frames on channel 0
    - "ws-error-flood":   the same on the error channel
    - "ws-close-1011":    the upgrade is answered here, then a close frame with code 1011 and a reason
    - "ws-bad-protocol":  the upgrade chooses a subprotocol that was not offered
    - "drop-idle": every answer keeps the connection alive by its headers, and then the connection is closed
    - "pass":    plain relay
    """

    def __init__(self, sandbox, mode: str = "pass") -> None:
        self.sandbox, self.mode = sandbox, mode
        self.seen = Seen()
        pki = make_pki("hostile-relay")
        self.ca_pem = pki.ca_pem
        self._tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-{os.getpid()}-{id(self)}"
        self._tmp.mkdir(parents=True, exist_ok=True)
        (self._tmp / "c.pem").write_bytes(pki.cert_pem)
        (self._tmp / "k.pem").write_bytes(pki.key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self._tmp / "c.pem", self._tmp / "k.pem")
        self.upstream_ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
        self._gets = 0
        super().__init__()

    def kubeconfig(self, tmp_path: Path, *, user: str = "sandbox-admin", mutate: Callable[[dict], None] | None = None) -> str:
        import yaml

        doc = self.sandbox.kubeconfig(user=user, server=f"https://127.0.0.1:{self.port}")
        doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        if mutate:
            mutate(doc)
        path = tmp_path / f"kubeconfig-{self.mode}"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if first != b"\x16":
            conn.settimeout(2)
            try:
                self.seen.plaintext.append(conn.recv(4096))
            except OSError:
                self.seen.plaintext.append(first)
            return
        conn = self.ctx.wrap_socket(conn, server_side=True)
        self.seen.tls_connections += 1
        mine: list[str] = []
        self.seen.connections.append(mine)
        while True:
            head = _read_head(conn)
            if not head:
                return
            head_text, _, rest = head.partition(b"\r\n\r\n")
            lines = head_text.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for name, _, value in (line.partition(":") for line in lines[1:]):
                key = name.strip().lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
            self.seen.requests.append(lines[0])
            mine.append(lines[0])
            self.seen.headers.append(headers)
            if headers.get("upgrade", "").lower() == "websocket":
                if self.mode.startswith("ws-"):
                    self._answer_upgrade_hostile(conn, headers)
                else:
                    self._relay_upgrade(conn, head_text + b"\r\n\r\n" + rest)
                return
            if not self._answer(conn, lines[0], head_text):
                return

    def _upstream(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.sandbox.port))
        return self.upstream_ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    def _answer(self, conn: socket.socket, request_line: str, head_text: bytes) -> bool:
        is_pod = "/pods/" in request_line and "portforward" not in request_line
        if self.mode == "429" and is_pod and self._gets < 2:
            self._gets += 1
            body = b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"TooManyRequests","code":429}'
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return True
        up = self._upstream()
        try:
            request = head_text.replace(b"\r\nConnection: keep-alive", b"") + b"\r\nConnection: close\r\n\r\n"
            up.sendall(request)
            response = b""
            while True:
                chunk = up.recv(65536)
                if not chunk:
                    break
                response += chunk
        finally:
            up.close()
        head, _, body = response.partition(b"\r\n\r\n")
        if self.mode == "close":
            conn.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
            return False
        if self.mode == "drop-idle":  # answer as if keeping the connection, then close it without a word
            conn.sendall(head + b"\r\n\r\n" + body)
            return False
        if self.mode == "trickle" and is_pod:
            conn.sendall(head + b"\r\n\r\n")
            for i in range(len(body)):
                conn.sendall(body[i : i + 1])
                time.sleep(0.1)  # the misbehaviour itself: a body trickled slower than any deadline allows
            return True
        conn.sendall(head + b"\r\n\r\n" + body)
        return True

    def _relay_upgrade(self, conn: socket.socket, head: bytes) -> None:
        up = self._upstream()
        up.sendall(head)
        _pipe(conn, up)

    def _answer_upgrade_hostile(self, conn: socket.socket, headers: dict[str, str]) -> None:
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest()).decode()
        protocol = "v5.evil.example" if self.mode == "ws-bad-protocol" else "v4.channel.k8s.io"
        conn.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n".encode()
        )
        port = struct.pack("<H", 5000)

        def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
            n = len(payload)
            head = bytes([(0x80 if fin else 0) | opcode])
            head += bytes([n]) if n < 126 else (bytes([126]) + struct.pack("!H", n) if n < 65536 else bytes([127]) + struct.pack("!Q", n))
            return head + payload

        conn.sendall(frame(2, b"\x00" + port) + frame(2, b"\x01" + port))
        if self.mode == "ws-close-1011":
            conn.sendall(frame(8, struct.pack("!H", 1011) + b"kubelet: container runtime gone"))
            time.sleep(0.5)  # let the client read it before the socket closes
            return
        if self.mode == "ws-continuations":
            conn.sendall(frame(2, b"\x00" + b"x" * 1000, fin=False))
            chunk = frame(0, b"y" * 65000, fin=False) * 16
        elif self.mode == "ws-data-flood":
            chunk = frame(2, b"\x00" + os.urandom(65000)) * 16
        else:  # ws-error-flood
            chunk = frame(2, b"\x01" + b"error forwarding port 5000: " + b"e" * 60000) * 16
        deadline = time.monotonic() + 30  # bounded: the flood stops by itself
        while time.monotonic() < deadline:
            conn.sendall(chunk)


class _Proxy(_Server):
    """A proxy that knows `names` (name -> address) nobody else can resolve, and logs where it was asked to go."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.connects: list[str] = []
        super().__init__()


class ConnectProxy(_Proxy):
    """An HTTP CONNECT proxy; it logs CONNECT lines."""

    def handle(self, conn: socket.socket) -> None:
        head = _read_head(conn)
        line = head.split(b"\r\n", 1)[0].decode()
        self.connects.append(line)
        method, target, _ = line.split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in self.names:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        up = socket.create_connection((self.names[host], int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _pipe(conn, up)


class TlsConnectProxy(ConnectProxy):
    """The HTTP CONNECT proxy behind TLS (an https:// proxy-url). `identity` is (certificate file, key file);
    without one it makes its own CA, which nobody trusts."""

    def __init__(self, names: dict[str, str], tmp_path: Path, identity: tuple[Path, Path] | None = None) -> None:
        if identity is None:
            pki = make_pki("test-proxy")
            identity = (tmp_path / "proxy.crt", tmp_path / "proxy.key")
            identity[0].write_bytes(pki.cert_pem)
            identity[1].write_bytes(pki.key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*identity)
        super().__init__(names)

    def handle(self, conn: socket.socket) -> None:
        super().handle(self.context.wrap_socket(conn, server_side=True))


class Socks5Proxy(_Proxy):
    """RFC 1928, no authentication, CONNECT by domain name only (the name is resolved here, from `names`)."""

    def handle(self, conn: socket.socket) -> None:
        version, n = conn.recv(2)
        methods = conn.recv(n)
        if version != 5 or 0 not in methods:
            conn.sendall(b"\x05\xff")
            return
        conn.sendall(b"\x05\x00")
        _, _, _, atyp = conn.recv(4)
        if atyp != 3:
            conn.sendall(b"\x05\x08\x00\x01" + b"\x00" * 6)
            return
        name = conn.recv(conn.recv(1)[0]).decode()
        (port,) = struct.unpack("!H", conn.recv(2))
        self.connects.append(f"{name}:{port}")
        if name not in self.names:
            conn.sendall(b"\x05\x04\x00\x01" + b"\x00" * 6)  # host unreachable
            return
        up = socket.create_connection((self.names[name], port))
        conn.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0))
        _pipe(conn, up)


# A small parent whose own RSS is far below the plugin's: it forks, execs the plugin and prints the
# child's peak RSS from wait4 (a child's ru_maxrss starts from its parent's, so pytest can't be the parent).
_MEASURE = """
import os, sys, json, time
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "kubectl_grpcprobe", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "rss_mib": usage.ru_maxrss / 1024,
                  "seconds": time.monotonic() - t0}), file=sys.stderr)
"""


@dataclass
class Measured:
    code: int
    out: str
    err: str
    rss_mib: float
    seconds: float


def run_python(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A Python child of this checkout's package, as a user's shell would start it."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def run_measured(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Measured:
    import json

    proc = run_python("-c", _MEASURE, *args, env=env, timeout=timeout)
    *err_lines, last = proc.stderr.strip().splitlines() or [""]
    stats = json.loads(last)
    return Measured(stats["code"], proc.stdout, "\n".join(err_lines), stats["rss_mib"], stats["seconds"])


class TrickleRelay(_Server):
    """A TCP relay in front of a server that passes the server's bytes one at a time, `delay` apart: a TLS
    handshake through it takes tens of seconds, while each single read returns quickly."""

    def __init__(self, upstream_port: int, delay: float = 0.02) -> None:
        self.upstream_port, self.delay = upstream_port, delay
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._conns.append(up)

        def upstream() -> None:
            try:
                while data := conn.recv(65536):
                    up.sendall(data)
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        stop_at = time.monotonic() + 30  # bounded: the relay gives up by itself
        try:
            while time.monotonic() < stop_at and (byte := up.recv(1)):
                conn.sendall(byte)
                time.sleep(self.delay)  # the misbehaviour itself
        finally:
            up.close()
