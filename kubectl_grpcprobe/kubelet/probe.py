"""The kubelet's gRPC probe (pkg/probe/grpc/grpc.go), as a function that returns a value.

Same check, same words: plaintext, `kube-probe/<major>.<minor>` user agent, empty metadata, a new
connection, a blocking dial, and ONE deadline of the probe's timeout over dial and RPC together.
Every outcome is a ProbeResult; nothing here raises for a health outcome.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .. import stop
from ..errors import ExitCode
from . import gostr

# grpc.health.v1.HealthCheckResponse.ServingStatus, with the names Go's String() prints.
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
CHECK_METHOD = "/grpc.health.v1.Health/Check"


class Outcome(Enum):
    HEALTHY = "healthy"  # SERVING
    UNHEALTHY = "unhealthy"  # answered, not SERVING
    RPC_FAILED = "rpc-failed"  # the RPC ended with a status other than OK
    UNREACHABLE = "unreachable"  # no connection before the deadline

    @property
    def exit_code(self) -> ExitCode:
        return {
            Outcome.HEALTHY: ExitCode.OK,
            Outcome.UNHEALTHY: ExitCode.UNHEALTHY,
            Outcome.RPC_FAILED: ExitCode.RPC_FAILED,
            Outcome.UNREACHABLE: ExitCode.UNREACHABLE,
        }[self]


@dataclass(frozen=True)
class TlsSettings:
    """--tls and its companions, with grpc_health_probe's meanings (-tls, -tls-no-verify, -tls-ca-cert, ...)."""

    verify: bool = True
    ca_file: str | None = None  # None: the system's roots
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None  # None: the address the check names (the pod IP)

    def describe(self) -> str:
        if not self.verify:
            words = "TLS without verifying the server"
        else:
            words = f"TLS verified against {self.ca_file or 'the system roots'}"
            if self.server_name:
                words += f" as {self.server_name}"
        if self.client_cert:
            words += ", with a client certificate"
        return words


@dataclass(frozen=True)
class Tuning:
    """What an ad hoc check changes from the kubelet's, as grpc_health_probe's flags do; the default changes nothing."""

    connect_timeout_ns: int | None = None  # the dial's own deadline (else: the one deadline over dial and RPC)
    rpc_timeout_ns: int | None = None  # the RPC's own deadline, from when the dial is done
    metadata: tuple[tuple[str, str], ...] = ()  # request headers (the kubelet sends none)
    gzip: bool = False  # compress the request (the kubelet does not)
    tls: TlsSettings | None = None  # TLS to the server (the kubelet: plaintext, or unverified TLS for grpc.mode TLS)

    def differences(self) -> list[str]:
        """How this check differs from the kubelet's, in words for the output (never header values: they may be secrets)."""
        out = []
        if self.connect_timeout_ns is not None or self.rpc_timeout_ns is not None:
            parts = []
            if self.connect_timeout_ns is not None:
                parts.append(f"connect {gostr.duration(self.connect_timeout_ns)}")
            if self.rpc_timeout_ns is not None:
                parts.append(f"rpc {gostr.duration(self.rpc_timeout_ns)}")
            out.append("separate timeouts (" + ", ".join(parts) + ")")
        if self.metadata:
            out.append("request headers " + ", ".join(sorted({k for k, _ in self.metadata})))
        if self.gzip:
            out.append("a gzip-compressed request")
        if self.tls is not None:
            out.append(self.tls.describe())  # file paths and names only: never key material
        return out


KUBELET = Tuning()


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    output: str  # the kubelet's probe output, byte for byte
    status: str | None = None  # ServingStatus name when the server answered
    code: str | None = None  # Go name of the gRPC status code when the RPC failed
    connect_ms: float | None = None
    rpc_ms: float | None = None
    elapsed_ms: float | None = None  # the whole check, dial and RPC: what the probe's deadline bounds

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.HEALTHY

    @property
    def result(self) -> str:
        """probe.Result as the kubelet names it."""
        return "success" if self.success else "failure"


# -- HealthCheckRequest/Response codec ------------------------------------------------------
# Both messages have one field; hand-encoding them spares every probe the protobuf runtime
# import. tests/test_probe.py checks the codec against grpc_health's generated messages.


def encode_request(service: str) -> bytes:
    data = service.encode("utf-8", "surrogateescape")
    if not data:
        return b""
    return b"\x0a" + _varint(len(data)) + data


def decode_response(data: bytes) -> int:
    """The `status` field (1, varint) of a HealthCheckResponse; unknown fields skipped."""
    status = 0
    for number, value in message_fields(data):
        if number == 1 and isinstance(value, int):
            status = value if value < 1 << 31 else value - (1 << 64)
    return status


