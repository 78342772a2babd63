"""`--watch`: run the probes every period and show what the kubelet would decide, until --count or Ctrl-C.

Each execution is the kubelet's check through the port-forward (a fresh connection each time);
worker.ProbeWorker applies initialDelaySeconds (from the container's start), the thresholds and
startup gating exactly as the kubelet's worker does. `--watch-rpc` streams Health/Watch instead
(beyond the kubelet), falling back to polling when the server answers Unimplemented.
"""

from __future__ import annotations

import datetime
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..errors import ExitCode, Terminated, UsageError, most_severe
from ..kube.client import KubeClient
from ..kubelet import gostr
from ..kubelet.probe import Outcome, ProbeResult
from ..kubelet.report import Report
from ..kubelet.resolve import Target
from ..kubelet.worker import ProbeWorker
from ..render.output import Environment, WatchPrinter
from .runner import ProbeOptions, ensure_running, execute, pod_ip, resolve_for, user_agent_for


@dataclass
class Track:
    target: Target
    worker: ProbeWorker | None  # None for ad hoc checks: no kubelet worker behind them
    period: float
    next_due: float
    local_port: int = 0
    forward: Any = None
    latencies: list[float] = field(default_factory=list)  # RPC ms of executions that got an answer
    executions: int = 0
    failures: int = 0
    last: ProbeResult | None = None
    skip_reason: str | None = None


def container_clock(pod: dict[str, Any]) -> dict[str, tuple[float, bool, int]]:
    """container -> (start as epoch seconds, started, restartCount) from the pod's status."""
    out = {}
    status = pod.get("status") or {}
    for cs in list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or []):
        started_at = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
        start = time.time()
        if started_at:
            parsed = datetime.datetime.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
            start = parsed.timestamp()
        out[cs.get("name")] = (start, bool(cs.get("started", True)), int(cs.get("restartCount") or 0))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


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

    pod = client.get_pod(namespace, name)
    targets = resolve_for(pod, options)
    ensure_running(pod)
    agent = options.user_agent or user_agent_for(client)
    ip = pod_ip(pod) or "<none>"
    clock = container_clock(pod)
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
    started_flags = {c: flags[1] for c, flags in clock.items()}

    if use_watch_rpc and len(tracks) != 1:
        raise UsageError("error: --watch-rpc follows one probe; narrow with -c/--container and --probe (or one --service)")

    with ExitStack() as stack:
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
                track = min(tracks, key=lambda tr: tr.next_due)
                delay = track.next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the probe period itself: this is the ticker, not a wait for an event
                track.next_due += track.period
                container = track.target.container
                start_epoch = clock.get(container, (time.time(), True, 0))[0]
                if track.worker is not None:
                    reason = track.worker.due(time.time() - start_epoch, started_flags.get(container, True))
                    if reason is not None:
                        if reason != track.skip_reason:
                            printer.skipped(track.target, reason)
                        track.skip_reason = reason
                        if track.worker.on_hold:
                            _follow_restart(client, namespace, name, track, clock, started_flags, tracks, printer)
                        continue
                track.skip_reason = None
                result, notes = execute(track.forward, track.target, ip, agent)
                track.last = result
                track.executions += 1
                if not result.success:
                    track.failures += 1
                latency = result.rpc_ms if result.rpc_ms is not None else None
                if latency is not None:
                    track.latencies.append(latency)
                printer.execution(Report(namespace, name, ip, track.target, result, diagnostics=notes))
                if track.worker is not None:
                    decision = track.worker.observe(result.success)
                    if decision is not None:
                        printer.decision(track.target, decision.describe())
                        if decision.kind == "startup" and decision.result == "success":
                            started_flags[container] = True
                if count and all(tr.executions >= count for tr in tracks):
                    return _finish(tracks, printer)
        except (KeyboardInterrupt, Terminated):
            _finish(tracks, printer)  # the summary is what a stopped watch is for
            raise


def _follow_restart(client: KubeClient, namespace: str, name: str, track: Track, clock: dict, started_flags: dict, tracks: list[Track], printer: WatchPrinter) -> None:
    """After a liveness/startup failure the kubelet waits for the new container; so do we."""
    pod = client.get_pod(namespace, name)
    fresh = container_clock(pod)
    container = track.target.container
    if container in fresh and fresh[container][2] > clock.get(container, (0, True, 0))[2]:
        clock[container] = fresh[container]
        has_startup = any(t.target.kind == "startup" and t.target.container == container for t in tracks)
        started_flags[container] = False if has_startup else fresh[container][1]  # gated again until startup succeeds
        for other in tracks:
            if other.target.container == container and other.worker is not None:
                other.worker.reset()
        printer.note(track.target, f"container restarted (restartCount {fresh[container][2]}); probing the new container")


def _stream(track: Track, agent: str, ip: str, count: int | None, printer: WatchPrinter) -> bool:
    """Follow Health/Watch; False when the server does not implement it (caller falls back to polling)."""
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
    try:
        seen = 0
        last = time.perf_counter()
        for value in calls:
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
            seen += 1
            if count and seen >= count:
                return True
        return True
    except grpc.RpcError as err:
        if err.code() is grpc.StatusCode.UNIMPLEMENTED:
            printer.note(track.target, "Health/Watch is not implemented by the server (as agnhost); polling Check every period instead")
            return False
        track.last = ProbeResult(Outcome.RPC_FAILED, f"error: health watch failed: rpc error: code = {gostr.grpc_code_name(err.code().value[0])} desc = {err.details() or ''}")
        printer.note(track.target, track.last.output)
        return True
    finally:
        calls.cancel()
        channel.close()


def _finish(tracks: list[Track], printer: WatchPrinter) -> int:
    summaries = []
    for track in tracks:
        lat = track.latencies
        summaries.append(
            {
                "target": track.target,
                "executions": track.executions,
                "failures": track.failures,
                "latency": None if not lat else {
                    "min": min(lat),
                    "median": statistics.median(lat),
                    "p99": percentile(lat, 0.99),
                    "max": max(lat),
                },
            }
        )
    printer.summary(summaries)
    codes = [t.last.outcome.exit_code if t.last else ExitCode.OK for t in tracks]
    return int(most_severe(codes))
