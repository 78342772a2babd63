"""One pod, end to end: read it, resolve its probes, forward each port, run the kubelet's check.

Returns Report values; raises only for failures that leave no per-probe verdict (API errors,
pod not running, nothing to probe).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import stop
from ..errors import PodNotRunning
from ..kube.client import KubeClient
from ..kubelet import gostr
from ..kubelet.probe import KUBELET, Outcome, ProbeResult, Tuning, check
from ..kubelet.report import Report
from ..kubelet.resolve import Target, resolve

if TYPE_CHECKING:
    from ..kube.portforward import TunnelLoop


@dataclass
class ProbeOptions:
    container: str | None = None
    kinds: list[str] | None = None
    port: int | None = None
    services: list[str] | None = None
    timeout_ns: int | None = None
    user_agent: str | None = None
    tuning: Tuning = KUBELET  # --connect-timeout, --rpc-timeout, --rpc-header, --gzip, --tls...
    history: str = "never"  # the kubelet's recent events: "always" (wide, json), "disagree" (text: only to explain one)



def pod_ip(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    return status.get("podIP") or next((ip.get("ip") for ip in status.get("podIPs") or [] if ip.get("ip")), "") or ""


def ensure_running(pod: dict[str, Any]) -> None:
    phase = (pod.get("status") or {}).get("phase") or "Unknown"
    if phase != "Running":
        # kubectl port-forward's own wording: it refuses before opening a tunnel.
        raise PodNotRunning(f"error: unable to forward port because pod is not running. Current status={phase}")


def terminating_note(pod: dict[str, Any]) -> list[str]:
    """A pod being deleted still runs and is still probed; say so, since it explains what follows."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        grace = meta.get("deletionGracePeriodSeconds")
        return [f"pod is being deleted (Terminating since {meta['deletionTimestamp']}, grace period {grace}s)"]
    return []


def user_agent_for(client: KubeClient) -> str:
    version = client.server_version()
    return f"kube-probe/{version.get('major', '')}.{version.get('minor', '')}"


def read_pod(client: KubeClient, namespace: str, name: str, options: ProbeOptions) -> tuple[dict[str, Any], list[Target], str]:
    """The pod, its targets and the user agent; refuses a pod that is not Running, before any tunnel."""
    if not options.user_agent:
        client.prefetch("/version")  # for the user agent: its round trips overlap the pod's
    pod = client.get_pod(namespace, name)
    targets = resolve_for(pod, options)
    ensure_running(pod)
    return pod, targets, options.user_agent or user_agent_for(client)


def probe_pod(client: KubeClient, namespace: str, name: str, options: ProbeOptions) -> list[Report]:
    started = time.perf_counter()
    if options.history == "always":
        client.prefetch(events_path(namespace, name))  # its round trips overlap the probe's
    pod, targets, agent = read_pod(client, namespace, name, options)
    reports = probe_targets(client, pod, targets, agent, api_ms=(time.perf_counter() - started) * 1000)
    if options.history != "never":
        attach_history(client, pod, reports, always=options.history == "always")
    return reports


def events_path(namespace: str, name: str) -> str:
    from urllib.parse import quote

    return f"/api/v1/namespaces/{quote(namespace)}/events?fieldSelector=" + quote(f"involvedObject.kind=Pod,involvedObject.name={name}", safe="")


def _container_status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for cs in list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or []):
        if cs.get("name") == container:
            return cs
    return {}


def _container_ready(pod: dict[str, Any], container: str) -> bool | None:
    cs = _container_status(pod, container)
    return bool(cs.get("ready")) if cs else None


def _status_disagrees(pod: dict[str, Any], r: Report) -> bool:
    """Does the pod's status (what the kubelet last decided) hint at a different view than this verdict?"""
    cs = _container_status(pod, r.target.container)
    if not cs:
        return False
    if r.target.kind == "readiness":
        return bool(cs.get("ready")) != r.result.success
    if r.target.kind == "liveness":
        return r.result.success and int(cs.get("restartCount") or 0) > 0
    if r.target.kind == "startup":
        return r.result.success and cs.get("started") is False
    return False


