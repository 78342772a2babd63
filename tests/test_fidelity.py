"""The fake API server's fidelity, measured: the same requests to the fake and to the real kube-apiserver.

What must match is asserted: the Status bodies users read (401, 403, 404), discovery of what the fake
serves, the defaults the plugin reads from a pod, list and watch shapes, and the port-forward upgrade
refusals. The differences that remain are listed in FAKE_DIFFERENCES and in the README, and a test
keeps that list true: a difference that disappears, or a new one, fails it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import pytest

from kubectl_grpcprobe.sandbox import Sandbox

from .conftest import REAL_MISSING
from .helpers import BLOG_MANIFEST

pytestmark = [pytest.mark.real, pytest.mark.skipif(bool(REAL_MISSING), reason=f"the real control plane: {REAL_MISSING}")]

# Paths of fields (in the blog's pod, as read back) where the fake knowingly differs from the real server.
FAKE_DIFFERENCES = {
    "metadata.managedFields": "server-side apply bookkeeping: the fake does not track field managers",
    "spec.tolerations": "added by the DefaultTolerationSeconds admission plugin; the fake has no admission chain",
    "spec.volumes": "the projected ServiceAccount token volume (ServiceAccount admission)",
    "spec.containers[0].volumeMounts": "the ServiceAccount token mount (ServiceAccount admission)",
    "spec.serviceAccount": "the ServiceAccount admission plugin",
    "spec.serviceAccountName": "the ServiceAccount admission plugin",
    "metadata.generation": "the real server counts spec changes; the fake does not",
}


@pytest.fixture(scope="module")
def fake():
    with Sandbox([BLOG_MANIFEST], kubelet=False) as sandbox:
        yield sandbox


def _token(server: Any, user: str) -> str:
    if hasattr(server, "control_plane"):
        return server.control_plane.tokens[user]
    return server.users[user].token


def _raw(server: Any, method: str, path: str, *, token: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh TLS connection: status, headers, body (at most 1 MiB)."""
    import http.client

    url = urlsplit(server.server_url)
    ca = server.control_plane.ca_pem if hasattr(server, "control_plane") else server.ca_pem
    ctx = ssl.create_default_context(cadata=ca.decode())
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=10)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=all_headers)
        resp = conn.getresponse()
        body = resp.read(1 << 20) if resp.status != 101 else b""
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def _both(real: Any, fake: Any, method: str, path: str, user: str | None = "sandbox-admin", **kwargs: Any) -> tuple[Any, Any]:
    out = []
    for server in (real, fake):
        token = _token(server, user) if user else kwargs.pop("token", None)
        out.append(_raw(server, method, path, token=token, **kwargs))
    return out[0], out[1]


