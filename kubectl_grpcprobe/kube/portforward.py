"""A port-forward through the API server, as a context manager that yields a bound local port.

    with port_forward(client, "default", "test-grpc", 5000, timeout=5) as fwd:
        grpc.insecure_channel(f"127.0.0.1:{fwd.local_port}")

Every local TCP connection gets its own WebSocket (the protocol carries one connection per port
per WebSocket), so each probe execution is a fresh connection end to end, as the kubelet's is.
The first WebSocket is opened before the context is entered: RBAC and "no host" errors surface
as exceptions there, and its set-up time is measured apart from the probe's deadline.
One thread runs a selector loop over the listener and every pair; leaving the context closes
every socket and joins the thread.
"""

from __future__ import annotations

import base64
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

from .. import stop
from ..errors import ApiError, TunnelError
from ..wire import wsframe
from ..wire.sockio import has_pending
from .client import KubeClient

PROTOCOLS = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"]
RBAC_HINT = (
    "a port-forward needs get and create on pods/portforward "
    '(RBAC rule: apiGroups [""], resources ["pods/portforward"], verbs ["get", "create"])'
)


MAX_ERRORS = 32
MAX_ERROR_TEXT = 2048


@dataclass
class Forward:
    local_port: int
    setup_ms: float
    errors: list[str] = field(default_factory=list)  # error-channel texts, in arrival order
    dropped: bool = False  # a WebSocket ended without a close frame

    def note(self, text: str) -> None:
        """Keep an error text; a peer flooding the error channel is held to a few, each cut short."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "…")


class _Pair:
    """One local connection bridged to one WebSocket."""

    def __init__(self, local: socket.socket, ws: wsframe.WebSocket, base64_mode: bool, port: int) -> None:
        self.local = local
        self.ws = ws
        self.base64_mode = base64_mode
        self.port = port
        self.preamble = {0: False, 1: False}  # port number seen on the data / error channel

    def send_local_data(self, data: bytes) -> None:
        if self.base64_mode:
            self.ws.send(wsframe.OP_TEXT, b"0" + base64.b64encode(data))
        else:
            self.ws.send(wsframe.OP_BINARY, b"\x00" + data)

    def decode(self, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if not payload:
            return None
        if self.base64_mode or opcode == wsframe.OP_TEXT:
            try:
                return payload[0] - ord("0"), base64.b64decode(payload[1:])
            except ValueError:
                raise wsframe.ProtocolError("bad base64 frame on the port-forward stream") from None
        return payload[0], payload[1:]


class _Bridge:
    def __init__(self, client: KubeClient, path: str, port: int, timeout: float, forward: Forward) -> None:
        self.client = client
        self.path = path
        self.port = port
        self.timeout = timeout
        self.forward = forward
        self.failure: BaseException | None = None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))  # loopback only, and port 0: the kernel picks, no races
        self.listener.listen(16)
        self.listener.setblocking(False)
        forward.local_port = self.listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._spare: tuple[socket.socket, str, bytes] | None = None
        self._pairs: list[_Pair] = []
        self._thread = stop.thread(self._run, name=f"grpcprobe-portforward-{port}")

    def open_websocket(self) -> tuple[socket.socket, str, bytes]:
        return self.client.upgrade_websocket(self.path, [("ports", self.port)], PROTOCOLS, self.timeout)

    def start(self) -> None:
        self._spare = self.open_websocket()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for pair in list(self._pairs):
            try:  # unblocks a sendall to a local client that stopped reading, so the join is prompt
                pair.local.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join()
        for pair in self._pairs:
            pair.ws.close()
            pair.local.close()
        self._pairs.clear()
        if self._spare is not None:
            self._spare[0].close()
            self._spare = None
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.listener, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stop.is_set():
                # Bytes OpenSSL already decrypted do not wake select(): poll instead while any are held
                # (reads are capped, so a flood leaves some there on purpose).
                backlog = [pair for pair in self._pairs if has_pending(pair.ws.sock)]
                for pair in backlog:
                    if pair in self._pairs:
                        self._from_remote(sel, pair)
                for key, _ in sel.select(0 if backlog else None):
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        self._accept(sel)
                    else:
                        pair, side = key.data
                        if pair in self._pairs:
                            (self._from_local if side == "local" else self._from_remote)(sel, pair)
        except BaseException as exc:  # surfaced by the context manager, never swallowed
            self.failure = exc
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            local, _ = self.listener.accept()
        except BlockingIOError:
            return
        local.setblocking(True)
        local.settimeout(30)
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._spare is not None:
            sock, protocol, rest = self._spare
            self._spare = None
        else:
            try:
                sock, protocol, rest = self.open_websocket()
            except Exception as exc:
                self.forward.note(str(exc))
                local.close()
                return
        ws = wsframe.WebSocket(sock, client=True)
        pair = _Pair(local, ws, protocol == "v4.base64.channel.k8s.io", self.port)
        self._pairs.append(pair)
        sel.register(local, selectors.EVENT_READ, (pair, "local"))
        sel.register(sock, selectors.EVENT_READ, (pair, "remote"))
        if rest:  # frames that arrived with the upgrade response
            self._receive(sel, pair, lambda: ws.feed(rest))

    def _close_pair(self, sel: selectors.BaseSelector, pair: _Pair, *, dropped: bool = False) -> None:
        if pair not in self._pairs:
            return
        self._pairs.remove(pair)
        for sock in (pair.local, pair.ws.sock):
            try:
                sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        if dropped:
            self.forward.dropped = True
            pair.ws.abort()
        else:
            pair.ws.close()
        pair.local.close()

    def _from_local(self, sel: selectors.BaseSelector, pair: _Pair) -> None:
        try:
            data = pair.local.recv(65536)
        except OSError:
            data = b""
        if not data:
            # The protocol has no half-close: the forward of this connection is over.
            self._close_pair(sel, pair)
            return
        try:
            pair.send_local_data(data)
        except (OSError, TimeoutError):
            self._close_pair(sel, pair, dropped=True)

    def _from_remote(self, sel: selectors.BaseSelector, pair: _Pair) -> None:
        self._receive(sel, pair, pair.ws.receive)

    def _receive(self, sel: selectors.BaseSelector, pair: _Pair, read: Callable[[], list[tuple[int, bytes]]]) -> None:
        try:
            messages = read()
        except wsframe.ConnectionClosed as closed:
            self._note_close(pair)
            self._close_pair(sel, pair, dropped=closed.code is None)
            return
        except (OSError, wsframe.ProtocolError) as exc:
            if isinstance(exc, wsframe.ProtocolError):
                self.forward.note(f"port-forward stream error: {exc}")
            self._close_pair(sel, pair, dropped=True)
            return
        self._handle_messages(sel, pair, messages)
        if pair.ws.peer_closed:
            self._note_close(pair)
            self._close_pair(sel, pair)

    def _note_close(self, pair: _Pair) -> None:
        """A close other than normal (1000) or going-away (1001) says why the API server ended the stream."""
        code, reason = pair.ws.close_code, pair.ws.close_reason
        if code is not None and code not in (1000, 1001, 1005):
            self.forward.note(f"port-forward: the API server closed the stream with code {code}" + (f": {reason}" if reason else ""))

    def _handle_messages(self, sel: selectors.BaseSelector, pair: _Pair, messages: list[tuple[int, bytes]]) -> None:
        for opcode, payload in messages:
            try:
                decoded = pair.decode(opcode, payload)
            except wsframe.ProtocolError as exc:
                self.forward.note(str(exc))
                self._close_pair(sel, pair, dropped=True)
                return
            if decoded is None:
                continue
            channel, data = decoded
            if channel not in (0, 1):
                self.forward.note(f"port-forward stream error: unexpected channel {channel}")
                self._close_pair(sel, pair, dropped=True)
                return
            if not pair.preamble[channel]:
                # The first message on each channel is the port number, little-endian.
                if len(data) < 2 or struct.unpack("<H", data[:2])[0] != self.port:
                    self.forward.note(f"port-forward stream error: bad port preamble on channel {channel}")
                    self._close_pair(sel, pair, dropped=True)
                    return
                pair.preamble[channel] = True
                data = data[2:]
                if not data:
                    continue
            if channel == 1:
                text = data.decode("utf-8", "replace").strip()
                if text:
                    self.forward.note(text)
                continue
            try:
                pair.local.sendall(data)
            except OSError:
                self._close_pair(sel, pair)
                return


@contextmanager
def port_forward(client: KubeClient, namespace: str, pod: str, port: int, *, timeout: float) -> Iterator[Forward]:
    """Forward 127.0.0.1:<ephemeral> to `port` of the pod; raises ApiError/ConnectError if the upgrade fails."""
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/portforward"
    start = time.perf_counter()
    forward = Forward(local_port=0, setup_ms=0.0)
    bridge = _Bridge(client, path, port, timeout, forward)
    try:
        bridge.start()
    except ApiError as err:
        bridge.stop()
        if err.code == 403:
            raise ApiError(403, err.reason, f"{err.message}; {RBAC_HINT}") from None
        raise
    except BaseException:
        bridge.stop()
        raise
    forward.setup_ms = (time.perf_counter() - start) * 1000
    try:
        yield forward
    finally:
        bridge.stop()
        if bridge.failure is not None:  # the loop's own errors are handled per connection: this is a bug
            raise TunnelError(f"error: the port-forward bridge failed: {bridge.failure!r}") from bridge.failure


@dataclass(frozen=True)
class HttpAnswer:
    path: str
    status: int
    reason: str
    body: str  # at most 64 KiB, decoded leniently
    elapsed_ms: float


def http_get(client: KubeClient, namespace: str, pod: str, port: int, path: str, *, timeout: float) -> HttpAnswer:
    """One plain HTTP/1.1 GET to a pod's port through a fresh port-forward (agnhost's control endpoints).

    Raises TunnelError with the tunnel's own error text when it has one, else the socket error.
    """
    import http.client

    started = time.perf_counter()
    with port_forward(client, namespace, pod, port, timeout=timeout) as fwd:
        conn = http.client.HTTPConnection("127.0.0.1", fwd.local_port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "kubectl-grpcprobe", "Connection": "close"})
            response = conn.getresponse()
            body = response.read(64 * 1024).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            if fwd.errors:
                raise TunnelError(fwd.errors[-1]) from None
            if isinstance(exc, http.client.BadStatusLine):
                first = str(exc.args[0] if exc.args else "")
                if len(first) >= 4 and first[3] == "\x04" and first.startswith("\x00"):  # an HTTP/2 SETTINGS frame
                    raise TunnelError("it answered in HTTP/2 (a gRPC port?), not HTTP/1.1") from None
                raise TunnelError("it did not answer in HTTP/1.1") from None
            raise TunnelError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        finally:
            conn.close()
    return HttpAnswer(path, response.status, response.reason, body, (time.perf_counter() - started) * 1000)
