"""The kubelet's SPDY/3.1 port-forward server (reference/portforward.md parts B and C), for real kubectl.

A small framing module instead of a library: the sandbox needs the server half of one use of
SPDY (stream pairs keyed by requestID, data copied to a container port, errors on the error
stream), and no maintained Python SPDY/3.1 package exists. Frames: SYN_STREAM, SYN_REPLY,
RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE and DATA; header blocks are zlib with
the SPDY/3 dictionary, one compression context per direction. The same session runs over the
upgraded TLS socket (classic) or inside WebSocket binary messages (KEP-4006 tunnel).

Flow control: we send WINDOW_UPDATEs for what we consume; we hold our own sends to the peer's
windows only once the peer shows it keeps them (sends a WINDOW_UPDATE) - spdystream, kubectl's
and the kubelet's library, never does, and the kubelet does not limit its sends either.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from .forwarding import Faults, _dial_error, forward_error_text

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_REFUSED_STREAM, RST_CANCEL = 1, 2, 3, 5
SETTINGS_INITIAL_WINDOW_SIZE = 7
INITIAL_WINDOW = 65536
STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's wait for the second stream of a pair
PROTOCOL = "portforward.k8s.io"
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"

_WORDS = [
    *(
        "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges age allow "
        "authorization cache-control connection content-base content-encoding content-language content-length "
        "content-location content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
        "proxy-authenticate proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
        "user-agent vary via warning www-authenticate method get status"
    ).split(),
    *["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"],
]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# The SPDY/3 header-compression dictionary (draft 3, 2.6.10.1): length-prefixed words, then a tail.
DICTIONARY = b"".join(struct.pack("!I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class SpdyError(Exception):
    pass


class Framer:
    """Incremental SPDY/3 frame reader and writer with the per-direction zlib contexts."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def feed(self, data: bytes) -> list[tuple]:
        """('control', type, flags, payload) or ('data', stream_id, flags, payload) for each complete frame."""
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            length = int.from_bytes(self._buf[5:8], "big")
            if len(self._buf) < 8 + length:
                break
            head, payload = bytes(self._buf[:8]), bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            flags = head[4]
            if head[0] & 0x80:
                version = struct.unpack("!H", head[:2])[0] & 0x7FFF
                if version != VERSION:
                    raise SpdyError(f"unsupported SPDY version {version}")
                out.append(("control", struct.unpack("!H", head[2:4])[0], flags, payload))
            else:
                out.append(("data", struct.unpack("!I", head[:4])[0] & 0x7FFFFFFF, flags, payload))
        return out

    def headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block)
        except zlib.error as exc:
            raise SpdyError(f"bad header block: {exc}") from None
        count = struct.unpack_from("!I", raw, 0)[0]
        pos, out = 4, {}
        for _ in range(count):
            n = struct.unpack_from("!I", raw, pos)[0]
            name = raw[pos + 4 : pos + 4 + n].decode("latin-1")
            pos += 4 + n
            n = struct.unpack_from("!I", raw, pos)[0]
            value = raw[pos + 4 : pos + 4 + n].decode("latin-1")
            pos += 4 + n
            out[name.lower()] = value.split("\x00")
        return out

    def encode_headers(self, headers: dict[str, list[str]]) -> bytes:
        raw = struct.pack("!I", len(headers))
        for name, values in headers.items():
            n, v = name.lower().encode("latin-1"), "\x00".join(values).encode("latin-1")
            raw += struct.pack("!I", len(n)) + n + struct.pack("!I", len(v)) + v
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