def _status(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    doc.get("metadata", {}).pop("resourceVersion", None)
    return doc


@pytest.mark.parametrize(
    ("what", "path", "user"),
    [
        ("404 pod", "/api/v1/namespaces/default/pods/nope", "sandbox-admin"),
        ("404 namespace", "/api/v1/namespaces/nope/pods/test-grpc", "sandbox-admin"),
        ("403 get pod", "/api/v1/namespaces/default/pods/test-grpc", "sandbox-no-get-pods"),
        ("403 list pods", "/api/v1/namespaces/default/pods", "sandbox-no-get-pods"),
        ("403 list all pods", "/api/v1/pods", "sandbox-no-get-pods"),
    ],
)
def test_error_status_bodies_match(real, fake, what: str, path: str, user: str) -> None:
    (real_code, _, real_body), (fake_code, _, fake_body) = _both(real, fake, "GET", path, user)
    assert fake_code == real_code, what
    assert _status(fake_body) == _status(real_body), what


def test_401_matches(real, fake) -> None:
    real_code, _, real_body = _raw(real, "GET", "/api/v1/namespaces/default/pods", token="not-a-token")
    fake_code, _, fake_body = _raw(fake, "GET", "/api/v1/namespaces/default/pods", token="not-a-token")
    assert (fake_code, _status(fake_body)) == (real_code, _status(real_body))


def test_discovery_of_what_the_fake_serves_matches(real, fake) -> None:
    (_, _, real_api), (_, _, fake_api) = _both(real, fake, "GET", "/api")
    assert json.loads(fake_api)["versions"] == json.loads(real_api)["versions"]
    (_, _, real_groups), (_, _, fake_groups) = _both(real, fake, "GET", "/apis")
    real_by_name = {g["name"]: g["preferredVersion"] for g in json.loads(real_groups)["groups"]}
    for group in json.loads(fake_groups)["groups"]:
        assert real_by_name.get(group["name"]) == group["preferredVersion"], group["name"]
    for gv in ["api/v1"] + [f"apis/{g['preferredVersion']['groupVersion']}" for g in json.loads(fake_groups)["groups"]]:
        (_, _, real_list), (_, _, fake_list) = _both(real, fake, "GET", f"/{gv}")
        real_resources = {r["name"]: r for r in json.loads(real_list)["resources"]}
        for resource in json.loads(fake_list)["resources"]:
            twin = real_resources.get(resource["name"])
            assert twin is not None, (gv, resource["name"])
            for key in ("kind", "namespaced", "shortNames"):
                assert resource.get(key) == twin.get(key), (gv, resource["name"], key)
            assert set(resource["verbs"]) <= set(twin["verbs"]), (gv, resource["name"])


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return out or {prefix: {}}
    if isinstance(obj, list):
        out = {}
        for i, value in enumerate(obj):
            out.update(_flatten(value, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: obj}


def _differs(path: str) -> bool:
    return any(path == known or path.startswith(known + ".") or path.startswith(known + "[") for known in FAKE_DIFFERENCES)


def test_the_blog_pod_spec_reads_back_the_same(real, fake) -> None:
    """Every spec default the plugin and kubectl read (probe defaults, grpc.service "", policies) is the real server's."""
    (_, _, real_body), (_, _, fake_body) = _both(real, fake, "GET", "/api/v1/namespaces/default/pods/test-grpc")
    real_spec = _flatten(json.loads(real_body)["spec"], "spec")
    fake_spec = _flatten(json.loads(fake_body)["spec"], "spec")
    volatile = {"spec.nodeName"}
    wrong = {
        path: (fake_spec.get(path, "<missing>"), real_spec.get(path, "<missing>"))
        for path in sorted(set(real_spec) | set(fake_spec))
        if path not in volatile and not _differs(path) and real_spec.get(path, "<missing>") != fake_spec.get(path, "<missing>")
    }
    assert not wrong, "fake vs real: " + json.dumps(wrong, indent=1)
    seen = {known for known in FAKE_DIFFERENCES if known.startswith("spec") and any(_differs(p) and p.startswith(known) for p in real_spec)}
    assert seen == {k for k in FAKE_DIFFERENCES if k.startswith("spec")}, "a listed difference is gone: update FAKE_DIFFERENCES and the README"


def test_the_blog_pod_metadata_differs_only_where_listed(real, fake) -> None:
    (_, _, real_body), (_, _, fake_body) = _both(real, fake, "GET", "/api/v1/namespaces/default/pods/test-grpc")
    real_meta, fake_meta = json.loads(real_body)["metadata"], json.loads(fake_body)["metadata"]
    assert {f"metadata.{k}" for k in set(real_meta) ^ set(fake_meta)} == {k for k in FAKE_DIFFERENCES if k.startswith("metadata.")}


def test_the_blog_pod_status_has_the_real_shape(real, fake) -> None:
    (_, _, real_body), (_, _, fake_body) = _both(real, fake, "GET", "/api/v1/namespaces/default/pods/test-grpc")
    real_status, fake_status = json.loads(real_body)["status"], json.loads(fake_body)["status"]
    assert sorted(c["type"] for c in fake_status["conditions"]) == sorted(c["type"] for c in real_status["conditions"])
    assert set(fake_status) == set(real_status)
    assert set(fake_status["containerStatuses"][0]) >= set(real_status["containerStatuses"][0]) - {"allocatedResources", "resources", "user", "volumeMounts"}


def test_list_and_watch_shapes_match(real, fake) -> None:
    (_, real_headers, real_body), (_, fake_headers, fake_body) = _both(real, fake, "GET", "/api/v1/namespaces/default/pods?labelSelector=nope%3Dnope")
    real_list, fake_list = json.loads(real_body), json.loads(fake_body)
    assert (fake_list["kind"], fake_list["apiVersion"], fake_list["items"]) == (real_list["kind"], real_list["apiVersion"], [])
    assert set(fake_list["metadata"]) == set(real_list["metadata"])
    assert fake_headers["content-type"] == real_headers["content-type"]
    path = "/api/v1/namespaces/default/pods?watch=true&fieldSelector=metadata.name%3Dtest-grpc&timeoutSeconds=1"
    (_, real_headers, real_body), (_, fake_headers, fake_body) = _both(real, fake, "GET", path)
    real_events = [json.loads(line) for line in real_body.splitlines()]
    fake_events = [json.loads(line) for line in fake_body.splitlines()]
    assert [e["type"] for e in fake_events[:1]] == [e["type"] for e in real_events[:1]] == ["ADDED"]
    assert fake_events[0]["object"]["kind"] == real_events[0]["object"]["kind"] == "Pod"
    assert fake_headers.get("transfer-encoding") == real_headers.get("transfer-encoding") == "chunked"


def _upgrade_headers(protocols: str) -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Protocol": protocols,
    }


@pytest.mark.parametrize(
    ("what", "query", "protocols"),
    [
        ("v4 binary", "?ports=5000", "v4.channel.k8s.io"),
        ("v4 base64", "?ports=5000", "v4.base64.channel.k8s.io"),
        ("KEP-4006 tunnel", "", "SPDY/3.1+portforward.k8s.io"),
    ],
)
def test_portforward_upgrades_are_accepted_alike(real, fake, what: str, query: str, protocols: str) -> None:
    path = f"/api/v1/namespaces/default/pods/test-grpc/portforward{query}"
    (real_code, real_headers, _), (fake_code, fake_headers, _) = _both(real, fake, "GET", path, headers=_upgrade_headers(protocols))
    assert fake_code == real_code == 101, what
    assert fake_headers.get("sec-websocket-protocol") == real_headers.get("sec-websocket-protocol") == protocols


@pytest.mark.parametrize(
    ("query", "protocols"),
    [
        ("?ports=abc", "v4.channel.k8s.io"),  # the API server's conversion refuses these ...
        ("?ports=5000,abc", "v4.channel.k8s.io"),
        ("?ports=70000", "v4.channel.k8s.io"),
        ("?ports=-1", "v4.channel.k8s.io"),
        ("?ports=", "v4.channel.k8s.io"),
        ("", "v4.channel.k8s.io"),  # ... and the kubelet these (NewV4Options, then x/net/websocket's handshake)
        ("?ports=0", "v4.channel.k8s.io"),
        ("?ports=5000", "nope.k8s.io"),
    ],
)
def test_portforward_refusals_alike(real, fake, query: str, protocols: str) -> None:
    """What a client that gets the upgrade wrong reads. Behind the real API server the kubelet half is our node
    agent, whose words are the kubelet's source's (streaming.py cites them); the API server's are its own."""
    path = f"/api/v1/namespaces/default/pods/test-grpc/portforward{query}"
    (real_code, _, real_body), (fake_code, _, fake_body) = _both(real, fake, "GET", path, headers=_upgrade_headers(protocols))
    assert real_code in (400, 403), real_body
    assert (fake_code, fake_body.rstrip(b"\n")) == (real_code, real_body.rstrip(b"\n"))


def test_error_channel_text_for_a_closed_port_matches(real, fake) -> None:
    """The kubelet's words on the port's error channel, as the WebSocket protocol delivers them."""
    from kubectl_grpcprobe.wire import wsframe

    texts = []
    for server in (real, fake):
        url = urlsplit(server.server_url)
        ca = server.control_plane.ca_pem if hasattr(server, "control_plane") else server.ca_pem
        ctx = ssl.create_default_context(cadata=ca.decode())
        sock = ctx.wrap_socket(socket.create_connection((url.hostname, url.port), timeout=10), server_hostname=url.hostname)
        headers = _upgrade_headers("v4.channel.k8s.io")
        request = f"GET /api/v1/namespaces/default/pods/test-grpc/portforward?ports=5999 HTTP/1.1\r\nHost: {url.netloc}\r\n"
        request += f"Authorization: Bearer {_token(server, 'sandbox-admin')}\r\n"
        request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = wsframe.WebSocket(sock, client=True)
        error = b""
        while True:
            try:
                messages = ws.receive()
            except wsframe.ConnectionClosed:
                break
            for _, payload in messages:
                if payload[:1] == b"\x01" and len(payload) > 3:
                    error += payload[1:]
            if error or ws.peer_closed:
                break
        sock.close()
        texts.append(error.decode())
    import re

    normalize = lambda t: re.sub(r"[0-9a-f]{64}|cni-[0-9a-f-]{36}", "ID", t)  # noqa: E731
    assert normalize(texts[1]) == normalize(texts[0])
    assert "connect: connection refused" in texts[0]