def attach_history(client: KubeClient, pod: dict[str, Any], reports: list[Report], *, always: bool) -> None:
    """The kubelet's recent Unhealthy and Killing events beside each verdict, and a line where they disagree.

    In text ("disagree") the events are read only when the pod's status hints at a different view (Ready
    against the readiness verdict, restarts or not started against a healthy liveness or startup verdict):
    no round trip in the common case."""
    from ..errors import ApiError
    from ..kubelet.report import disagreement, history_of

    if not always and not any(_status_disagrees(pod, r) for r in reports):
        return
    meta = pod["metadata"]
    try:
        events = client.get(events_path(meta["namespace"], meta["name"])).get("items") or []
    except ApiError as exc:
        if always:
            for r in reports:
                r.diagnostics.append(f"the kubelet's events: not readable ({exc.message.splitlines()[0]})")
        return
    now = time.time()
    for r in reports:
        if r.target.kind == "adhoc":
            continue
        r.history = history_of(events, meta.get("uid", ""), r.target)
        line = disagreement(r, _container_ready(pod, r.target.container), now)
        if line:
            r.diagnostics.append(line)


def resolve_for(pod: dict[str, Any], options: ProbeOptions) -> list[Target]:
    targets = resolve(
        pod,
        container=options.container,
        kinds=options.kinds,
        port=options.port,
        services=options.services,
        timeout_ns=options.timeout_ns,
    )
    if options.tuning is KUBELET:
        return targets
    return [dataclasses.replace(t, tuning=options.tuning) for t in targets]


def probe_targets(
    client: KubeClient, pod: dict[str, Any], targets: list[Target], agent: str, *, api_ms: float, tunnel_timeout: float | None = None,
    loop: TunnelLoop | None = None,
) -> list[Report]:
    """Forward each port of a running pod once and run its targets through it (loop: a fleet's shared TunnelLoop)."""
    from ..kube.portforward import port_forward

    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    ip = pod_ip(pod) or "<none>"
    terminating = terminating_note(pod)
    reports: list[Report] = []
    by_port: dict[int, list[Target]] = {}
    for target in targets:
        by_port.setdefault(target.port, []).append(target)
    for port, group in by_port.items():
        with port_forward(client, namespace, name, port, timeout=tunnel_timeout or client.timeout or 30.0, loop=loop) as fwd:
            for target in group:
                reports.append(
                    run_target(fwd, namespace, name, ip, target, agent, api_ms=api_ms, notes=terminating, trace=client.trace if client.tracing else None)
                )
    return reports


def run_target(
    fwd: Any, namespace: str, name: str, ip: str, target: Target, agent: str, *, api_ms: float | None, notes: list[str], trace: Any = None
) -> Report:
    """One execution through an open forward, as a Report with its timings (ms); trace: -v's line writer, or None."""
    t0 = time.perf_counter()
    result, diagnostics = execute(fwd, target, ip, agent, trace)
    total_ms = (time.perf_counter() - t0) * 1000
    if result.outcome is Outcome.UNREACHABLE and not diagnostics:
        diagnostics.append(_why_unreachable(fwd.local_port, target))  # after the clock: a look, not the check
    if result.code == "NotFound" and not _over_tls(target):
        from .services import list_services

        # A typo, or a service the health server was never told about? Reflection can tell (when enabled).
        found = list_services(f"127.0.0.1:{fwd.local_port}", authority=gostr.join_host_port(ip, target.port), timeout=1.0, user_agent=agent)
        diagnostics.append(found.says(target.service))
    report = Report(namespace, name, ip, target, result, diagnostics=notes + diagnostics)
    if api_ms is not None:
        report.timings["api"] = api_ms
    report.timings.update(tunnel=fwd.setup_ms, total=total_ms)
    if result.connect_ms is not None:
        report.timings["connect"] = result.connect_ms
    if result.rpc_ms is not None:
        report.timings["rpc"] = result.rpc_ms
    return report