def control(frame_type: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


@dataclass
class _Stream:
    sid: int
    kind: str  # "data" | "error"
    request_id: str
    port_text: str
    send_window: int = INITIAL_WINDOW
    pending: bytearray = field(default_factory=bytearray)
    pending_fin: bool = False
    local_closed: bool = False  # we sent FIN
    remote_closed: bool = False  # peer sent FIN


@dataclass
class _Pair:
    request_id: str
    created: float
    data: _Stream | None = None
    error: _Stream | None = None
    conn: socket.socket | None = None


class Session:
    """One upgraded connection: run() until the peer goes away, every pair is done, or stop is set."""

    def __init__(self, transport: Any, net: Any, faults: Faults, stop: threading.Event) -> None:
        self.t = transport
        self.net = net
        self.faults = faults
        self.stop = stop
        self.framer = Framer()
        self.streams: dict[int, _Stream] = {}
        self.pairs: dict[str, _Pair] = {}
        self.sel = selectors.DefaultSelector()
        self.peer_keeps_windows = False
        self.session_window = INITIAL_WINDOW
        self.initial_window = INITIAL_WINDOW
        self.goaway = False
        self.forwarded = 0

    # -- writing ----------------------------------------------------------------------------

    def _send(self, raw: bytes) -> None:
        self.t.send(raw)

    def _send_data(self, stream: _Stream, payload: bytes, fin: bool = False) -> None:
        if stream.local_closed:
            return
        stream.pending += payload
        stream.pending_fin = stream.pending_fin or fin
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        while stream.pending or (stream.pending_fin and not stream.local_closed):
            size = len(stream.pending)
            if self.peer_keeps_windows:
                size = min(size, stream.send_window, self.session_window)
                if size <= 0 and stream.pending:
                    return  # wait for a WINDOW_UPDATE
            chunk = bytes(stream.pending[:size])
            del stream.pending[:size]
            last = stream.pending_fin and not stream.pending
            self._send(data_frame(stream.sid, FLAG_FIN if last else 0, chunk))
            stream.send_window -= len(chunk)
            self.session_window -= len(chunk)
            if last:
                stream.local_closed = True
                return

    def _rst(self, sid: int, status: int) -> None:
        self._send(control(RST_STREAM, 0, struct.pack("!II", sid & 0x7FFFFFFF, status)))

    # -- reading ----------------------------------------------------------------------------

    def run(self) -> None:
        self.sel.register(self.t.fileno(), selectors.EVENT_READ, None)
        try:
            while not self.stop.is_set():
                for key, _ in self.sel.select(timeout=0.5):
                    if key.data is None:
                        data, eof = self.t.receive()
                        if data:
                            for frame in self.framer.feed(data):
                                self._handle(frame)
                        if eof:
                            return
                    else:
                        self._from_container(key.data)
                self._expire_pairs()
                if self.goaway and not self.pairs:
                    return
        except SpdyError:
            self._send(control(GOAWAY, 0, struct.pack("!II", 0, 1)))  # PROTOCOL_ERROR
        except (OSError, TimeoutError):
            pass
        finally:
            for pair in self.pairs.values():
                if pair.conn is not None:
                    pair.conn.close()
            self.sel.close()
            self.t.close()

    def _handle(self, frame: tuple) -> None:
        if frame[0] == "data":
            _, sid, flags, payload = frame
            self._from_peer(sid, flags, payload)
            return
        _, ftype, flags, payload = frame
        if ftype == SYN_STREAM:
            sid = struct.unpack_from("!I", payload, 0)[0] & 0x7FFFFFFF
            headers = self.framer.headers(payload[10:])
            self._new_stream(sid, flags, headers)
        elif ftype == RST_STREAM:
            sid = struct.unpack_from("!I", payload, 0)[0] & 0x7FFFFFFF
            self._end_pair_of(sid)
        elif ftype == SETTINGS:
            count = struct.unpack_from("!I", payload, 0)[0]
            for i in range(count):
                flag_id, value = struct.unpack_from("!II", payload, 4 + 8 * i)
                if flag_id & 0xFFFFFF == SETTINGS_INITIAL_WINDOW_SIZE:
                    self.initial_window = value
        elif ftype == PING:
            self._send(control(PING, 0, payload[:4]))  # answer the peer's ping with its own id
        elif ftype == GOAWAY:
            self.goaway = True
        elif ftype == HEADERS:
            self.framer.headers(payload[4:])  # keep the decompression context in step
        elif ftype == WINDOW_UPDATE:
            sid, delta = struct.unpack_from("!II", payload, 0)
            self.peer_keeps_windows = True
            if sid & 0x7FFFFFFF == 0:
                self.session_window += delta & 0x7FFFFFFF
            elif (stream := self.streams.get(sid & 0x7FFFFFFF)) is not None:
                stream.send_window += delta & 0x7FFFFFFF
            for stream in list(self.streams.values()):
                self._flush(stream)

    def _new_stream(self, sid: int, flags: int, headers: dict[str, list[str]]) -> None:
        kind = (headers.get("streamtype") or [""])[0]
        request_id = (headers.get("requestid") or [""])[0]
        port_text = (headers.get("port") or [""])[0]
        if kind not in ("data", "error"):
            self._rst(sid, RST_PROTOCOL_ERROR)
            return
        stream = _Stream(sid, kind, request_id, port_text, send_window=self.initial_window, remote_closed=bool(flags & FLAG_FIN))
        self.streams[sid] = stream
        self._send(control(SYN_REPLY, 0, struct.pack("!I", sid) + self.framer.encode_headers({})))
        pair = self.pairs.setdefault(request_id, _Pair(request_id, time.monotonic()))
        setattr(pair, kind, stream)
        if pair.data is not None and pair.error is not None:
            self._connect(pair)

    def _connect(self, pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        text = pair.data.port_text
        if not text:
            return self._fail(pair, '"port" header is required')
        from .streaming import parse_uint16

        try:
            port = parse_uint16(text)
        except ValueError as exc:  # the kubelet's words (httpstream.go), Go's strconv error inside
            return self._fail(pair, f'unable to parse "{text}" as a port: {exc}')
        if port < 1:
            return self._fail(pair, f'port "{text}" must be > 0')
        target = self.net.ports.get(port)
        try:
            if target is None:
                raise ConnectionRefusedError(111, "connection refused")
            conn = socket.create_connection(target, timeout=5)
        except OSError as exc:
            return self._fail(pair, forward_error_text(self.net, port, _dial_error(port, exc)))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(30)
        pair.conn = conn
        self.sel.register(conn, selectors.EVENT_READ, pair)
        return None

    def _fail(self, pair: _Pair, message: str) -> None:
        """The kubelet writes the error on the error stream and closes both streams."""
        if pair.error is not None:
            self._send_data(pair.error, message.encode(), fin=True)
        if pair.data is not None:
            self._send_data(pair.data, b"", fin=True)
        self.pairs.pop(pair.request_id, None)

    def _from_peer(self, sid: int, flags: int, payload: bytes) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self._rst(sid, RST_INVALID_STREAM)
            return
        if payload:
            self._send(control(WINDOW_UPDATE, 0, struct.pack("!II", sid, len(payload))))
            self._send(control(WINDOW_UPDATE, 0, struct.pack("!II", 0, len(payload))))
        pair = self.pairs.get(stream.request_id)
        if stream.kind == "data" and pair is not None and pair.conn is not None and payload:
            if self.faults.chunk_latency and self.stop.wait(self.faults.chunk_latency):
                return
            self._count(len(payload))
            pair.conn.sendall(payload)
        if flags & FLAG_FIN:
            stream.remote_closed = True
            if stream.kind == "data" and pair is not None and pair.conn is not None:
                try:
                    pair.conn.shutdown(socket.SHUT_WR)  # SPDY streams half-close; TCP can say so too
                except OSError:
                    pass

    def _from_container(self, pair: _Pair) -> None:
        assert pair.conn is not None and pair.data is not None and pair.error is not None
        try:
            data = pair.conn.recv(65536)
        except OSError:
            data = b""
        if data:
            if self.faults.chunk_latency and self.stop.wait(self.faults.chunk_latency):
                return
            self._count(len(data))
            self._send_data(pair.data, data)
            return
        # The container closed its end: the forward of this pair is over.
        self.sel.unregister(pair.conn)
        pair.conn.close()
        pair.conn = None
        self._send_data(pair.data, b"", fin=True)
        self._send_data(pair.error, b"", fin=True)
        self.pairs.pop(pair.request_id, None)

    def _end_pair_of(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        pair = self.pairs.pop(stream.request_id, None)
        if pair is not None and pair.conn is not None:
            self.sel.unregister(pair.conn)
            pair.conn.close()

    def _expire_pairs(self) -> None:
        now = time.monotonic()
        for pair in list(self.pairs.values()):
            if pair.conn is None and (pair.data is None or pair.error is None) and now - pair.created > STREAM_CREATION_TIMEOUT:
                self._fail(pair, "timed out waiting for streams")

    def _count(self, n: int) -> None:
        self.forwarded += n
        if self.faults.drop_after_bytes is not None and self.forwarded >= self.faults.drop_after_bytes:
            self.t.abort()
            raise OSError("dropped by the drop_after_bytes fault")


class SocketTransport:
    """Classic SPDY: the upgraded (TLS) socket itself."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> tuple[bytes, bool]:
        from ...wire.sockio import read_available

        return read_available(self.sock)

    def send(self, raw: bytes) -> None:
        from ...wire.sockio import send_all

        send_all(self.sock, raw, 30.0)

    def abort(self) -> None:
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class WebSocketTransport:
    """KEP-4006: the SPDY byte stream inside WebSocket binary messages; close is a 1000 close frame."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def fileno(self) -> int:
        return self.ws.fileno()

    def receive(self) -> tuple[bytes, bool]:
        from ...wire import wsframe

        try:
            messages = self.ws.receive()
        except wsframe.ConnectionClosed:
            return b"", True
        data = b"".join(payload for opcode, payload in messages if opcode == wsframe.OP_BINARY)
        return data, self.ws.peer_closed

    def send(self, raw: bytes) -> None:
        from ...wire import wsframe

        self.ws.send(wsframe.OP_BINARY, raw)

    def abort(self) -> None:
        self.ws.abort()

    def close(self) -> None:
        if not self.ws.closed:
            self.ws.close(1000)
