"""Flip a server between SERVING and NOT_SERVING through its HTTP control port (agnhost's endpoints)."""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass

from .errors import GrpcProbeError, TunnelError, UsageError
from .kubeapi import KubeClient
from .runner import ensure_running


@dataclass(frozen=True)
class ToggleAnswer:
    path: str
    status: int
    reason: str
    body: str
    elapsed_ms: float


def call_control_endpoint(client: KubeClient, namespace: str, pod: str, port: int, path: str, timeout: float) -> ToggleAnswer:
    """GET `path` on the pod's control port through a port-forward; raise with a clear line if it fails."""
    from .portforward import port_forward

    ensure_running(client.get_pod(namespace, pod))
    started = time.perf_counter()
    with port_forward(client, namespace, pod, port, timeout=timeout) as fwd:
        conn = http.client.HTTPConnection("127.0.0.1", fwd.local_port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "kubectl-grpcprobe", "Connection": "close"})
            response = conn.getresponse()
            body = response.read(64 * 1024).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            cause = fwd.errors[-1] if fwd.errors else f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise TunnelError(f"error: cannot reach the control port {port} of pod {pod}: {cause}") from None
        finally:
            conn.close()
    answer = ToggleAnswer(path, response.status, response.reason, body, (time.perf_counter() - started) * 1000)
    if response.status == 404:
        raise UsageError(
            f"error: pod {pod} answered {path} on port {port} with 404 Not Found ({body or 'no body'}); "
            "set --serving-path/--not-serving-path or --control-port for servers with other endpoints"
        )
    if response.status >= 400:
        raise GrpcProbeError(f"error: pod {pod} answered {path} on port {port} with {response.status} {response.reason}: {body}")
    return answer
