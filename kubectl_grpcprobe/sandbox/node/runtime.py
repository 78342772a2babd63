"""Containers played by real local servers.

A pod gets a "network namespace": a map from container port to a local address. A container whose
command is `/agnhost grpc-health-checking ...` is served by our agnhost-compatible server bound to
127.0.0.1:0; the annotation PORTS_ANNOTATION maps any other container port to a host:port of the
caller's choosing, to put a third-party server behind a pod.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

PORTS_ANNOTATION = "sandbox.kubectl-grpcprobe.io/ports"


def agnhost_flags(container: dict[str, Any]) -> list[str] | None:
    """The flags of an `agnhost grpc-health-checking` container, or None for any other image."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if len(argv) < 2 or os.path.basename(argv[0]) != "agnhost" or argv[1] != "grpc-health-checking":
        return None
    # Go's flag package accepts -flag as well as --flag.
    return ["-" + a if a.startswith("-") and not a.startswith("--") and len(a) > 2 else a for a in argv[2:]]


def parse_ports_annotation(value: str) -> dict[int, tuple[str, int]]:
    mapping = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        port, _, target = item.partition("=")
        host, _, target_port = target.rpartition(":")
        mapping[int(port)] = (host.strip("[]") or "127.0.0.1", int(target_port))
    return mapping


@dataclass
class PodNetwork:
    sandbox_id: str
    netns: str
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)  # container name -> AgnhostServer


class AgnhostProcess:
    """The real agnhost binary (built by `make k8s`) playing one container, on loopback ports of our choosing.

    Pods share the host's network here, so each process gets free ports in place of the container's
    --port/--http-port; the pod's network maps the container ports to them, as for the Python server.
    """

    def __init__(self, binary: str, args: Any) -> None:
        """args: the container's flags, parsed (agnhost.parse_args); --enable-watch is ours alone and is dropped."""
        import subprocess

        from ..local import free_port

        self.binary, self.args = binary, args
        self.port, self.http_port = free_port(), free_port()
        argv = [binary, "grpc-health-checking", f"--port={self.port}", f"--http-port={self.http_port}"]
        argv += [f"--service={args.service}", f"--delay-unhealthy-sec={args.delay_unhealthy_sec}"]
        if args.tls_cert_file:
            argv += [f"--tls-cert-file={args.tls_cert_file}", f"--tls-private-key-file={args.tls_private_key_file}"]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float = 10.0) -> None:
        """Until both ports accept (the process gives no other sign of readiness); OSError if it exits or never does."""
        import socket
        import time

        deadline = time.monotonic() + timeout
        for port in (self.port, self.http_port):
            while True:
                if self._proc.poll() is not None:
                    raise OSError(f"agnhost exited with {self._proc.returncode}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise OSError(f"agnhost not listening on {port} after {timeout:.0f}s") from None
                    time.sleep(0.02)  # between connection attempts to another process's port

    def respawn(self) -> AgnhostProcess:
        return AgnhostProcess(self.binary, self.args)

    def stop(self) -> None:
        import signal
        import subprocess

        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)  # the kubelet's grace period ends in SIGKILL; agnhost has no state to save
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Runtime:
    def __init__(self, agnhost_binary: str | None = None) -> None:
        """agnhost_binary: run the real agnhost for `/agnhost grpc-health-checking` containers; our Python server otherwise."""
        self.agnhost_binary = agnhost_binary
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], PodNetwork] = {}

    def start(self, pod: dict[str, Any]) -> PodNetwork:
        """Start the pod's containers (idempotent) and return its network."""
        from .agnhost import AgnhostServer, parse_args

        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            net = self._pods.get(key)
            if net is None:
                digest = hashlib.sha256(meta["uid"].encode()).hexdigest()
                net = PodNetwork(sandbox_id=digest, netns=f"/var/run/netns/cni-{uuid.UUID(digest[:32])}")
                self._pods[key] = net
            for container in _all_containers(pod):
                name = container["name"]
                flags = agnhost_flags(container)
                if flags is None or name in net.servers:
                    continue
                try:
                    args = parse_args(flags)
                    if self.agnhost_binary:
                        server: Any = AgnhostProcess(self.agnhost_binary, args)
                        net.servers[name] = server
                        net.ports[args.port] = ("127.0.0.1", server.port)
                        net.ports[args.http_port] = ("127.0.0.1", server.http_port)
                        continue
                    server = AgnhostServer(
                        port=0,
                        http_port=0,
                        service=args.service,
                        delay_unhealthy_sec=args.delay_unhealthy_sec,
                        enable_watch=args.enable_watch,
                        tls_cert=_read(args.tls_cert_file),
                        tls_key=_read(args.tls_private_key_file),
                    )
                except (SystemExit, OSError, ValueError):
                    continue  # a container whose process would not start: its ports stay closed
                net.servers[name] = server
                net.ports[args.port] = ("127.0.0.1", server.port)
                net.ports[args.http_port] = ("127.0.0.1", server.http_port)
            annotation = (meta.get("annotations") or {}).get(PORTS_ANNOTATION)
            if annotation:
                net.ports.update(parse_ports_annotation(annotation))
            return net

    def stop(self, namespace: str, name: str) -> None:
        with self._lock:
            net = self._pods.pop((namespace, name), None)
        if net:
            for server in net.servers.values():
                server.stop()

    def restart_container(self, namespace: str, name: str, container: str) -> None:
        """A restarted container is a fresh process: its toggled state is gone."""
        with self._lock:
            net = self._pods.get((namespace, name))
            server = net.servers.get(container) if net else None
            if server is None:
                return
            fresh = server.respawn()
            for port, target in list(net.ports.items()):
                if target == ("127.0.0.1", server.port):
                    net.ports[port] = ("127.0.0.1", fresh.port)
                elif target == ("127.0.0.1", server.http_port):
                    net.ports[port] = ("127.0.0.1", fresh.http_port)
            net.servers[container] = fresh
        server.stop()

    def network(self, namespace: str, name: str) -> PodNetwork | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def server(self, namespace: str, name: str, container: str) -> Any:
        net = self.network(namespace, name)
        return net.servers.get(container) if net else None

    def stop_all(self) -> None:
        with self._lock:
            keys = list(self._pods)
        for namespace, name in keys:
            self.stop(namespace, name)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
