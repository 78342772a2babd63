"""Just enough OpenAPI for `kubectl create -f` to validate on the server side.

kubectl (strict validation, the default) downloads the OpenAPI document and asks one question of
it: does the PATCH operation for this kind accept the `fieldValidation` query parameter? If so it
sends `?fieldValidation=Strict` and validates nothing itself. kubectl 1.27-1.30 read OpenAPI v2,
which they accept only as protobuf (gnostic's openapi_v2.Document); newer ones read v3 JSON first.
Both documents here describe only those PATCH operations.
"""

from __future__ import annotations

import hashlib
import json

# (kind, path of the object) for each kind the sandbox can create.
KINDS = [  # (group, kind, path of the object)
    ("", "Pod", "/api/v1/namespaces/{namespace}/pods/{name}"),
    ("", "Event", "/api/v1/namespaces/{namespace}/events/{name}"),
    ("", "Namespace", "/api/v1/namespaces/{name}"),
    ("", "Service", "/api/v1/namespaces/{namespace}/services/{name}"),
    ("apps", "Deployment", "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
    ("apps", "ReplicaSet", "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}"),
    ("apps", "StatefulSet", "/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"),
    ("apps", "DaemonSet", "/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"),
    ("batch", "Job", "/apis/batch/v1/namespaces/{namespace}/jobs/{name}"),
]
GVK_EXTENSION = "x-kubernetes-group-version-kind"


# -- protobuf (wire format by hand: four message shapes do not justify a generated module) -------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


def _msg(field: int, *parts: bytes) -> bytes:
    return _bytes(field, b"".join(parts))


def v2_protobuf(version: str) -> bytes:
    """openapi_v2.Document: swagger=1, info=2, paths=8 (Paths.path=2: NamedPathItem{name=1, value=2})."""
    paths = b""
    for group, kind, path in KINDS:
        gvk_yaml = f'group: "{group}"\nkind: {kind}\nversion: v1\n'
        query_param = _str(2, "query") + _str(4, "fieldValidation") + _str(6, "string")  # QueryParameterSubSchema
        parameter = _msg(8, _msg(1, _msg(2, _msg(3, query_param))))  # ParametersItem.parameter.non_body.query
        extension = _msg(13, _str(1, GVK_EXTENSION), _msg(2, _str(2, gvk_yaml)))  # NamedAny{name, Any{yaml=2}}
        operation = parameter + extension + _str(5, f"patch{kind}")
        paths += _msg(2, _str(1, path), _msg(2, _msg(8, operation)))  # PathItem.patch = 8
    return _str(1, "2.0") + _msg(2, _str(1, "Kubernetes"), _str(2, f"v{version}")) + _msg(8, paths) + _msg(9)


def v3_document(version: str, group: str = "") -> dict:
    paths = {}
    for kind_group, kind, path in KINDS:
        if kind_group != group:
            continue
        paths[path] = {
            "patch": {
                "operationId": f"patch{kind}",
                GVK_EXTENSION: {"group": group, "version": "v1", "kind": kind},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": f"v{version}"}, "paths": paths, "components": {"schemas": {}}}


V3_PATHS = {"api/v1": "", "apis/apps/v1": "apps", "apis/batch/v1": "batch"}


def v3_index(version: str) -> dict:
    paths = {}
    for path, group in V3_PATHS.items():
        digest = hashlib.sha512(json.dumps(v3_document(version, group), sort_keys=True).encode()).hexdigest()[:64].upper()
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}
