"""`--watch`: run the probes every period and show what the kubelet would decide, until --count, Ctrl-C or the pod ends.

Each execution is the kubelet's check through the port-forward (a fresh connection each time);
worker.ProbeWorker applies initialDelaySeconds (from the container's start), the thresholds and
startup gating exactly as the kubelet's worker does. The pod itself is followed through an API
watch (PodFollower): a new container resets its workers as the kubelet's do, and a deleted or
replaced pod ends the watch. `--watch-rpc` streams Health/Watch instead (beyond the kubelet),
falling back to polling when the server answers Unimplemented.
"""

from __future__ import annotations

import datetime
import queue
import statistics
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from .. import stop
from ..errors import ApiError, ExitCode, GrpcProbeError, Terminated, UsageError, most_severe
from ..kube.client import KubeClient
from ..kubelet import gostr
from ..kubelet.probe import Outcome, ProbeResult
from ..kubelet.resolve import Target
from ..kubelet.worker import ALREADY_STARTED, ProbeWorker
from ..render.output import Environment, WatchPrinter
from .runner import ProbeOptions, pod_ip, read_pod, run_target


@dataclass
class Track:
    target: Target
    worker: ProbeWorker | None  # None for ad hoc checks: no kubelet worker behind them
    period: float
    next_due: float
    forward: Any = None
    latencies: list[float] = field(default_factory=list)  # RPC ms of executions that got an answer
    executions: int = 0
    failures: int = 0
    skipped: int = 0  # periods in which the kubelet would not run it
    idle: int = 0  # periods in which it cannot run at all (a startup probe once started; no stream update): they count toward --count
    last: ProbeResult | None = None
    skip_reason: str | None = None

    @property
    def ticks(self) -> int:
        return self.executions + self.idle


@dataclass(frozen=True)
class ContainerState:
    start: float  # epoch seconds the running container started (now, when unknown)
    started: bool  # the kubelet's `started`: the startup probe (if any) has succeeded
    restarts: int
    container_id: str


def container_states(pod: dict[str, Any]) -> dict[str, ContainerState]:
    out = {}
    status = pod.get("status") or {}
    for cs in list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or []):
        started_at = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
        start = time.time()
        if started_at:
            try:
                start = datetime.datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        out[cs.get("name")] = ContainerState(start, bool(cs.get("started", True)), int(cs.get("restartCount") or 0), cs.get("containerID") or "")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class PodFollower:
    """The pod as the API server has it, kept current by a watch in a daemon thread.

    `changed` is set on every new version and when the pod goes; `gone` then says why. The thread
    has its own client (a KubeClient is not shared between threads) and its own stop scope, which
    close() stops: that shuts the watch's socket, so the thread ends at once.
    """

    def __init__(self, client: KubeClient, namespace: str, name: str, pod: dict[str, Any]) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.pod = pod
        self.uid = (pod.get("metadata") or {}).get("uid")
        self.gone: str | None = None
        self.changed = threading.Event()
        self._quit = threading.Event()
        self._scope: stop.Scope | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with stop.scope() as self._scope:
            self._thread = stop.spawn(self._run, name="grpcprobe-podwatch")

    def close(self) -> None:
        self._quit.set()
        if self._scope is not None:
            self._scope.stop("done")
        if self._thread is not None:
            self._thread.join(1.0)

    def _end(self, why: str) -> None:
        self.gone = why
        self.changed.set()

    def _seen(self, pod: dict[str, Any]) -> bool:
        """Take a new version of the pod; False when it is another pod of the same name."""
        if (pod.get("metadata") or {}).get("uid") != self.uid:
            self._end(f'pod "{self.name}" was deleted and created again (new UID)')
            return False
        self.pod = pod
        self.changed.set()
        return True

    def _run(self) -> None:
        own = KubeClient(self.client.cfg, request_timeout=self.client.timeout)
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        version = (self.pod.get("metadata") or {}).get("resourceVersion")
        try:
            while not self._quit.is_set():
                began = time.monotonic()
                query = {"fieldSelector": f"metadata.name={self.name}", "timeoutSeconds": 300}
                if version:
                    query["resourceVersion"] = version
                try:
                    for event in own.watch(path, query, time.monotonic() + 330):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "DELETED":
                            self._end(f'pod "{self.name}" was deleted')
                            return
                        if kind in ("ADDED", "MODIFIED"):
                            if not self._seen(obj):
                                return
                            version = (obj.get("metadata") or {}).get("resourceVersion")
                        elif kind == "ERROR":  # e.g. 410 Gone: the version is too old; read the pod afresh
                            version = None
                            break
                except GrpcProbeError:
                    version = None
                if self._quit.is_set():
                    return
                if version is None:
                    try:
                        if not self._seen(own.get_pod(self.namespace, self.name)):
                            return
                        version = (self.pod.get("metadata") or {}).get("resourceVersion")
                    except ApiError as err:
                        if err.code == 404:
                            self._end(f'pod "{self.name}" was deleted')
                            return
                    except GrpcProbeError:
                        pass  # the API server is away: keep probing, try again below
                if time.monotonic() - began < 1.0:
                    self._quit.wait(1.0)  # a watch that ends at once must not become a busy loop
        except stop.Stopped:
            return
        finally:
            own.close()


