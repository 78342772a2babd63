"""The probe core against real grpcio servers, without any tunnel: the kubelet's outputs byte for byte."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from kubectl_grpcprobe.kubelet.probe import Outcome, check, decode_response, encode_request

from .helpers import bare_grpc_server, closed_port, hanging_health_server, health_server, http1_server, tcp_server

UA = "kube-probe/1.33"
SECOND = 10**9


def test_serving() -> None:
    with health_server() as (port, servicer):
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=SECOND, user_agent=UA, address="10.244.0.7:5000")
    assert (result.outcome, result.result, result.output, result.status) == (Outcome.HEALTHY, "success", "service healthy", "SERVING")
    assert result.rpc_ms is not None and result.connect_ms is not None
    seen = servicer.metadata[0]
    assert seen["user-agent"].startswith("kube-probe/1.33 ")  # gRPC appends its own token, as grpc-go does
    # Empty request metadata: nothing but what the transport itself sends.
    assert {k for k in seen if not k.startswith(":")} <= {"user-agent"}


def test_not_serving_and_other_statuses() -> None:
    statuses = {
        "a": health_pb2.HealthCheckResponse.NOT_SERVING,
        "b": health_pb2.HealthCheckResponse.UNKNOWN,
        "c": health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
    }
    with health_server(statuses) as (port, _):
        outputs = {
            service: check(f"127.0.0.1:{port}", service=service, timeout_ns=SECOND, user_agent=UA).output for service in statuses
        }
    assert outputs == {
        "a": 'service unhealthy (responded with "NOT_SERVING")',
        "b": 'service unhealthy (responded with "UNKNOWN")',
        "c": 'service unhealthy (responded with "SERVICE_UNKNOWN")',
    }


def test_unknown_service_is_notfound() -> None:
    with health_server() as (port, _):
        result = check(f"127.0.0.1:{port}", service="no.such.Service", timeout_ns=SECOND, user_agent=UA)
    assert result.outcome is Outcome.RPC_FAILED
    assert result.code == "NotFound"
    # grpcio's standard servicer sends no status message (grpc-go's says "unknown service").
    assert result.output == "error: health rpc probe failed: rpc error: code = NotFound desc = "


def test_server_without_health_service_is_unimplemented() -> None:
    with bare_grpc_server() as port:
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=SECOND, user_agent=UA)
    assert result.outcome is Outcome.RPC_FAILED and result.code == "Unimplemented"
    assert result.output.startswith("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): ")


def test_rpc_that_never_answers_hits_the_single_deadline() -> None:
    with hanging_health_server() as (port, entered):
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=SECOND, user_agent=UA)
        assert entered.is_set()
    assert result.outcome is Outcome.RPC_FAILED and result.code == "DeadlineExceeded"
    assert result.output == "timeout: health rpc did not complete within 1s"


def test_timeout_spelled_like_go() -> None:
    with hanging_health_server() as (port, _):
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=1_500_000_000, user_agent=UA)
    assert result.output == "timeout: health rpc did not complete within 1.5s"


def test_closed_port_is_a_connect_timeout() -> None:
    result = check(f"127.0.0.1:{closed_port()}", service="", timeout_ns=SECOND, user_agent=UA, address="10.244.0.7:5000")
    assert result.outcome is Outcome.UNREACHABLE
    assert result.output == 'timeout: failed to connect service "10.244.0.7:5000" within 1s: context deadline exceeded'


def test_ipv6_address_in_brackets() -> None:
    result = check(f"127.0.0.1:{closed_port()}", service="", timeout_ns=SECOND, user_agent=UA, address="[fd00::7]:5000")
    assert result.output == 'timeout: failed to connect service "[fd00::7]:5000" within 1s: context deadline exceeded'


def test_silent_tcp_server_never_connects() -> None:
    with tcp_server("silent") as port:
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=SECOND, user_agent=UA, address="10.0.0.1:80")
    assert result.output == 'timeout: failed to connect service "10.0.0.1:80" within 1s: context deadline exceeded'


def test_http1_server_never_connects() -> None:
    with http1_server() as port:
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=SECOND, user_agent=UA, address="10.0.0.1:80")
    assert result.outcome is Outcome.UNREACHABLE


def test_garbage_server_never_connects() -> None:
    with tcp_server("garbage") as port:
        result = check(f"127.0.0.1:{port}", service="", timeout_ns=SECOND, user_agent=UA, address="10.0.0.1:80")
    assert result.outcome is Outcome.UNREACHABLE


@given(st.text(max_size=300))
def test_request_codec_matches_protobuf(service: str) -> None:
    assert encode_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_response_codec_matches_protobuf(status: int) -> None:
    data = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert decode_response(data) == status
