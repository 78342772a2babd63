"""All rendering: text (one kubelet-style line per probe), wide (a table), json (the stable schema).

Results go to stdout, diagnostics to stderr; colour only on a terminal that has it (never with
NO_COLOR or TERM=dumb). Text from peers (gRPC details, tunnel errors, HTTP answers) may hold any
byte: text output escapes control characters (`printable`), so a peer can neither break a line
nor drive the terminal. JSON keeps the exact strings (json escapes them itself).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

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
            self.colors = (
                bool(getattr(self.stdout, "isatty", lambda: False)())
                and "NO_COLOR" not in os.environ
                and os.environ.get("TERM", "") not in ("dumb", "")
            )


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def printable(text: str) -> str:
    """`text` with C0/C1 control characters and DEL escaped (\\n, \\x00, ...): one line, no terminal escapes."""
    return text.translate(_CONTROL)


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
        "differsFromKubelet": r.target.tuning.differences(),  # empty: exactly the kubelet's check
        # The kubelet's last Unhealthy/Killing events for this probe; null when not looked up (text output, ad hoc).
        "kubeletEvents": None
        if r.history is None
        else [
            {"reason": e.reason, "message": e.message, "count": e.count, "firstSeen": e.first_seen, "lastSeen": e.last_seen}
            for e in r.history
        ],
    }


def _document(env: Environment, kind: str, exit_code: int, **body: object) -> None:
    """One JSON document on stdout: the schema's header, then the kind's own fields (the order the README shows)."""
    doc = {"apiVersion": SCHEMA_VERSION, "kind": kind, "exitCode": int(exit_code), **body}
    env.stdout.write(json.dumps(doc, indent=2) + "\n")


def render(reports: list[Report], fmt: str, env: Environment, *, exit_code: int) -> None:
    """One pod's reports; `exit_code` is the status the process exits with, and JSON says exactly that."""
    if fmt == "quiet":
        return
    if fmt == "json":
        _document(env, "ProbeReport", exit_code, probes=[report_dict(r) for r in reports])
        return
    if fmt == "wide":
        header = ["POD", "CONTAINER", "PROBE", "TARGET", "SERVICE", "TIMEOUT", "RESULT", "API", "TUNNEL", "CONNECT", "RPC", "KUBELET", "OUTPUT"]
        now = time.time()
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
                    _history_cell(r, now),
                    printable(r.result.output),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        for row in rows:
            line = "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "   " + row[-1]
            env.stdout.write(line.rstrip() + "\n")
        _diagnostics(reports, env)
        return
    for r in reports:
        # Without an answer, the time the check itself took: what its deadline bounded, not the tunnel's set-up too.
        latency = r.timings.get("rpc") if r.result.rpc_ms is not None else r.result.elapsed_ms
        label = "rpc" if r.result.rpc_ms is not None else "after"
        env.stdout.write(
            f"pod/{r.pod} container={r.target.container}: {_paint(env, printable(r.event), r.result.success)} ({label} {ms(latency)})\n"
        )
    _diagnostics(reports, env)


def render_services(pod: str, rows: list[tuple[int, Any]], fmt: str, env: Environment, *, exit_code: int) -> None:
    """--list-services: per port, the services reflection lists (ServiceList values), or why there is no list."""
    if fmt == "quiet":
        return
    if fmt == "json":
        ports = [{"port": port, "services": found.services, "reflection": found.protocol, "error": found.error} for port, found in rows]
        _document(env, "ServiceList", exit_code, pod=pod, ports=ports)
        return
    for port, found in rows:
        if found.services is None:
            env.stderr.write(f"pod/{pod} port {port}: no service list: {printable(found.error or '')}\n")
            continue
        env.stdout.write(f"pod/{pod} port {port}: {plural(len(found.services), 'service')} (reflection {found.protocol})\n")
        for name in found.services:
            env.stdout.write(f"  {printable(name)}\n")


