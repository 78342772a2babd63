"""A port-forward through the API server, as a context manager that yields a bound local port.

    with port_forward(client, "default", "test-grpc", 5000, timeout=5) as fwd:
        grpc.insecure_channel(f"127.0.0.1:{fwd.local_port}")

Every local TCP connection gets its own WebSocket (the protocol carries one connection per port
per WebSocket), so each probe execution is a fresh connection end to end, as the kubelet's is.
The first WebSocket is opened before the context is entered: RBAC and "no host" errors surface
as exceptions there, and its set-up time is measured apart from the probe's deadline.
One thread (a TunnelLoop) runs a selector loop over the listener and every pair; a fleet shares one
among all its forwards. Leaving the context closes every socket of the forward, and its own loop's thread.
"""

from __future__ import annotations

import base64
import collections
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
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


class TunnelLoop:
    """One selector thread that bridges the local connections of any number of forwards.

    A single probe gets a loop of its own. A fleet shares one among all its pods: with a thread per forward,
    the GIL handoffs between dozens of bridge threads, each woken for every chunk, cost more CPU than the
    bridging itself (bench/RESULTS.md). Nothing in the loop waits on the network except a send the kernel cannot
    take at once, which a tunnel's few hundred bytes of gRPC never meet; opening a second WebSocket for a
    forward happens in a helper thread. A bug in one forward's handling is that forward's failure, not the loop's.
    """

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._commands: collections.deque[tuple[_Bridge, Callable[[], None]]] = collections.deque()
        self._lock = threading.Lock()
        self.bridges: set[_Bridge] = set()
        self._closed = threading.Event()
        self._thread = stop.spawn(self._run, name="grpcprobe-portforward")

    def call(self, bridge: _Bridge, command: Callable[[], None]) -> bool:
        """Run `command`, for `bridge`, in the loop's thread, soon (the only thread that touches the selector and
        the pairs); False when the loop is closed and will run nothing more."""
        with self._lock:
            if self._closed.is_set():
                return False
            self._commands.append((bridge, command))
        self._wake()
        return True

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug in the loop itself: every forward it held reports it
            for bridge in list(self.bridges):
                bridge.failure = exc
        finally:
            self._run_commands()  # queued before the close: a detach someone waits for, an adoption to undo
            for bridge in list(self.bridges):
                bridge.detach()
            self.sel.close()

    def join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        while not self._closed.is_set():
            # Bytes OpenSSL already decrypted do not wake select(): poll instead while any are held
            # (reads are capped, so a flood leaves some there on purpose).
            backlog = [(bridge, pair) for bridge in self.bridges for pair in bridge.pairs if has_pending(pair.ws.sock)]
            for bridge, pair in backlog:
                if pair in bridge.pairs:
                    self._dispatch(bridge, bridge.from_remote, pair)
            for key, _ in self.sel.select(0 if backlog else None):
                if key.data is None:
                    self._run_commands()
                    continue
                bridge, what = key.data
                if bridge not in self.bridges:  # removed earlier in this same batch
                    continue
                if what == "accept":
                    self._dispatch(bridge, bridge.accept)
                else:
                    pair, side = what
                    if pair in bridge.pairs:
                        self._dispatch(bridge, bridge.from_local if side == "local" else bridge.from_remote, pair)

    def _run_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._commands:
            self._dispatch(*self._commands.popleft())

    def _dispatch(self, bridge: _Bridge, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except BaseException as exc:  # a bug: this forward's, surfaced when its context exits; the others go on
            bridge.failure = exc
            bridge.detach()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
        self._wake()
        self.join()
        self._wake_r.close()
        self._wake_w.close()


@contextmanager
def shared_loop() -> Iterator[TunnelLoop]:
    """A TunnelLoop for many forwards (a fleet run); closed, with anything still bridged, on exit."""
    loop = TunnelLoop()
    try:
        yield loop
    finally:
        loop.close()


class _Bridge:
    """One forward: its listener, the WebSocket opened ahead for the first connection, and its pairs, all
    driven by a TunnelLoop's thread."""

    def __init__(self, client: KubeClient, path: str, port: int, timeout: float, forward: Forward, loop: TunnelLoop) -> None:
        self.client = client
        self.path = path
        self.port = port
        self.timeout = timeout
        self.forward = forward
        self.loop = loop
        self.failure: BaseException | None = None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))  # loopback only, and port 0: the kernel picks, no races
        self.listener.listen(16)
        self.listener.setblocking(False)
        forward.local_port = self.listener.getsockname()[1]
        self._spare: tuple[socket.socket, str, bytes] | None = None
        self.pairs: list[_Pair] = []
        self._detached = threading.Event()
        self._stopping = False

    def open_websocket(self) -> tuple[socket.socket, str, bytes]:
        return self.client.upgrade_websocket(self.path, [("ports", self.port)], PROTOCOLS, self.timeout)

    def start(self) -> None:
        self._spare = self.open_websocket()
        self.loop.call(self, self._attach)

    def _attach(self) -> None:
        if self._stopping:
            return
        self.loop.bridges.add(self)
        self.loop.sel.register(self.listener, selectors.EVENT_READ, (self, "accept"))

    def detach(self) -> None:
        """In the loop's thread: unregister and close everything of this forward."""
        self.loop.bridges.discard(self)
        for sock in [self.listener] + [s for pair in self.pairs for s in (pair.local, pair.ws.sock)]:
            try:
                self.loop.sel.unregister(sock)
            except (KeyError, ValueError, RuntimeError):  # never registered, or the loop's selector is closed
                pass
        for pair in self.pairs:
            pair.ws.close()
            pair.local.close()
        self.pairs.clear()
        self._detached.set()

    def stop(self) -> None:
        self._stopping = True
        for pair in list(self.pairs):
            try:  # unblocks a sendall to a local client that stopped reading, so the loop gets to the detach
                pair.local.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not self.loop.call(self, self.detach):  # the loop is closing: its last act detaches whatever it still holds
            self.loop.join()
            if not self._detached.is_set():
                self.detach()
        self._detached.wait()
        if self._spare is not None:
            self._spare[0].close()
            self._spare = None
        self.listener.close()

    # -- in the loop's thread -------------------------------------------------------------------

    def accept(self) -> None:
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
            self._adopt(local, sock, protocol, rest)
            return

        def open_for_it() -> None:  # a network round trip or two: never in the loop's thread
            try:
                sock, protocol, rest = self.open_websocket()
            except Exception as exc:
                text = str(exc)
                if not self.loop.call(self, lambda: (self.forward.note(text), local.close())):
                    local.close()
                return
            if not self.loop.call(self, lambda: self._adopt(local, sock, protocol, rest)):
                local.close()
                sock.close()

        stop.spawn(open_for_it, name=f"grpcprobe-portforward-open-{self.port}")

    def _adopt(self, local: socket.socket, sock: socket.socket, protocol: str, rest: bytes) -> None:
        if self not in self.loop.bridges:  # stopped meanwhile
            local.close()
            sock.close()
            return
        ws = wsframe.WebSocket(sock, client=True)
        pair = _Pair(local, ws, protocol == "v4.base64.channel.k8s.io", self.port)
        self.pairs.append(pair)
        self.loop.sel.register(local, selectors.EVENT_READ, (self, (pair, "local")))
        self.loop.sel.register(sock, selectors.EVENT_READ, (self, (pair, "remote")))
        if rest:  # frames that arrived with the upgrade response
            self._receive(pair, lambda: ws.feed(rest))

    def _close_pair(self, pair: _Pair, *, dropped: bool = False) -> None:
        if pair not in self.pairs:
            return
        self.pairs.remove(pair)
        for sock in (pair.local, pair.ws.sock):
            try:
                self.loop.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        if dropped:
            self.forward.dropped = True
            pair.ws.abort()
        else:
            pair.ws.close()
        pair.local.close()

    def from_local(self, pair: _Pair) -> None:
        try:
            data = pair.local.recv(65536)
        except OSError:
            data = b""
        if not data:
            # The protocol has no half-close: the forward of this connection is over.
            self._close_pair(pair)
            return
        try:
            pair.send_local_data(data)
        except (OSError, TimeoutError):
            self._close_pair(pair, dropped=True)

    def from_remote(self, pair: _Pair) -> None:
        self._receive(pair, pair.ws.receive)

    def _receive(self, pair: _Pair, read: Callable[[], list[tuple[int, bytes]]]) -> None:
        try:
            messages = read()
        except wsframe.ConnectionClosed as closed:
            self._note_close(pair)
            self._close_pair(pair, dropped=closed.code is None)
            return
        except (OSError, wsframe.ProtocolError) as exc:
            if isinstance(exc, wsframe.ProtocolError):
                self.forward.note(f"port-forward stream error: {exc}")
            self._close_pair(pair, dropped=True)
            return
        self._handle_messages(pair, messages)
        if pair.ws.peer_closed:
            self._note_close(pair)
            self._close_pair(pair)

    def _note_close(self, pair: _Pair) -> None:
        """A close other than normal (1000) or going-away (1001) says why the API server ended the stream."""
        code, reason = pair.ws.close_code, pair.ws.close_reason
        if code is not None and code not in (1000, 1001, 1005):
            self.forward.note(f"port-forward: the API server closed the stream with code {code}" + (f": {reason}" if reason else ""))

    def _handle_messages(self, pair: _Pair, messages: list[tuple[int, bytes]]) -> None:
        for opcode, payload in messages:
            try:
                decoded = pair.decode(opcode, payload)
            except wsframe.ProtocolError as exc:
                self.forward.note(str(exc))
                self._close_pair(pair, dropped=True)
                return
            if decoded is None:
                continue
            channel, data = decoded
            if channel not in (0, 1):
                self.forward.note(f"port-forward stream error: unexpected channel {channel}")
                self._close_pair(pair, dropped=True)
                return
            if not pair.preamble[channel]:
                # The first message on each channel is the port number, little-endian.
                if len(data) < 2 or struct.unpack("<H", data[:2])[0] != self.port:
                    self.forward.note(f"port-forward stream error: bad port preamble on channel {channel}")
                    self._close_pair(pair, dropped=True)
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
                self._close_pair(pair)
                return


@contextmanager
def port_forward(
    client: KubeClient, namespace: str, pod: str, port: int, *, timeout: float, loop: TunnelLoop | None = None
) -> Iterator[Forward]:
    """Forward 127.0.0.1:<ephemeral> to `port` of the pod; raises ApiError/ConnectError if the upgrade fails.

    `loop`: a shared TunnelLoop (fleets); without one, the forward gets a loop of its own."""
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/portforward"
    start = time.perf_counter()
    forward = Forward(local_port=0, setup_ms=0.0)
    own = loop is None
    bridge = _Bridge(client, path, port, timeout, forward, loop or TunnelLoop())
    try:
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
    finally:
        if own:
            bridge.loop.close()


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
