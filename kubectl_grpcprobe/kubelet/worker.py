"""The kubelet's probe worker (pkg/kubelet/prober/worker.go) as a state machine without a clock.

Shared by `--watch` (what the kubelet would decide, seen from outside) and the sandbox kubelet
(which acts on it). The caller owns time: it asks `due()` whether an execution should run now and
feeds each result to `observe()`, which returns the decision when the cached result changes.
"""

from __future__ import annotations

from dataclasses import dataclass

SUCCESS, FAILURE, UNKNOWN = "success", "failure", "unknown"
INITIAL = {"readiness": FAILURE, "liveness": SUCCESS, "startup": UNKNOWN}
# The one reason a probe cannot run again until the container restarts: its startup probe is done.
ALREADY_STARTED = "container already started"


@dataclass(frozen=True)
class Decision:
    kind: str  # readiness | liveness | startup
    result: str  # the new cached result
    run: int  # consecutive results that reached the threshold
    container: str

    @property
    def restart(self) -> bool:
        """Liveness or startup reaching Failure: the kubelet kills and restarts the container."""
        return self.kind in ("liveness", "startup") and self.result == FAILURE

    def describe(self) -> str:
        plural = "s" if self.run != 1 else ""
        if self.restart:
            return f"{self.kind} → Container {self.container} failed {self.kind} probe, will be restarted"
        if self.kind == "readiness":
            state = "Ready" if self.result == SUCCESS else "NotReady"
            word = "success" if self.result == SUCCESS else "failure"
            return f"readiness → {state} after {self.run} consecutive {word}{'es' if plural and word == 'success' else plural}"
        if self.kind == "startup":
            return f"startup → Started after {self.run} consecutive success{'es' if plural else ''}: liveness and readiness probes begin"
        return f"liveness → healthy after {self.run} consecutive success{'es' if plural else ''}"


class ProbeWorker:
    def __init__(self, kind: str, container: str, *, success_threshold: int = 1, failure_threshold: int = 3, initial_delay: int = 0) -> None:
        self.kind = kind
        self.container = container
        self.success_threshold = max(1, success_threshold)
        self.failure_threshold = max(1, failure_threshold)
        self.initial_delay = initial_delay
        self.reset()

    def reset(self) -> None:
        """A new container (ID): start over from the initial value."""
        self.result = INITIAL[self.kind]
        self.last = UNKNOWN
        self.run = 0
        self.on_hold = False

    def due(self, seconds_since_start: float, container_started: bool) -> str | None:
        """None if this tick should run, else why it is skipped (the kubelet's order of checks)."""
        if self.on_hold:
            return "on hold until the container restarts"
        if int(seconds_since_start) < self.initial_delay:
            return f"initialDelaySeconds ({self.initial_delay}s) not yet passed"
        if self.kind == "startup" and container_started:
            return ALREADY_STARTED
        if self.kind != "startup" and not container_started:
            return "waiting for the startup probe to succeed"
        return None

    def observe(self, success: bool) -> Decision | None:
        result = SUCCESS if success else FAILURE
        if self.last == result:
            self.run += 1
        else:
            self.last = result
            self.run = 1
        threshold = self.failure_threshold if result == FAILURE else self.success_threshold
        if self.run < threshold:
            return None  # below threshold: the cached result stays
        changed = self.result != result
        self.result = result
        decision = Decision(self.kind, result, self.run, self.container)
        if decision.restart:
            self.on_hold = True
            self.run = 0
            return decision
        return decision if changed else None
