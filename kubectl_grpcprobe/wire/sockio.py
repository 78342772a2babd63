"""Non-blocking reads and writes that work the same on plain and TLS sockets, for selector loops.

With TLS, select() can report a socket readable for bytes that carry no application data (a TLS
1.3 session ticket); a blocking read would then stall the loop. So: read until the socket would
block, and retry writes (with the same bytes, as OpenSSL wants) until sent or out of time.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

READ_LIMIT = 1 << 20


def read_available(sock: socket.socket, limit: int = READ_LIMIT) -> tuple[bytes, bool]:
    """What is readable without blocking, up to `limit` bytes, and whether the stream hit EOF.

    The limit keeps a flooding peer from growing memory: the rest waits in the kernel, or in OpenSSL's
    buffer, where `has_pending` tells a selector loop to come back without waiting.
    """
    chunks = []
    total = 0
    eof = False
    while total < limit:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            break
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError, ssl.SSLZeroReturnError):
            chunk = b""
        if not chunk:
            eof = True
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks), eof


def has_pending(sock: socket.socket) -> bool:
    """Decrypted bytes OpenSSL holds that select() cannot see."""
    try:
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
    except (OSError, ValueError):
        return False


def send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Send everything on a non-blocking socket; TimeoutError if the peer stops reading."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            sent = sock.send(view)
            view = view[sent:]
            continue
        except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            want_read = False
        except ssl.SSLWantReadError:
            want_read = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("send timed out: the peer is not reading")
        if want_read:
            select.select([sock], [], [], remaining)
        else:
            select.select([], [sock], [], remaining)
