"""The real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler, kube-controller-manager.

The binaries are the ones `make k8s` builds from the official Go modules (hack/k8s/build.sh). The flag set
follows controller-runtime's envtest, plus what a cluster with nodes needs: real authentication (static
tokens for people, client certificates for components and nodes), `--authorization-mode=Node,RBAC`, the
kubelet client certificate the API server shows the node agent, and ServiceAccount keys so that the
controllers can make `default` in every namespace. The restricted users of the fake are real
ClusterRoles here, so every 401 and 403 is the real server's text.

    with ControlPlane() as cp:
        cp.kubeconfig_path   # admin, plus the restricted contexts

Every process is a child in its own process group, stopped (SIGTERM, then SIGKILL) by stop(); the work
directory (certificates, etcd data, logs) goes with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .local import free_port, write_private

VERSION = "v1.37.2"  # hack/k8s/build.sh pins the same
SERVICE_CIDR = "10.96.0.0/16"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")

# The fake's restricted users, as RBAC: everything the plugin does, minus one permission each.
_READ = ["get", "list", "watch"]
_EVERYTHING_BUT = {
    "sandbox-no-get-pods": [
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["events", "namespaces", "services"], "verbs": _READ},
        {"apiGroups": ["apps", "batch"], "resources": ["*"], "verbs": _READ},
    ],
    "sandbox-no-portforward": [
        {"apiGroups": [""], "resources": ["pods", "events", "namespaces", "services"], "verbs": _READ},
        {"apiGroups": ["apps", "batch"], "resources": ["*"], "verbs": _READ},
    ],
}


class ComponentsMissing(RuntimeError):
    """`make k8s` has not been run (or Go is not installed): says which binary is missing and how to build it."""


def bin_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache, "kubectl-grpcprobe", "k8s", VERSION, "bin")


def find_binaries(names: tuple[str, ...] = COMPONENTS) -> dict[str, Path]:
    found = {name: bin_dir() / name for name in names}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise ComponentsMissing(f"{', '.join(missing)} not built in {bin_dir()}: run `make k8s` (needs Go)")
    return found


class ControlPlane:
    def __init__(self, *, kubeconfig_path: str | os.PathLike[str] | None = None, log_dir: str | None = None) -> None:
        self.binaries = find_binaries()
        self.version = VERSION.lstrip("v")
        self._kubeconfig_out = Path(kubeconfig_path) if kubeconfig_path else None
        self._log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.dir: Path | None = None
        self.tokens = {name: secrets.token_urlsafe(24) for name in ("sandbox-admin", *_EVERYTHING_BUT)}
        self.startup_seconds: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from .certs import Authority

        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="grpcprobe-real-"))
        d = self.dir
        self.authority = Authority("kubectl-grpcprobe-real-ca")
        self.ca_pem = self.authority.ca_pem
        (d / "ca.crt").write_bytes(self.ca_pem)
        write_private(d / "ca.key", self.authority.key_pem)
        self._pair("apiserver", "kube-apiserver", server=True,
                   hosts=("localhost", "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"))
        self._pair("apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",), client=True)
        self._pair("controller-manager", "system:kube-controller-manager", client=True)
        self._pair("scheduler", "system:kube-scheduler", client=True)
        self._pair("admin", "kubernetes-admin", orgs=("system:masters",), client=True)
        sa_private, sa_public = _service_account_keys()
        write_private(d / "sa.key", sa_private)
        (d / "sa.pub").write_bytes(sa_public)
        # Static tokens for people (kubectl's users), as the fake has: token,user,uid,"groups".
        rows = [f'{self.tokens["sandbox-admin"]},sandbox-admin,uid-admin,"system:masters"']
        rows += [f"{self.tokens[name]},{name},uid-{name}" for name in _EVERYTHING_BUT]
        write_private(d / "tokens.csv", ("\n".join(rows) + "\n").encode())

        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        self.server_url = f"https://127.0.0.1:{self.port}"
        self._spawn("etcd", [
            "-data-dir", str(d / "etcd"),
            "-listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "-listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        ])
        self._wait_http(f"http://127.0.0.1:{etcd_port}/health", "etcd", 30)
        self.startup_seconds["etcd"] = time.monotonic() - began
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--token-auth-file={d / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={d / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",  # the kubernetes Service's endpoint would be loopback, which is invalid
            "--profiling=false",
        ])
        self.write_kubeconfig(d / "admin.kubeconfig", user="sandbox-admin")
        self._wait_http(f"{self.server_url}/readyz", "kube-apiserver", 90)
        self.startup_seconds["kube-apiserver"] = time.monotonic() - began
        for name in ("controller-manager", "scheduler"):
            self._component_kubeconfig(name)
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={d / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={d / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={d / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={d / 'sa.key'}",
            f"--root-ca-file={d / 'ca.crt'}",
            f"--cluster-signing-cert-file={d / 'ca.crt'}",
            f"--cluster-signing-key-file={d / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            # The node agents renew their Leases every few seconds; a lost node is noticed quickly, not in 40 s.
            "--node-monitor-period=2s",
            "--node-monitor-grace-period=20s",
        ])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={d / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={d / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={d / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        ])
        self._apply_rbac()
        self.kubeconfig_path = str(self._kubeconfig_out or d / "kubeconfig")
        self.write_kubeconfig(self.kubeconfig_path)
        self.startup_seconds["control plane"] = time.monotonic() - began

    def stop(self) -> None:
        for _, proc in reversed(self._procs):
            _terminate(proc)
        self._procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise if a component has exited (its log's last lines say why)."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = Path(self.log_dir, f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    # -- credentials ---------------------------------------------------------------------------

    def issue_node_credentials(self, node: str) -> dict[str, Path]:
        """A node's client certificate (system:node:<name>, for the Node authorizer) and its kubelet serving pair."""
        assert self.dir is not None
        client = self._pair(f"node-{node}", f"system:node:{node}", orgs=("system:nodes",), client=True)
        serving = self._pair(f"node-{node}-serving", node, hosts=("127.0.0.1", "localhost", node), server=True)
        return {"cert": client[0], "key": client[1], "serving_cert": serving[0], "serving_key": serving[1], "ca": self.dir / "ca.crt"}

    def kubeconfig(self, *, user: str = "sandbox-admin", server: str | None = None) -> dict[str, Any]:
        from .local import kubeconfig

        return kubeconfig(server or self.server_url, self.ca_pem, self.tokens, user)

    def write_kubeconfig(self, path: str | os.PathLike[str], **kwargs: Any) -> str:
        from .local import write_kubeconfig

        return write_kubeconfig(path, self.kubeconfig(**kwargs))

    def ssl_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        """One JSON request as the admin (or with `token`): for set-up and tests."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.tokens['sandbox-admin']}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        from .node.agent import ApiStatus

        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiStatus(exc.code, exc.read()) from None

    # -- internals ---------------------------------------------------------------------------

    def _pair(self, file: str, cn: str, **kwargs: Any) -> tuple[Path, Path]:
        assert self.dir is not None
        cert, key = self.authority.issue(cn, **kwargs)
        (self.dir / f"{file}.crt").write_bytes(cert)
        write_private(self.dir / f"{file}.key", key)
        return self.dir / f"{file}.crt", self.dir / f"{file}.key"

    def _component_kubeconfig(self, name: str) -> None:
        import yaml

        assert self.dir is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": {"server": self.server_url, "certificate-authority": str(self.dir / "ca.crt")}}],
            "users": [{"name": name, "user": {"client-certificate": str(self.dir / f"{name}.crt"), "client-key": str(self.dir / f"{name}.key")}}],
            "contexts": [{"name": name, "context": {"cluster": "sandbox", "user": name}}],
            "current-context": name,
        }
        write_private(self.dir / f"{name}.kubeconfig", yaml.safe_dump(config).encode())

    @property
    def log_dir(self) -> Path:
        assert self.dir is not None
        return Path(self._log_dir) if self._log_dir else self.dir

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(Path(self.log_dir, f"{name}.log"), "wb")  # the child writes it; ours is closed below
        try:
            proc = subprocess.Popen(
                [str(self.binaries[name]), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches us, and we stop them in order
            )
        finally:
            log.close()
        self._procs.append((name, proc))

    def _wait_http(self, url: str, name: str, timeout: float) -> None:
        """Poll a health endpoint until 200; the component's own log says why when it exits or never gets there."""
        deadline = time.monotonic() + timeout
        ctx = self.ssl_context(self.dir / "admin.crt", self.dir / "admin.key") if url.startswith("https") else None  # type: ignore[operator]
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s: {self.log_tail(name)}")
            time.sleep(0.1)  # a poll interval: the process gives no event to wait on

    def _apply_rbac(self) -> None:
        for name, rules in _EVERYTHING_BUT.items():
            self.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules,
            })
            self.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
            })


def _service_account_keys() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
