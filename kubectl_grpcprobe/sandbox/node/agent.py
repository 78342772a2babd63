"""A node that joins any API server (the real kube-apiserver, or any other): the sandbox's kubelet, over the API.

It does what the reference's "what a node must do" lists, with the same pieces the fake uses in-process:
- registers a Node (InternalIP 127.0.0.1, its kubelet port in daemonEndpoints, capacity, Ready) and renews
  its Lease in kube-node-lease, so the node lifecycle controller keeps it Ready and untainted;
- watches the pods bound to it (`spec.nodeName`), runs their containers as local processes (Runtime: the
  real agnhost binary when given, our Python server otherwise), and writes their status through
  `pods/status`; a pod marked for deletion is stopped and then deleted with grace 0, as the kubelet does;
- runs their gRPC probes with the kubelet worker's semantics (kubelet.Kubelet), and records Events as
  the kubelet's recorder does (aggregated by count);
- serves the kubelet API over HTTPS (client certificates from the cluster CA only):
  `/portForward/{namespace}/{pod}[/{uid}]` with SPDY/3.1 and the WebSocket channel protocols, which
  the API server proxies (kubectl <= 1.30, the Python client) or translates to (kubectl >= 1.31).

It authenticates as `system:node:<name>` (group system:nodes), so the Node authorizer and the
NodeRestriction admission plugin judge it as they judge a kubelet.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..apiserver import pods as podlib
from ..apiserver.forwarding import Faults
from ..apiserver.store import NotFound
from ..tlsserver import TlsHandler, TlsServer
from .runtime import Runtime

HEARTBEAT = 2.0  # seconds between Lease renewals; the control plane's grace is 20 s (controlplane.py)
STATUS_EVERY = 10.0  # seconds between Ready heartbeats in the Node's status


class ApiStatus(Exception):
    def __init__(self, code: int, body: bytes) -> None:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = body[:200].decode(errors="replace")
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class Credentials:
    cert: Path
    key: Path
    ca: Path
    serving_cert: Path
    serving_key: Path


class _Api:
    """JSON over HTTPS with the node's client certificate; one kept-alive connection per thread."""

    def __init__(self, server_url: str, ctx: ssl.SSLContext) -> None:
        parts = urlsplit(server_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.ctx = ctx
        self._local = threading.local()
        self._watches: set[http.client.HTTPSConnection] = set()
        self._lock = threading.Lock()

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": "kubectl-grpcprobe-node"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile is retried once
            conn = getattr(self._local, "conn", None) or self._connect(30)
            self._local.conn = conn
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if resp.status >= 400:
            raise ApiStatus(resp.status, payload)
        return json.loads(payload) if payload else None

    def watch(self, path: str, stop: threading.Event) -> Any:
        """The events of a watch, one dict per line, until the server ends it or stop() closes it."""
        conn = self._connect(None)
        with self._lock:
            self._watches.add(conn)
        try:
            conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": "kubectl-grpcprobe-node"})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiStatus(resp.status, resp.read())
            while not stop.is_set():
                line = resp.readline()
                if not line:
                    return
                yield json.loads(line)
        finally:
            with self._lock:
                self._watches.discard(conn)
            conn.close()

    def close_watches(self) -> None:
        import socket

        with self._lock:
            conns = list(self._watches)
        for conn in conns:
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class NodeAgent:
    def __init__(
        self,
        server_url: str,
        name: str,
        credentials: Credentials,
        *,
        index: int = 0,
        time_scale: float = 1.0,
        agnhost_binary: str | None = None,
        log_path: str | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path  # failures are written here with their traceback (and kept in self.failures)
        self.index = index  # pod IPs come from 10.244.<index>.0/24
        self.credentials = credentials
        ctx = ssl.create_default_context(cafile=str(credentials.ca))
        ctx.load_cert_chain(credentials.cert, credentials.key)
        self.api = _Api(server_url, ctx)
        self.runtime = Runtime(agnhost_binary)
        self.time_scale = time_scale
        self.kubelet: Any = None
        self.faults = Faults()  # the kubelet API's port-forwards take the same fault knobs as the fake's
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}  # the latest we saw or wrote
        self._running: set[tuple[str, str]] = set()
        self._ips = 0
        self._events: dict[tuple[str, str], int] = {}  # (namespace, event name) -> count
        self._threads: list[threading.Thread] = []
        self._starter = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"{name}-start")
        self._server: TlsServer | None = None
        self.failures: list[BaseException] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        from .kubelet import Kubelet

        self._version = self.api.request("GET", "/version")
        self._serve_kubelet_api()
        self._register()
        self.kubelet = Kubelet(self, time_scale=self.time_scale)
        self.kubelet.start()
        for target, what in ((self._heartbeat_loop, "heartbeat"), (self._pod_loop, "pods")):
            thread = threading.Thread(target=self._guard(target), name=f"{self.name}-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.api.close_watches()
        for thread in self._threads:
            thread.join(10)
        self._starter.shutdown(wait=True, cancel_futures=True)
        if self.kubelet is not None:
            self.kubelet.stop()
        self.runtime.stop_all()
        if self._server is not None:
            self._server.close_all()
            self._server = None

    def _guard(self, loop: Any) -> Any:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # a bug, or the API server gone: visible to whoever runs the node
                if not self._stop.is_set():
                    self.failures.append(exc)
                    self._log_failure(exc)

        return run

    def log(self, line: str) -> None:
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(f"{podlib.now()} {line}\n")

    def _log_failure(self, exc: BaseException) -> None:
        if not self.log_path:
            return
        import traceback

        with open(self.log_path, "a") as log:
            log.write(f"{podlib.now()} {threading.current_thread().name}: {''.join(traceback.format_exception(exc))}\n")

    # -- what the Kubelet needs from its host -------------------------------------------------

    def version_info(self) -> dict[str, str]:
        return self._version

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def update_pod(self, name: str, mutate: Any, namespace: str = "default") -> dict[str, Any]:
        """mutate(pod) on the latest pod, written through pods/status; retried on conflict; NotFound if it is gone."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        # The Node authorizer learns that a pod is bound to us from its own informer, a moment after our watch
        # shows the pod: until then it answers 403 "no relationship found". The kubelet's status manager retries;
        # so do we, for a bounded time.
        patience = time.monotonic() + 10
        backoff = 0.05
        for _ in range(100):
            try:
                pod = self.api.request("GET", path)
                mutate(pod)
                written = self.api.request("PUT", path + "/status", pod)
            except ApiStatus as exc:
                if exc.code == 404:
                    raise NotFound(f"pods/{namespace}/{name}") from None
                if exc.code == 409:
                    continue
                if exc.code == 403 and "no relationship found" in str(exc) and time.monotonic() < patience:
                    if self._stop.wait(backoff):
                        raise NotFound(f"pods/{namespace}/{name}: the node is stopping") from None
                    backoff = min(backoff * 2, 1.0)
                    continue
                raise
            self._remember(written)
            return written
        raise RuntimeError(f"pod {namespace}/{name}: status update conflicted 100 times")

    def record_event(
        self, pod: dict[str, Any], container: str | None, type_: str, reason: str, message: str, component: str = "kubelet"
    ) -> None:
        event = podlib.event(pod, container, type_, reason, message, component, self.name)
        namespace, name = pod["metadata"]["namespace"], event["metadata"]["name"]
        with self._lock:
            count = self._events.get((namespace, name), 0) + 1
            self._events[(namespace, name)] = count
        try:
            if count == 1:
                event["metadata"] = {"name": name, "namespace": namespace}
                self.api.request("POST", f"/api/v1/namespaces/{namespace}/events", event)
            else:
                patch = {"count": count, "lastTimestamp": event["lastTimestamp"]}
                self.api.request("PATCH", f"/api/v1/namespaces/{namespace}/events/{name}", patch, "application/merge-patch+json")
        except ApiStatus:
            pass  # the kubelet's recorder drops events it cannot write (a namespace being deleted, say)

    # -- the Node -----------------------------------------------------------------------------

    def _conditions(self) -> list[dict[str, Any]]:
        stamp = podlib.now()
        healthy = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]
        return [
            {"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
            for t, s, r, m in healthy
        ]

    def _register(self) -> None:
        assert self._server is not None
        resources = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            },
            "spec": {"podCIDR": f"10.244.{self.index}.0/24", "podCIDRs": [f"10.244.{self.index}.0/24"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self._server.server_address[1]}},
                "capacity": resources,
                "allocatable": resources,
                "conditions": self._conditions(),
                "nodeInfo": {
                    "kubeletVersion": self._version["gitVersion"],
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "kubectl-grpcprobe://sandbox",
                    "osImage": "kubectl-grpcprobe sandbox node",
                    "kernelVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            },
        }
        self.log(f"registering with the kubelet API on 127.0.0.1:{self._server.server_address[1]}")
        try:
            self.api.request("POST", "/api/v1/nodes", node)
        except ApiStatus as exc:
            if exc.code != 409:
                raise
        # The status as well: a re-registered node keeps its old one otherwise (and a create may drop it).
        self.api.request("PATCH", f"/api/v1/nodes/{self.name}/status", {"status": node["status"]}, "application/strategic-merge-patch+json")

    def _heartbeat_loop(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        last_status = time.monotonic()
        while not self._stop.is_set():
            spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": _micro_time()}
            try:
                lease = self.api.request("GET", lease_path)
                lease["spec"].update(spec)
                self.api.request("PUT", lease_path, lease)
            except ApiStatus as exc:
                if exc.code != 404:
                    raise
                self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                    "spec": spec,
                })
            if time.monotonic() - last_status >= STATUS_EVERY:
                patch = {"status": {"conditions": self._conditions()}}
                self.api.request("PATCH", f"/api/v1/nodes/{self.name}/status", patch, "application/strategic-merge-patch+json")
                last_status = time.monotonic()
            self._stop.wait(HEARTBEAT)

    # -- pods ---------------------------------------------------------------------------------

    def _pod_loop(self) -> None:
        selector = quote(f"spec.nodeName={self.name}")
        while not self._stop.is_set():
            listed = self.api.request("GET", f"/api/v1/pods?fieldSelector={selector}")
            seen = set()
            for pod in listed["items"]:
                seen.add(_key(pod))
                self._sync(pod)
            with self._lock:
                gone = [k for k in self._pods if k not in seen]
            for key in gone:
                self._forget(*key)
            version = listed["metadata"]["resourceVersion"]
            path = f"/api/v1/pods?watch=true&allowWatchBookmarks=true&fieldSelector={selector}&resourceVersion={version}"
            try:
                for event in self.api.watch(path, self._stop):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._sync(event["object"])
                    elif event["type"] == "DELETED":
                        self._forget(*_key(event["object"]))
                    elif event["type"] == "ERROR":
                        break  # 410 Gone and the like: list again
            except (OSError, http.client.HTTPException):
                if self._stop.is_set():
                    return
                raise

    def _remember(self, pod: dict[str, Any]) -> None:
        with self._lock:
            key = _key(pod)
            old = self._pods.get(key)
            # The watch may deliver an older version after our own write; keep the newest.
            if old is None or int(pod["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"]):
                self._pods[key] = pod

    def _sync(self, pod: dict[str, Any]) -> None:
        self._remember(pod)
        key = _key(pod)
        if pod["metadata"].get("deletionTimestamp"):
            self._starter.submit(self._guard(lambda: self._terminate(pod)))
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        with self._lock:
            if key in self._running:
                return
            self._running.add(key)
        self._starter.submit(self._guard(lambda: self._start_pod(pod)))

    def _start_pod(self, pod: dict[str, Any]) -> None:
        namespace, name = _key(pod)
        self.runtime.start(pod)
        with self._lock:
            self._ips += 1
            ip = f"10.244.{self.index}.{self._ips % 253 + 1}"

        def mutate(obj: dict[str, Any]) -> None:
            status = podlib.running_status(obj, ip, self.kubelet.initial_ready)
            status["hostIP"] = "127.0.0.1"
            status["hostIPs"] = [{"ip": "127.0.0.1"}]
            obj["status"] = status

        try:
            started = self.update_pod(name, mutate, namespace)
        except NotFound:
            self._forget(namespace, name)
            return
        for c in podlib.all_containers(started):
            self.record_event(started, c["name"], "Normal", "Pulled", f'Container image "{c.get("image", "")}" already present on machine')
            self.record_event(started, c["name"], "Normal", "Created", f"Created container: {c['name']}")
            self.record_event(started, c["name"], "Normal", "Started", f"Started container {c['name']}")
        self.kubelet.pod_started(started)

    def _terminate(self, pod: dict[str, Any]) -> None:
        namespace, name = _key(pod)
        with self._lock:
            was_running = (namespace, name) in self._running
        if was_running:
            for c in podlib.all_containers(pod):
                self.record_event(pod, c["name"], "Normal", "Killing", f"Stopping container {c['name']}")
        self._forget(namespace, name, keep_cache=True)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}}
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiStatus as exc:
            if exc.code not in (404, 409):
                raise

    def _forget(self, namespace: str, name: str, keep_cache: bool = False) -> None:
        with self._lock:
            self._running.discard((namespace, name))
            if not keep_cache:
                self._pods.pop((namespace, name), None)
        if self.kubelet is not None:
            self.kubelet.pod_stopped(namespace, name)
        self.runtime.stop(namespace, name)

    # -- the kubelet API ------------------------------------------------------------------------

    def _serve_kubelet_api(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.credentials.serving_cert, self.credentials.serving_key)
        ctx.load_verify_locations(cafile=str(self.credentials.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server (its kubelet client certificate) gets in
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = KubeletApiServer(self, ctx)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"{self.name}-api", daemon=True).start()

    @property
    def kubelet_port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]


class KubeletApiServer(TlsServer):
    def __init__(self, agent: NodeAgent, ctx: ssl.SSLContext) -> None:
        self.agent = agent
        super().__init__(KubeletApiHandler, ctx)

    def handshake_failed(self, client_address: Any, exc: BaseException) -> None:
        # Only the API server dials here: a failed handshake is a certificate problem worth its line in the log.
        self.agent.log(f"kubelet API: TLS handshake with {client_address} failed: {exc}")


class KubeletApiHandler(TlsHandler):
    server: KubeletApiServer
    server_version = "kubelet"
    thread_name = "kubelet-api-conn"

    def _text(self, code: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        from ..apiserver import streaming

        parts = urlsplit(self.path)
        segments = parts.path.strip("/").split("/")
        if parts.path == "/healthz":
            return self._text(200, "ok")
        if not (segments[0] == "portForward" and len(segments) in (3, 4)):
            return self._text(404, "404 page not found")
        namespace, name = segments[1], segments[2]
        agent = self.server.agent
        pod = agent.get_pod(namespace, name)
        net = agent.runtime.network(namespace, name)
        if pod is None or net is None or (len(segments) == 4 and segments[3] != pod["metadata"]["uid"]):
            return self._text(404, f'pod not found ("{name}_{namespace}")')
        stop = self.server.stop_event
        try:
            if self.headers.get("Upgrade", "").lower() == "websocket":
                ports = streaming.kubelet_ports(parse_qs(parts.query, keep_blank_values=True).get("port", []))  # before the handshake
                chosen = streaming.websocket_protocol(self)
                return streaming.serve_websocket(self, chosen, ports, net, agent.faults, stop)
            return streaming.serve_spdy(self, net, agent.faults, stop)
        except streaming.Refused as refused:
            return streaming.refuse(self, refused)

    do_GET = do_POST = _route


def _key(pod: dict[str, Any]) -> tuple[str, str]:
    return pod["metadata"]["namespace"], pod["metadata"]["name"]


def _micro_time() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = ["ApiStatus", "Credentials", "NodeAgent"]
