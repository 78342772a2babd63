"""`--list-services`: which services a pod's gRPC server knows, through server reflection (beyond the kubelet).

When a probe ends in NotFound ("unknown service"), the list says whether the probe's service is a
typo or a service the health server was never told about. grpc.reflection.v1 first, then v1alpha (what
older servers register). The two messages needed are hand-encoded, as the Check's are: no protobuf
runtime on this path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import stop
from ..kube.client import KubeClient
from ..kubelet import gostr
from ..kubelet.probe import message_fields

METHODS = (
    ("v1", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
    ("v1alpha", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
)
LIST_SERVICES = b"\x3a\x00"  # ServerReflectionRequest{list_services: ""} (field 7, a string)
MAX_SERVICES = 1000  # what a hostile server may make us hold


@dataclass(frozen=True)
class ServiceList:
    services: list[str] | None  # None when the server could not say
    protocol: str | None = None  # "v1" or "v1alpha"
    error: str | None = None  # why there is no list, in gRPC's words
    reached: bool = True  # False when no gRPC server answered at all (Unavailable, or the deadline in the dial)

    def says(self, service: str) -> str:
        """A hint for a probe that got NotFound for `service`."""
        if self.services is None:
            return f"hint: server reflection cannot tell which services exist ({self.error})"
        known = ", ".join(gostr.quote(s) for s in self.services[:20]) + (" …" if len(self.services) > 20 else "")
        where = "is among them: the health service was not told about it" if service in self.services else "is not among them"
        return f"hint: server reflection lists {len(self.services)} services ({known}); {gostr.quote(service)} {where}"


def decode_list(response: bytes) -> list[str]:
    """ServerReflectionResponse -> the names of list_services_response (field 6); error_response (7) raises."""
    names: list[str] = []
    for number, value in message_fields(response):
        if number == 7 and isinstance(value, bytes):
            message = next((v for n, v in message_fields(value) if n == 2 and isinstance(v, bytes)), b"")
            raise ValueError(message.decode("utf-8", "replace") or "the server answered with an error")
        if number == 6 and isinstance(value, bytes):
            for inner, service in message_fields(value):
                if inner == 1 and isinstance(service, bytes):
                    name = next((v for n, v in message_fields(service) if n == 1 and isinstance(v, bytes)), b"")
                    names.append(name.decode("utf-8", "replace"))
                    if len(names) >= MAX_SERVICES:
                        return sorted(names)
    return sorted(names)


def list_services(target: str, *, authority: str, timeout: float, user_agent: str) -> ServiceList:
    """Ask the server at `target` for its services, within `timeout` seconds (the dial included)."""
    return stop.off_main_thread(lambda: _list(target, authority, timeout, user_agent), name="grpcprobe-reflection")


def _list(target: str, authority: str, timeout: float, user_agent: str) -> ServiceList:
    import grpc

    options = [
        ("grpc.primary_user_agent", user_agent),
        ("grpc.default_authority", authority),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_receive_message_length", 4 << 20),
    ]
    channel = grpc.insecure_channel(target, options=options)
    error = "no answer"
    try:
        for protocol, method in METHODS:
            call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
            try:
                with stop.on_stop(channel.close):
                    responses = call(iter([LIST_SERVICES]), timeout=timeout, wait_for_ready=True)
                    first = next(iter(responses), None)
                    responses.cancel()
            except grpc.RpcError as err:
                stop.check()
                code = err.code()
                error = f"rpc error: code = {gostr.grpc_code_name(code.value[0])} desc = {err.details() or ''}"
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    continue  # not this version: try the older one
                reached = code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                return ServiceList(None, error=error, reached=reached)
            if first is None:
                return ServiceList(None, error="the reflection stream ended without an answer")
            try:
                return ServiceList(decode_list(first), protocol=protocol)
            except ValueError as exc:
                return ServiceList(None, protocol=protocol, error=str(exc))
        return ServiceList(None, error="server reflection is not enabled (v1 and v1alpha: Unimplemented)")
    finally:
        channel.close()


def list_pod_services(client: KubeClient, namespace: str, name: str, options: Any) -> list[tuple[int, ServiceList]]:
    """(port, services) for each port the pod's gRPC probes (or --port) name, each through its own port-forward."""
    from ..kube.portforward import port_forward
    from .runner import pod_ip, read_pod

    pod, targets, agent = read_pod(client, namespace, name, options)
    ip = pod_ip(pod) or "<none>"
    rows = []
    for port in sorted({t.port for t in targets}):
        timeout = max(t.timeout_ns for t in targets if t.port == port) / 1e9
        with port_forward(client, namespace, name, port, timeout=client.timeout or 30.0) as fwd:
            found = list_services(f"127.0.0.1:{fwd.local_port}", authority=gostr.join_host_port(ip, port), timeout=max(timeout, 5.0), user_agent=agent)
        rows.append((port, found))
    return rows
