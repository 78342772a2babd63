"""The benchmark's latency relay (bench/latency_relay.py): what it adds is latency, and nothing else."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from latency_relay import LatencyRelay


def echo_server() -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)  # EOF answered with EOF

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_round_trip_pays_the_delay_both_ways_and_bytes_arrive_intact_in_order() -> None:
    listener, thread = echo_server()
    delay = 0.03
    payload = os.urandom(3 * 1024 * 1024)  # many chunks: order and completeness matter
    with listener, LatencyRelay(listener.getsockname()[1], delay) as relay, socket.create_connection(("127.0.0.1", relay.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert time.monotonic() - started >= 2 * delay  # there and back: never less than the delay twice

        received = bytearray()
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        while chunk := sock.recv(1 << 20):
            received += chunk
        sender.join()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()  # EOF came through, after every byte
        thread.join(5)
        assert relay.connections == 1


def test_many_connections_are_in_flight_at_once_not_queued_behind_each_other() -> None:
    """A pipe of latency d, not a narrower pipe: 50 simultaneous round trips take about one delay, not 50."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    conns: list[socket.socket] = []
    accepted = threading.Event()

    def serve() -> None:
        for _ in range(50):
            conns.append(listener.accept()[0])
        accepted.set()
        for conn in conns:
            conn.sendall(b"x")

    delay = 0.2
    threading.Thread(target=serve, daemon=True).start()
    with listener, LatencyRelay(listener.getsockname()[1], delay) as relay:
        clients = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(50)]
        assert accepted.wait(10)
        started = time.monotonic()
        for client in clients:
            client.settimeout(10)
            assert client.recv(1) == b"x"
        waited = time.monotonic() - started
        # Each answer was written within moments of the others, so each arrives about `delay` later; queued
        # one behind another they would take 50 x delay = 10 s.
        assert waited < 25 * delay
        for client in clients + conns:
            client.close()
