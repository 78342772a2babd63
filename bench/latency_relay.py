"""A loopback TCP relay that delays every chunk by `delay` seconds in each direction, without throttling.

    with LatencyRelay(upstream_port, delay=0.025) as relay:   # RTT 50 ms
        ... connect to 127.0.0.1:relay.port ...

Every chunk read is stamped with the time it arrived and written once that time plus `delay` has come:
chunks keep their order and their spacing, and any number can be in flight at once (a pipe of latency d,
not a narrower pipe). TLS passes through it untouched. The TCP handshake with the relay is local: only
data pays the latency, as on a real network after the SYN, which costs one more round trip there (the
benchmark reports that apart).

One thread runs one selector loop over every connection, with a heap of chunks by due time. On a real
network the latency costs neither end any CPU, so the relay must cost as little as it can: the first
version, four threads per connection, spent 0.5 s of CPU per 200-pod fleet run on a 2-core machine,
time the plugin and the API server then did not get.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import threading
import time


class _Direction:
    """src -> dst: the bytes due to dst that it has not taken yet, and whether src's EOF is to be passed on."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.pending = bytearray()
        self.eof_due = False  # src's EOF has come through the delay: shut dst's write side once `pending` is out
        self.done = False


class LatencyRelay:
    def __init__(self, upstream_port: int, delay: float, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._due: list[tuple[float, int, _Direction, bytes]] = []  # (due time, sequence, direction, chunk; b"" = EOF)
        self._seq = itertools.count()
        self._socks: dict[socket.socket, list[_Direction]] = {}  # each socket -> the directions it reads or writes
        self._thread = threading.Thread(target=self._run, name="latency-relay", daemon=True)
        self._thread.start()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = None if not self._due else max(0.0, self._due[0][0] - time.monotonic())
            for key, events in self._sel.select(timeout):
                if key.data == "wake":
                    return
                if key.data is None:
                    self._accept()
                    continue
                reader, writer = key.data
                if events & selectors.EVENT_READ and reader is not None and not reader.done:
                    self._read(reader)
                if events & selectors.EVENT_WRITE and writer is not None:
                    self._flush(writer)
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, _, direction, chunk = heapq.heappop(self._due)
                if direction.done:
                    continue
                if chunk:
                    direction.pending += chunk
                else:
                    direction.eof_due = True
                self._flush(direction)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self.connections += 1
            up, down = _Direction(client, server), _Direction(server, client)
            for sock, reads, writes in ((client, up, down), (server, down, up)):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                self._socks[sock] = [up, down]
                self._sel.register(sock, selectors.EVENT_READ, (reads, writes))

    def _read(self, direction: _Direction) -> None:
        try:
            chunk = direction.src.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        heapq.heappush(self._due, (time.monotonic() + self.delay, next(self._seq), direction, chunk))
        if not chunk:  # EOF: stop reading this side; the EOF itself travels with the delay
            self._set_events(direction.src, read=False)

    def _flush(self, direction: _Direction) -> None:
        try:
            while direction.pending:
                sent = direction.dst.send(direction.pending)
                del direction.pending[:sent]
        except (BlockingIOError, InterruptedError):
            self._set_events(direction.dst, write=True)  # the receiver is slow: its bytes wait here, as in a pipe
            return
        except OSError:
            direction.pending.clear()
            direction.eof_due = True
        self._set_events(direction.dst, write=False)
        if direction.eof_due and not direction.done:
            direction.done = True
            try:
                direction.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._maybe_close(direction)

    def _set_events(self, sock: socket.socket, *, read: bool | None = None, write: bool | None = None) -> None:
        try:
            key = self._sel.get_key(sock)
        except (KeyError, ValueError):
            return
        reads, writes = key.data
        wants_read = bool(key.events & selectors.EVENT_READ) if read is None else read
        wants_write = bool(key.events & selectors.EVENT_WRITE) if write is None else write
        events = (selectors.EVENT_READ if wants_read else 0) | (selectors.EVENT_WRITE if wants_write else 0)
        if events == key.events:
            return
        if events:
            self._sel.modify(sock, events, (reads, writes))
        else:
            self._sel.unregister(sock)

    def _maybe_close(self, direction: _Direction) -> None:
        """Both directions delivered their EOF: the connection is over."""
        up, down = self._socks[direction.src]
        if up.done and down.done:
            for sock in (up.src, up.dst):
                self._socks.pop(sock, None)
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(5)
        self.listener.close()
        for sock in list(self._socks):
            sock.close()
        self._socks.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> LatencyRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    """`python bench/latency_relay.py UPSTREAM_PORT DELAY_SECONDS`: serve in this process (its own GIL), print the port."""
    import sys

    relay = LatencyRelay(int(sys.argv[1]), float(sys.argv[2]))
    print(relay.port, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        relay.close()


if __name__ == "__main__":
    main()
