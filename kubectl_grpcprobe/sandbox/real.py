"""`sandbox up --real`: the real control plane (controlplane.py) with node agents (node/agent.py) as its nodes.

    with RealSandbox(["examples/test-grpc.yaml"]) as sb:
        subprocess.run(["kubectl", "--kubeconfig", sb.kubeconfig_path, "get", "pods"])

Same contract as the fake Sandbox where tests and the CLI meet it: kubeconfig_path (admin plus the
restricted contexts), server_url, version, apply(), stop() leaving nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane, bin_dir
from .node.agent import ApiStatus, Credentials, NodeAgent

__all__ = ["ApiStatus", "RealSandbox"]


class RealSandbox:
    def __init__(
        self,
        manifests: Iterable[str | os.PathLike[str] | dict[str, Any]] = (),
        *,
        kubeconfig_path: str | os.PathLike[str] | None = None,
        nodes: int = 2,
        kubelet_time_scale: float = 1.0,
        real_agnhost: bool = True,
        log_dir: str | None = None,
    ) -> None:
        self.control_plane = ControlPlane(kubeconfig_path=kubeconfig_path, log_dir=log_dir)
        self.version = self.control_plane.version
        self._manifests = list(manifests)
        self._node_count = nodes
        self._time_scale = kubelet_time_scale
        agnhost = bin_dir() / "agnhost"
        self._agnhost = str(agnhost) if real_agnhost and os.access(agnhost, os.X_OK) else None
        self.nodes: list[NodeAgent] = []
        self.startup_seconds: dict[str, float] = {}

    def start(self) -> RealSandbox:
        began = time.monotonic()
        try:
            cp = self.control_plane.start()
            self.server_url = cp.server_url
            self.kubeconfig_path = cp.kubeconfig_path
            self.startup_seconds.update(cp.startup_seconds)
            for index in range(self._node_count):
                name = f"sandbox-node-{index + 1}"
                issued = cp.issue_node_credentials(name)
                agent = NodeAgent(cp.server_url, name, Credentials(**issued), index=index + 1, time_scale=self._time_scale, agnhost_binary=self._agnhost,
                                  log_path=str(Path(cp.log_dir, f"{name}.log")))
                self.nodes.append(agent)
                agent.start()
            self._wait_nodes_schedulable()
            self._wait_service_account("default")
            self.startup_seconds["ready"] = time.monotonic() - began
            for manifest in self._manifests:
                self.apply(manifest)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for agent in self.nodes:
            agent.stop()
        self.nodes.clear()
        self.control_plane.stop()

    def __enter__(self) -> RealSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise if a component exited or a node agent's loop failed."""
        self.control_plane.check_alive()
        for agent in self.nodes:
            if agent.failures:
                raise RuntimeError(f"node {agent.name} failed: {agent.failures[0]!r} (see {agent.log_path})") from agent.failures[0]

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        return self.control_plane.request(method, path, body, token=token)

    # -- objects -------------------------------------------------------------------------------

    def apply(self, manifest: str | os.PathLike[str] | dict[str, Any]) -> list[dict[str, Any]]:
        """Create every object of a manifest through the real API (namespaces made as needed)."""
        from .apiserver.api import GROUPS, RESOURCE_GROUP
        from .local import manifest_objects

        created = []
        for _, doc, resource in manifest_objects(manifest):
            gv = RESOURCE_GROUP[resource]
            prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            if not GROUPS[gv][resource][1]:  # cluster-scoped
                created.append(self.request("POST", f"{prefix}/{resource}", doc))
                continue
            namespace = doc["metadata"].get("namespace") or "default"
            self.ensure_namespace(namespace)
            created.append(self.request("POST", f"{prefix}/namespaces/{namespace}/{resource}", doc))
        return created

    def ensure_namespace(self, namespace: str) -> None:
        try:
            self.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        except ApiStatus as exc:
            if exc.code != 409:
                raise
        self._wait_service_account(namespace)

    # -- waits ---------------------------------------------------------------------------------

    def _poll(self, what: str, done: Any, timeout: float = 60.0) -> None:
        """Until done() is true; the control plane has no event for these one-off conditions, so it is polled."""
        deadline = time.monotonic() + timeout
        while not done():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the real sandbox: {what} not after {timeout:.0f}s")
            time.sleep(0.1)

    def _wait_nodes_schedulable(self) -> None:
        """Ready, and the not-ready taint the admission plugin puts on a new Node lifted by the lifecycle controller."""
        names = {agent.name for agent in self.nodes}

        def done() -> bool:
            items = self.request("GET", "/api/v1/nodes")["items"]
            ready = {n["metadata"]["name"] for n in items if not (n.get("spec") or {}).get("taints")}
            return names <= ready

        self._poll("nodes schedulable", done)

    def _wait_service_account(self, namespace: str) -> None:
        """The ServiceAccount admission plugin refuses pods until the controller has made `default`."""

        def done() -> bool:
            try:
                self.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
                return True
            except ApiStatus:
                return False

        self._poll(f"ServiceAccount {namespace}/default", done)

    # -- waiting on objects (a watch, woken by each change) ------------------------------------------

    def wait_for(self, path: str, name: str, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
        """Block until predicate(object) holds for `name` in the collection at `path`; TimeoutError otherwise."""
        import json
        import urllib.request
        from urllib.parse import quote

        deadline = time.monotonic() + timeout
        selector = quote(f"metadata.name={name}")
        while True:
            listed = self.request("GET", f"{path}?fieldSelector={selector}")
            for item in listed["items"]:
                if predicate(item):
                    return item
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{path}/{name}: condition not met within {timeout:.0f}s")
            url = (f"{self.server_url}{path}?watch=true&fieldSelector={selector}"
                   f"&resourceVersion={listed['metadata']['resourceVersion']}&timeoutSeconds={max(1, int(left))}")
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.control_plane.tokens['sandbox-admin']}"})
            with urllib.request.urlopen(req, context=self.control_plane.ssl_context(), timeout=left + 5) as resp:
                for line in resp:
                    event = json.loads(line)
                    if event["type"] in ("ADDED", "MODIFIED") and predicate(event["object"]):
                        return event["object"]

    def wait_ready(self, name: str, ready: bool = True, namespace: str = "default", timeout: float = 60.0) -> dict[str, Any]:
        def is_ready(pod: dict[str, Any]) -> bool:
            conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
            return conditions.get("Ready") == ("True" if ready else "False")

        return self.wait_for(f"/api/v1/namespaces/{namespace}/pods", name, is_ready, timeout)
