"""TLS inside TLS, for an https:// proxy: TLS to the proxy, CONNECT, then the API server's own TLS inside it.

Python's ssl cannot wrap an SSLSocket in another one, and everything above wants a real socket (blocking
reads with timeouts, select() in the port-forward bridge). So one thread pumps bytes between the TLS
connection to the proxy and one end of a socketpair; the inner TLS is made on the other end, a real
socket. Closing that end ends the pump, which closes the connection to the proxy.
"""

from __future__ import annotations

import selectors
import socket
import ssl

from .. import stop
from .sockio import has_pending, read_available, send_all

SEND_TIMEOUT = 30.0  # a side that stops reading for this long ends the tunnel


def through(outer: ssl.SSLSocket) -> socket.socket:
    """A socket whose bytes travel inside `outer`; the caller owns it (and, through it, `outer`)."""
    near, far = socket.socketpair()
    outer.setblocking(False)
    far.setblocking(False)

    def pump() -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(outer, selectors.EVENT_READ, "outer")
            sel.register(far, selectors.EVENT_READ, "far")
            while True:
                # Bytes OpenSSL already decrypted do not wake select().
                ready = {key.data for key, _ in sel.select(0 if has_pending(outer) else None)}
                if has_pending(outer):
                    ready.add("outer")
                for side in ready:
                    src, dst = (outer, far) if side == "outer" else (far, outer)
                    data, eof = read_available(src)
                    if data:
                        send_all(dst, data, SEND_TIMEOUT)
                    if eof:
                        return
        except (OSError, ValueError, TimeoutError):
            return
        finally:
            sel.close()
            for sock in (far, outer):
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    stop.thread(pump, name="grpcprobe-proxy-tls").start()
    return near
