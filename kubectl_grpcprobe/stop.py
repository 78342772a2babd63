"""Stopping a run's work in every thread at once: Ctrl-C, SIGTERM, or a fleet's --deadline.

A signal lands in the main thread only, but the work may be elsewhere: a fleet's workers, or the
helper thread a check runs in. (A check never runs where a signal can land: grpcio's
channel.close() waits for a connectivity watch that a KeyboardInterrupt abandoned, for ever.)

So a run has a Scope, carried by a context variable into the threads the run starts. Whoever
catches the signal or sees the deadline calls `scope.stop(reason)`: it sets a flag that work polls
at its waiting points (`check()` raises Stopped), and runs every closer registered in the scope -
shut the API sockets, close the gRPC channels - so that threads blocked in them return now, not
at a timeout. Code outside any run (the sandbox's kubelet, which shares the check) has no scope
and is never stopped.
"""

from __future__ import annotations

import contextvars
import itertools
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import Terminated

T = TypeVar("T")

INTERRUPTED = "interrupted"
TERMINATED = "terminated"
DEADLINE = "deadline exceeded"

WAIT_SLICE = 0.1  # seconds: the longest the main thread sleeps in one call, so a signal is seen within it
_STOP_SIGNALS = {signal.SIGINT} | ({signal.SIGTERM} if hasattr(signal, "SIGTERM") else set())


class Stopped(BaseException):
    """Raised in a thread that notices a stop; BaseException so that no `except Exception` turns it into a result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Scope:
    def __init__(self) -> None:
        self.reason: str | None = None
        self._closers: dict[int, Callable[[], None]] = {}
        self._tokens = itertools.count()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        """Flag the stop (the first reason wins) and unblock every thread waiting on something registered here."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            closers = list(self._closers.values())
            sockets = list(self._sockets)
        for close in closers:
            try:
                close()
            except Exception:  # a closer that fails has nothing left to unblock
                pass
        for sock in sockets:
            try:
                # The base class: an SSLSocket's own shutdown() would drop its SSL object under a reader's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("grpcprobe_stop_scope", default=None)


def reason_for(exc: BaseException) -> str:
    return TERMINATED if isinstance(exc, Terminated) else INTERRUPTED


@contextmanager
def scope() -> Iterator[Scope]:
    """A run's scope, current in this thread and in every thread started with `spawn` or `off_main_thread`.

    Leaving it by an exception stops it, so that nothing the run registered outlives the run.
    """
    own = Scope()
    token = _current.set(own)
    try:
        yield own
    except BaseException as exc:
        own.stop(exc.reason if isinstance(exc, Stopped) else reason_for(exc))
        raise
    finally:
        _current.reset(token)


def requested() -> str | None:
    own = _current.get()
    return own.reason if own else None


def check() -> None:
    """Raise Stopped if the current run was stopped."""
    reason = requested()
    if reason is not None:
        raise Stopped(reason)


@contextmanager
def on_stop(close: Callable[[], None]) -> Iterator[None]:
    """Run `close` if the current run stops while the block runs (at once if it already has)."""
    own = _current.get()
    if own is None:
        yield
        return
    with own._lock:
        token = next(own._tokens)
        own._closers[token] = close
        already = own.reason is not None
    try:
        if already:
            close()
        yield
    finally:
        with own._lock:
            own._closers.pop(token, None)


def track_socket(sock: socket.socket) -> socket.socket:
    """Remember an API connection so that a stop can shut it; forgotten when the socket is collected."""
    own = _current.get()
    if own is not None:
        with own._lock:
            own._sockets.add(sock)
        if own.reason is not None:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
    return sock


def thread(target: Callable[[], None], *, name: str) -> threading.Thread:
    """A daemon thread (not started) that runs `target` inside the current run's scope, deaf to SIGINT and SIGTERM.

    A signal sent to the process goes to any thread that does not block it. Python handles it only in
    the main thread, and only once that thread's current wait returns: one delivered to a worker
    would leave the main thread asleep. So every thread of ours blocks them (the threads grpcio's C
    core starts from ours inherit that), and the main thread never waits long in one call (WAIT_SLICE).
    """
    context = contextvars.copy_context()

    def run() -> None:
        if hasattr(signal, "pthread_sigmask"):  # POSIX; Windows has no per-thread signal masks
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        context.run(target)

    return threading.Thread(target=run, name=name, daemon=True)


def spawn(target: Callable[[], None], *, name: str) -> threading.Thread:
    """thread(), started."""
    started = thread(target, name=name)
    started.start()
    return started


def wait(event: threading.Event, timeout: float | None = None) -> bool:
    """Event.wait for the main thread: in slices, so that a pending signal is acted on within WAIT_SLICE.

    Once a signal's exception has come out of it, do not wait on that Event (or any lock-based object it was
    waiting in) again: the exception may have left its lock held."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = WAIT_SLICE if end is None else min(WAIT_SLICE, end - time.monotonic())
        if left <= 0:
            return event.is_set()
        if event.wait(left):
            return True


def off_main_thread(work: Callable[[], T], *, name: str, grace: float = 0.8) -> T:
    """Run `work` in a helper thread when called from the main thread, so that a signal never lands inside it.

    The main thread waits; on KeyboardInterrupt or SIGTERM it stops the run, gives the helper `grace`
    seconds to unwind (its closers make that quick) and re-raises. The helper is a daemon: it can
    never hold the process open.
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    if _current.get() is None:  # a stop must have somewhere to land
        with scope():
            return off_main_thread(work, name=name, grace=grace)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    helper = spawn(target, name=name)
    try:
        wait(done)
    except BaseException as exc:
        own = _current.get()
        if own is not None:
            own.stop(reason_for(exc))
        # Not done.wait(): an exception raised inside Condition.wait can leave that Event's lock held, and a second
        # wait on it would then block for ever. join() waits on another lock.
        helper.join(grace)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]
