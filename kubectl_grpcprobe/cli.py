"""Command line: argument definitions, and main(argv) -> int, the one place failures become exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ExitCode, GrpcProbeError, Terminated, UsageError, most_severe
from .render.output import Environment

SUBCOMMANDS = ("sandbox", "toggle")
PROBE_KINDS = ("readiness", "liveness", "startup")

EXIT_CODES_HELP = """\
exit codes:
  0    every probe succeeded (SERVING)
  1    bad invocation, or the pod has nothing to probe
  2    could not reach the server: API error, pod not running, tunnel or connect failure
  3    the Check RPC failed: Unimplemented, NotFound (unknown service), deadline, other codes
  4    the server answered, but not SERVING
  130  interrupted (Ctrl-C)
  141  stdout's reader went away (as kubectl), whatever the verdict
  143  terminated (SIGTERM)
  With several probes the most severe wins, in the order 1, 2, 3, 4, 0.
  With -o json the document's exitCode is the exit status; errors are a document (kind Error) too.

A pod named like a subcommand (sandbox, toggle) is reached as pod/NAME.
"""

EXAMPLES = """\
examples:
  # Run every gRPC probe of a pod, as the kubelet would
  kubectl grpcprobe test-grpc

  # Only the readiness probe of one container, with timings
  kubectl grpcprobe test-grpc -c agnhost --probe readiness -o wide

  # A pod with no gRPC probe: check port 5000 for two services
  kubectl grpcprobe my-pod --port 5000 --service "" --service my.pkg.Greeter

  # JSON for scripts
  kubectl grpcprobe test-grpc -o json

  # What the kubelet will decide over time (Ctrl-C for a summary)
  kubectl grpcprobe test-grpc --watch

  # Flip an agnhost-style server and wait for the kubelet to act
  kubectl grpcprobe toggle test-grpc --not-serving --wait

  # Every replica of a Deployment, or every pod with a label, in all namespaces
  kubectl grpcprobe deploy/web
  kubectl grpcprobe -A -l app=web
