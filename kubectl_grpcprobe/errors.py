"""Exit codes and the exceptions that carry them; cli.main is the only place that turns them into a status."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Compatible with grpc_health_probe's codes, plus 130 for Ctrl-C."""

    OK = 0  # every probe succeeded
    USAGE = 1  # bad invocation, or nothing to probe
    UNREACHABLE = 2  # API error, pod not running, tunnel or connect failure
    RPC_FAILED = 3  # the Check RPC failed: Unimplemented, NotFound, deadline, other codes
    UNHEALTHY = 4  # the server answered, but not SERVING
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    PIPE_CLOSED = 141  # stdout's reader went away (as kubectl, which dies of SIGPIPE: 128 + 13)
    TERMINATED = 143  # SIGTERM, e.g. a runbook's timeout killing us


# With several probes the most severe outcome decides the exit code.
SEVERITY = [ExitCode.OK, ExitCode.UNHEALTHY, ExitCode.RPC_FAILED, ExitCode.UNREACHABLE, ExitCode.USAGE]


def most_severe(codes: list[ExitCode]) -> ExitCode:
    return max(codes, key=SEVERITY.index, default=ExitCode.OK)


class GrpcProbeError(Exception):
    """A failure the user can cause or meet; its message is one line for stderr."""

    exit_code = ExitCode.UNREACHABLE


class UsageError(GrpcProbeError):
    exit_code = ExitCode.USAGE


class NothingToProbe(GrpcProbeError):
    exit_code = ExitCode.USAGE


class ConfigError(GrpcProbeError):
    """The kubeconfig or in-cluster configuration cannot be used: the invocation cannot work as given."""

    exit_code = ExitCode.USAGE


class ApiError(GrpcProbeError):
    """The API server answered with a Status (or an HTTP error)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"Error from server ({self.reason}): {self.message}" if self.reason else f"error: {self.message}"


class ConnectError(GrpcProbeError):
    """The API server could not be reached (DNS, refused, TLS, timeout)."""


class PodNotRunning(GrpcProbeError):
    pass


class TunnelError(GrpcProbeError):
    """The port-forward could not be opened or broke in a way that leaves no verdict."""


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM so that every context manager cleans up on the way out."""
