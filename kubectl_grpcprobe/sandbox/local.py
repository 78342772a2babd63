"""What both sandboxes (the fake API server, the real control plane with its nodes) write and bind on this machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ADMIN = "sandbox-admin"
RESTRICTED = ("sandbox-no-get-pods", "sandbox-no-portforward")  # a context each, as the user of the same name
CONTEXTS = {"sandbox": ADMIN, **{name: name for name in RESTRICTED}}


def free_port() -> int:
    """A loopback port free now, for a process that binds it itself (a small race, the price of a port on its flags)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a file only its owner can read: keys and tokens. An existing file keeps its mode through O_CREAT, so 0600 again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return Path(path)


def kubeconfig(server: str, ca_pem: bytes, tokens: Mapping[str, str], user: str = ADMIN) -> dict[str, Any]:
    """A kubeconfig with every user's bearer token and the admin and restricted contexts; `user`'s is current."""
    import base64

    ca = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": name, "user": {"token": token}} for name, token in tokens.items()],
        "contexts": [{"name": name, "context": {"cluster": "sandbox", "user": u, "namespace": "default"}} for name, u in CONTEXTS.items()],
        "current-context": next(name for name, u in CONTEXTS.items() if u == user),
        "preferences": {},
    }


def write_kubeconfig(path: str | os.PathLike[str], doc: dict[str, Any]) -> str:
    import yaml

    write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())
    return str(path)


def manifest_objects(manifest: str | os.PathLike[str] | dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """Every object of a manifest (a dict, or a YAML file of documents; `List`s opened), checked as both sandboxes
    need it: a mapping, a kind the sandbox knows, a name. Each as (where it came from, the object, its resource);
    ValueError naming the file, the document and the field."""
    import yaml

    from .apiserver.api import KIND_RESOURCE

    if isinstance(manifest, dict):
        docs, where = [manifest], "the manifest"
    else:
        where = str(manifest)
        with open(manifest) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
    out = []
    for number, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: document {number} is not a Kubernetes object (a YAML mapping)")
        if doc.get("kind") == "List":
            for item in doc.get("items") or []:
                out += manifest_objects(item)
            continue
        kind = doc.get("kind")
        resource = KIND_RESOURCE.get(kind)
        if resource is None:
            raise ValueError(f"{where}: document {number}: the sandbox does not serve kind {kind!r}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
            raise ValueError(f"{where}: document {number} ({kind}): metadata.name is required")
        out.append((f"{where}: document {number} ({kind} {meta.get('name')})", doc, resource))
    return out
