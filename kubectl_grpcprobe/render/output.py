"""All rendering: text (one kubelet-style line per probe), wide (a table), json (the stable schema).

Results go to stdout, diagnostics to stderr; colour only on a terminal and never with NO_COLOR.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ExitCode, most_severe
from ..kubelet.report import Report

if TYPE_CHECKING:
    from ..kube.portforward import HttpAnswer
    from ..kubelet.report import KubeletAction, PodOutcome
    from ..kubelet.resolve import Target

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
            from ..kubelet.gostr import duration, quote

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


def render_toggle(pod: str, port: int, answer: HttpAnswer, fmt: str, env: Environment) -> None:
    """The control endpoint's answer; in json it goes to stderr so stdout stays one document."""
    if fmt == "quiet":
        return
    line = f"pod/{pod}: GET {answer.path} on port {port} answered {answer.status} {answer.reason}"
    if answer.body:
        line += f" (server says: {answer.body.splitlines()[0][:200]})"
    (env.stderr if fmt == "json" else env.stdout).write(line + "\n")


def render_kubelet_action(pod: str, action: KubeletAction, fmt: str, env: Environment) -> None:
    if fmt == "quiet":
        return
    line = f"pod/{pod}: the kubelet acted {action.seconds:.1f}s after the toggle: {action.what}"
    if action.event:
        line += f"; event: {action.event}"
    (env.stderr if fmt == "json" else env.stdout).write(line + "\n")


def _diagnostics(reports: list[Report], env: Environment) -> None:
    for r in reports:
        for note in r.diagnostics:
            env.stderr.write(f"pod/{r.pod} container={r.target.container}: {note}\n")


def error(env: Environment, message: str) -> None:
    env.stderr.write(message.rstrip("\n") + "\n")


class WatchPrinter:
    """--watch output: a line per execution and per kubelet decision, then a summary.

    json prints one JSON object per line (type: execution, decision, skipped, note, update, summary).
    """

    def __init__(self, env: Environment, fmt: str, namespace: str, pod: str, pod_ip: str) -> None:
        self.env, self.fmt, self.namespace, self.pod, self.pod_ip = env, fmt, namespace, pod, pod_ip

    def _stamp(self) -> str:
        import datetime

        return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]

    def _json(self, kind: str, **fields: object) -> None:
        self.env.stdout.write(json.dumps({"type": kind, "time": self._stamp(), **fields}) + "\n")
        self.env.stdout.flush()

    def _line(self, text: str) -> None:
        self.env.stdout.write(f"{self._stamp()}  {text}\n")
        self.env.stdout.flush()

    def execution(self, report: Report) -> None:
        if self.fmt == "quiet":
            return
        if self.fmt == "json":
            self._json("execution", **report_dict(report))
        else:
            latency = f"rpc {ms(report.result.rpc_ms)}" if report.result.rpc_ms is not None else "no answer"
            event = _paint(self.env, report.event, report.result.success)
            self._line(f"{report.target.container} {report.target.kind}: {event} ({latency})")
        _diagnostics([report], self.env)

    def decision(self, target: Target, text: str) -> None:
        if self.fmt == "json":
            self._json("decision", container=target.container, probe=target.kind, text=text)
        elif self.fmt != "quiet":
            self._line(f"{target.container} kubelet decision: {text}")

    def skipped(self, target: Target, reason: str) -> None:
        if self.fmt == "json":
            self._json("skipped", container=target.container, probe=target.kind, reason=reason)
        elif self.fmt != "quiet":
            self._line(f"{target.container} {target.kind}: not run: {reason}")

    def note(self, target: Target, text: str) -> None:
        if self.fmt == "json":
            self._json("note", container=target.container, probe=target.kind, text=text)
        elif self.fmt != "quiet":
            self.env.stderr.write(f"{self._stamp()}  {target.container} {target.kind}: {text}\n")

    def stream_update(self, target: Target, status: str, since_last_ms: float) -> None:
        if self.fmt == "json":
            self._json("update", container=target.container, probe=target.kind, status=status, sinceLastMs=round(since_last_ms, 3))
        elif self.fmt != "quiet":
            self._line(f"{target.container} {target.kind}: Health/Watch says {status}")

    def summary(self, summaries: list[dict[str, Any]]) -> None:
        if self.fmt == "json":
            items = []
            for s in summaries:
                t = s["target"]
                items.append(
                    {
                        "container": t.container,
                        "probe": t.kind,
                        "executions": s["executions"],
                        "failures": s["failures"],
                        "rpcLatencyMs": s["latency"],
                    }
                )
            self._json("summary", namespace=self.namespace, pod=self.pod, probes=items)
            return
        if self.fmt == "quiet":
            return
        self.env.stdout.write(f"--- pod/{self.pod} summary\n")
        for s in summaries:
            t = s["target"]
            line = f"{t.container} {t.kind}: {s['executions']} executions, {s['failures']} failed"
            lat = s["latency"]
            if lat:
                line += f"; rpc latency min {ms(lat['min'])} / median {ms(lat['median'])} / p99 {ms(lat['p99'])} / max {ms(lat['max'])}"
            self.env.stdout.write(line + "\n")
        self.env.stdout.flush()


