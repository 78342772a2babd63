"""What the API server, scheduler and kubelet do to a pod between `create` and `Running`.

Defaulting and a little validation as the API server applies them (probe defaults above all),
then the status a running pod shows: node, pod IP, conditions, container statuses.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import uuid
from typing import Any

NODE_NAME = "sandbox-node"
HOST_IP = "10.0.0.10"
PROBE_KINDS = ("livenessProbe", "readinessProbe", "startupProbe")
PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


class Invalid(Exception):
    """422 Invalid: causes are (field, message) pairs."""

    def __init__(self, name: str, causes: list[tuple[str, str]]) -> None:
        self.name = name
        self.causes = causes
        super().__init__(f'Pod "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def validate(pod: dict[str, Any]) -> None:
    name = pod["metadata"]["name"]
    causes = []
    spec = pod.get("spec") or {}
    if not spec.get("containers"):
        causes.append(("spec.containers", "Required value"))
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            path = f"spec.{group}[{i}]"
            if not c.get("name"):
                causes.append((f"{path}.name", "Required value"))
            if not c.get("image"):
                causes.append((f"{path}.image", "Required value"))
            for kind in PROBE_KINDS:
                probe = c.get(kind)
                if not probe:
                    continue
                if group == "initContainers" and c.get("restartPolicy") != "Always":
                    causes.append((f"{path}.{kind}", "Forbidden: may not be set for init containers without restartPolicy=Always"))
                grpc = probe.get("grpc")
                if grpc is not None:
                    port = grpc.get("port")
                    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                        causes.append((f"{path}.{kind}.grpc.port", f"Invalid value: {port!r}: must be between 1 and 65535, inclusive"))
                if kind != "readinessProbe" and probe.get("successThreshold", 1) != 1:
                    causes.append((f"{path}.{kind}.successThreshold", "Invalid value: must be 1"))
    if causes:
        raise Invalid(name, causes)


def apply_defaults(pod: dict[str, Any], namespace: str) -> None:
    meta = pod.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    meta["namespace"] = namespace
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    spec.setdefault(
        "tolerations",
        [
            {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            for t in ("not-ready", "unreachable")
        ],
    )
    for c in all_containers(pod):
        image = c.get("image", "")
        tagless = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
        c.setdefault("imagePullPolicy", "Always" if tagless or image.endswith(":latest") else "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        for port in c.get("ports") or []:
            port.setdefault("protocol", "TCP")
        for kind in PROBE_KINDS:
            if c.get(kind) is not None:
                for key, value in PROBE_DEFAULTS.items():
                    c[kind].setdefault(key, value)
                if isinstance(c[kind].get("grpc"), dict):
                    # SetDefaults_GRPCAction: the API server always stores a service, "" when unset
                    # (kubectl describe dereferences it).
                    c[kind]["grpc"].setdefault("service", "")


def running_status(pod: dict[str, Any], pod_ip: str, ready_of: Any = lambda container: True) -> dict[str, Any]:
    """Status of a pod whose containers all just started; ready_of(container) says which are Ready yet."""
    started = now()
    uid = pod["metadata"]["uid"]

    def container_status(c: dict[str, Any]) -> dict[str, Any]:
        image = c.get("image", "")
        digest = hashlib.sha256(image.encode()).hexdigest()
        cid = hashlib.sha256(f"{uid}/{c['name']}".encode()).hexdigest()
        status = {
            "name": c["name"],
            "state": {"running": {"startedAt": started}},
            "lastState": {},
            "ready": bool(ready_of(c)),
            "restartCount": 0,
            "image": image,
            "imageID": f"{image.split('@')[0].rsplit(':', 1)[0]}@sha256:{digest}",
            "containerID": f"containerd://{cid}",
            "started": True,
        }
        return status

    sidecars = [c for c in pod["spec"].get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    ready = all(ready_of(c) for c in pod["spec"].get("containers") or []) and all(ready_of(c) for c in sidecars)
    conditions = [
        ("PodReadyToStartContainers", True),
        ("Initialized", True),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodScheduled", True),
    ]
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": started}
            for t, ok in conditions
        ],
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "containerStatuses": [container_status(c) for c in pod["spec"].get("containers") or []],
        "qosClass": "BestEffort",
    }
    if sidecars:
        status["initContainerStatuses"] = [container_status(c) for c in sidecars]
    return status


def set_phase(pod: dict[str, Any], phase: str, ready_of: Any = lambda container: True) -> None:
    """Move a pod to a phase as the kubelet would report it."""
    status = pod.setdefault("status", {})
    status["phase"] = phase
    when = now()
    statuses = status.get("containerStatuses") or [
        {"name": c["name"], "image": c.get("image", ""), "restartCount": 0, "lastState": {}}
        for c in pod["spec"].get("containers") or []
    ]
    for cs in statuses:
        cs["ready"] = False
        if phase == "Pending":
            cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
            cs["started"] = False
        elif phase in ("Succeeded", "Failed"):
            code = 0 if phase == "Succeeded" else 1
            reason = "Completed" if phase == "Succeeded" else "Error"
            cs["state"] = {"terminated": {"exitCode": code, "reason": reason, "startedAt": when, "finishedAt": when}}
            cs["started"] = False
        elif phase == "Running":
            spec = next((c for c in all_containers(pod) if c["name"] == cs["name"]), {})
            cs["state"] = {"running": {"startedAt": when}}
            cs["started"] = True
            cs["ready"] = bool(ready_of(spec))
    status["containerStatuses"] = statuses
    ready = phase == "Running" and all(cs["ready"] for cs in statuses)
    for cond in status.get("conditions") or []:
        if cond["type"] in ("Ready", "ContainersReady"):
            cond["status"] = "True" if ready else "False"
            cond["lastTransitionTime"] = when
    if phase == "Pending":
        status.pop("podIP", None)
        status.pop("podIPs", None)


def event(pod: dict[str, Any], container: str | None, type_: str, reason: str, message: str, component: str, host: str) -> dict[str, Any]:
    """An Event as the kubelet's recorder writes it; its name is stable for the same object, reason and
    message, so a repeat is found and counted (count, lastTimestamp) as the recorder aggregates."""
    import secrets

    meta = pod["metadata"]
    field_path = ""
    if container:
        group = "initContainers" if any(c["name"] == container for c in pod["spec"].get("initContainers") or []) else "containers"
        field_path = f"spec.{group}{{{container}}}"
    key = hashlib.sha256(f"{meta['uid']}|{field_path}|{reason}|{message}|{type_}".encode()).hexdigest()[:16]
    stamp = now()
    involved = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1"}
    if field_path:
        involved["fieldPath"] = field_path
    kubelet = component == "kubelet"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{key}", "namespace": meta["namespace"], "uid": secrets.token_hex(16), "creationTimestamp": stamp},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "source": {"component": component, "host": host} if kubelet else {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "type": type_,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": host if kubelet else "",
    }
