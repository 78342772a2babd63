"""RFC 6455 framing, shared by the port-forward client and the sandbox API server.

Only what the Kubernetes channel protocols use: binary/text messages, close, ping/pong,
continuation frames on receive. Kept dependency-free so that a probe pays no import cost
for a WebSocket library and so that both ends of our own tests speak the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MAX_MESSAGE = 4 * 1024 * 1024  # a whole message, fragments added up: refuse, don't allocate, past this


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid WebSocket stream."""


class ConnectionClosed(Exception):
    """The stream ended (EOF or a close frame)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"websocket closed (code {code})" if code else "websocket closed")
        self.code = code
        self.reason = reason


def accept_key(client_key: str) -> str:
    return base64.b64encode(hashlib.sha1(client_key.encode("ascii") + GUID).digest()).decode("ascii")


def new_client_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """One frame; clients must mask (RFC 6455 5.3), servers must not."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head.append(mask_bit | length)
    elif length < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", length)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + _xor(payload, key)


def _xor(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    # int-wide XOR is ~50x faster than a per-byte loop in pure Python.
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


class FrameReader:
    """Incremental decoder: feed() bytes, iterate complete (opcode, payload) messages.

    Control frames are returned as they come; fragmented data messages are reassembled.
    """

    def __init__(self, *, expect_masked: bool) -> None:
        self._buf = bytearray()
        self._expect_masked = expect_masked
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode >= 0x8:
                if not fin or len(payload) > 125:
                    raise ProtocolError("invalid control frame")
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                if not self._fragment_opcode:
                    raise ProtocolError("continuation frame without a message")
                self._fragments.append(payload)
                self._fragment_size += len(payload)
                if self._fragment_size > MAX_MESSAGE:
                    raise ProtocolError(f"fragmented message of over {MAX_MESSAGE} bytes is too large")
                if fin:
                    out.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments, self._fragment_opcode = [], 0
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragment_opcode:
                    raise ProtocolError("new message inside a fragmented one")
                if fin:
                    out.append((opcode, payload))
                else:
                    self._fragments, self._fragment_opcode = [payload], opcode
                    self._fragment_size = len(payload)
            else:
                raise ProtocolError(f"unknown opcode {opcode:#x}")

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise ProtocolError("reserved bits set (no extension was negotiated)")
        masked = bool(b1 & 0x80)
        if masked != self._expect_masked:
            raise ProtocolError("frame masking does not match the peer's role")
        length = b1 & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        if length > MAX_MESSAGE:
            raise ProtocolError(f"frame of {length} bytes is too large")
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            key = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + length:
            return None
        payload = bytes(buf[pos : pos + length])
        del buf[: pos + length]
        if masked:
            payload = _xor(payload, key)
        return bool(b0 & 0x80), b0 & 0x0F, payload


def close_payload(code: int = 1000, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:120]


def parse_close(payload: bytes) -> tuple[int | None, str]:
    if len(payload) < 2:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


class WebSocket:
    """One WebSocket over an already-upgraded socket (plain or TLS), driven by one thread.

    The socket is switched to non-blocking so that a selector loop can wait on it (see sockio);
    sends block up to `send_timeout`.
    """

    def __init__(self, sock, *, client: bool, send_timeout: float = 30.0) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._client = client
        self._reader = FrameReader(expect_masked=not client)
        self.send_timeout = send_timeout
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_closed = False  # a close frame arrived; data before it has been returned
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, opcode: int, payload: bytes) -> None:
        self._send_all(encode_frame(opcode, payload, mask=self._client))

    def receive(self) -> list[tuple[int, bytes]]:
        """Data messages readable now. Answers pings; raises ConnectionClosed at close or EOF."""
        if self.peer_closed:
            raise ConnectionClosed(self.close_code)
        data, eof = self._read_available()
        out = self.feed(data)
        if (eof or self.peer_closed) and not out:
            raise ConnectionClosed(self.close_code if self.peer_closed else None)
        return out

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Process bytes already read (e.g. past the upgrade response) as if received."""
        out = []
        for opcode, payload in self._reader.feed(data):
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_PONG:
                continue
            elif opcode == OP_CLOSE:
                # Hand back the data that came before the close; callers check peer_closed.
                code, reason = parse_close(payload)
                self.close_code = code if code is not None else 1005
                self.close_reason = "".join(c if c.isprintable() else "?" for c in reason)
                self.peer_closed = True
                if not self.closed:
                    self.closed = True
                    try:  # echo the close, as RFC 6455 5.5.1 asks
                        self._send_all(encode_frame(OP_CLOSE, payload[:2], mask=self._client))
                    except (OSError, TimeoutError):
                        pass
                break
            else:
                out.append((opcode, payload))
        return out

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (best effort) and close the socket."""
        if not self.closed:
            self.closed = True
            try:
                self._send_all(encode_frame(OP_CLOSE, close_payload(code, reason), mask=self._client))
            except (OSError, TimeoutError):
                pass
        self.abort()

    def abort(self) -> None:
        """Close the transport without a close frame (a dropped connection)."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _read_available(self) -> tuple[bytes, bool]:
        from .sockio import read_available

        return read_available(self.sock)

    def _send_all(self, data: bytes) -> None:
        from .sockio import send_all

        send_all(self.sock, data, self.send_timeout)