class Progress:
    """`probing 57/200 pods` on stderr, only on a terminal and for more than a few pods; erased at the end."""

    def __init__(self, env: Environment, total: int, *, enabled: bool = True) -> None:
        isatty = getattr(env.stderr, "isatty", lambda: False)()
        self.env, self.total = env, total
        self.enabled = enabled and isatty and total > 5

    def update(self, done: int, total: int) -> None:
        if self.enabled:
            self.env.stderr.write(f"\rprobing {done}/{total} pods")
            self.env.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.env.stderr.write("\r\x1b[K")
            self.env.stderr.flush()


KIND_ORDER = {"startup": 0, "liveness": 1, "readiness": 2, "adhoc": 3}


def fleet_summary(reports: list[Report], outcomes: list[PodOutcome]) -> dict[str, int]:
    from ..kubelet.probe import Outcome

    healthy = sum(r.result.outcome is Outcome.HEALTHY for r in reports)
    unreachable = sum(r.result.outcome is Outcome.UNREACHABLE for r in reports)
    return {
        "probes": len(reports),
        "healthy": healthy,
        "unhealthy": len(reports) - healthy - unreachable,
        "unreachable": unreachable,
        "podsNotProbed": sum(not o.skipped for o in outcomes),
        "podsWithoutGrpcProbe": sum(o.skipped for o in outcomes),
    }


def render_fleet(reports: list[Report], outcomes: list[PodOutcome], fmt: str, env: Environment) -> None:
    """A table sorted by namespace, pod, container, probe; pods that could not be probed; a summary line."""
    if fmt == "quiet":
        return
    reports = sorted(reports, key=lambda r: (r.namespace, r.pod, r.target.container, KIND_ORDER[r.target.kind], r.target.service))
    outcomes = sorted(outcomes, key=lambda o: (o.namespace, o.pod))  # json keeps these orders too
    summary = fleet_summary(reports, outcomes)
    if fmt == "json":
        doc = {
            "apiVersion": SCHEMA_VERSION,
            "kind": "ProbeReport",
            "exitCode": int(most_severe([r.exit_code for r in reports] + [o.exit_code for o in outcomes if not o.skipped])),
            "probes": [report_dict(r) for r in reports],
            "pods": [
                {"namespace": o.namespace, "pod": o.pod, "message": o.message, "exitCode": int(o.exit_code), "skipped": o.skipped}
                for o in outcomes
            ],
            "summary": summary,
        }
        env.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from ..kubelet.gostr import duration, quote

    wide = fmt == "wide"
    header = ["NAMESPACE", "POD", "CONTAINER", "PROBE", "RESULT", "RPC"]
    if wide:
        header[5:5] = ["TARGET", "SERVICE", "TIMEOUT"]
        header += ["TUNNEL", "CONNECT"]
    header.append("OUTPUT")
    keyed: list[tuple[tuple[object, ...], list[str]]] = []
    for r in reports:
        row = [r.namespace, r.pod, r.target.container, r.target.kind, r.result.result, ms(r.timings.get("rpc"))]
        if wide:
            row[5:5] = [r.address, quote(r.target.service), duration(r.target.timeout_ns)]
            row += [ms(r.timings.get("tunnel")), ms(r.timings.get("connect"))]
        row.append(r.result.output)
        keyed.append(((r.namespace, r.pod, r.target.container, KIND_ORDER[r.target.kind], r.target.service), row))
    for o in outcomes:
        if o.skipped and not wide:
            continue
        row = [o.namespace, o.pod, "-", "-", "skipped" if o.skipped else "error", "-"]
        if wide:
            row[5:5] = ["-", "-", "-"]
            row += ["-", "-"]
        row.append(o.message)
        keyed.append(((o.namespace, o.pod, "", -1, ""), row))
    rows = [header] + [row for _, row in sorted(keyed, key=lambda item: item[0])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        env.stdout.write(("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "   " + row[-1]).rstrip() + "\n")
    line = f"{summary['probes']} probes: {summary['healthy']} healthy, {summary['unhealthy']} unhealthy, {summary['unreachable']} unreachable"
    if summary["podsNotProbed"]:
        line += f"; {summary['podsNotProbed']} pods not probed"
    if summary["podsWithoutGrpcProbe"]:
        line += f"; {summary['podsWithoutGrpcProbe']} pods without a gRPC probe"
    env.stdout.write(line + "\n")
    _diagnostics(reports, env)
