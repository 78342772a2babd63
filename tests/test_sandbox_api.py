"""Sandbox API behaviour on the wire: auth, watch, defaults, the port-forward channel protocol, cleanup."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
import websocket  # websocket-client: the official Python client's WebSocket library

from kubectl_grpcprobe.sandbox import Sandbox

from .conftest import _listening_inodes
from .helpers import BLOG_MANIFEST, agnhost_container, pod_manifest


def _request(sandbox: Sandbox, method: str, path: str, *, token: str | None = "admin", body: dict | None = None) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    conn = http.client.HTTPSConnection("127.0.0.1", sandbox.port, context=ctx, timeout=10)
    headers = {"Accept": "application/json"}
    if token == "admin":
        token = sandbox.users["sandbox-admin"].token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = json.dumps(body).encode() if body is not None else None
    if payload:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else {}


def _ws(sandbox: Sandbox, path: str, *, protocols: list[str] | None, user: str = "sandbox-admin") -> websocket.WebSocket:
    ca = Path(sandbox.kubeconfig_path).with_name("ca.crt")
    ca.write_bytes(sandbox.ca_pem)
    return websocket.create_connection(
        f"wss://127.0.0.1:{sandbox.port}{path}",
        header=[f"Authorization: Bearer {sandbox.users[user].token}"],
        subprotocols=protocols,
        sslopt={"ca_certs": str(ca)},
        timeout=10,
    )


def test_bad_token_is_401(sandbox) -> None:
    status, body = _request(sandbox, "GET", "/api/v1/namespaces/default/pods", token="not-a-token")
    assert status == 401
    assert (body["kind"], body["reason"], body["message"], body["code"]) == ("Status", "Unauthorized", "Unauthorized", 401)


def test_anonymous_sees_version_only(sandbox) -> None:
    assert _request(sandbox, "GET", "/version", token=None)[0] == 200
    status, body = _request(sandbox, "GET", "/api/v1/pods", token=None)
    assert status == 403 and body["message"] == 'forbidden: User "system:anonymous" cannot get path "/api/v1/pods"'


def test_version_and_discovery(sandbox) -> None:
    status, version = _request(sandbox, "GET", "/version")
    assert status == 200 and (version["major"], version["minor"]) == ("1", "33")
    _, core = _request(sandbox, "GET", "/api/v1")
    names = {r["name"] for r in core["resources"]}
    assert {"pods", "pods/portforward", "events", "namespaces"} <= names


def test_forbidden_portforward_wording(sandbox) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000", protocols=["v4.channel.k8s.io"], user="sandbox-no-portforward")
    assert info.value.status_code == 403
    body = json.loads(info.value.resp_body)
    assert body["message"] == (
        'pods "test-grpc" is forbidden: User "sandbox-no-portforward" cannot get resource "pods/portforward" '
        'in API group "" in the namespace "default"'
    )


def test_unscheduled_pod_portforward_is_400(sandbox) -> None:
    sandbox.unschedule("test-grpc")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000", protocols=["v4.channel.k8s.io"])
    assert info.value.status_code == 400
    assert json.loads(info.value.resp_body)["message"] == "pod test-grpc does not have a host assigned"


def test_missing_pod_portforward_is_404(sandbox) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        _ws(sandbox, "/api/v1/namespaces/default/pods/nope/portforward?ports=5000", protocols=None)
    assert info.value.status_code == 404
    assert json.loads(info.value.resp_body)["message"] == 'pods "nope" not found'


def test_port_preamble_on_both_channels_of_every_port(sandbox) -> None:
    ws = _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000&ports=8080", protocols=["v4.channel.k8s.io"])
    try:
        assert ws.subprotocol == "v4.channel.k8s.io"
        frames = sorted(ws.recv() for _ in range(4))
        assert frames == sorted([b"\x00" + struct.pack("<H", 5000), b"\x01" + struct.pack("<H", 5000), b"\x02" + struct.pack("<H", 8080), b"\x03" + struct.pack("<H", 8080)])
        assert frames[0] == bytes([0x00, 0x88, 0x13])
        # Port 8080 is agnhost's HTTP control port: a request on channel 2 gets its answer on channel 2.
        ws.send_binary(b"\x02GET /make-serving HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            frame = ws.recv()
            assert frame[0] in (0, 2)  # the gRPC server on 5000 sends its HTTP/2 SETTINGS unasked
            if frame[0] == 2:
                reply += frame[1:]
        assert reply.startswith(b"HTTP/1.1 200 OK")
    finally:
        ws.close()


def test_base64_protocol_and_comma_list(sandbox) -> None:
    ws = _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000,8080", protocols=["v4.base64.channel.k8s.io"])
    try:
        assert ws.subprotocol == "v4.base64.channel.k8s.io"
        frames = sorted(ws.recv() for _ in range(4))
        assert frames[0] == "0" + base64.b64encode(struct.pack("<H", 5000)).decode()
        assert sorted(f[0] for f in frames) == ["0", "1", "2", "3"]
    finally:
        ws.close()


def test_no_subprotocol_is_binary(sandbox) -> None:
    ws = _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000", protocols=None)
    try:
        assert {ws.recv(), ws.recv()} == {b"\x00\x88\x13", b"\x01\x88\x13"}
    finally:
        ws.close()


def test_closed_port_error_text_then_close(sandbox) -> None:
    ws = _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5001", protocols=["v4.channel.k8s.io"])
    try:
        frames = [ws.recv() for _ in range(3)]
        error = next(f for f in frames if f[0] == 1 and len(f) > 3)[1:].decode()
        net = sandbox.runtime.network("default", "test-grpc")
        assert error == (
            f"error forwarding port 5001 to pod {net.sandbox_id}, uid : failed to execute portforward in network namespace "
            f'"{net.netns}": failed to connect to localhost:5001 inside namespace "{net.sandbox_id}", IPv4: dial tcp4 '
            "127.0.0.1:5001: connect: connection refused IPv6 dial tcp6: address localhost: no suitable address found "
        )
        opcode, _ = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
    finally:
        ws.close()


def test_probe_defaults_and_validation(sandbox) -> None:
    sandbox.apply(pod_manifest("d", [agnhost_container(livenessProbe={"grpc": {"port": 5000}, "periodSeconds": 3})]))
    probe = sandbox.pod("d")["spec"]["containers"][0]["livenessProbe"]
    assert probe == {"grpc": {"port": 5000, "service": ""}, "periodSeconds": 3, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}
    bad = pod_manifest("bad", [agnhost_container(readinessProbe={"grpc": {"port": 70000}})])
    status, body = _request(sandbox, "POST", "/api/v1/namespaces/default/pods", body=bad)
    assert status == 422 and body["reason"] == "Invalid"
    assert "spec.containers[0].readinessProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive" in body["message"]


def test_watch_streams_events_with_resource_versions(sandbox) -> None:
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    conn = http.client.HTTPSConnection("127.0.0.1", sandbox.port, context=ctx, timeout=10)
    _, listing = _request(sandbox, "GET", "/api/v1/namespaces/default/pods")
    rv = listing["metadata"]["resourceVersion"]
    conn.request(
        "GET",
        f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&labelSelector=app%3Dw",
        headers={"Authorization": f"Bearer {sandbox.users['sandbox-admin'].token}"},
    )
    response = conn.getresponse()
    assert response.status == 200
    sandbox.apply(pod_manifest("ignored", [agnhost_container()]))
    sandbox.apply(pod_manifest("watched", [agnhost_container()], labels={"app": "w"}))
    sandbox.set_phase("watched", "Failed")
    events = [json.loads(response.readline()) for _ in range(2)]
    conn.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "watched"), ("MODIFIED", "watched")]
    assert events[1]["object"]["status"]["phase"] == "Failed"
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > int(events[0]["object"]["metadata"]["resourceVersion"]) > int(rv)


def test_selectors(sandbox) -> None:
    sandbox.apply(pod_manifest("a1", [agnhost_container()], labels={"app": "a", "tier": "web"}))
    sandbox.apply(pod_manifest("a2", [agnhost_container()], labels={"app": "a"}))
    sandbox.set_phase("a2", "Pending")

    def names(query: str) -> list[str]:
        return [p["metadata"]["name"] for p in _request(sandbox, "GET", f"/api/v1/pods?{query}")[1]["items"]]

    assert names("labelSelector=app%3Da") == ["a1", "a2"]
    assert names("labelSelector=app%3Da,tier") == ["a1"]
    assert names("labelSelector=app%20in%20(a,b),!tier") == ["a2"]
    assert names("labelSelector=app!%3Da") == ["test-grpc"]
    assert names("fieldSelector=status.phase%3DPending") == ["a2"]
    assert names("fieldSelector=metadata.name%3Da1") == ["a1"]
    assert names("fieldSelector=spec.nodeName%3Dsandbox-node,status.phase!%3DPending") == ["a1", "test-grpc"]


def test_sandbox_stop_leaves_nothing_behind() -> None:
    before_threads = set(threading.enumerate())
    before_sockets = _listening_inodes()
    sandbox = Sandbox([BLOG_MANIFEST]).start()
    tmp = Path(sandbox.kubeconfig_path).parent
    # Hold a watch and a port-forward open while stopping: both must be cut, not waited for.
    ws = _ws(sandbox, "/api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000", protocols=["v4.channel.k8s.io"])
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    conn = http.client.HTTPSConnection("127.0.0.1", sandbox.port, context=ctx, timeout=10)
    conn.request("GET", "/api/v1/pods?watch=1", headers={"Authorization": f"Bearer {sandbox.users['sandbox-admin'].token}"})
    assert conn.getresponse().status == 200
    assert _listening_inodes() - before_sockets
    started = time.monotonic()
    sandbox.stop()
    assert time.monotonic() - started < 5
    ws.close()
    conn.close()
    leftover = {t for t in set(threading.enumerate()) - before_threads if t.is_alive()}
    assert not leftover, leftover
    assert _listening_inodes() == before_sockets
    assert not tmp.exists()


def _tls_to(sandbox: Sandbox):
    import socket

    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", sandbox.port), timeout=10), server_hostname="127.0.0.1")


def _read_response(sock) -> tuple[bytes, bytes]:
    """One response's head and its Content-Length body, read off the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), b"0"))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_pipelined_requests_on_one_connection_are_each_answered(sandbox) -> None:
    """The server reads a connection's requests in records, not bytes; a second request already read with the
    first is kept for its turn, not lost."""
    token = sandbox.users["sandbox-admin"].token
    one = f"GET /api/v1/namespaces/default/pods/test-grpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    with _tls_to(sandbox) as sock:
        sock.sendall((one + one.replace("pods/test-grpc", "pods/nope")).encode())  # one write: one TLS record
        first, body = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 200") and json.loads(body)["metadata"]["name"] == "test-grpc"
        second, body = _read_response(sock)
        assert second.startswith(b"HTTP/1.1 404") and json.loads(body)["reason"] == "NotFound"


def test_bytes_sent_before_the_101_are_refused_not_lost(sandbox) -> None:
    """A client must wait for the 101 (RFC 6455 4.1). One that does not would have its first frames swallowed;
    the sandbox says so instead."""
    token = sandbox.users["sandbox-admin"].token
    request = (
        "GET /api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )
    from kubectl_grpcprobe.wire import wsframe

    with _tls_to(sandbox) as sock:
        sock.sendall(request.encode() + wsframe.encode_frame(wsframe.OP_BINARY, b"\x00PRI", mask=True))
        head, body = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert body == b"unable to upgrade: the client sent data before the upgrade was answered"