"""


# Imported modules the plugin needs -> the distribution that provides each.
INSTALL_HINTS = {"grpc": "grpcio", "grpc_health": "grpcio-health-checking", "yaml": "PyYAML", "google": "protobuf"}


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as UsageError (exit 1) instead of calling sys.exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"error: {message}\nSee '{self.prog} --help' for usage.")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be a number between 1 and 65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value}: must be between 1 and 65535, inclusive")
    return value


def _duration(text: str, *, zero_ok: bool = False) -> int:
    """A Go duration (1s, 1500ms) or a number of seconds, as nanoseconds."""
    from .kubelet.gostr import parse_duration

    try:
        value = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 1s, 1500ms or a number of seconds)") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {'must not be negative' if zero_ok else 'must be greater than zero'}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {value}: must be at least 1")
    return value


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid speed {text!r}") from None
    if not 0.01 <= value <= 100:
        raise argparse.ArgumentTypeError(f"invalid speed {text!r}: must be between 0.01 and 100")
    return value


def _request_timeout(text: str) -> int:
    return _duration(text, zero_ok=True)  # kubectl's --request-timeout: 0 means no limit


def _rpc_header(text: str) -> tuple[str, str]:
    """K:V as gRPC metadata: a lowercase ASCII key, not reserved, and a printable ASCII value (no -bin keys)."""
    import re

    key, sep, value = text.partition(":")
    key, value = key.strip().lower(), value.strip()
    if not sep or not re.fullmatch(r"[0-9a-z_.-]+", key):
        raise argparse.ArgumentTypeError(f"invalid header {key or text!r}: use KEY:VALUE, KEY of 0-9 a-z _ . -")
    if key.startswith("grpc-") or key in ("user-agent", "te", "content-type") or key.endswith("-bin"):
        raise argparse.ArgumentTypeError(f"invalid header {key!r}: reserved by gRPC (or binary)")
    if not all(" " <= c <= "~" for c in value):
        raise argparse.ArgumentTypeError(f"invalid header {key!r}: the value must be printable ASCII")  # never echo the value
    return key, value


def _kinds(text: str) -> list[str]:
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    for kind in kinds:
        if kind not in PROBE_KINDS:
            raise argparse.ArgumentTypeError(f"invalid probe kind {kind!r} (choose from {', '.join(PROBE_KINDS)})")
    return kinds


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """kubectl's global flags: kubectl passes none of them to plugins, so we take our own."""
    group = parser.add_argument_group("cluster connection (as kubectl)")
    group.add_argument("--kubeconfig", metavar="PATH", help="path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    group.add_argument("--context", help="the kubeconfig context to use")
    group.add_argument("--cluster", help="the kubeconfig cluster to use")
    group.add_argument("--user", help="the kubeconfig user to use")
    group.add_argument("-n", "--namespace", help="the namespace (default: the context's, else default)")
    group.add_argument(
        "--request-timeout",
        type=_request_timeout,
        default=30 * 10**9,
        metavar="DURATION",
        help="one deadline for each whole API server request: connect, proxy, TLS, answer, Retry-After waits (e.g. 5s; 0 = no limit; default 30s)",
    )
    group.add_argument("--as", dest="impersonate", metavar="USER", help="user to impersonate")
    group.add_argument("--as-group", dest="impersonate_groups", action="append", default=[], metavar="GROUP", help="group to impersonate (repeatable)")
    group.add_argument("--as-uid", dest="impersonate_uid", metavar="UID", help="UID to impersonate")


def probe_parser() -> Parser:
    parser = Parser(
        prog="kubectl grpcprobe",
        usage=(
            "kubectl grpcprobe [flags] POD\n"
            "       kubectl grpcprobe [flags] (POD | TYPE/NAME)... | -l SELECTOR | -A\n"
            "       kubectl grpcprobe toggle POD --serving|--not-serving [flags]\n"
            "       kubectl grpcprobe sandbox up [--real] [-f MANIFEST] [--kubeconfig-out PATH]"
        ),
        description=(
            "Run a pod's gRPC probes exactly as the kubelet does - same service, user agent, single deadline, "
            "plaintext, fresh connection - through a port-forward via the API server, and print the kubelet's verdict."
        ),
        epilog=EXAMPLES + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "targets",
        metavar="POD",
        nargs="*",
        help="NAME or pod/NAME; several, or TYPE/NAME for deploy, rs, sts, ds, job, svc (their pods)",
    )
    fleet = parser.add_argument_group("many pods at once")
    fleet.add_argument("-l", "--selector", help="label selector, as kubectl (e.g. app=web,tier!=db)")
    fleet.add_argument("--field-selector", help="field selector, as kubectl (e.g. status.phase=Running)")
    fleet.add_argument("-A", "--all-namespaces", action="store_true", help="select pods in every namespace")
    fleet.add_argument("--parallel", type=_positive, default=48, metavar="N", help="pods probed at once (default 48)")
    fleet.add_argument("--deadline", type=_duration, metavar="DURATION", help="overall time limit, tunnels and checks in flight included; pods not done by then are reported as deadline exceeded")
    sel = add_selection_flags(parser)
    sel.add_argument("--port", type=_port, help="check this port directly (ad hoc; beyond the pod's own probes)")
    sel.add_argument(
        "--service",
        dest="services",
        action="append",
        metavar="NAME",
        help='the gRPC service to check (repeatable: one check per service; default: the probe\'s, or "")',
    )
    sel.add_argument("--timeout", type=_duration, metavar="DURATION", help="override the probe's timeoutSeconds (e.g. 1s, 1500ms)")
    sel.add_argument("--user-agent", metavar="UA", help="user agent to send (default: kube-probe/<cluster major.minor>)")
    adhoc = parser.add_argument_group("ad hoc controls (beyond the kubelet, as grpc_health_probe's flags; the output says so)")
    adhoc.add_argument("--connect-timeout", type=_duration, metavar="DURATION", help="the dial's own deadline (the kubelet has one over dial and RPC)")
    adhoc.add_argument("--rpc-timeout", type=_duration, metavar="DURATION", help="the Check's own deadline, from when the dial is done")
    adhoc.add_argument("--rpc-header", dest="rpc_headers", type=_rpc_header, action="append", default=[], metavar="K:V", help="a request header (repeatable)")
    adhoc.add_argument("--gzip", action="store_true", help="compress the request with gzip")
    adhoc.add_argument("--tls", action="store_true", help="speak TLS to the server, verifying it (the kubelet: plaintext, or unverified TLS for grpc.mode TLS)")
    adhoc.add_argument("--tls-no-verify", action="store_true", help="with --tls: do not verify the server's certificate")
    adhoc.add_argument("--tls-ca-cert", metavar="FILE", help="with --tls: verify the server against this CA (default: the system's roots)")
    adhoc.add_argument("--tls-client-cert", metavar="FILE", help="with --tls: present this client certificate (mTLS; with --tls-client-key)")
    adhoc.add_argument("--tls-client-key", metavar="FILE", help="with --tls: the client certificate's key")
    adhoc.add_argument("--tls-server-name", metavar="NAME", help="with --tls: the name to verify and send as SNI (default: the pod IP)")
    sel.add_argument(
        "--list-services",
        action="store_true",
        help="list the services each probed port's server knows, through server reflection (beyond the kubelet)",
    )
    w = parser.add_argument_group("watching (what the kubelet will decide over time)")
    w.add_argument("-w", "--watch", action="store_true", help="probe every periodSeconds and show the kubelet's decisions, following the pod (a deletion ends it, exit 2); Ctrl-C for a summary")
    w.add_argument("--period", type=_duration, metavar="DURATION", help="with --watch: override periodSeconds")
    w.add_argument("--count", type=_positive, metavar="N", help="with --watch: stop after N periods of each probe (periods in which it cannot run count; with --watch-rpc, updates or quiet periods)")
    w.add_argument("--watch-rpc", action="store_true", help="with --watch: stream Health/Watch (beyond the kubelet); falls back to polling on Unimplemented")
    add_output_flags(parser)
    parser.add_argument("--version", action="version", version=f"kubectl-grpcprobe {__version__}")
    add_connection_flags(parser)
    return parser


def add_selection_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    sel = parser.add_argument_group("what to probe")
    sel.add_argument("-c", "--container", help="only this container's probes")
    sel.add_argument(
        "--probe",
        dest="kinds",
        type=_kinds,
        action="append",
        metavar="KIND",
        help="only these probe kinds: readiness, liveness, startup (repeatable or comma list)",
    )
    return sel


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", choices=("text", "wide", "json"), default="text", help="text (default), wide or json; wide and json add the kubelet's recent Unhealthy/Killing events")
    out.add_argument("-q", "--quiet", action="store_true", help="print no results, the exit code tells (errors still go to stderr)")
    out.add_argument("-v", "--verbose", action="store_true", help="trace configuration, API requests, the tunnel and the gRPC level (dial, :authority, states, status, trailers) on stderr, never credentials")


def toggle_parser() -> Parser:
    parser = Parser(
        prog="kubectl grpcprobe toggle",
        usage="kubectl grpcprobe toggle POD --serving|--not-serving [flags]",
        description=(
            "Flip a server between SERVING and NOT_SERVING through its HTTP control port (agnhost's /make-serving and "
            "/make-not-serving, as in the Kubernetes docs), then probe it again the kubelet's way."
        ),
        epilog=(
            "exit codes: 0 the endpoint answered and the new verdict is the one asked for (with --wait: and the kubelet "
            "acted); 1 bad invocation or the endpoint answered 404; 2 unreachable; 3 the re-probe's RPC failed; 4 the "
            "server's health is not what was asked, or the kubelet did not act within --wait-timeout."
        ),
    )
    parser.add_argument("pod", metavar="POD", help="the pod: NAME or pod/NAME")
    state = parser.add_mutually_exclusive_group(required=True)
    state.add_argument("--serving", dest="serving", action="store_true", help="call the serving endpoint")
    state.add_argument("--not-serving", dest="serving", action="store_false", help="call the not-serving endpoint")
    control = parser.add_argument_group("control endpoint")
    control.add_argument("--control-port", type=_port, default=8080, metavar="PORT", help="the pod's HTTP control port (default 8080)")
    control.add_argument("--serving-path", default="/make-serving", metavar="PATH", help="default /make-serving")
    control.add_argument("--not-serving-path", default="/make-not-serving", metavar="PATH", help="default /make-not-serving")
    wait = parser.add_argument_group("waiting for the kubelet")
    wait.add_argument("--wait", action="store_true", help="watch the pod until the kubelet acts: Ready flips (readiness) or the container restarts (liveness)")
    wait.add_argument("--wait-timeout", type=_duration, default=120 * 10**9, metavar="DURATION", help="how long --wait waits (default 2m)")
    add_selection_flags(parser)
    add_output_flags(parser)
    add_connection_flags(parser)
    return parser


def sandbox_parser() -> Parser:
    parser = Parser(
        prog="kubectl grpcprobe sandbox",
        description="A small Kubernetes API server on 127.0.0.1 with simulated pods, to try the plugin without a cluster.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    up = sub.add_parser("up", help="start the sandbox and run until Ctrl-C or SIGTERM")
    up.add_argument("-f", "--filename", dest="manifests", action="append", default=[], metavar="MANIFEST", help="YAML manifests to create at start (repeatable)")
    up.add_argument("--kubeconfig-out", metavar="PATH", help="where to write the sandbox's kubeconfig (default: a temporary file)")
    up.add_argument(
        "--kubelet-speed",
        type=_speed,
        default=1.0,
        metavar="N",
        help="run the sandbox kubelet's probe periods N times faster (timeouts unchanged; default 1)",
    )
    up.add_argument("--no-kubelet", action="store_true", help="do not run pods' probes (pods are Ready at once)")
    up.add_argument(
        "--real",
        action="store_true",
        help="run the real kube-apiserver, etcd, scheduler and controller-manager (built by `make k8s`) with two sandbox nodes",
    )
    return parser


def _first_positional(argv: Sequence[str], parser: argparse.ArgumentParser) -> str | None:
    takes_value = {
        opt for action in parser._actions if action.nargs != 0 for opt in action.option_strings
    }
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--":
            return None
        if token.startswith("-"):
            if "=" not in token and token in takes_value:
                skip = True
            continue
        return token
    return None


def run(argv: Sequence[str], env: Environment) -> int:
    if argv[:1] == ["__complete"]:  # the krew bundle's completion script calls this
        from .commands.completion import main as complete

        return complete(argv[1:], env.stdout)
    parser = probe_parser()
    command = _first_positional(argv, parser)
    if command in SUBCOMMANDS:
        rest = list(argv)
        rest.remove(command)
        if command == "toggle":
            return toggle_command(toggle_parser().parse_args(rest), env)
        from .commands import sandbox as sandbox_cli

        return sandbox_cli.run(sandbox_parser().parse_args(rest), env)
    args = parser.parse_args(argv)
    return probe_command(args, env)


def pod_name(text: str) -> str:
    from .commands.fleet import POD_WORDS, parse_target

    kind, name = parse_target(text)
    if kind not in POD_WORDS:
        raise UsageError(f"error: {text!r} is not a pod (use NAME or pod/NAME)")
    return name


def connect(args: argparse.Namespace, env: Environment):  # -> KubeClient, imported lazily
    from .kube import config as kubeconfig
    from .kube.client import KubeClient

    def trace(line: str) -> None:
        env.stderr.write(f"[grpcprobe] {line}\n")

    cfg = kubeconfig.load(
        kubeconfig.Overrides(
            kubeconfig=args.kubeconfig,
            context=args.context,
            cluster=args.cluster,
            user=args.user,
            namespace=args.namespace,
            impersonate=args.impersonate,
            impersonate_groups=args.impersonate_groups,
            impersonate_uid=args.impersonate_uid,
        )
    )
    if args.verbose:
        trace(f"context {cfg.context or '(none)'}, server {cfg.display_server}, namespace {cfg.namespace}, auth {cfg.auth_kind()}")
    return KubeClient(
        cfg,
        request_timeout=args.request_timeout / 1e9 if args.request_timeout else None,
        trace=trace if args.verbose else None,
    )


def _tls_settings(args: argparse.Namespace):
    """--tls and its companions, checked as grpc_health_probe checks them, and the files read once now."""
    from .kubelet.probe import TlsSettings

    companions = {
        "--tls-no-verify": getattr(args, "tls_no_verify", False),
        "--tls-ca-cert": getattr(args, "tls_ca_cert", None),
        "--tls-client-cert": getattr(args, "tls_client_cert", None),
        "--tls-client-key": getattr(args, "tls_client_key", None),
        "--tls-server-name": getattr(args, "tls_server_name", None),
    }
    if not getattr(args, "tls", False):
        given = [flag for flag, value in companions.items() if value]
        if given:
            raise UsageError(f"error: {given[0]} needs --tls")
        return None
    if args.tls_no_verify and (args.tls_ca_cert or args.tls_server_name):
        raise UsageError("error: --tls-no-verify does not verify the server; --tls-ca-cert and --tls-server-name would be ignored")
    if bool(args.tls_client_cert) != bool(args.tls_client_key):
        raise UsageError("error: --tls-client-cert and --tls-client-key go together")
    settings = TlsSettings(
        verify=not args.tls_no_verify,
        ca_file=args.tls_ca_cert,
        client_cert=args.tls_client_cert,
        client_key=args.tls_client_key,
        server_name=args.tls_server_name,
    )
    from .commands.runner import tls_files_problem

    problem = tls_files_problem(settings)  # a missing or malformed file is the user's to fix, before any API call
    if problem:
        raise UsageError(problem)
    return settings


def probe_options(args: argparse.Namespace):
    from .commands.runner import ProbeOptions
    from .kubelet.probe import KUBELET, Tuning

    tuning = Tuning(
        connect_timeout_ns=getattr(args, "connect_timeout", None),
        rpc_timeout_ns=getattr(args, "rpc_timeout", None),
        metadata=tuple(getattr(args, "rpc_headers", None) or ()),
        gzip=getattr(args, "gzip", False),
        tls=_tls_settings(args),
    )
    return ProbeOptions(
        tuning=KUBELET if tuning == KUBELET else tuning,
        container=args.container,
        kinds=[k for group in args.kinds for k in group] if args.kinds else None,
        port=getattr(args, "port", None),
        services=getattr(args, "services", None),
        timeout_ns=getattr(args, "timeout", None),
        user_agent=getattr(args, "user_agent", None),
        history={"json": "always", "wide": "always", "text": "disagree"}.get(getattr(args, "output", "text"), "never")
        if not getattr(args, "quiet", False)
        else "never",
    )


def probe_command(args: argparse.Namespace, env: Environment) -> int:
    from .commands.fleet import is_fleet
    from .commands.runner import probe_pod
    from .render.output import render

    fmt = "quiet" if args.quiet else args.output
    if not args.watch and (args.period or args.count or args.watch_rpc):
        raise UsageError("error: --period, --count and --watch-rpc go with --watch")
    if args.list_services and (args.watch or is_fleet(args.targets, args.selector, args.field_selector, args.all_namespaces)):
        raise UsageError("error: --list-services looks at one pod; name a single pod, without --watch")
    if args.port and args.kinds:  # it used to drop --probe without a word
        raise UsageError("error: --probe picks the pod's own gRPC probes and --port checks a port ad hoc; use one or the other")
    if is_fleet(args.targets, args.selector, args.field_selector, args.all_namespaces):
        if args.watch:
            raise UsageError("error: --watch follows one pod; name a single pod")
        return fleet_command(args, env, fmt)
    pod = pod_name(args.targets[0])
    client = connect(args, env)
    _import_grpc_meanwhile()  # from here the main thread mostly waits on the API server
    try:
        if args.list_services:
            from .commands.services import list_pod_services
            from .render.output import render_services

            rows = list_pod_services(client, client.cfg.namespace, pod, probe_options(args))
            code = services_exit_code(rows)
            render_services(pod, rows, fmt, env, exit_code=code)
            return int(code)
        if args.watch:
            from .commands.watch import watch

            return watch(
                client,
                client.cfg.namespace,
                pod,
                probe_options(args),
                period_ns=args.period,
                count=args.count,
                use_watch_rpc=args.watch_rpc,
                fmt=fmt,
                env=env,
            )
        reports = probe_pod(client, client.cfg.namespace, pod, probe_options(args))
    finally:
        client.close()
    code = most_severe([r.exit_code for r in reports])
    render(reports, fmt, env, exit_code=code)
    return int(code)


def services_exit_code(rows) -> ExitCode:  # rows: list[(port, ServiceList)]
    """0 when every port listed its services; 2 when a server did not answer at all; 3 when it answered without a list."""
    codes = [ExitCode.OK if found.services is not None else ExitCode.RPC_FAILED if found.reached else ExitCode.UNREACHABLE for _, found in rows]
    return most_severe(codes)


def _import_grpc_meanwhile() -> None:
    """Import grpcio (~45 ms) in a helper thread while the main thread waits on the API server: on a real
    network its round trips (TLS, the pod, the upgrade) hide it; the check only waits if it is not done.
    Started once the kubeconfig is loaded, so that it does not compete for the GIL with our own imports."""
    from . import stop

    def load() -> None:
        try:
            import grpc  # noqa: F401
        except BaseException:  # a missing grpcio is reported once, by the check that needs it
            pass

    stop.spawn(load, name="grpcprobe-import")


def fleet_command(args: argparse.Namespace, env: Environment, fmt: str) -> int:
    from .commands.fleet import probe_fleet, select_pods
    from .commands.runner import user_agent_for
    from .render.output import Progress, render_fleet

    client = connect(args, env)
    _import_grpc_meanwhile()
    try:
        options = probe_options(args)
        pods, outcomes = select_pods(
            client,
            client.cfg.namespace,
            args.targets,
            selector=args.selector,
            field_selector=args.field_selector,
            all_namespaces=args.all_namespaces,
        )
        if not pods and not outcomes:
            where = "any namespace" if args.all_namespaces else f'namespace "{client.cfg.namespace}"'
            raise UsageError(f"error: no pods found in {where}")
        agent = options.user_agent or user_agent_for(client)
        with Progress(env, len(pods), enabled=fmt != "quiet") as progress:
            run = probe_fleet(
                client,
                pods,
                options,
                agent,
                parallel=args.parallel,
                deadline_s=args.deadline / 1e9 if args.deadline else None,
                progress=progress.update,
            )
    finally:
        client.close()
    outcomes += run.outcomes
    codes = [r.exit_code for r in run.reports] + [o.exit_code for o in outcomes if not o.skipped]
    if run.stopped_by is not None:
        code = ExitCode.TERMINATED if isinstance(run.stopped_by, Terminated) else ExitCode.INTERRUPTED
    elif not run.reports and all(o.skipped for o in outcomes):
        code = ExitCode.USAGE  # nothing had a gRPC probe
    else:
        code = most_severe(codes)
    render_fleet(run.reports, outcomes, fmt, env, exit_code=code, stopped=run.stopped)
    if run.stopped_by is not None:
        env.stderr.write(f"error: {run.stopped}\n")  # the partial table is the result: no Error document on top
    return int(code)


def toggle_command(args: argparse.Namespace, env: Environment) -> int:
    import time

    from .commands.runner import probe_pod
    from .commands.toggle import call_control_endpoint, wait_for_kubelet
    from .kubelet.probe import Outcome
    from .render.output import render, render_kubelet_action, render_toggle

    pod = pod_name(args.pod)
    path = args.serving_path if args.serving else args.not_serving_path
    fmt = "quiet" if args.quiet else args.output
    client = connect(args, env)
    try:
        namespace = client.cfg.namespace
        before = client.get_pod(namespace, pod)
        toggled_at = time.monotonic()
        answer = call_control_endpoint(client, namespace, pod, args.control_port, path, client.timeout or 30.0)
        reports = probe_pod(client, namespace, pod, probe_options(args))
        wanted = Outcome.HEALTHY if args.serving else Outcome.UNHEALTHY
        code = ExitCode.OK
        if not all(r.result.outcome is wanted for r in reports):
            worst = most_severe([r.exit_code for r in reports])
            code = worst if worst in (ExitCode.UNREACHABLE, ExitCode.RPC_FAILED) else ExitCode.UNHEALTHY
        render_toggle(pod, args.control_port, answer, fmt, env)
        render(reports, fmt, env, exit_code=code)
        if code is not ExitCode.OK:
            return int(code)
        if args.wait:
            kinds = {r.target.kind for r in reports}
            readiness = "readiness" in kinds
            if not readiness and ("liveness" not in kinds or args.serving):
                raise UsageError(
                    "error: --wait needs a readiness probe (Ready flips) or, with --not-serving, a liveness probe (the container restarts)"
                )
            action = wait_for_kubelet(
                client,
                namespace,
                before,
                serving=args.serving,
                readiness=readiness,
                container=args.container,
                since=toggled_at,
                timeout=args.wait_timeout / 1e9,
            )
            render_kubelet_action(pod, action, fmt, env)
    finally:
        client.close()
    return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run the CLI; every failure a user can meet ends here as one line on stderr and an exit code."""
    import os

    # grpc's C core logs transport chatter (GOAWAY, reconnects) to stderr at INFO; the verdict
    # already says what matters. A user can still ask for more with GRPC_VERBOSITY.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from . import stop

    env = env or Environment()
    argv = list(sys.argv[1:] if argv is None else argv)
    from .render.output import render_error

    as_json = wants_json(argv)
    previous = _catch_sigterm()
    try:
        with stop.scope():  # whatever the run starts, in any thread, ends with it
            code = run(argv, env)
        env.stdout.flush()  # here, not at interpreter exit, so that a closed pipe is seen and answered below
        return code
    except Terminated:
        render_error(env, "error: terminated", ExitCode.TERMINATED, as_json=as_json)
        return int(ExitCode.TERMINATED)
    except _Exit as exc:
        return exc.code
    except GrpcProbeError as exc:
        render_error(env, str(exc), exc.exit_code, as_json=as_json, usage=isinstance(exc, UsageError))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        render_error(env, "error: interrupted", ExitCode.INTERRUPTED, as_json=as_json)
        return int(ExitCode.INTERRUPTED)
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] not in INSTALL_HINTS:
            raise  # not a dependency: a bug, and a traceback is the honest report
        package = INSTALL_HINTS[exc.name.split(".")[0]]
        message = (
            f"error: the Python package {package} is missing from {sys.executable}; install the plugin with krew or "
            f"`pipx install kubectl-grpcprobe`, or run `python3 -m pip install kubectl-grpcprobe`"
        )
        render_error(env, message, ExitCode.USAGE, as_json=as_json)
        return int(ExitCode.USAGE)
    except BrokenPipeError:
        # kubectl dies of SIGPIPE here (141); so do we, whatever the verdict was: the reader is gone, and a
        # pipeline with pipefail must not read success from a result nobody saw.
        _silence_stdout(env)
        return int(ExitCode.PIPE_CLOSED)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def wants_json(argv: Sequence[str]) -> bool:
    """Whether -o json was asked for, read before parsing: a parse error is reported in the format asked for too."""
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token in ("-o", "--output") and i + 1 < len(argv):
            if argv[i + 1] == "json":
                return True
        elif token in ("-ojson", "--output=json", "-o=json"):
            return True
    return False


def _silence_stdout(env: Environment) -> None:
    """Point stdout at the null device, so that the interpreter's last flush cannot fail once more."""
    import os

    try:
        fd = env.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _catch_sigterm():  # -> the previous handler, or None when not in the main thread
    """SIGTERM raises Terminated in the main thread, as SIGINT raises KeyboardInterrupt, so both unwind the same way."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum: int, frame: object) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminated)


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