def message_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """The top-level fields of a protobuf message: (number, int for varints, bytes for length-delimited)."""
    out: list[tuple[int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            out.append((number, value))
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated message")
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated message")
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def status_name(value: int) -> str:
    return SERVING_STATUS.get(value, str(value))


# -- the check --------------------------------------------------------------------------------


def channel_options(user_agent: str, address: str) -> list[tuple[str, object]]:
    """grpcio channel options for the kubelet's dial."""
    return [
        ("grpc.primary_user_agent", user_agent),
        ("grpc.default_authority", address),
        # A fresh connection per probe: no subchannel sharing with other channels in this process.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
        # The kubelet's probe dialer ignores proxy variables; grpcio would honour them.
        ("grpc.enable_http_proxy", 0),
    ]


def check(
    target: str,
    *,
    service: str,
    timeout_ns: int,
    user_agent: str,
    address: str | None = None,
    tuning: Tuning = KUBELET,
    trace: Callable[[str], None] | None = None,
) -> ProbeResult:
    """One probe execution against `target` (host:port grpcio dials).

    `address` is what the kubelet would have dialled (podIP:port) and is what messages show;
    it also becomes the HTTP/2 :authority, as the kubelet's would be. `tuning` (ad hoc controls) may give
    the dial and the RPC deadlines of their own, headers and gzip; by default it changes nothing. `trace` (-v)
    gets the gRPC level: the dial, the connection's states with times, the status and the trailers; header
    values never (they may be credentials).
    """
    import grpc

    address = address or target
    separate = tuning.connect_timeout_ns is not None or tuning.rpc_timeout_ns is not None
    connect_ns = tuning.connect_timeout_ns if tuning.connect_timeout_ns is not None else timeout_ns
    rpc_ns = (tuning.rpc_timeout_ns if tuning.rpc_timeout_ns is not None else timeout_ns) if separate else None
    deadline = time.monotonic() + connect_ns / 1e9
    started = time.perf_counter()
    if trace is not None:
        deadlines = (f"dial {gostr.duration(connect_ns)}, rpc {gostr.duration(rpc_ns)}" if rpc_ns is not None
                     else f"one deadline {gostr.duration(timeout_ns)} over dial and rpc")  # fmt: skip
        extras = "".join([
            f", headers {', '.join(sorted({k for k, _ in tuning.metadata}))}" if tuning.metadata else "",
            ", gzip" if tuning.gzip else "",
        ])  # fmt: skip
        trace(f"grpc: dial {target} (for {address}): :authority {address}, user-agent {user_agent!r}, {deadlines}{extras}, "
              f"Check {{service: {gostr.quote(service)}}}")  # fmt: skip
    channel = grpc.insecure_channel(target, options=channel_options(user_agent, address))
    try:
        result = _check(channel, started, deadline, service=service, address=address, connect_ns=connect_ns, rpc_ns=rpc_ns,
                        rpc_text=gostr.duration(rpc_ns if rpc_ns is not None else timeout_ns), tuning=tuning, trace=trace)  # fmt: skip
        return dataclasses.replace(result, elapsed_ms=(time.perf_counter() - started) * 1000)
    finally:
        channel.close()


def _check(
    channel, started: float, deadline: float, *, service: str, address: str, connect_ns: int, rpc_ns: int | None, rpc_text: str, tuning: Tuning,
    trace: Callable[[str], None] | None = None,
) -> ProbeResult:  # channel: grpc.Channel
    """The dial, then the RPC, as grpc.go's Probe: one deadline over both (rpc_ns None), or the RPC's own from
    when the dial is done. The verdict, without the elapsed time."""
    import grpc

    rpc = channel.unary_unary(CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_response)
    compression = grpc.Compression.Gzip if tuning.gzip else None
    never_ready = ProbeResult(
        Outcome.UNREACHABLE,
        f"timeout: failed to connect service {gostr.quote(address)} within {gostr.duration(connect_ns)}: context deadline exceeded",
    )
    gone_away = False  # a connection ended by GOAWAY with the server's SETTINGS: never ready, for grpc-go
    while True:
        if not _wait_until_ready(channel, deadline, trace, started):
            return never_ready
        connected = time.perf_counter()
        connect_ms = (connected - started) * 1000
        remaining = rpc_ns / 1e9 if rpc_ns is not None else deadline - time.monotonic()
        if remaining <= 0 and gone_away:
            return never_ready
        if remaining <= 0:  # the dial used the whole deadline: the RPC cannot start in time
            return ProbeResult(
                Outcome.RPC_FAILED, f"timeout: health rpc did not complete within {rpc_text}", code="DeadlineExceeded", connect_ms=connect_ms
            )
        try:
            # A stop closes the channel from the stopping thread, which cancels this call at once.
            with stop.on_stop(channel.close):
                value, call = rpc.with_call(service, timeout=remaining, metadata=tuning.metadata, compression=compression)
            if trace is not None:
                _trace_call(trace, call, started)
            break
        except grpc.RpcError as err:
            stop.check()  # cancelled by a stop: not a verdict
            if trace is not None:
                _trace_call(trace, err, started)
            code = err.code()
            details = err.details() or ""
            if code is grpc.StatusCode.UNAVAILABLE and "GOAWAY received" in details:
                # grpcio calls a connection READY at the server's SETTINGS; grpc-go, whose blocking dial the kubelet
                # uses, does not when a GOAWAY comes with them, and dials again until the deadline. So do we.
                gone_away = True
                if time.monotonic() >= deadline:
                    return never_ready
                continue
            return _rpc_failed(err, rpc_text, connect_ms, (time.perf_counter() - connected) * 1000)
    return _answered(value, connect_ms, (time.perf_counter() - connected) * 1000)


def _rpc_failed(err, rpc_timeout: str, connect_ms: float, rpc_ms: float) -> ProbeResult:  # err: grpc.RpcError
    """A failed Check in the kubelet's words (grpc.go: Unimplemented, DeadlineExceeded, anything else)."""
    import grpc

    code = err.code()
    details = _as_grpc_go_says(code, err.details() or "")
    name = gostr.grpc_code_name(code.value[0])
    if code is grpc.StatusCode.UNIMPLEMENTED:
        output = f"error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {details}"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        output = f"timeout: health rpc did not complete within {rpc_timeout}"
    else:
        output = f"error: health rpc probe failed: rpc error: code = {name} desc = {details}"
    return ProbeResult(Outcome.RPC_FAILED, output, code=name, connect_ms=connect_ms, rpc_ms=rpc_ms)


def _answered(value: int, connect_ms: float, rpc_ms: float) -> ProbeResult:
    status = status_name(value)
    if status != "SERVING":
        return ProbeResult(
            Outcome.UNHEALTHY, f"service unhealthy (responded with {gostr.quote(status)})", status=status, connect_ms=connect_ms, rpc_ms=rpc_ms
        )
    return ProbeResult(Outcome.HEALTHY, "service healthy", status=status, connect_ms=connect_ms, rpc_ms=rpc_ms)


_TOO_LARGE = re.compile(r"(?:Stream removed \(CLIENT: )?Received message larger than max \((\d+) vs\. (\d+)\)\)?")


def _as_grpc_go_says(code, details: str) -> str:  # code: grpc.StatusCode
    """Errors the client library itself makes, in grpc-go's words: the kubelet's output quotes them.

    Only the ones the differential tests found (tests/test_oracle.py); a server's own details pass unchanged.
    - a response over the 4 MiB receive limit: grpc-go's rpc_util.go says
      "grpc: received message larger than max (N vs. M)"; grpcio "Stream removed (CLIENT: Received message ...)".
    """
    import grpc

    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        match = _TOO_LARGE.fullmatch(details)
        if match:
            return f"grpc: received message larger than max ({match[1]} vs. {match[2]})"
    return details


_READY, _SHUTDOWN = 2, 4  # grpc_connectivity_state values
_STATE_NAMES = ("IDLE", "CONNECTING", "READY", "TRANSIENT_FAILURE", "SHUTDOWN")


def _since(started: float) -> str:
    return f"+{(time.perf_counter() - started) * 1000:.1f}ms"


def _trace_call(trace: Callable[[str], None], call: Any, started: float) -> None:
    """The status, and the server's headers and trailers (printable; values from the server, not ours)."""
    code = call.code()
    name = gostr.grpc_code_name(code.value[0]) if code is not None else "?"
    trace(f"grpc: status {name} {gostr.quote(call.details() or '')} at {_since(started)}")
    for label, pairs in (("headers", call.initial_metadata()), ("trailers", call.trailing_metadata())):
        if pairs:
            shown = ", ".join(f"{k}: {gostr.quote(v) if isinstance(v, str) else f'<{len(v)} bytes>'}" for k, v in pairs)
            trace(f"grpc: response {label}: {shown}")


def _wait_until_ready(channel, deadline: float, trace: Callable[[str], None] | None = None, started: float = 0.0) -> bool:  # channel: grpc.Channel
    """grpc-go's blocking dial: keep connecting (with backoff) until READY or the deadline.

    grpc.channel_ready_future would do, but it starts a polling thread that wakes every 200 ms,
    and channel.close() then waits for it: +200 ms on every probe. The cygrpc channel's own
    check/watch calls are what that thread uses, minus the thread.
    """
    import grpc

    raw = getattr(channel, "_channel", None)
    if raw is None or not hasattr(raw, "watch_connectivity_state"):  # a grpcio without them
        try:
            grpc.channel_ready_future(channel).result(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except grpc.FutureTimeoutError:
            return False
    state = raw.check_connectivity_state(True)
    if trace is not None:
        trace(f"grpc: connection {_STATE_NAMES[state]} at {_since(started)}")
    while state != _READY:
        # Polled, not closed from outside: closing a channel waits for its pending watch anyway.
        stop.check()
        if state == _SHUTDOWN:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # Waits for a state change; wake at least every 0.25 s so that a stop is seen promptly.
        # Never interrupt this call (run checks off the main thread: stop.off_main_thread): a watch
        # abandoned by an exception stays pending, and channel.close() then waits for it for ever.
        raw.watch_connectivity_state(state, time.time() + min(remaining, 0.25))
        previous, state = state, raw.check_connectivity_state(True)
        if trace is not None and state != previous:
            trace(f"grpc: connection {_STATE_NAMES[state]} at {_since(started)}")
    return True
