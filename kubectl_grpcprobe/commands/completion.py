"""Shell completion through kubectl's plugin-completion protocol (kubectl >= 1.26).

`kubectl grpcprobe <TAB>` makes kubectl run `kubectl_complete-grpcprobe ARGS...` (the words after
the plugin name, the last one being the word under the cursor) and read one candidate per line,
then a final `:<directive>` line (cobra's ShellCompDirective). Completion must never fail loudly:
on any error it offers nothing and lets the shell carry on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

DIRECTIVE_DEFAULT = 0  # let the shell complete file names
DIRECTIVE_NO_FILES = 4

SUBCOMMANDS = {"toggle": "flip a server between SERVING and NOT_SERVING", "sandbox": "a local API server to try the plugin"}
PROBE_KINDS = ["readiness", "liveness", "startup"]
OUTPUTS = ["text", "wide", "json"]
VALUE_FLAGS = {
    "-n", "--namespace", "--context", "--cluster", "--user", "--kubeconfig", "-c", "--container", "--probe", "-o", "--output",
    "--port", "--service", "--timeout", "--user-agent", "--request-timeout", "--as", "--as-group", "--period", "--count",
    "--control-port", "--serving-path", "--not-serving-path", "--wait-timeout", "-f", "--filename", "--kubeconfig-out",
    "--kubelet-speed", "-l", "--selector", "--field-selector", "--parallel", "--deadline", "--as-uid",
    "--connect-timeout", "--rpc-timeout", "--rpc-header", "--tls-ca-cert", "--tls-client-cert", "--tls-client-key",
    "--tls-server-name",
}  # fmt: skip
PROBE_FLAGS = [
    "--container", "--probe", "--port", "--service", "--timeout", "--user-agent", "--watch", "--period", "--count",
    "--watch-rpc", "--selector", "--field-selector", "--all-namespaces", "--parallel", "--deadline", "--list-services",
    "--connect-timeout", "--rpc-timeout", "--rpc-header", "--gzip", "--tls", "--tls-no-verify", "--tls-ca-cert",
    "--tls-client-cert", "--tls-client-key", "--tls-server-name",
    "--output", "--quiet", "--verbose", "--version", "--help",
]  # fmt: skip
# TYPE/NAME as the fleet resolves them (commands.fleet.WORKLOADS), with the API path that lists each.
WORKLOAD_LISTS = {
    "deploy": "/apis/apps/v1/namespaces/{ns}/deployments", "rs": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "sts": "/apis/apps/v1/namespaces/{ns}/statefulsets", "ds": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "job": "/apis/batch/v1/namespaces/{ns}/jobs", "svc": "/api/v1/namespaces/{ns}/services", "pod": "/api/v1/namespaces/{ns}/pods",
}  # fmt: skip
FIELD_SELECTORS = ["status.phase=Running", "status.phase!=Running", "spec.nodeName=", "metadata.name="]
TOGGLE_FLAGS = [
    "--serving", "--not-serving", "--control-port", "--serving-path", "--not-serving-path", "--wait", "--wait-timeout",
    "--container", "--probe", "--output", "--quiet", "--verbose", "--help",
]  # fmt: skip
CONNECTION_FLAGS = ["--kubeconfig", "--context", "--cluster", "--user", "--namespace", "--request-timeout", "--as", "--as-group", "--as-uid"]


def _parse(words: Sequence[str]) -> tuple[dict[str, str], list[str], str | None]:
    """(flag values, positionals, the flag whose value is being completed) for all but the last word."""
    flags: dict[str, str] = {}
    positionals: list[str] = []
    pending: str | None = None
    for word in words:
        if pending:
            flags[pending] = word
            pending = None
        elif word in ("-A", "--all-namespaces"):
            flags["--all-namespaces"] = "true"
        elif word.startswith("-") and "=" in word:
            name, _, value = word.partition("=")
            flags[name] = value
        elif word in VALUE_FLAGS:
            pending = word
        elif not word.startswith("-"):
            positionals.append(word)
    return flags, positionals, pending


def _client(flags: dict[str, str]):  # -> (KubeClient, namespace)
    from ..kube.client import KubeClient
    from ..kube.config import Overrides, load

    cfg = load(
        Overrides(
            kubeconfig=flags.get("--kubeconfig"),
            context=flags.get("--context"),
            cluster=flags.get("--cluster"),
            user=flags.get("--user"),
            namespace=flags.get("-n") or flags.get("--namespace"),
        )
    )
    return KubeClient(cfg, request_timeout=5), cfg.namespace


def _names(items: list[dict]) -> list[str]:
    return sorted(i.get("metadata", {}).get("name", "") for i in items if i.get("metadata", {}).get("name"))


def candidates(words: Sequence[str]) -> tuple[list[str], int]:
    if not words:
        words = [""]
    *before, current = words
    flags, positionals, pending = _parse(before)
    if pending in ("--probe",):
        return [k for k in PROBE_KINDS if k.startswith(current)], DIRECTIVE_NO_FILES
    if pending in ("-o", "--output"):
        return [o for o in OUTPUTS if o.startswith(current)], DIRECTIVE_NO_FILES
    if pending in ("--kubeconfig", "-f", "--filename", "--kubeconfig-out", "--tls-ca-cert", "--tls-client-cert", "--tls-client-key"):
        return [], DIRECTIVE_DEFAULT
    if pending == "--context":
        from ..kube.config import kubeconfig_paths, merged_kubeconfig

        explicit = flags.get("--kubeconfig")
        merged, _ = merged_kubeconfig(kubeconfig_paths(explicit), explicit=bool(explicit))
        return sorted(c for c in merged["contexts"] if c.startswith(current)), DIRECTIVE_NO_FILES
    if pending in ("-n", "--namespace"):
        client, _ = _client(flags)
        try:
            return [n for n in _names(client.get("/api/v1/namespaces").get("items") or []) if n.startswith(current)], DIRECTIVE_NO_FILES
        finally:
            client.close()
    if pending in ("-c", "--container"):
        pods = [p for p in positionals if p not in SUBCOMMANDS]
        if not pods:
            return [], DIRECTIVE_NO_FILES
        client, namespace = _client(flags)
        try:
            pod = client.get_pod(namespace, pods[0].removeprefix("pod/"))
        finally:
            client.close()
        from ..kubelet.resolve import containers_of

        return [c["name"] for c in containers_of(pod) if c["name"].startswith(current)], DIRECTIVE_NO_FILES
    if pending == "--field-selector":
        return [f for f in FIELD_SELECTORS if f.startswith(current)], DIRECTIVE_NO_FILES
    if pending in ("-l", "--selector"):
        return _label_pairs(flags, current), DIRECTIVE_NO_FILES
    if pending:
        return [], DIRECTIVE_NO_FILES
    command = positionals[0] if positionals and positionals[0] in SUBCOMMANDS else None
    if current.startswith("-"):
        own = TOGGLE_FLAGS if command == "toggle" else ([] if command == "sandbox" else PROBE_FLAGS)
        return [f for f in own + CONNECTION_FLAGS if f.startswith(current)], DIRECTIVE_NO_FILES
    if command == "sandbox":
        return (["up"] if len(positionals) == 1 and "up".startswith(current) else []), DIRECTIVE_NO_FILES
    if command is None and "/" in current:  # TYPE/NAME: the fleet takes several
        return _typed_names(flags, current), DIRECTIVE_NO_FILES
    selecting = "-l" in flags or "--selector" in flags or "--all-namespaces" in flags
    wants_pod = (command is None and not selecting) or (command == "toggle" and len(positionals) == 1)
    if not wants_pod:
        return [], DIRECTIVE_NO_FILES
    client, namespace = _client(flags)
    try:
        pods = _names(client.get(f"/api/v1/namespaces/{namespace}/pods").get("items") or [])
    finally:
        client.close()
    out = [p for p in pods if p.startswith(current) and p not in positionals]
    if command is None and not positionals:
        out += [s for s in SUBCOMMANDS if s.startswith(current) and s not in pods]
    if command is None and current:
        out += [f"{t}/" for t in WORKLOAD_LISTS if t != "pod" and t.startswith(current)]
    return out, DIRECTIVE_NO_FILES


def _typed_names(flags: dict[str, str], current: str) -> list[str]:
    kind, _, prefix = current.partition("/")
    path = WORKLOAD_LISTS.get(kind.lower().partition(".")[0])
    if path is None:
        return []
    client, namespace = _client(flags)
    try:
        names = _names(client.get(path.format(ns=namespace)).get("items") or [])
    finally:
        client.close()
    return [f"{kind}/{n}" for n in names if n.startswith(prefix)]


def _label_pairs(flags: dict[str, str], current: str) -> list[str]:
    """key=value pairs of the pods' labels (every namespace with -A), for -l; after a comma, the next term."""
    head, _, last = current.rpartition(",")
    client, namespace = _client(flags)
    try:
        path = "/api/v1/pods" if "--all-namespaces" in flags else f"/api/v1/namespaces/{namespace}/pods"
        items = client.get(path).get("items") or []
    finally:
        client.close()
    pairs = sorted({f"{k}={v}" for i in items for k, v in ((i.get("metadata") or {}).get("labels") or {}).items()})
    chosen = set(head.split(",")) if head else set()
    return [(f"{head}," if head else "") + p for p in pairs if p.startswith(last) and p not in chosen]


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    from ..errors import GrpcProbeError

    stdout = stdout or sys.stdout
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        found, directive = candidates(words)
    except (GrpcProbeError, OSError, ValueError, KeyError):
        found, directive = [], DIRECTIVE_NO_FILES  # completion offers nothing rather than an error
    for item in found:
        stdout.write(item + "\n")
    stdout.write(f":{directive}\n")
    return 0


def main_entry() -> None:
    """Console-script entry point (kubectl_complete-grpcprobe)."""
    raise SystemExit(main())
