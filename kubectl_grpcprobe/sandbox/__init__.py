"""A small Kubernetes API server on 127.0.0.1 that real clients accept.

    with Sandbox(["examples/test-grpc.yaml"]) as sandbox:
        subprocess.run(["kubectl", "--kubeconfig", sandbox.kubeconfig_path, "get", "pods"])

HTTPS with a CA made at start, bearer tokens (an admin and two restricted users), discovery,
pods/events/namespaces with list, watch and selectors, and pods/portforward over WebSocket to
containers played by real local servers (see runtime.py). Not a cluster: no scheduler, no
controllers, no admission beyond probe defaults, no persistence.
"""

from __future__ import annotations

import copy
import hashlib
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .apiserver import pods as podlib
from .apiserver.forwarding import Faults
from .apiserver.pods import Invalid
from .apiserver.server import ApiError, ApiServer
from .apiserver.store import Store
from .node.runtime import PORTS_ANNOTATION, Runtime

__all__ = ["ApiError", "Faults", "Invalid", "Sandbox", "User"]

__all__ = ["PORTS_ANNOTATION", "Faults", "Sandbox", "User"]

DEFAULT_VERSION = "1.33.2"


@dataclass(frozen=True)
class User:
    name: str
    token: str = ""
    groups: tuple[str, ...] = ("system:authenticated",)
    denied: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (verb, resource)
    anonymous: bool = False


ANONYMOUS = User("system:anonymous", anonymous=True, groups=("system:unauthenticated",))


class Sandbox:
    """Start with `with Sandbox(...) as sb:` or start()/stop(); nothing is left running after stop()."""

    def __init__(
        self,
        manifests: Iterable[str | os.PathLike[str] | dict[str, Any]] = (),
        *,
        version: str = DEFAULT_VERSION,
        kubeconfig_path: str | os.PathLike[str] | None = None,
        kubelet: bool = True,
        kubelet_time_scale: float = 1.0,
    ) -> None:
        """kubelet=False: pods never get probed (Ready at once); kubelet_time_scale<1 runs probe periods faster."""
        self.version = version
        self._kubelet_enabled = kubelet
        self._kubelet_time_scale = kubelet_time_scale
        self.kubelet: Any = None
        self.faults = Faults()
        self.store = Store()
        self.runtime = Runtime()
        self._manifests = list(manifests)
        self._kubeconfig_out = Path(kubeconfig_path) if kubeconfig_path else None
        self._tmp: str | None = None
        self._server: ApiServer | None = None
        self._thread: threading.Thread | None = None
        self._pod_ips = 0
        self.requests: list[tuple[str, str]] = []  # (verb, path) of every API request, for tests
        self.portforward_requested = threading.Event()  # set at every pods/portforward request
        self.api_requested = threading.Event()  # set at every API request, before any stall_api fault
        self.active_forwards: set[Any] = set()  # WebSockets forwarding right now
        self._lock = threading.Lock()
        token = secrets.token_urlsafe(24)
        self.users = {
            "sandbox-admin": User("sandbox-admin", token=token, groups=("system:masters", "system:authenticated")),
            "sandbox-no-get-pods": User(
                "sandbox-no-get-pods",
                token=secrets.token_urlsafe(24),
                denied=frozenset({("get", "pods"), ("list", "pods"), ("watch", "pods")}),
            ),
            "sandbox-no-portforward": User(
                "sandbox-no-portforward",
                token=secrets.token_urlsafe(24),
                denied=frozenset({("get", "pods/portforward"), ("create", "pods/portforward")}),
            ),
        }
        self._by_token = {u.token: u for u in self.users.values()}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Sandbox:
        from .certs import make_pki
        from .local import write_private

        self._tmp = tempfile.mkdtemp(prefix="grpcprobe-sandbox-")
        pki = make_pki()
        self.ca_pem = pki.ca_pem
        cert_file = Path(self._tmp, "server.crt")
        key_file = Path(self._tmp, "server.key")
        cert_file.write_bytes(pki.cert_pem)
        write_private(key_file, pki.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = ApiServer(self, ctx)
        host, port = self._server.server_address[:2]
        self.server_url = f"https://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-api"
        )
        self._thread.start()
        if self._kubelet_enabled:
            from .node.kubelet import Kubelet

            self.kubelet = Kubelet(self, time_scale=self._kubelet_time_scale)
            self.kubelet.start()
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._create_namespace(ns)
        self.kubeconfig_path = str(self._kubeconfig_out or Path(self._tmp, "kubeconfig"))
        self.write_kubeconfig(self.kubeconfig_path)
        try:
            for manifest in self._manifests:
                self.apply(manifest)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self._server is not None:
            self._server.close_all()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.store.close()
        self.runtime.stop_all()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def version_info(self) -> dict[str, str]:
        major, minor, *_ = self.version.split(".")
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{self.version}",
            "gitCommit": hashlib.sha1(self.version.encode()).hexdigest(),
            "gitTreeState": "clean",
            "buildDate": "2025-06-17T00:00:00Z",
            "goVersion": "go1.24.4",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def kubeconfig(self, *, user: str = "sandbox-admin", server: str | None = None) -> dict[str, Any]:
        from .local import kubeconfig

        return kubeconfig(server or self.server_url, self.ca_pem, {u.name: u.token for u in self.users.values()}, user)

    def write_kubeconfig(self, path: str | os.PathLike[str], **kwargs: Any) -> str:
        from .local import write_kubeconfig

        return write_kubeconfig(path, self.kubeconfig(**kwargs))

    # -- authn / authz ---------------------------------------------------------------------

    def authenticate(self, header: str | None) -> User | None:
        if not header:
            return ANONYMOUS
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._by_token.get(token.strip())

    def authorize(self, user: User, verb: str, resource: str, namespace: str | None, name: str | None) -> None:
        if (verb, resource) not in user.denied:
            return
        subject = f'{resource.split("/")[0]} "{name}"' if name else resource.split("/")[0]
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        message = f'{subject} is forbidden: User "{user.name}" cannot {verb} resource "{resource}" in API group "" {scope}'
        details: dict[str, Any] = {"kind": resource.split("/")[0]}
        if name:
            details["name"] = name
        raise ApiError(403, "Forbidden", message, details)

    # -- objects -----------------------------------------------------------------------------

    def _create_namespace(self, name: str) -> dict[str, Any]:
        obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "uid": secrets.token_hex(16), "creationTimestamp": podlib.now(), "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        return self.store.create("namespaces", obj)

    def create(self, resource: str, body: dict[str, Any], namespace: str | None, *, dry_run: bool = False) -> dict[str, Any]:
        """Create as the API server would; pods also get scheduled and started at once."""
        body = copy.deepcopy(body)
        if resource == "namespaces":
            if dry_run:
                return body
            return self._create_namespace(body["metadata"]["name"])
        namespace = namespace or "default"
        if self.store.get("namespaces", "", namespace) is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
        if resource == "events":
            body.setdefault("metadata", {})["namespace"] = namespace
            return body if dry_run else self.store.create("events", body)
        if resource != "pods":
            return self._create_object(resource, body, namespace, dry_run=dry_run)
        podlib.apply_defaults(body, namespace)
        podlib.validate(body)
        if dry_run:
            return body
        with self._lock:
            index = self._pod_ips
            self._pod_ips += 1
        pod_ip = f"10.244.{index // 253}.{index % 253 + 2}"
        body["spec"].setdefault("nodeName", podlib.NODE_NAME)
        body["status"] = podlib.running_status(body, pod_ip, self._initial_ready)
        created = self.store.create("pods", body)
        self.runtime.start(created)
        self._record_start_events(created)
        if self.kubelet is not None:
            self.kubelet.pod_started(created)
        return created

    def _create_object(self, resource: str, body: dict[str, Any], namespace: str, *, dry_run: bool) -> dict[str, Any]:
        """Services and workloads; a workload's pods are created at once from its template."""
        from .apiserver import workloads
        from .apiserver.api import GROUPS, RESOURCE_GROUP

        gv = RESOURCE_GROUP[resource]
        kind = GROUPS[gv][resource][0]
        workloads.finish_metadata(body, namespace, gv, kind)
        if dry_run:
            return body
        children = workloads.expand(kind, body)
        pods = sum(int((c.get("spec") or {}).get("replicas", 1)) if r == "replicasets" else 1 for r, c in children)
        workloads.set_status(kind, body, pods)
        created = self.store.create(resource, body)
        for child_resource, child in children:
            self.create(child_resource, child, namespace)
        return created

    def _initial_ready(self, container: dict[str, Any]) -> bool:
        return self.kubelet.initial_ready(container) if self.kubelet is not None else True

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        deleted = self.store.delete(resource, namespace, name)
        if resource == "pods":
            if self.kubelet is not None:
                self.kubelet.pod_stopped(namespace, name)
            self.runtime.stop(namespace, name)
        return deleted

    def apply(self, manifest: str | os.PathLike[str] | dict[str, Any]) -> list[dict[str, Any]]:
        """Create every object of a manifest (a dict, or a YAML file of one or more documents)."""
        from .local import manifest_objects

        created = []
        for where, doc, resource in manifest_objects(manifest):
            ns = doc["metadata"].get("namespace") or "default"
            if resource != "namespaces" and self.store.get("namespaces", "", ns) is None:
                self._create_namespace(ns)
            try:
                created.append(self.create(resource, doc, ns))
            except (KeyError, TypeError, AttributeError) as exc:
                what = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else "a field has the wrong type"
                raise ValueError(f"{where}: {what}") from None
        return created

    # -- test controls -----------------------------------------------------------------------

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        obj = self.store.get("pods", namespace, name)
        if obj is None:
            raise KeyError(f"{namespace}/{name}")
        return obj

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get("pods", namespace, name)

    def update_pod(self, name: str, mutate: Any, namespace: str = "default") -> dict[str, Any]:
        return self.store.update("pods", namespace, name, mutate)

    def set_phase(self, name: str, phase: str, namespace: str = "default") -> dict[str, Any]:
        if self.kubelet is not None:
            self.kubelet.pod_stopped(namespace, name)
        updated = self.update_pod(name, lambda pod: podlib.set_phase(pod, phase, self._initial_ready), namespace)
        if phase == "Running":
            self.runtime.start(updated)
            if self.kubelet is not None:
                self.kubelet.pod_started(updated)
        else:
            self.runtime.stop(namespace, name)
        return updated

    def wait_for_pod(self, name: str, predicate: Any, namespace: str = "default", timeout: float = 30.0) -> dict[str, Any]:
        """Block until predicate(pod) holds (woken by each change to the pod); TimeoutError otherwise."""
        return self.store.wait_until("pods", namespace, name, lambda pod: pod is not None and predicate(pod), timeout)

    def wait_ready(self, name: str, ready: bool = True, namespace: str = "default", timeout: float = 30.0) -> dict[str, Any]:
        def is_ready(pod: dict[str, Any]) -> bool:
            conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
            return conds.get("Ready") == ("True" if ready else "False")

        return self.wait_for_pod(name, is_ready, namespace, timeout)

    def unschedule(self, name: str, namespace: str = "default") -> dict[str, Any]:
        def mutate(pod: dict[str, Any]) -> None:
            pod["spec"].pop("nodeName", None)
            podlib.set_phase(pod, "Pending")
            for cond in pod["status"].get("conditions") or []:
                if cond["type"] == "PodScheduled":
                    cond["status"] = "False"
                    cond["reason"] = "Unschedulable"

        if self.kubelet is not None:
            self.kubelet.pod_stopped(namespace, name)
        updated = self.update_pod(name, mutate, namespace)
        self.runtime.stop(namespace, name)
        return updated

    def set_pod_ip(self, name: str, ip: str, namespace: str = "default") -> dict[str, Any]:
        def mutate(pod: dict[str, Any]) -> None:
            pod["status"]["podIP"] = ip
            pod["status"]["podIPs"] = [{"ip": ip}]

        return self.update_pod(name, mutate, namespace)

    def mark_deleting(self, name: str, namespace: str = "default") -> dict[str, Any]:
        def mutate(pod: dict[str, Any]) -> None:
            pod["metadata"]["deletionTimestamp"] = podlib.now()
            pod["metadata"]["deletionGracePeriodSeconds"] = 30

        return self.update_pod(name, mutate, namespace)

    def drop_forwards(self) -> int:
        """Cut every port-forward WebSocket now, without a close frame (a dropped connection)."""
        import socket

        dropped = list(self.active_forwards)
        for ws in dropped:
            try:
                # The TCP socket underneath, not SSLSocket.shutdown: that would also drop the TLS
                # state the forwarding thread is using at this moment.
                socket.socket.shutdown(ws.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        return len(dropped)

    def add_user(self, name: str, token: str, denied: frozenset[tuple[str, str]] = frozenset()) -> User:
        """Another bearer-token user (tests: canary tokens, custom RBAC denials)."""
        user = User(name, token=token, denied=denied)
        self.users[name] = user
        self._by_token[token] = user
        return user

    def server_for(self, name: str, container: str, namespace: str = "default") -> Any:
        """The agnhost server playing a container (None when the container is not agnhost)."""
        return self.runtime.server(namespace, name, container)

    def record_event(
        self, pod: dict[str, Any], container: str | None, type_: str, reason: str, message: str, component: str = "kubelet"
    ) -> dict[str, Any]:
        """Record an event, aggregating repeats into count/lastTimestamp as the kubelet's recorder does."""
        meta = pod["metadata"]
        event = podlib.event(pod, container, type_, reason, message, component, podlib.NODE_NAME)
        name = event["metadata"]["name"]
        existing = self.store.get("events", meta["namespace"], name)
        if existing is not None:

            def bump(ev: dict[str, Any]) -> None:
                ev["count"] = ev.get("count", 1) + 1
                ev["lastTimestamp"] = event["lastTimestamp"]

            return self.store.update("events", meta["namespace"], name, bump)
        return self.store.create("events", event)

    def _record_start_events(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.record_event(
            pod, None, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to {podlib.NODE_NAME}", "default-scheduler"
        )
        for c in podlib.all_containers(pod):
            self.record_event(pod, c["name"], "Normal", "Pulled", f'Container image "{c.get("image", "")}" already present on machine')
            self.record_event(pod, c["name"], "Normal", "Created", f"Created container: {c['name']}")
            self.record_event(pod, c["name"], "Normal", "Started", f"Started container {c['name']}")
