"""TLS to the server through the port-forward: `grpc.mode: TLS` probes (Kubernetes 1.37 alpha, KEP-4939) and `--tls`.

That kubelet dials with TLS and does not verify the server's certificate. grpcio has no way to
skip verification, so grpcio speaks plaintext HTTP/2 to a local terminator and the terminator
speaks TLS (ALPN h2) to the server through the port-forward: without verification for the
kubelet's mode and --tls-no-verify, with the user's CA (or the system's), server name and client
certificate for --tls, as grpc_health_probe does. One path for both, and Python's words when a
handshake fails.
"""

from __future__ import annotations

import selectors
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from .. import stop
from .sockio import read_available, send_all


def insecure_client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # what the kubelet's TLS mode does; only for probe targets
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_context(*, verify: bool, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A client context as grpc_health_probe's -tls flags make one (OSError or ssl.SSLError for a bad file)."""
    if not verify:
        ctx = insecure_client_context()
    else:
        ctx = ssl.create_default_context(cafile=ca_file)  # the system roots when no CA file is given
        ctx.set_alpn_protocols(["h2"])
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def speaks_tls(port: int, timeout: float) -> bool:
    """Does whatever answers on 127.0.0.1:port (a forwarded pod port) complete a TLS handshake?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with insecure_client_context().wrap_socket(raw, server_hostname=None):
                return True
    except (OSError, ssl.SSLError):
        return False


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + an empty SETTINGS


def http2_answer_ms(port: int, timeout: float) -> float | None:
    """Milliseconds until whatever answers on 127.0.0.1:port sent an HTTP/2 SETTINGS frame, or None."""
    import time

    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return None
                head += chunk
    except OSError:
        return None
    return (time.perf_counter() - started) * 1000 if head[3] == 0x04 else None


class _Terminator:
    def __init__(
        self, upstream_port: int, timeout: float, context: ssl.SSLContext | None, server_name: str | None, client_cert: bool = False
    ) -> None:
        self.upstream_port = upstream_port
        self.client_cert = client_cert
        self._heard: set[socket.socket] = set()  # TLS sockets the server has sent application bytes on
        self.timeout = timeout
        self.ctx = context or insecure_client_context()
        self.server_name = server_name if self.ctx.check_hostname else None
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.handshake_errors: list[str] = []
        self.failure: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._thread = stop.thread(self._run, name="grpcprobe-portforward-tls")
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    if sock is self._wake_r:
                        return
                    if sock is self.listener:
                        self._accept(sel)
                    elif sock in self._pairs:
                        self._relay(sel, sock)  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised by the context manager
            self.failure = exc
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            plain, _ = self.listener.accept()
        except BlockingIOError:
            return
        try:
            raw = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=self.timeout)
            tls = self.ctx.wrap_socket(raw, server_hostname=self.server_name)  # handshake, bounded by the timeout
        except (OSError, ssl.SSLError) as exc:
            why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            self.handshake_errors.append(f"TLS handshake with the server failed: {why}")
            plain.close()
            return
        for sock in (plain, tls):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        self._pairs[plain], self._pairs[tls] = tls, plain

    def _relay(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        peer = self._pairs[sock]
        try:
            data, eof = read_available(sock)
        except ssl.SSLError as exc:
            # TLS 1.3 servers judge the client's certificate after the client thinks the handshake is done:
            # the refusal ("certificate required") arrives as an alert on the first read.
            self.handshake_errors.append(f"the server ended the TLS session: {getattr(exc, 'reason', None) or exc}")
            data, eof = b"", True
        if isinstance(sock, ssl.SSLSocket):
            if data:
                self._heard.add(sock)
            elif eof and sock not in self._heard:
                # A server that wants a client certificate it did not get closes right after the handshake,
                # often without an alert (BoringSSL, so grpc servers): say so, or the user sees only a timeout.
                why = "the server closed the TLS connection right after the handshake, without a word"
                if not self.client_cert:
                    why += "; a server that requires a client certificate does that (--tls-client-cert)"
                self.handshake_errors.append(why)
        try:
            if data:
                send_all(peer, data, self.timeout)
        except (OSError, TimeoutError):
            eof = True
        if eof:
            for s in (sock, peer):
                sel.unregister(s)
                self._pairs.pop(s, None)
                self._heard.discard(s)
                s.close()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join()
        for sock in list(self._pairs):
            sock.close()
        self._pairs.clear()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()


@contextmanager
def tls_terminator(
    upstream_port: int, timeout: float, context: ssl.SSLContext | None = None, server_name: str | None = None, client_cert: bool = False
) -> Iterator[_Terminator]:
    """Yield a terminator whose .port takes plaintext and relays it over TLS to 127.0.0.1:upstream_port.

    context: None for the kubelet's unverified TLS; server_name: the name a verifying context checks;
    client_cert: whether the context presents one (for the words when a server hangs up)."""
    terminator = _Terminator(upstream_port, timeout, context, server_name, client_cert)
    try:
        yield terminator
    finally:
        terminator.close()
        if terminator.failure is not None and not isinstance(terminator.failure, OSError):
            raise terminator.failure
