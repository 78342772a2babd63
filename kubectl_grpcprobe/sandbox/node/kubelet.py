"""The sandbox's kubelet: runs every running pod's gRPC probes as the kubelet's prober does.

Periods, initial delays, thresholds and startup gating come from worker.ProbeWorker (the same
state machine `--watch` uses); executions are the real check (probe.check) against the
container's server, with the kubelet's user agent and the pod IP in the messages. Results land
where users look: container Ready, the pod's Ready/ContainersReady conditions, restartCount,
and Unhealthy/Killing events worded and aggregated as the kubelet records them.

`time_scale` shrinks periods (not timeouts) so demos and tests need not wait 10 s a tick.
Non-gRPC probes (httpGet, tcpSocket, exec) are not run: those containers count as ready.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...kubelet import gostr
from ...kubelet.resolve import EVENT_WORD, FIELD, KINDS, containers_of
from ...kubelet.worker import FAILURE, SUCCESS, ProbeWorker
from ..apiserver import pods as podlib
from ..apiserver.store import NotFound

if TYPE_CHECKING:
    from .. import Sandbox
    from .agent import NodeAgent


@dataclass
class _Entry:
    namespace: str
    pod: str
    container: str
    kind: str
    port: int
    service: str
    timeout_ns: int
    period: float
    worker: ProbeWorker
    next_due: float = 0.0
    running: bool = False


@dataclass
class _Container:
    started_at: float  # monotonic start of the current container instance
    started: bool  # startup probe succeeded, or there is none
    generation: int = 0  # bumps at each restart; results from an older instance are dropped
    entries: dict[str, _Entry] = field(default_factory=dict)


class Kubelet:
    def __init__(self, sandbox: Sandbox | NodeAgent, *, time_scale: float = 1.0) -> None:
        # The host: the fake API server's Sandbox, or a NodeAgent joined to any API server. Both give
        # get_pod, runtime, version_info, record_event and update_pod (NotFound when the pod is gone).
        self.sandbox = sandbox
        self.time_scale = time_scale
        self._cond = threading.Condition()
        self._containers: dict[tuple[str, str, str], _Container] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-kubelet-probe")
        self.failures: list[BaseException] = []  # bugs in a probe task; stop() re-raises the first
        self._thread = threading.Thread(target=self._loop, name="sandbox-kubelet")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.failures:
            raise RuntimeError("sandbox kubelet task failed") from self.failures[0]

    # -- pods come and go ------------------------------------------------------------------

    def pod_started(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        now = time.monotonic()
        with self._cond:
            for c in containers_of(pod):
                key = (meta["namespace"], meta["name"], c["name"])
                if key in self._containers:
                    continue
                state = _Container(started_at=now, started=not _has_grpc(c, "startup"))
                for kind in KINDS:
                    probe = c.get(FIELD[kind])
                    if not isinstance(probe, dict) or not isinstance(probe.get("grpc"), dict):
                        continue
                    state.entries[kind] = _Entry(
                        meta["namespace"],
                        meta["name"],
                        c["name"],
                        kind,
                        int(probe["grpc"]["port"]),
                        probe["grpc"].get("service") or "",
                        int(probe.get("timeoutSeconds", 1)) * 10**9,
                        max(1, int(probe.get("periodSeconds", 10))) * self.time_scale,
                        ProbeWorker(
                            kind,
                            c["name"],
                            success_threshold=int(probe.get("successThreshold", 1)),
                            failure_threshold=int(probe.get("failureThreshold", 3)),
                            initial_delay=int(probe.get("initialDelaySeconds", 0)),
                        ),
                        next_due=now,  # the first probe runs when the worker starts
                    )
                self._containers[key] = state
            self._cond.notify_all()

    def pod_stopped(self, namespace: str, name: str) -> None:
        with self._cond:
            for key in [k for k in self._containers if k[:2] == (namespace, name)]:
                del self._containers[key]

    def initial_ready(self, container: dict[str, Any]) -> bool:
        """A new container is Ready only if nothing (readiness, startup) must first succeed."""
        return not _has_grpc(container, "readiness") and not _has_grpc(container, "startup")

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                due = []
                next_wake = now + 0.5
                for key, state in self._containers.items():
                    for entry in state.entries.values():
                        if entry.running:
                            continue
                        if entry.next_due <= now:
                            entry.running = True
                            due.append((key, state.generation, entry))
                        else:
                            next_wake = min(next_wake, entry.next_due)
                if not due:
                    self._cond.wait(max(0.0, next_wake - now))
                    continue
            for key, generation, entry in due:
                self._pool.submit(self._tick, key, generation, entry).add_done_callback(self._check)

    def _check(self, future: Any) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.failures.append(future.exception())

    def _tick(self, key: tuple[str, str, str], generation: int, entry: _Entry) -> None:
        started = time.monotonic()
        try:
            with self._cond:
                state = self._containers.get(key)
                if state is None or state.generation != generation:
                    return
                skip = entry.worker.due(started - state.started_at, state.started)
            if skip is None:
                self._execute(key, generation, entry)
        finally:
            with self._cond:
                entry.running = False
                entry.next_due = started + entry.period
                self._cond.notify_all()

    def _execute(self, key: tuple[str, str, str], generation: int, entry: _Entry) -> None:
        from ...kubelet.probe import check

        pod = self.sandbox.get_pod(entry.namespace, entry.pod)
        net = self.sandbox.runtime.network(entry.namespace, entry.pod)
        if pod is None or net is None:
            return
        ip = (pod.get("status") or {}).get("podIP") or "127.0.0.1"
        target = net.ports.get(entry.port)
        address = gostr.join_host_port(ip, entry.port)
        version = self.sandbox.version_info()
        agent = f"kube-probe/{version['major']}.{version['minor']}"
        if target is None:
            # Nothing listens on that port in the pod: the kubelet's dial times out.
            if self._stop.wait(entry.timeout_ns / 1e9):
                return
            success = False
            output = f"timeout: failed to connect service {gostr.quote(address)} within {gostr.duration(entry.timeout_ns)}: context deadline exceeded"
        else:
            result = check(
                gostr.join_host_port(*target), service=entry.service, timeout_ns=entry.timeout_ns, user_agent=agent, address=address
            )
            success, output = result.success, result.output
        with self._cond:
            state = self._containers.get(key)
            if state is None or state.generation != generation or self._stop.is_set():
                return
            decision = entry.worker.observe(success)
        if not success:
            self.sandbox.record_event(pod, entry.container, "Warning", "Unhealthy", f"{EVENT_WORD[entry.kind]} probe failed: {output}")
        if decision is None:
            return
        if decision.restart:
            self._restart(key, pod, entry.kind)
        elif entry.kind == "startup" and decision.result == SUCCESS:
            with self._cond:
                state.started = True
                self._cond.notify_all()
            self._set_container(pod, entry.container, started=True, ready=self._ready_now(state))
        elif entry.kind == "readiness":
            self._set_container(pod, entry.container, ready=decision.result == SUCCESS)

    def _ready_now(self, state: _Container) -> bool:
        readiness = state.entries.get("readiness")
        return readiness is None or readiness.worker.result == SUCCESS

    def _restart(self, key: tuple[str, str, str], pod: dict[str, Any], kind: str) -> None:
        namespace, name, container = key
        self.sandbox.record_event(pod, container, "Normal", "Killing", f"Container {container} failed {kind} probe, will be restarted")
        self.sandbox.runtime.restart_container(namespace, name, container)
        spec = next(c for c in containers_of(pod) if c["name"] == container)
        with self._cond:
            state = self._containers.get(key)
            if state is None:
                return
            state.generation += 1
            state.started_at = time.monotonic()
            state.started = not _has_grpc(spec, "startup")
            for entry in state.entries.values():
                entry.worker.reset()
                entry.next_due = state.started_at
            self._cond.notify_all()
        when = podlib.now()

        def mutate(obj: dict[str, Any]) -> None:
            for cs in _statuses(obj):
                if cs["name"] != container:
                    continue
                previous = (cs.get("state") or {}).get("running", {}).get("startedAt", when)
                cs["lastState"] = {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": previous, "finishedAt": when}}
                cs["state"] = {"running": {"startedAt": when}}
                cs["restartCount"] = cs.get("restartCount", 0) + 1
                cs["ready"] = self.initial_ready(spec)
                cs["started"] = not _has_grpc(spec, "startup")
            _sync_conditions(obj)

        try:
            self.sandbox.update_pod(name, mutate, namespace)
        except NotFound:
            return
        for reason, message in (
            ("Pulled", f'Container image "{spec.get("image", "")}" already present on machine'),
            ("Created", f"Created container: {container}"),
            ("Started", f"Started container {container}"),
        ):
            self.sandbox.record_event(pod, container, "Normal", reason, message)

    def _set_container(self, pod: dict[str, Any], container: str, *, ready: bool, started: bool | None = None) -> None:
        meta = pod["metadata"]

        def mutate(obj: dict[str, Any]) -> None:
            for cs in _statuses(obj):
                if cs["name"] == container:
                    cs["ready"] = ready
                    if started is not None:
                        cs["started"] = started
            _sync_conditions(obj)

        try:
            self.sandbox.update_pod(meta["name"], mutate, meta["namespace"])
        except NotFound:  # deleted while the probe ran
            pass


def _has_grpc(container: dict[str, Any], kind: str) -> bool:
    probe = container.get(FIELD[kind])
    return isinstance(probe, dict) and isinstance(probe.get("grpc"), dict)


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or [])


def _sync_conditions(pod: dict[str, Any]) -> None:
    """Pod Ready and ContainersReady follow the containers (native sidecars included)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return
    ready = all(cs.get("ready") for cs in _statuses(pod))
    when = podlib.now()
    for cond in status.get("conditions") or []:
        if cond["type"] in ("Ready", "ContainersReady"):
            value = "True" if ready else "False"
            if cond["status"] != value:
                cond["status"] = value
                cond["lastTransitionTime"] = when
                if ready:
                    cond.pop("reason", None)
                else:
                    cond["reason"] = "ContainersNotReady"


__all__ = ["FAILURE", "SUCCESS", "Kubelet"]
