"""Flip a server between SERVING and NOT_SERVING through its HTTP control port (agnhost's endpoints)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import ExitCode, GrpcProbeError, TunnelError, UsageError
from ..kube.client import KubeClient
from ..kubelet.report import KubeletAction
from .runner import ensure_running

if TYPE_CHECKING:
    from ..kube.portforward import HttpAnswer


def call_control_endpoint(client: KubeClient, namespace: str, pod: str, port: int, path: str, timeout: float) -> HttpAnswer:
    """GET `path` on the pod's control port through a port-forward; raise with a clear line if it fails."""
    from ..kube.portforward import http_get

    ensure_running(client.get_pod(namespace, pod))
    try:
        answer = http_get(client, namespace, pod, port, path, timeout=timeout)
    except TunnelError as exc:
        hint = "; --control-port is the server's HTTP control port (agnhost's: 8080)" if "HTTP/1.1" in str(exc) else ""
        raise TunnelError(f"error: cannot reach the control port {port} of pod {pod}: {exc}{hint}") from None
    if answer.status == 404:
        raise UsageError(
            f"error: pod {pod} answered {path} on port {port} with 404 Not Found ({answer.body or 'no body'}); "
            "set --serving-path/--not-serving-path or --control-port for servers with other endpoints"
        )
    if answer.status >= 400:
        raise GrpcProbeError(f"error: pod {pod} answered {path} on port {port} with {answer.status} {answer.reason}: {answer.body}")
    return answer


def _ready(pod: dict) -> bool:
    conds = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True"


def _restarts(pod: dict, container: str | None) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(cs.get("restartCount") or 0) for cs in statuses if container in (None, cs.get("name")))


def wait_for_kubelet(
    client: KubeClient, namespace: str, pod: dict, *, serving: bool, readiness: bool, container: str | None, since: float, timeout: float
) -> KubeletAction:
    """Watch the pod until the kubelet acts on the new health: Ready flips (readiness) or restartCount grows (liveness)."""
    name = pod["metadata"]["name"]
    before = _restarts(pod, container)

    def acted(obj: dict) -> str | None:
        if readiness:
            return f"Ready={'True' if serving else 'False'}" if _ready(obj) == serving else None
        now = _restarts(obj, container)
        return f"restartCount {before} -> {now}" if now > before else None

    what = acted(pod)
    if what is None:
        deadline = time.monotonic() + timeout
        query = {"fieldSelector": f"metadata.name={name}", "resourceVersion": pod["metadata"].get("resourceVersion", "")}
        for event in client.watch(f"/api/v1/namespaces/{namespace}/pods", query, deadline):
            obj = event.get("object") or {}
            if event.get("type") in ("ADDED", "MODIFIED"):
                what = acted(obj)
                if what:
                    break
            elif event.get("type") == "DELETED":
                raise GrpcProbeError(f"error: pod {name} was deleted while waiting for the kubelet")
        if what is None:
            raise WaitTimeout(f"error: the kubelet did not act on pod {name} within {timeout:g}s (--wait-timeout)")
    seconds = time.monotonic() - since
    return KubeletAction(what, seconds, _latest_event(client, namespace, pod, readiness=readiness, serving=serving))


def _latest_event(client: KubeClient, namespace: str, pod: dict, *, readiness: bool, serving: bool) -> str | None:
    if serving:
        return None  # the kubelet records no event for a probe that succeeds
    meta = pod["metadata"]
    events = client.get(
        f"/api/v1/namespaces/{namespace}/events",
        {"fieldSelector": f"involvedObject.name={meta['name']},involvedObject.uid={meta.get('uid', '')}"},
    ).get("items") or []
    if readiness:
        wanted = [e for e in events if e.get("reason") == "Unhealthy" and str(e.get("message", "")).startswith("Readiness probe failed")]
    else:
        wanted = [e for e in events if e.get("reason") == "Killing"]
    if not wanted:
        return None
    latest = max(wanted, key=lambda e: (e.get("lastTimestamp") or "", int(e.get("count") or 1)))
    count = int(latest.get("count") or 1)
    text = f"{latest.get('type', '')} {latest.get('reason', '')}: {latest.get('message', '')}"
    return text + (f" (x{count})" if count > 1 else "")


class WaitTimeout(GrpcProbeError):
    exit_code = ExitCode.UNHEALTHY
