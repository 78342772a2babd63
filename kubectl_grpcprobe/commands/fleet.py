"""Many pods at once: names, TYPE/NAME workloads, label and field selectors, all namespaces.

Pods are selected as kubectl selects them (a workload's or a Service's selector, then a pod list),
then probed by a bounded pool of workers, each with its own tunnels; an overall deadline bounds the
run. Every pod ends as reports or as a PodOutcome saying why it was not probed.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .. import stop
from ..errors import ExitCode, GrpcProbeError, NothingToProbe, Terminated, UsageError
from ..kube.client import KubeClient
from ..kubelet.report import PodOutcome, Report
from ..kubelet.resolve import Target
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


def parse_target(text: str) -> tuple[str, str]:
    """NAME or TYPE/NAME, in every form `kubectl get -o name` prints (deployment.apps/web, job.batch/x,
    service/web, pod/x), as (type word, name); kubectl's own messages for the malformed ones."""
    if "/" not in text:
        if not text:
            raise UsageError("error: resource name may not be empty")
        return "pod", text
    kind, _, name = text.partition("/")
    if not kind or not name or "/" in name:
        raise UsageError("error: arguments in resource/name form must have a single resource and name")
    word, _, group = kind.lower().partition(".")
    if word not in POD_WORDS and word not in WORKLOADS:
        raise UsageError(f"error: {text!r}: unsupported type {kind!r} (use pod, deploy, rs, sts, ds, job or svc)")
    expected = "" if word in POD_WORDS or WORKLOADS[word][0] == "/api/v1" else WORKLOADS[word][0].split("/")[2]
    if group and group not in ((expected, f"v1.{expected}") if expected else ("v1",)):
        raise UsageError(f"error: {text!r}: the type {kind!r} is not in the API group {expected or 'core'!r}")
    return word, name



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
    return parse_target(targets[0])[0] not in POD_WORDS


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
        kind, name = parse_target(target)
        if kind in POD_WORDS:
            try:
                pod = client.get_pod(namespace, name)
            except GrpcProbeError as exc:
                missing.append(PodOutcome(namespace, name, str(exc), exc.exit_code))
                continue
            pods[(namespace, name)] = pod
            continue
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


@dataclass
class FleetRun:
    reports: list[Report]
    outcomes: list[PodOutcome]
    stopped: str | None = None  # stop.INTERRUPTED, TERMINATED or DEADLINE when the run did not finish
    stopped_by: BaseException | None = None  # the signal's exception, re-raised once the partial result is shown


def probe_fleet(
    client: KubeClient,
    pods: list[dict[str, Any]],
    options: ProbeOptions,
    agent: str,
    *,
    parallel: int,
    deadline_s: float | None,
    progress: Any = None,
) -> FleetRun:
    """Probe every pod with at most `parallel` at once, until all are done, the deadline passes, or a signal.

    The deadline bounds everything, tunnels and checks in flight included: when it passes, or on
    Ctrl-C/SIGTERM, the run's scope is stopped (sockets shut, channels closed) and the pods that did
    not finish are reported as such. Workers are daemon threads: none can hold the process open.
    """
    started = time.monotonic()
    end = started + deadline_s if deadline_s else None
    run = FleetRun([], [])
    queue_in: queue.Queue[dict[str, Any]] = queue.Queue()
    # Workers append (atomic under the GIL) and set `arrived`. No lock the main thread waits in is read again after a
    # signal's exception came out of it (it may have been left held): after Ctrl-C, only the list is read.
    finished: list[tuple[tuple[str, str], Any, float]] = []
    arrived = threading.Event()
    waiting: dict[tuple[str, str], tuple[dict[str, Any], list[Target]]] = {}
    for pod in pods:
        meta = pod["metadata"]
        try:  # a pod without a gRPC probe is known at once: it never waits for a worker
            targets = resolve_for(pod, options)
        except NothingToProbe as exc:
            run.outcomes.append(PodOutcome(meta["namespace"], meta["name"], str(exc).removeprefix("error: "), ExitCode.OK, skipped=True))
            continue
        waiting[(meta["namespace"], meta["name"])] = (pod, targets)
        queue_in.put(pod)

    def one(pod: dict[str, Any], targets: list[Target]) -> tuple[list[Report], list[PodOutcome]]:
        meta = pod["metadata"]
        try:
            ensure_running(pod)
            remaining = None if end is None else max(0.001, end - time.monotonic())
            timeout = min(client.timeout or 30.0, remaining) if remaining else None
            return probe_targets(client, pod, targets, agent, api_ms=0.0, tunnel_timeout=timeout, loop=loop), []
        except GrpcProbeError as exc:
            stop.check()  # a shut socket is not the pod's failure
            return [], [PodOutcome(meta["namespace"], meta["name"], str(exc), exc.exit_code)]

    def worker() -> None:
        while stop.requested() is None:
            try:
                pod = queue_in.get_nowait()
            except queue.Empty:
                return
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            try:
                got: Any = one(pod, waiting[key][1])
            except stop.Stopped:
                return
            except BaseException as exc:  # a bug: shown as the pod's error, never a hang
                got = exc
            finished.append((key, got, time.monotonic()))
            arrived.set()

    probed = len(waiting)
    from ..kube.portforward import shared_loop

    # One bridging thread for every pod's tunnel (a thread per tunnel cost more in GIL handoffs than the bridging);
    # closed after the workers, with whatever a worker cut short still holds.
    with stop.scope() as own, shared_loop() as loop:
        threads = [stop.spawn(worker, name=f"grpcprobe-fleet-{i}") for i in range(min(max(1, parallel), len(waiting)))]
        seen = 0

        def take(until: float | None) -> bool:
            """Results that arrived, done by `until`; False at the first one done after it (the deadline passed)."""
            nonlocal seen
            while seen < len(finished):
                key, got, done_at = finished[seen]
                seen += 1
                if until is not None and done_at > until:
                    return False
                waiting.pop(key, None)
                if isinstance(got, BaseException):
                    run.outcomes.append(PodOutcome(key[0], key[1], f"error: {got!r}", ExitCode.UNREACHABLE))
                else:
                    run.reports += got[0]
                    run.outcomes += got[1]
                if progress:
                    progress(probed - len(waiting), probed)
            return True

        try:
            while waiting:
                timeout = None if end is None else end - time.monotonic()
                if timeout is not None and timeout <= 0:
                    run.stopped = stop.DEADLINE
                    break
                if stop.wait(arrived, timeout):  # in slices: a signal is acted on only when the main thread's wait returns
                    arrived.clear()
                if not take(end):
                    run.stopped = stop.DEADLINE  # done, but after the deadline: not a result
                    break
        except (KeyboardInterrupt, Terminated) as exc:
            run.stopped, run.stopped_by = stop.reason_for(exc), exc
        if run.stopped:
            take(end if run.stopped == stop.DEADLINE else time.monotonic())  # what finished before the stop counts
            own.stop(run.stopped)
            grace_end = time.monotonic() + 0.5
            for thread in threads:  # the stop's closers make this quick; bounded all the same
                thread.join(max(0.0, grace_end - time.monotonic()))
            if run.stopped == stop.DEADLINE:
                why = f"deadline exceeded: the overall --deadline ({deadline_s:g}s) passed before this pod was done"
            else:
                why = f"{run.stopped}: the run was stopped before this pod was done"
            for namespace, name in waiting:
                run.outcomes.append(PodOutcome(namespace, name, f"error: {why}", ExitCode.UNREACHABLE))
    return run
