"""From a pod object to the probe executions to run: which container, kind, port, service, timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import NothingToProbe, UsageError
from .probe import KUBELET, Tuning

KINDS = ("startup", "liveness", "readiness")  # the kubelet's gating order
FIELD = {"readiness": "readinessProbe", "liveness": "livenessProbe", "startup": "startupProbe"}
EVENT_WORD = {"readiness": "Readiness", "liveness": "Liveness", "startup": "Startup", "adhoc": "gRPC"}
DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3, "initialDelaySeconds": 0}


@dataclass(frozen=True)
class Target:
    container: str
    kind: str  # readiness | liveness | startup | adhoc
    port: int
    service: str
    timeout_ns: int
    tls: bool = False
    settings: dict[str, int] = field(default_factory=dict, compare=False)  # period, thresholds, delay
    tuning: Tuning = field(default=KUBELET, compare=False)  # ad hoc controls beyond the kubelet (none by default)

    @property
    def event_word(self) -> str:
        return EVENT_WORD[self.kind]


def _int(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise NothingToProbe(f"error: probe field has a non-integer value {value!r}")
    return value


def containers_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Regular containers, then restartable init containers (native sidecars): the ones that can have probes."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    out = []
    for group in ("containers", "initContainers"):
        items = spec.get(group) or []
        if not isinstance(items, list):
            continue
        for c in items:
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                continue
            if group == "initContainers" and c.get("restartPolicy") != "Always":
                continue
            out.append(c)
    return out


def describe_probe(probe: dict[str, Any]) -> str:
    if not isinstance(probe, dict):
        return "unknown"
    for handler in ("grpc", "httpGet", "tcpSocket", "exec"):
        spec = probe.get(handler)
        if spec is None:
            continue
        if handler == "exec":
            return "exec"
        port = spec.get("port") if isinstance(spec, dict) else None
        return f"{handler} :{port}" if port is not None else handler
    return "no handler"


def resolve(
    pod: dict[str, Any],
    *,
    container: str | None = None,
    kinds: list[str] | None = None,
    port: int | None = None,
    services: list[str] | None = None,
    timeout_ns: int | None = None,
) -> list[Target]:
    """Targets in a stable order: by container, then startup, liveness, readiness."""
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    name = str(meta.get("name", ""))
    candidates = containers_of(pod)
    if container is not None:
        candidates = [c for c in candidates if c["name"] == container]
        if not candidates:
            all_names = [c["name"] for c in containers_of(pod)]
            raise UsageError(f'error: container "{container}" not found in pod "{name}" (containers: {", ".join(all_names) or "none"})')
    if port is not None:
        # Ad hoc: not the pod's probe, but checked the kubelet's way.
        return [
            Target(c["name"], "adhoc", port, service, timeout_ns or 10**9, settings=dict(DEFAULTS))
            for c in candidates[:1]
            for service in (services or [""])
        ]
    wanted = kinds or list(KINDS)
    targets = []
    for c in candidates:
        for kind in KINDS:
            if kind not in wanted:
                continue
            probe = c.get(FIELD[kind])
            if not isinstance(probe, dict) or not isinstance(probe.get("grpc"), dict):
                continue
            grpc = probe["grpc"]
            grpc_port = grpc.get("port")
            if isinstance(grpc_port, bool) or not isinstance(grpc_port, int) or not 1 <= grpc_port <= 65535:
                raise NothingToProbe(
                    f"error: {FIELD[kind]} of container {c['name']} has an invalid grpc port {grpc_port!r} (must be 1-65535)"
                )
            own_service = grpc.get("service") or ""
            if not isinstance(own_service, str):
                raise NothingToProbe(f"error: {FIELD[kind]} of container {c['name']} has a non-string service")
            settings = {key: _int(probe.get(key), default) for key, default in DEFAULTS.items()}
            for service in services or [own_service]:
                targets.append(
                    Target(
                        c["name"],
                        kind,
                        grpc_port,
                        service,
                        timeout_ns if timeout_ns is not None else max(1, settings["timeoutSeconds"]) * 10**9,
                        tls=str(grpc.get("mode") or "").lower() == "tls",
                        settings=settings,
                    )
                )
    if not targets:
        raise NothingToProbe(_nothing_message(name, candidates, wanted))
    return targets


def _nothing_message(pod: str, candidates: list[dict[str, Any]], wanted: list[str]) -> str:
    parts = []
    for c in candidates:
        probes = [f"{FIELD[k]} {describe_probe(c[FIELD[k]])}" for k in KINDS if isinstance(c.get(FIELD[k]), dict)]
        parts.append(f"container {c['name']} has " + (", ".join(probes) if probes else "no probes"))
    which = "gRPC probe" if set(wanted) == set(KINDS) else "gRPC " + "/".join(wanted) + " probe"
    detail = "; ".join(parts) if parts else "it has no containers"
    return f"error: pod {pod} has no {which} to run: {detail}. Use --port to check a port directly."
