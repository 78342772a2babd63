"""An HTTPS server on loopback whose every connection can be cut at stop: the fake API server and the node's kubelet API."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TlsServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every connection thread
    block_on_close = True
    request_queue_size = 128

    def __init__(self, handler: type[BaseHTTPRequestHandler], ssl_context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.ssl_context = ssl_context
        self.stop_event = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__((host, 0), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # Headers and body go out in separate writes: without NODELAY, Nagle and delayed ACKs
        # would add ~40 ms to every response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake happens in the connection's own thread (TlsHandler.setup), so one slow
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

    def handshake_failed(self, client_address: Any, exc: BaseException) -> None:
        """A client whose TLS handshake failed; a subclass may record it (the node agent does, in its log)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-response is normal; anything else is a sandbox bug
        # and must be visible.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class RequestReader:
    """The connection's read side for http.server: one recv per TLS record, where an unbuffered file (what
    an upgrade needs, so that no byte past the head is hidden in a buffer) reads the head one byte per call.
    That was ~0.7 ms of CPU per request, more than half of what the fake API server spent on a GET, on the
    two cores the benchmarks share with the plugin. What lies past the head stays here: `early_data()`
    tells an upgrade that a client sent bytes before the 101 it must wait for (RFC 6455 4.1)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self, limit: int = -1) -> bytes:
        while True:
            newline = self.buf.find(b"\n")
            if newline >= 0 or 0 <= limit <= len(self.buf) or not self._fill():
                break
        end = newline + 1 if newline >= 0 else len(self.buf)
        if limit >= 0:
            end = min(end, limit)
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buf) < n) and self._fill():
            pass
        end = len(self.buf) if n < 0 else min(n, len(self.buf))
        data = bytes(self.buf[:end])
        del self.buf[:end]
        return data

    def early_data(self) -> bool:
        return bool(self.buf)

    def close(self) -> None:
        pass


class TlsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sys_version = ""
    thread_name = "sandbox-conn"

    def setup(self) -> None:
        threading.current_thread().name = self.thread_name
        self.request.settimeout(10)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            self.handshake_failed = True
            self.server.handshake_failed(self.client_address, exc)
        else:
            self.handshake_failed = False
        self.request.settimeout(None)
        super().setup()
        self.rfile.close()  # http.server's buffered file would hide bytes past the head from an upgrade
        self.rfile = RequestReader(self.connection)

    def handle(self) -> None:
        if self.handshake_failed:
            return
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass
