"""What the controllers would do, once: a workload's pods from its template, named and labelled as theirs.

Deployment -> ReplicaSet `<name>-<hash>` -> pods `<rs>-<5 chars>` (label pod-template-hash);
StatefulSet -> `<name>-0..n-1`; DaemonSet -> one pod (one node); Job -> `completions` pods with
the controller-uid selector the Job controller sets. No reconciliation afterwards.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import uuid
from typing import Any

from . import pods as podlib

_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's name-suffix alphabet


def suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def template_hash(template: dict[str, Any]) -> str:
    return "".join(_ALNUM[b % len(_ALNUM)] for b in hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()[:10])


def finish_metadata(obj: dict[str, Any], namespace: str, api_version: str, kind: str) -> None:
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + suffix()
    meta["namespace"] = namespace
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = podlib.now()
    obj["apiVersion"], obj["kind"] = api_version, kind


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _pod(template: dict[str, Any], name: str, owner: dict[str, Any], extra_labels: dict[str, str]) -> dict[str, Any]:
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["name"] = name
    meta["labels"] = {**(meta.get("labels") or {}), **extra_labels}
    meta["ownerReferences"] = [_owner(owner)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}


def expand(kind: str, obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(resource, object) pairs the controllers would create for `obj` (already named and with a uid)."""
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    name = obj["metadata"]["name"]
    if kind == "Deployment":
        pth = template_hash(template)
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{name}-{pth}",
                "labels": {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": pth},
                "ownerReferences": [_owner(obj)],
            },
            "spec": {
                "replicas": spec.get("replicas", 1),
                "selector": _with_label(spec.get("selector") or {}, "pod-template-hash", pth),
                "template": _template_with_label(template, "pod-template-hash", pth),
            },
        }
        return [("replicasets", rs)]
    if kind == "ReplicaSet":
        return [("pods", _pod(template, f"{name}-{suffix()}", obj, {})) for _ in range(int(spec.get("replicas", 1)))]
    if kind == "StatefulSet":
        revision = f"{name}-{template_hash(template)}"
        return [
            ("pods", _pod(template, f"{name}-{i}", obj, {"statefulset.kubernetes.io/pod-name": f"{name}-{i}", "controller-revision-hash": revision}))
            for i in range(int(spec.get("replicas", 1)))
        ]
    if kind == "DaemonSet":
        return [("pods", _pod(template, f"{name}-{suffix()}", obj, {"controller-revision-hash": template_hash(template)}))]
    if kind == "Job":
        uid = obj["metadata"]["uid"]
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name, "controller-uid": uid, "job-name": name}
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        count = int(spec.get("parallelism", spec.get("completions", 1)) or 1)
        return [("pods", _pod(template, f"{name}-{suffix()}", obj, labels)) for _ in range(count)]
    return []


def _with_label(selector: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    out = copy.deepcopy(selector)
    out.setdefault("matchLabels", {})[key] = value
    return out


def _template_with_label(template: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    out = copy.deepcopy(template)
    out.setdefault("metadata", {}).setdefault("labels", {})[key] = value
    return out


def set_status(kind: str, obj: dict[str, Any], pod_count: int) -> None:
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        obj["status"] = {"replicas": pod_count, "readyReplicas": pod_count, "availableReplicas": pod_count, "observedGeneration": 1}
    elif kind == "DaemonSet":
        obj["status"] = {"currentNumberScheduled": 1, "desiredNumberScheduled": 1, "numberReady": 1, "numberAvailable": 1}
    elif kind == "Job":
        obj["status"] = {"active": pod_count, "startTime": podlib.now()}