def render_toggle(pod: str, port: int, answer: HttpAnswer, fmt: str, env: Environment) -> None:
    """The control endpoint's answer; in json it goes to stderr so stdout stays one document."""
    if fmt == "quiet":
        return
    line = f"pod/{pod}: GET {printable(answer.path)} on port {port} answered {answer.status} {printable(answer.reason)}"
    if answer.body:
        line += f" (server says: {printable(answer.body.splitlines()[0][:200])})"
    (env.stderr if fmt == "json" else env.stdout).write(line + "\n")


def render_kubelet_action(pod: str, action: KubeletAction, fmt: str, env: Environment) -> None:
    if fmt == "quiet":
        return
    line = f"pod/{pod}: the kubelet acted {action.seconds:.1f}s after the toggle: {action.what}"
    if action.event:
        line += f"; event: {printable(action.event)}"
    (env.stderr if fmt == "json" else env.stdout).write(line + "\n")


def _history_cell(r: Report, now: float) -> str:
    """The kubelet's record for this probe in a few words: `Unhealthy x3 20s`, `Killing x1 5m`, `-` for none."""
    if r.history is None:
        return "?"
    if not r.history:
        return "-"
    return ",".join(f"{e.reason} x{e.count} {e.age(now)}" for e in r.history)


def _diagnostics(reports: list[Report], env: Environment) -> None:
    for r in reports:
        for note in r.diagnostics:
            env.stderr.write(f"pod/{r.pod} container={r.target.container}: {printable(note)}\n")


def render_error(env: Environment, message: str, exit_code: int, *, as_json: bool, usage: bool = False) -> None:
    """A run that ends without results: one line on stderr (a usage error adds its `See --help` line), and
    with -o json a document on stdout too."""
    line = message.rstrip("\n")
    env.stderr.write("\n".join(printable(part) for part in line.split("\n")) if usage else printable(line))
    env.stderr.write("\n")
    if as_json:
        _document(env, "Error", exit_code, message=line.removeprefix("error: "))


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
        import datetime

        # RFC 3339 with the local zone, as kubectl's timestamps: a line must mean one instant wherever it is read.
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
        self.env.stdout.write(json.dumps({"type": kind, "time": stamp, **fields}) + "\n")
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
            event = _paint(self.env, printable(report.event), report.result.success)
            self._line(f"{report.target.container} {report.target.kind}: {event} ({latency})")
        _diagnostics([report], self.env)

    def decision(self, target: Target, text: str) -> None:
        if self.fmt == "json":
            self._json("decision", container=target.container, probe=target.kind, text=text)
        elif self.fmt != "quiet":
            self._line(f"{target.container} kubelet decision: {printable(text)}")

    def skipped(self, target: Target, reason: str) -> None:
        if self.fmt == "json":
            self._json("skipped", container=target.container, probe=target.kind, reason=reason)
        elif self.fmt != "quiet":
            self._line(f"{target.container} {target.kind}: not run: {reason}")

    def note(self, target: Target, text: str) -> None:
        if self.fmt == "json":
            self._json("note", container=target.container, probe=target.kind, text=text)
        elif self.fmt != "quiet":
            self.env.stderr.write(f"{self._stamp()}  {target.container} {target.kind}: {printable(text)}\n")

    def stream_update(self, target: Target, status: str, since_last_ms: float) -> None:
        if self.fmt == "json":
            self._json("update", container=target.container, probe=target.kind, status=status, sinceLastMs=round(since_last_ms, 3))
        elif self.fmt != "quiet":
            self._line(f"{target.container} {target.kind}: Health/Watch says {status}")

    def summary(self, summaries: list[dict[str, Any]], *, exit_code: int, ended: str | None = None) -> None:
        """The last line of a watch; in JSON it carries the exit status the process ends with, and why it ended early."""
        if self.fmt == "json":
            items = []
            for s in summaries:
                t = s["target"]
                lat = s["latency"]
                items.append(
                    {
                        "container": t.container,
                        "probe": t.kind,
                        "executions": s["executions"],
                        "failures": s["failures"],
                        "skipped": s["skipped"],
                        "rpcLatencyMs": None if lat is None else {k: round(v, 3) for k, v in lat.items()},
                    }
                )
            self._json("summary", namespace=self.namespace, pod=self.pod, probes=items, exitCode=exit_code, ended=ended)
            return
        if self.fmt == "quiet":
            return
        self.env.stdout.write(f"--- pod/{self.pod} summary" + (f" ({ended})" if ended else "") + "\n")
        for s in summaries:
            t = s["target"]
            line = f"{t.container} {t.kind}: {plural(s['executions'], 'execution')}, {s['failures']} failed"
            if s["skipped"]:
                line += f", {s['skipped']} not run"
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