def watch(
    client: KubeClient,
    namespace: str,
    name: str,
    options: ProbeOptions,
    *,
    period_ns: int | None,
    count: int | None,
    use_watch_rpc: bool,
    fmt: str,
    env: Environment,
) -> int:
    from ..kube.portforward import port_forward

    pod, targets, agent = read_pod(client, namespace, name, options)
    ip = pod_ip(pod) or "<none>"
    states = container_states(pod)
    printer = WatchPrinter(env, fmt, namespace, name, ip)
    now = time.monotonic()
    tracks = []
    for t in targets:
        worker = None
        if t.kind != "adhoc":
            worker = ProbeWorker(
                t.kind,
                t.container,
                success_threshold=t.settings["successThreshold"],
                failure_threshold=t.settings["failureThreshold"],
                initial_delay=t.settings["initialDelaySeconds"],
            )
        period = period_ns / 1e9 if period_ns else float(max(1, t.settings["periodSeconds"]))
        tracks.append(Track(t, worker, period, next_due=now))
    started_flags = {c: state.started for c, state in states.items()}

    if use_watch_rpc and len(tracks) != 1:
        raise UsageError("error: --watch-rpc follows one probe; narrow with -c/--container and --probe (or one --service)")

    follower = PodFollower(client, namespace, name, pod)
    with ExitStack() as stack:
        follower.start()
        stack.callback(follower.close)
        forwards = {}
        for track in tracks:
            port = track.target.port
            if port not in forwards:
                forwards[port] = stack.enter_context(port_forward(client, namespace, name, port, timeout=client.timeout or 30.0))
            track.forward = forwards[port]
        try:
            if use_watch_rpc and _stream(tracks[0], agent, ip, count, printer):
                return _finish(tracks, printer)
            while True:
                ended = _follow(follower, states, started_flags, tracks, printer)
                if ended:
                    env.stderr.write(f"error: {ended}; the watch ends\n")
                    return _finish(tracks, printer, exit_code=ExitCode.UNREACHABLE, ended=ended)
                track = min(tracks, key=lambda tr: tr.next_due)
                delay = track.next_due - time.monotonic()
                # The probe period is the ticker; a change to the pod wakes it early, to be applied first.
                if delay > 0 and stop.wait(follower.changed, delay):
                    follower.changed.clear()
                    continue
                track.next_due += track.period
                container = track.target.container
                state = states.get(container)
                start_epoch = state.start if state else time.time()
                if track.worker is not None:
                    reason = track.worker.due(time.time() - start_epoch, started_flags.get(container, True))
                    if reason is not None:
                        if reason != track.skip_reason:
                            printer.skipped(track.target, reason)
                        track.skip_reason = reason
                        track.skipped += 1
                        if reason == ALREADY_STARTED:
                            track.idle += 1
                        if count and all(tr.ticks >= count for tr in tracks):
                            return _finish(tracks, printer)
                        continue
                track.skip_reason = None
                report = run_target(track.forward, namespace, name, ip, track.target, agent, api_ms=None, notes=[])
                result = report.result
                track.last = result
                track.executions += 1
                if not result.success:
                    track.failures += 1
                if result.rpc_ms is not None:
                    track.latencies.append(result.rpc_ms)
                printer.execution(report)
                if track.worker is not None:
                    decision = track.worker.observe(result.success)
                    if decision is not None:
                        printer.decision(track.target, decision.describe())
                        if decision.kind == "startup" and decision.result == "success":
                            started_flags[container] = True
                if count and all(tr.ticks >= count for tr in tracks):
                    return _finish(tracks, printer)
        except (KeyboardInterrupt, Terminated) as exc:
            # The summary is what a stopped watch is for; it is the result, so no error document follows it.
            code = ExitCode.TERMINATED if isinstance(exc, Terminated) else ExitCode.INTERRUPTED
            _finish(tracks, printer, exit_code=code, ended=stop.reason_for(exc))
            env.stderr.write(f"error: {stop.reason_for(exc)}\n")
            return int(code)


