"""All rendering: text (one kubelet-style line per probe), wide (a table), json (the stable schema).

Results go to stdout, diagnostics to stderr; colour only on a terminal and never with NO_COLOR.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from .errors import ExitCode, most_severe
from .runner import Report

SCHEMA_VERSION = "kubectl-grpcprobe/v1"


@dataclass
class Environment:
    """Where output goes; tests pass StringIO streams and run main() in-process."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    colors: bool | None = None

    def __post_init__(self) -> None:
        if self.colors is None:
            self.colors = bool(getattr(self.stdout, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _paint(env: Environment, text: str, ok: bool) -> str:
    if not env.colors:
        return text
    return f"\x1b[{'32' if ok else '31'}m{text}\x1b[0m"


def report_dict(r: Report) -> dict[str, object]:
    """One probe in the JSON schema (documented in README.md, 'JSON output'); keys never change meaning."""
    return {
        "namespace": r.namespace,
        "pod": r.pod,
        "container": r.target.container,
        "probe": r.target.kind,
        "port": r.target.port,
        "service": r.target.service,
        "podIP": r.pod_ip,
        "address": r.address,
        "timeoutSeconds": r.target.timeout_ns / 1e9,
        "result": r.result.result,
        "outcome": r.result.outcome.value,
        "output": r.result.output,
        "event": r.event,
        "status": r.result.status,
        "code": r.result.code,
        "exitCode": int(r.exit_code),
        "timings": {f"{k}Ms": round(v, 3) for k, v in r.timings.items()},
        "diagnostics": list(r.diagnostics),
    }


def render(reports: list[Report], fmt: str, env: Environment) -> None:
    if fmt == "quiet":
        return
    if fmt == "json":
        doc = {
            "apiVersion": SCHEMA_VERSION,
            "kind": "ProbeReport",
            "exitCode": int(most_severe([r.exit_code for r in reports]) if reports else ExitCode.OK),
            "probes": [report_dict(r) for r in reports],
        }
        env.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt == "wide":
        header = ["POD", "CONTAINER", "PROBE", "TARGET", "SERVICE", "TIMEOUT", "RESULT", "API", "TUNNEL", "CONNECT", "RPC", "OUTPUT"]
        rows = [header]
        for r in reports:
            from .gostr import duration, quote

            rows.append(
                [
                    r.pod,
                    r.target.container,
                    r.target.kind,
                    r.address,
                    quote(r.target.service),
                    duration(r.target.timeout_ns),
                    r.result.result,
                    ms(r.timings.get("api")),
                    ms(r.timings.get("tunnel")),
                    ms(r.timings.get("connect")),
                    ms(r.timings.get("rpc")),
                    r.result.output,
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        for row in rows:
            line = "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "   " + row[-1]
            env.stdout.write(line.rstrip() + "\n")
        _diagnostics(reports, env)
        return
    for r in reports:
        latency = r.timings.get("rpc") if r.result.rpc_ms is not None else r.timings.get("total")
        label = "rpc" if r.result.rpc_ms is not None else "after"
        env.stdout.write(
            f"pod/{r.pod} container={r.target.container}: {_paint(env, r.event, r.result.success)} ({label} {ms(latency)})\n"
        )
    _diagnostics(reports, env)


def render_toggle(pod: str, port: int, answer: object, fmt: str, env: Environment) -> None:
    """The control endpoint's answer; in json it goes to stderr so stdout stays one document."""
    if fmt == "quiet":
        return
    line = f"pod/{pod}: GET {answer.path} on port {port} answered {answer.status} {answer.reason}"  # type: ignore[attr-defined]
    if answer.body:  # type: ignore[attr-defined]
        line += f" (server says: {answer.body.splitlines()[0][:200]})"  # type: ignore[attr-defined]
    (env.stderr if fmt == "json" else env.stdout).write(line + "\n")


def _diagnostics(reports: list[Report], env: Environment) -> None:
    for r in reports:
        for note in r.diagnostics:
            env.stderr.write(f"pod/{r.pod} container={r.target.container}: {note}\n")


def error(env: Environment, message: str) -> None:
    env.stderr.write(message.rstrip("\n") + "\n")
