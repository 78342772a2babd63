"""The agnhost-compatible server behaves as `/agnhost grpc-health-checking` does."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubectl_grpcprobe.sandbox.node.agnhost import AgnhostServer


def _check(server: AgnhostServer, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _http(server: AgnhostServer, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_toggle_endpoints_any_method() -> None:
    with AgnhostServer(port=0, http_port=0) as server:
        assert _check(server) == health_pb2.HealthCheckResponse.SERVING
        code, body = _http(server, "/make-not-serving", "POST")
        assert code == 200 and body.endswith("s")  # the uptime as a Go duration, e.g. 12.3456ms or 1.5s
        assert _check(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _http(server, "/make-serving", "PUT")[0] == 200
        assert _check(server) == health_pb2.HealthCheckResponse.SERVING
        assert _http(server, "/other") == (404, "404 page not found\n")


def test_unknown_service_and_watch() -> None:
    with AgnhostServer(port=0, http_port=0, service="svc") as server:
        assert _check(server, "svc") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            _check(server, "")
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND, "unknown service")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=5)
            with pytest.raises(grpc.RpcError) as watch_info:
                next(stream)
        assert watch_info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_delay_unhealthy() -> None:
    with AgnhostServer(port=0, http_port=0, delay_unhealthy_sec=0) as server:
        assert _check(server) == health_pb2.HealthCheckResponse.NOT_SERVING
    with AgnhostServer(port=0, http_port=0, delay_unhealthy_sec=3600) as server:
        assert _check(server) == health_pb2.HealthCheckResponse.SERVING
        server.started_ns = time.monotonic_ns() - 3600 * 10**9  # as if an hour had passed
        assert _check(server) == health_pb2.HealthCheckResponse.NOT_SERVING