def _follow(follower: PodFollower, states: dict[str, ContainerState], started_flags: dict[str, bool], tracks: list[Track], printer: WatchPrinter) -> str | None:
    """Apply what the API says about the pod; a reason when the watch cannot go on."""
    if follower.gone:
        return follower.gone
    pod = follower.pod
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return f'pod "{follower.name}" is {phase}: its containers no longer run'
    fresh = container_states(pod)
    for container, now in fresh.items():
        if not any(t.target.kind == "startup" and t.target.container == container for t in tracks):
            started_flags[container] = now.started  # its startup probe is not watched here: the kubelet's word counts
        before = states.get(container)
        if before is None or (now.restarts, now.container_id) == (before.restarts, before.container_id):
            continue
        states[container] = now
        mine = [t for t in tracks if t.target.container == container]
        if not mine:
            continue
        has_startup = any(t.target.kind == "startup" for t in mine)
        started_flags[container] = False if has_startup else now.started  # gated again until startup succeeds
        for track in mine:
            if track.worker is not None:
                track.worker.reset()  # a new container ID: the kubelet's worker starts over
            track.next_due = min(track.next_due, time.monotonic())
        new_id = now.container_id.rpartition("/")[2][:12]
        printer.note(
            mine[0].target,
            f"container restarted (restartCount {before.restarts} -> {now.restarts}"
            + (f", new container {new_id}" if new_id else "")
            + "); probing the new container from the start",
        )
    return None


def _stream(track: Track, agent: str, ip: str, count: int | None, printer: WatchPrinter) -> bool:
    """Follow Health/Watch; False when the server does not implement it (caller falls back to polling).

    With --count N it ends after N ticks, a tick being an update or a period without one: a stream
    whose status never changes still ends. The stream is read in a helper thread, so that the main
    thread waits only on a queue (a signal never lands inside grpcio).
    """
    import grpc

    from ..kubelet.probe import decode_response, encode_request, status_name

    channel = grpc.insecure_channel(
        f"127.0.0.1:{track.forward.local_port}",
        options=[
            ("grpc.primary_user_agent", agent),
            ("grpc.default_authority", gostr.join_host_port(ip, track.target.port)),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_http_proxy", 0),
        ],
    )
    stream = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=encode_request, response_deserializer=decode_response)
    calls = stream(track.target.service, wait_for_ready=True, timeout=None)
    updates: queue.Queue[tuple[str, Any]] = queue.Queue()

    def read() -> None:
        try:
            for value in calls:
                updates.put(("update", value))
            updates.put(("end", None))
        except grpc.RpcError as err:
            updates.put(("error", err))
        finally:
            channel.close()

    stop.spawn(read, name="grpcprobe-watch-rpc")
    try:
        last = time.perf_counter()
        period_end = time.monotonic() + track.period
        while True:
            try:
                kind, value = updates.get(timeout=min(stop.WAIT_SLICE, max(0.0, period_end - time.monotonic())))
            except queue.Empty:
                if time.monotonic() < period_end:
                    continue  # the period goes on; the slice only lets a signal in
                period_end = time.monotonic() + track.period
                track.idle += 1  # a period without an update
                if count and track.ticks >= count:
                    return True
                continue
            if kind == "end":
                return True
            if kind == "error":
                err = value
                if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                    printer.note(track.target, "Health/Watch is not implemented by the server (as agnhost); polling Check every period instead")
                    return False
                track.last = ProbeResult(Outcome.RPC_FAILED, f"error: health watch failed: rpc error: code = {gostr.grpc_code_name(err.code().value[0])} desc = {err.details() or ''}")
                printer.note(track.target, track.last.output)
                return True
            period_end = time.monotonic() + track.period
            now = time.perf_counter()
            status = status_name(value)
            printer.stream_update(track.target, status, (now - last) * 1000)
            last = now
            serving = status == "SERVING"
            outcome = Outcome.HEALTHY if serving else Outcome.UNHEALTHY
            track.last = ProbeResult(outcome, "service healthy" if serving else f"service unhealthy (responded with {gostr.quote(status)})", status=status)
            if not serving:
                track.failures += 1
            track.executions += 1
            if count and track.ticks >= count:
                return True
    finally:
        calls.cancel()  # the reader then ends and closes the channel, in its own thread


def _finish(tracks: list[Track], printer: WatchPrinter, *, exit_code: int | None = None, ended: str | None = None) -> int:
    summaries = []
    for track in tracks:
        lat = track.latencies
        summaries.append(
            {
                "target": track.target,
                "executions": track.executions,
                "failures": track.failures,
                "skipped": track.skipped,
                "latency": None if not lat else {
                    "min": min(lat),
                    "median": statistics.median(lat),
                    "p99": percentile(lat, 0.99),
                    "max": max(lat),
                },
            }
        )
    if exit_code is None:
        exit_code = most_severe([t.last.outcome.exit_code if t.last else ExitCode.OK for t in tracks])
    printer.summary(summaries, exit_code=int(exit_code), ended=ended)
    return int(exit_code)
