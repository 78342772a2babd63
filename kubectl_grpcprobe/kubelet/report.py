"""The values a run reports: a probe's verdict on one pod, a pod that was not probed, what the kubelet then did.

They are kubelet semantics (the event wording, the exit code a verdict maps to), so they live below the commands
that produce them and the renderer that prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ExitCode
from . import gostr
from .probe import ProbeResult
from .resolve import Target


@dataclass
class Report:
    """One execution of the kubelet's check for one target of one pod."""

    namespace: str
    pod: str
    pod_ip: str
    target: Target
    result: ProbeResult
    timings: dict[str, float] = field(default_factory=dict)  # api, tunnel, connect, rpc, total (ms)
    diagnostics: list[str] = field(default_factory=list)
    history: list[KubeletEvent] | None = None  # the kubelet's recent events for this probe; None: not looked up

    @property
    def address(self) -> str:
        return gostr.join_host_port(self.pod_ip, self.target.port)

    @property
    def event(self) -> str:
        """The kubelet's event text (it records only failures; we say so for successes too)."""
        verb = "succeeded" if self.result.success else "failed"
        return f"{self.target.event_word} probe {verb}: {self.result.output}"

    @property
    def exit_code(self) -> ExitCode:
        return self.result.outcome.exit_code


@dataclass(frozen=True)
class PodOutcome:
    """A pod that produced no probe report: skipped (no gRPC probe) or failed before any check."""

    namespace: str
    pod: str
    message: str
    exit_code: ExitCode
    skipped: bool = False


@dataclass(frozen=True)
class KubeletAction:
    """What the kubelet did after a toggle, as seen through the API."""

    what: str  # e.g. "Ready=False", "restartCount 0 -> 1"
    seconds: float
    event: str | None  # the kubelet's event as `kubectl describe` shows it


@dataclass(frozen=True)
class KubeletEvent:
    """The last of one kind of event the kubelet recorded for a probe, aggregated as `kubectl describe` shows it."""

    reason: str  # Unhealthy or Killing
    message: str
    count: int
    first_seen: str  # RFC 3339, as the API gives it
    last_seen: str

    def seconds_ago(self, now: float) -> float:
        import datetime

        try:
            return max(0.0, now - datetime.datetime.fromisoformat(self.last_seen.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return float("inf")

    def age(self, now: float) -> str:
        """How long ago it was last seen, in kubectl's short form (20s, 3m, 2h)."""
        ago = self.seconds_ago(now)
        if ago == float("inf"):
            return "?"
        seconds = int(ago)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= 2 * size:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"


def history_of(events: list[dict], pod_uid: str, target: Target) -> list[KubeletEvent]:
    """The newest Unhealthy (this probe failed) and Killing (this probe restarted the container) events of this pod
    instance's container, as the kubelet words them (prober.go, kuberuntime: "Container X failed liveness probe")."""
    field_paths = {f"spec.containers{{{target.container}}}", f"spec.initContainers{{{target.container}}}"}
    failed = f"{target.event_word} probe failed:"
    killed = f"failed {target.kind} probe"
    newest: dict[str, dict] = {}
    for ev in events:
        involved = ev.get("involvedObject") or {}
        if involved.get("uid") != pod_uid or involved.get("fieldPath") not in field_paths:
            continue
        reason, message = ev.get("reason"), str(ev.get("message") or "")
        if not ((reason == "Unhealthy" and message.startswith(failed)) or (reason == "Killing" and killed in message)):
            continue
        if reason not in newest or _last_seen(ev) > _last_seen(newest[reason]):
            newest[reason] = ev
    return [
        KubeletEvent(
            reason,
            str(ev.get("message") or ""),
            int((ev.get("series") or {}).get("count") or ev.get("count") or 1),
            str(ev.get("firstTimestamp") or ev.get("eventTime") or ""),
            _last_seen(ev),
        )
        for reason, ev in sorted(newest.items())
    ]


def _last_seen(ev: dict) -> str:
    return str((ev.get("series") or {}).get("lastObservedTime") or ev.get("lastTimestamp") or ev.get("eventTime") or "")


def disagreement(report: Report, container_ready: bool | None, now: float) -> str | None:
    """A line for when the kubelet's view and this check disagree, else None.

    Readiness: the pod's Ready says what the kubelet decided last; liveness and startup: an Unhealthy event
    within the last three periods is the kubelet still seeing failures. Old failures, since recovered, are
    history, not disagreement."""
    failures = [e for e in report.history or [] if e.reason == "Unhealthy"]
    last = failures[0] if failures else None
    if report.result.success:
        if report.target.kind == "readiness":
            disagrees = container_ready is False
        else:
            period = max(1, report.target.settings.get("periodSeconds", 10))
            disagrees = last is not None and last.seconds_ago(now) <= 3 * period
        if not disagrees:
            return None
        if last is None:
            return f"the pod says the container is not Ready; this check says: {report.result.output}"
        return (
            f"the kubelet reported \"{last.message}\" {_times(last.count)}, last {last.age(now)} ago; "
            f"this check says: {report.result.output}"
        )
    if report.target.kind == "readiness" and container_ready and last is None:
        return "the kubelet has recorded no failure of this probe and the pod says the container is Ready: it sees the server differently (see Troubleshooting)"
    return None


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"