def fleet_summary(reports: list[Report], outcomes: list[PodOutcome], stopped: str | None = None) -> dict[str, Any]:
    """Each outcome counted under its own name; `stopped` says why the run ended early (null when it did not)."""
    from ..kubelet.probe import Outcome

    def count(outcome: Outcome) -> int:
        return sum(r.result.outcome is outcome for r in reports)

    return {
        "probes": len(reports),
        "healthy": count(Outcome.HEALTHY),
        "unhealthy": count(Outcome.UNHEALTHY),
        "rpcFailed": count(Outcome.RPC_FAILED),
        "unreachable": count(Outcome.UNREACHABLE),
        "podsNotProbed": sum(not o.skipped for o in outcomes),
        "podsWithoutGrpcProbe": sum(o.skipped for o in outcomes),
        "stopped": stopped,
    }


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_line(summary: dict[str, Any]) -> str:
    line = (
        f"{plural(summary['probes'], 'probe')}: {summary['healthy']} healthy, {summary['unhealthy']} unhealthy, "
        f"{summary['rpcFailed']} rpc failed, {summary['unreachable']} unreachable"
    )
    if summary["podsNotProbed"]:
        line += f"; {plural(summary['podsNotProbed'], 'pod')} not probed"
    if summary["podsWithoutGrpcProbe"]:
        line += f"; {plural(summary['podsWithoutGrpcProbe'], 'pod')} without a gRPC probe"
    if summary["stopped"]:
        line += f" ({summary['stopped']}: partial results)"
    return line


def render_fleet(
    reports: list[Report], outcomes: list[PodOutcome], fmt: str, env: Environment, *, exit_code: int, stopped: str | None = None
) -> None:
    """A table sorted by namespace, pod, container, probe; pods that could not be probed; a summary line."""
    if fmt == "quiet":
        return
    reports = sorted(reports, key=lambda r: (r.namespace, r.pod, r.target.container, KIND_ORDER[r.target.kind], r.target.service))
    outcomes = sorted(outcomes, key=lambda o: (o.namespace, o.pod))  # json keeps these orders too
    summary = fleet_summary(reports, outcomes, stopped)
    if fmt == "json":
        pods = [
            {"namespace": o.namespace, "pod": o.pod, "message": o.message, "exitCode": int(o.exit_code), "skipped": o.skipped}
            for o in outcomes
        ]
        _document(env, "ProbeReport", exit_code, probes=[report_dict(r) for r in reports], pods=pods, summary=summary)
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
        row.append(printable(r.result.output))
        keyed.append(((r.namespace, r.pod, r.target.container, KIND_ORDER[r.target.kind], r.target.service), row))
    for o in outcomes:
        if o.skipped and not wide:
            continue
        row = [o.namespace, o.pod, "-", "-", "skipped" if o.skipped else "error", "-"]
        if wide:
            row[5:5] = ["-", "-", "-"]
            row += ["-", "-"]
        row.append(printable(o.message))
        keyed.append(((o.namespace, o.pod, "", -1, ""), row))
    rows = [header] + [row for _, row in sorted(keyed, key=lambda item: item[0])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        env.stdout.write(("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "   " + row[-1]).rstrip() + "\n")
    env.stdout.write(summary_line(summary) + "\n")
    _diagnostics(reports, env)
