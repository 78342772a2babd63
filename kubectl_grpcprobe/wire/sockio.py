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


def read_available(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything readable without blocking, and whether the stream hit EOF."""
    chunks = []
    eof = False
    while True:
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
    return b"".join(chunks), eof


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