def execute(fwd: Any, target: Target, ip: str, agent: str, trace: Any = None) -> tuple[ProbeResult, list[str]]:
    """One execution of a target through an open forward: the verdict and the diagnostics behind it."""
    errors_before = len(fwd.errors)
    address = gostr.join_host_port(ip, target.port)

    def run_check(port: int) -> ProbeResult:
        return stop.off_main_thread(
            lambda: check(
                f"127.0.0.1:{port}", service=target.service, timeout_ns=target.timeout_ns, user_agent=agent, address=address,
                tuning=target.tuning, trace=trace,
            ),
            name="grpcprobe-check",
        )

    wanted = target.tuning.tls
    if target.tls or wanted is not None:
        from ..wire.tlsproxy import client_context, tls_terminator

        context = None  # the kubelet's grpc.mode TLS: no verification
        if wanted is not None:
            context = client_context(verify=wanted.verify, ca_file=wanted.ca_file, cert_file=wanted.client_cert, key_file=wanted.client_key)
        server_name = (wanted.server_name or ip) if wanted is not None else None
        label = "tls" if wanted is not None else "grpc.mode TLS"
        client_cert = wanted is not None and wanted.client_cert is not None
        with tls_terminator(fwd.local_port, target.timeout_ns / 1e9, context, server_name, client_cert) as tls:
            result = run_check(tls.port)
            extra = [f"{label}: {e}" for e in dict.fromkeys(tls.handshake_errors)]
    else:
        result = run_check(fwd.local_port)
        extra = []
    notes = [f"port-forward: {text}" for text in dict.fromkeys(fwd.errors[errors_before:])] + extra
    if target.tuning is not KUBELET:
        notes.append("note: this check differs from the kubelet's: " + "; ".join(target.tuning.differences()))
    if fwd.dropped and not result.success:
        notes.append("port-forward: the tunnel through the API server was dropped")
    return result, notes


def tls_files_problem(settings: Any) -> str | None:
    """--tls's files checked once, before any API call: the error line for the first unreadable or malformed one."""
    import ssl

    from ..wire.tlsproxy import client_context

    for flag, path in (("--tls-ca-cert", settings.ca_file), ("--tls-client-cert", settings.client_cert), ("--tls-client-key", settings.client_key)):
        if path:
            try:
                open(path, "rb").close()
            except OSError as exc:
                return f"error: {flag}: cannot read {path}: {exc.strerror or exc}"
    try:
        client_context(verify=settings.verify, ca_file=settings.ca_file, cert_file=settings.client_cert, key_file=settings.client_key)
    except (OSError, ssl.SSLError) as exc:
        return f"error: --tls: cannot load the certificates: {getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}"
    return None


def _over_tls(target: Target) -> bool:
    return target.tls or target.tuning.tls is not None


def _why_unreachable(local_port: int, target: Target) -> str:
    """A second, longer look at a port the check could not connect to: too slow, TLS, or no gRPC at all."""
    from ..wire.tlsproxy import http2_answer_ms, speaks_tls

    if not _over_tls(target):
        # Only a short timeout can be too short for a live server: under 1 s, look for its HTTP/2 answer for 1 s.
        answered = None
        if target.timeout_ns < 10**9:
            answered = stop.off_main_thread(lambda: http2_answer_ms(local_port, 1.0), name="grpcprobe-look")
        if answered is not None:
            return (
                f"hint: a gRPC (HTTP/2) server does answer on this port, in {answered:.1f}ms through the port-forward, "
                f"which is longer than the probe's timeout ({gostr.duration(target.timeout_ns)}); the kubelet dials the pod "
                "directly and may connect in time"
            )
        # A short look: a TLS server through the tunnel answers a handshake in milliseconds.
        if speaks_tls(local_port, 0.25):
            return "hint: the server wants TLS; the kubelet probes in plaintext unless the probe sets grpc.mode: TLS (Kubernetes 1.37+)"
    return "port-forward: the connection was forwarded but no gRPC (HTTP/2) server answered on it"
