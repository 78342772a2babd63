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
