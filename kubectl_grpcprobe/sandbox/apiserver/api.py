"""Routing and the API documents: what the sandbox answers for each path and verb."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from . import pods as podlib
from . import printers
from .selectors import field_selector, label_selector
from .server import ApiError, not_found
from .store import Conflict, NotFound

if TYPE_CHECKING:
    from .. import Sandbox, User
    from .server import Handler

_RW = ["create", "delete", "get", "list", "watch"]
# group/version -> resource -> (kind, namespaced, short names, verbs). Resource names are unique across groups.
GROUPS: dict[str, dict[str, tuple[str, bool, list[str], list[str]]]] = {
    "v1": {
        "pods": ("Pod", True, ["po"], _RW),
        "events": ("Event", True, ["ev"], ["create", "get", "list", "watch"]),
        "namespaces": ("Namespace", False, ["ns"], ["create", "get", "list", "watch"]),
        "services": ("Service", True, ["svc"], _RW),
    },
    "apps/v1": {
        "deployments": ("Deployment", True, ["deploy"], _RW),
        "replicasets": ("ReplicaSet", True, ["rs"], _RW),
        "statefulsets": ("StatefulSet", True, ["sts"], _RW),
        "daemonsets": ("DaemonSet", True, ["ds"], _RW),
    },
    "batch/v1": {"jobs": ("Job", True, [], _RW)},
}
CORE_RESOURCES = GROUPS["v1"]
RESOURCE_GROUP = {resource: gv for gv, resources in GROUPS.items() for resource in resources}
KIND_RESOURCE = {kind: resource for resources in GROUPS.values() for resource, (kind, *_rest) in resources.items()}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[a-z.]+/v1))(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$"
)


def discovery_groups() -> dict[str, Any]:
    groups = []
    for gv in GROUPS:
        if gv == "v1":
            continue
        group, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def discovery_core(gv: str = "v1") -> dict[str, Any]:
    resources = []
    for name, (kind, namespaced, short, verbs) in GROUPS[gv].items():
        entry: dict[str, Any] = {
            "name": name,
            "singularName": kind.lower(),
            "namespaced": namespaced,
            "kind": kind,
            "verbs": verbs,
        }
        if short:
            entry["shortNames"] = short
        if name == "pods":
            entry["categories"] = ["all"]
        resources.append(entry)
    if gv == "v1":
        resources.append(
            {"name": "pods/portforward", "singularName": "", "namespaced": True, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}
        )
        resources.append({"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def route(h: Handler, sandbox: Sandbox, user: User, verb: str, path: str) -> None:
    if path == "/version":
        return h._send_json(200, sandbox.version_info())
    if path in ("/healthz", "/livez", "/readyz"):
        return h._send_bytes(200, "text/plain; charset=utf-8", b"ok")
    if user.anonymous:
        raise ApiError(403, "Forbidden", f'forbidden: User "system:anonymous" cannot get path "{path}"')
    if path == "/api":
        # Plain APIVersions even when kubectl asks for aggregated discovery (as=APIGroupDiscoveryList):
        # answering application/json makes it fall back to the legacy documents.
        host, port = h.server.server_address[:2]
        return h._send_json(
            200,
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}],
            },
        )
    if path == "/apis":
        return h._send_json(200, discovery_groups())
    if path == "/api/v1":
        return h._send_json(200, discovery_core())
    if path.startswith("/apis/") and path[len("/apis/") :] in GROUPS:
        return h._send_json(200, discovery_core(path[len("/apis/") :]))
    if path.startswith("/openapi/"):
        return _openapi(h, sandbox, path)
    match = _PATH.match(path)
    gv = (match["core"] or match["gv"]) if match else None
    if not match or gv not in GROUPS or match["resource"] not in GROUPS[gv]:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    resource, ns, name, sub = match["resource"], match["ns"], match["name"], match["sub"]
    kind, namespaced, _, _ = GROUPS[gv][resource]
    qualified = resource if gv == "v1" else f"{resource}.{gv.split('/')[0]}"  # as the API's NotFound names it
    if not namespaced and ns is not None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if sub and resource != "pods":
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    if sub == "portforward":
        sandbox.portforward_requested.set()
        if sandbox.faults.stall_portforward and h.server.stop_event.wait(sandbox.faults.stall_portforward):
            return None
        if verb not in ("GET", "POST"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        upgrade = (h.headers.get("Upgrade") or "").lower()
        # A POST is authorized as create; API servers >= 1.35 also want create for WebSocket GETs.
        sandbox.authorize(user, "get" if verb == "GET" else "create", "pods/portforward", ns, name)
        if upgrade == "websocket":
            sandbox.authorize(user, "create", "pods/portforward", ns, name)
        pod = sandbox.store.get("pods", ns, name)
        if pod is None:
            raise not_found("pods", name)
        if not pod["spec"].get("nodeName"):
            raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
        if upgrade == "spdy/3.1":
            return h.upgrade_spdy(pod)
        if upgrade != "websocket":
            raise ApiError(400, "BadRequest", "Upgrade request required")
        return h.upgrade_portforward(pod)
    if sub == "status":
        sandbox.authorize(user, "get", "pods/status", ns, name)
        pod = sandbox.store.get("pods", ns, name)
        if pod is None:
            raise not_found("pods", name)
        return h._send_json(200, pod)
    if sub:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    if name is None:
        if verb in ("GET", "HEAD"):
            watching = (h.q("watch") or "").lower() in ("true", "1")
            sandbox.authorize(user, "watch" if watching else "list", resource, ns, None)
            as_table = "as=Table" in (h.headers.get("Accept") or "")
            include = h.q("includeObject") or "Metadata"
            if watching:

                def render(obj: dict[str, Any]) -> dict[str, Any]:
                    if as_table:
                        return printers.table(resource, [obj], obj["metadata"]["resourceVersion"], include)
                    return obj

                return h.stream_watch(resource, ns, render)
            items, rv = sandbox.store.list(resource, ns)
            labels = label_selector(h.q("labelSelector"))
            fields = field_selector(h.q("fieldSelector"))
            items = [o for o in items if labels(o["metadata"].get("labels") or {}) and fields(o)]
            if as_table:
                return h._send_json(200, printers.table(resource, items, rv, include))
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
            return h._send_json(200, {"kind": f"{kind}List", "apiVersion": gv, "metadata": {"resourceVersion": rv}, "items": items})
        if verb == "POST":
            sandbox.authorize(user, "create", resource, ns, None)
            body = h._read_body()
            if not isinstance(body, dict) or body.get("kind") not in (kind, None):
                raise ApiError(400, "BadRequest", f"the body of the request was not a {kind}")
            body_ns = (body.get("metadata") or {}).get("namespace")
            if namespaced and body_ns and body_ns != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            dry_run = bool(h.query.get("dryRun"))
            try:
                created = sandbox.create(resource, body, ns, dry_run=dry_run)
            except podlib.Invalid as exc:
                raise ApiError(
                    422,
                    "Invalid",
                    str(exc),
                    {"name": exc.name, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in exc.causes]},
                ) from exc
            except Conflict as exc:
                n = body["metadata"]["name"]
                raise ApiError(409, "AlreadyExists", f'{resource} "{n}" already exists', {"name": n, "kind": resource}) from exc
            return h._send_json(201, created)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    store_ns = ns if namespaced else ""
    if verb in ("GET", "HEAD"):
        sandbox.authorize(user, "get", resource, ns, name)
        obj = sandbox.store.get(resource, store_ns, name)
        if obj is None:
            raise not_found(qualified, name)
        if "as=Table" in (h.headers.get("Accept") or ""):
            return h._send_json(200, printers.table(resource, [obj], obj["metadata"]["resourceVersion"], h.q("includeObject") or "Metadata"))
        return h._send_json(200, obj)
    if verb == "DELETE":
        sandbox.authorize(user, "delete", resource, ns, name)
        h._read_body()
        try:
            deleted = sandbox.delete(resource, store_ns, name)
        except NotFound as exc:
            raise not_found(qualified, name) from exc
        return h._send_json(200, deleted)
    raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def _openapi(h: Handler, sandbox: Sandbox, path: str) -> None:
    from . import openapi

    if path == "/openapi/v2":
        if "protobuf" not in (h.headers.get("Accept") or ""):
            raise ApiError(406, "NotAcceptable", "only the protobuf form of /openapi/v2 is served by the sandbox")
        return h._send_bytes(200, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf", openapi.v2_protobuf(sandbox.version))
    if path == "/openapi/v3":
        return h._send_json(200, openapi.v3_index(sandbox.version))
    if path.startswith("/openapi/v3/") and path[len("/openapi/v3/") :] in openapi.V3_PATHS:
        return h._send_json(200, openapi.v3_document(sandbox.version, openapi.V3_PATHS[path[len("/openapi/v3/") :]]))
    raise ApiError(404, "NotFound", "the server could not find the requested resource")


def ports_query(h: Handler) -> list[int]:
    """`?ports=` as the API server converts it; the kubelet's own checks come after (streaming.kubelet_ports)."""
    from .streaming import apiserver_ports

    try:
        return apiserver_ports(h.query.get("ports") or [])
    except ValueError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None

