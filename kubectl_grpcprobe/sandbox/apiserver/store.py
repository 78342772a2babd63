"""The sandbox's object store: one resourceVersion counter, an event log for watches.

Objects are plain JSON dicts exactly as served. Every mutation bumps the resourceVersion and
appends (rv, resource, type, snapshot) to a bounded log that watchers replay from.
"""

from __future__ import annotations

import bisect
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]
_LOG_LIMIT = 10_000


class Conflict(Exception):
    pass


class NotFound(Exception):
    pass


class Store:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._log: list[tuple[int, str, str, Obj]] = []
        self.closed = False

    def _record(self, resource: str, kind: str, obj: Obj) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(obj)
        self._log.append((self._rv, resource, kind, snapshot))
        if len(self._log) > _LOG_LIMIT:
            del self._log[: len(self._log) - _LOG_LIMIT]
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def create(self, resource: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        key = (resource, meta.get("namespace", ""), meta["name"])
        with self._cond:
            if key in self._objects:
                raise Conflict(key)
            self._objects[key] = obj
            return self._record(resource, "ADDED", obj)

    def update(self, resource: str, namespace: str, name: str, mutate: Callable[[Obj], None]) -> Obj:
        """Apply `mutate` to the stored object under the lock and publish a MODIFIED event."""
        with self._cond:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                raise NotFound((resource, namespace, name))
            mutate(obj)
            return self._record(resource, "MODIFIED", obj)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        with self._cond:
            obj = self._objects.pop((resource, namespace, name), None)
            if obj is None:
                raise NotFound((resource, namespace, name))
            return self._record(resource, "DELETED", obj)

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> tuple[list[Obj], str]:
        with self._cond:
            items = [
                copy.deepcopy(obj)
                for (res, ns, _), obj in sorted(self._objects.items())
                if res == resource and (namespace is None or ns == namespace)
            ]
            return items, str(self._rv)

    def watch(
        self,
        resource: str,
        namespace: str | None,
        since: str | None,
        stop: threading.Event,
    ) -> Iterator[tuple[str, Obj] | None]:
        """Yield (type, object) after `since`; with no `since`, synthetic ADDED events first.

        Yields None at least every half second while idle so the caller can notice a closed
        client or a shutdown instead of blocking forever.
        """
        with self._cond:
            if since in (None, "", "0"):
                items, rv = self.list(resource, namespace)
                cursor = int(rv)
                pending: list[tuple[str, Obj]] = [("ADDED", item) for item in items]
            else:
                cursor = int(since)
                pending = []
        yield from pending
        while not stop.is_set() and not self.closed:
            with self._cond:
                start = bisect.bisect_right(self._log, cursor, key=lambda entry: entry[0])
                events = [
                    (rv, kind, obj)
                    for rv, res, kind, obj in self._log[start:]
                    if res == resource and (namespace is None or obj["metadata"].get("namespace") == namespace)
                ]
                # Everything up to here was examined; new entries arrive only while we wait.
                cursor = self._rv
                if not events:
                    self._cond.wait(0.5)
            if not events:
                yield None
                continue
            for _, kind, obj in events:
                yield kind, copy.deepcopy(obj)

    def wait_until(self, resource: str, namespace: str, name: str, predicate: Callable[[Obj | None], bool], timeout: float) -> Obj | None:
        """Block until predicate(object) holds, woken by every change; TimeoutError after `timeout`."""
        import time

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                obj = self._objects.get((resource, namespace, name))
                if predicate(obj):
                    return copy.deepcopy(obj) if obj is not None else None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise TimeoutError(f"{resource} {namespace}/{name}: condition not met within {timeout}s")
                self._cond.wait(remaining)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
