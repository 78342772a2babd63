"""Many pods at once: names, TYPE/NAME workloads, label and field selectors, all namespaces.

Pods are selected as kubectl selects them (a workload's or a Service's selector, then a pod list),
then probed by a bounded pool of workers, each with its own tunnels; an overall deadline bounds the
run. Every pod ends as reports or as a PodOutcome saying why it was not probed.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import quote

from ..errors import ExitCode, GrpcProbeError, NothingToProbe, Terminated, UsageError
from ..kube.client import KubeClient
from ..kubelet.report import PodOutcome, Report
from .runner import ProbeOptions, ensure_running, probe_targets, resolve_for

# kubectl's names for the workload kinds -> (API path prefix, resource)
WORKLOADS = {
    **dict.fromkeys(("deploy", "deployment", "deployments"), ("/apis/apps/v1", "deployments")),
    **dict.fromkeys(("rs", "replicaset", "replicasets"), ("/apis/apps/v1", "replicasets")),
    **dict.fromkeys(("sts", "statefulset", "statefulsets"), ("/apis/apps/v1", "statefulsets")),
    **dict.fromkeys(("ds", "daemonset", "daemonsets"), ("/apis/apps/v1", "daemonsets")),
    **dict.fromkeys(("job", "jobs"), ("/apis/batch/v1", "jobs")),
    **dict.fromkeys(("svc", "service", "services"), ("/api/v1", "services")),
}
POD_WORDS = ("pod", "pods", "po")



def selector_string(selector: dict[str, Any]) -> str:
    """A LabelSelector (matchLabels + matchExpressions) in the query syntax the API accepts."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def is_fleet(targets: list[str], selector: str | None, field_selector: str | None, all_namespaces: bool) -> bool:
    if selector or field_selector or all_namespaces or len(targets) != 1:
        return True
    kind = targets[0].partition("/")[0] if "/" in targets[0] else "pod"
    return kind not in POD_WORDS


def select_pods(
    client: KubeClient,
    namespace: str,
    targets: list[str],
    *,
    selector: str | None,
    field_selector: str | None,
    all_namespaces: bool,
) -> tuple[list[dict[str, Any]], list[PodOutcome]]:
    if targets and selector is not None:
        raise UsageError("error: name cannot be provided when a selector is specified")
    if targets and all_namespaces:
        raise UsageError("error: a name cannot be used with -A/--all-namespaces; use -l to select across namespaces")
    if not targets and selector is None and field_selector is None and not all_namespaces:
        raise UsageError("error: say which pods: POD, TYPE/NAME, -l/--selector, --field-selector or -A")
    pods: dict[tuple[str, str], dict[str, Any]] = {}
    missing: list[PodOutcome] = []
    for target in targets:
        kind, _, name = target.rpartition("/")
        kind = kind.lower() or "pod"
        if not name:
            raise UsageError(f"error: {target!r}: missing a name after the type")
        if kind in POD_WORDS:
            try:
                pod = client.get_pod(namespace, name)
            except GrpcProbeError as exc:
                missing.append(PodOutcome(namespace, name, str(exc), exc.exit_code))
                continue
            pods[(namespace, name)] = pod
            continue
        if kind not in WORKLOADS:
            raise UsageError(f"error: {target!r}: unsupported type {kind!r} (use pod, deploy, rs, sts, ds, job or svc)")
        prefix, resource = WORKLOADS[kind]
        obj = client.get(f"{prefix}/namespaces/{quote(namespace, safe='')}/{resource}/{quote(name, safe='')}")
        raw = (obj.get("spec") or {}).get("selector")
        if resource == "services":
            if not raw:
                raise UsageError(f"error: service {name} has no selector, so it selects no pods")
            label_query = ",".join(f"{k}={v}" for k, v in sorted(raw.items()))
        else:
            label_query = selector_string(raw or {})
            if not label_query:
                raise UsageError(f"error: {kind}/{name} has an empty selector")
        for pod in _list(client, namespace, label_query, field_selector):
            pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
    if not targets:
        for pod in _list(client, None if all_namespaces else namespace, selector, field_selector):
            pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
    return [pods[key] for key in sorted(pods)], missing


def _list(client: KubeClient, namespace: str | None, selector: str | None, field_selector: str | None) -> list[dict[str, Any]]:
    query = {}
    if selector:
        query["labelSelector"] = selector
    if field_selector:
        query["fieldSelector"] = field_selector
    path = "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
    return client.get(path, query).get("items") or []


def probe_fleet(
    client: KubeClient,
    pods: list[dict[str, Any]],
    options: ProbeOptions,
    agent: str,
    *,
    parallel: int,
    deadline_s: float | None,
    progress: Any = None,
) -> tuple[list[Report], list[PodOutcome]]:
    """Probe every pod with at most `parallel` at once; pods not started by the deadline are reported as such."""
    started = time.monotonic()
    end = started + deadline_s if deadline_s else None
    reports: list[Report] = []
    outcomes: list[PodOutcome] = []

    def one(pod: dict[str, Any]) -> tuple[list[Report], list[PodOutcome]]:
        meta = pod["metadata"]
        try:
            targets = resolve_for(pod, options)
        except NothingToProbe as exc:
            return [], [PodOutcome(meta["namespace"], meta["name"], str(exc).removeprefix("error: "), ExitCode.OK, skipped=True)]
        try:
            ensure_running(pod)
            remaining = None if end is None else max(0.1, end - time.monotonic())
            timeout = min(client.timeout or 30.0, remaining) if remaining else None
            return probe_targets(client, pod, targets, agent, api_ms=0.0, tunnel_timeout=timeout), []
        except GrpcProbeError as exc:
            return [], [PodOutcome(meta["namespace"], meta["name"], str(exc), exc.exit_code)]

    done_count = 0
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="grpcprobe-fleet") as pool:
        futures: dict[Future[Any], dict[str, Any]] = {pool.submit(one, pod): pod for pod in pods}
        pending = set(futures)
        try:
            while pending:
                timeout = None if end is None else max(0.0, end - time.monotonic())
                done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    got_reports, got_outcomes = future.result()
                    reports += got_reports
                    outcomes += got_outcomes
                    done_count += 1
                    if progress:
                        progress(done_count, len(pods))
                if end is not None and time.monotonic() >= end and pending:
                    for future in pending:
                        if future.cancel():
                            meta = futures[future]["metadata"]
                            outcomes.append(
                                PodOutcome(meta["namespace"], meta["name"], f"error: not probed: the overall --deadline ({deadline_s:g}s) passed", ExitCode.UNREACHABLE)
                            )
                    # Running ones finish within their own timeouts, which the deadline already capped.
                    for future in wait([f for f in pending if not f.cancelled()])[0]:
                        got_reports, got_outcomes = future.result()
                        reports += got_reports
                        outcomes += got_outcomes
                    pending = set()
        except (KeyboardInterrupt, Terminated):
            pool.shutdown(wait=True, cancel_futures=True)  # queued pods are dropped, running ones end within their timeouts
            raise
    return reports, outcomes
