"""A loopback TCP relay that delays every chunk by `delay` seconds in each direction, without throttling.

    with LatencyRelay(upstream_port, delay=0.025) as relay:   # RTT 50 ms
        ... connect to 127.0.0.1:relay.port ...

Each direction has a reader, which stamps every chunk with the time it arrived, and a writer, which
sends it once that time plus `delay` has come: chunks keep their order and their spacing, and any
number can be in flight at once (a pipe of latency d, not a narrower pipe). TLS passes through it
untouched. The TCP handshake with the relay is local: only data pays the latency, as on a real network
after the SYN, which costs one more round trip there (the benchmark reports that apart).
"""

from __future__ import annotations

import queue
import socket
import threading
import time


class LatencyRelay:
    def __init__(self, upstream_port: int, delay: float, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="latency-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self.connections += 1
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._socks.append(sock)
            self._direction(client, server)
            self._direction(server, client)

    def _direction(self, src: socket.socket, dst: socket.socket) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                chunks.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        def write() -> None:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the latency itself
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass

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
