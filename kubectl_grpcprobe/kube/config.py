"""Connection settings the way kubectl finds them: kubeconfig files (merged), flags, in-cluster.

Our own loader instead of kubernetes.config: importing that module costs ~0.3 s, more than a whole
probe. Exotic auth (the legacy `auth-provider` plugins) is still delegated to the official client,
lazily, so only those users pay for it.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class Overrides:
    """kubectl's global connection flags."""

    kubeconfig: str | None = None
    context: str | None = None
    cluster: str | None = None
    user: str | None = None
    namespace: str | None = None
    impersonate: str | None = None
    impersonate_groups: list[str] = field(default_factory=list)


@dataclass
class ClusterConfig:
    server: str
    namespace: str = "default"
    context: str = ""
    ca_data: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    impersonate: str | None = None
    impersonate_groups: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never let a credential reach a log line or a traceback
        return f"ClusterConfig(server={self.server!r}, context={self.context!r}, namespace={self.namespace!r})"

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:  # only where the kubeconfig says insecure-skip-tls-verify
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data:
            try:
                ctx = ssl.create_default_context(cadata=self.ca_data.decode("ascii", "replace"))
            except ssl.SSLError:
                raise ConfigError("error: certificate-authority data in the kubeconfig is not a PEM certificate") from None
        else:
            ctx = ssl.create_default_context()
        if self.client_cert and self.client_key:
            _load_client_cert(ctx, self.client_cert, self.client_key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def auth_kind(self) -> str:
        """How we authenticate, for -v: the kind only, never the material."""
        kinds = []
        if self.token:
            kinds.append("bearer token")
        elif self.username is not None:
            kinds.append("basic")
        if self.client_cert:
            kinds.append("client certificate")
        if self.impersonate:
            kinds.append(f"as {self.impersonate}")
        tls = "TLS verification off (insecure-skip-tls-verify)" if self.insecure else "TLS verified"
        return (", ".join(kinds) or "anonymous") + f"; {tls}"

    def auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if self.impersonate:
            headers["Impersonate-User"] = self.impersonate
        return headers

    def impersonate_group_headers(self) -> list[tuple[str, str]]:
        return [("Impersonate-Group", g) for g in self.impersonate_groups]


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl can only load a client certificate from files: write them 0600 and remove at once."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="grpcprobe-") as tmp:
        cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise ConfigError(f"error: invalid client certificate or key in kubeconfig ({exc.reason or 'unreadable'})") from None


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f'error: cannot read kubeconfig "{path}": {exc.strerror}') from None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(text, Loader=loader) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f'error: kubeconfig "{path}" is not valid YAML{at}') from None
    if not isinstance(doc, dict):
        raise ConfigError(f'error: kubeconfig "{path}" is not a kubeconfig (expected a mapping)')
    return doc


def _named(doc: dict[str, Any], key: str, path: Path) -> dict[str, tuple[dict[str, Any], Path]]:
    entries = doc.get(key) or []
    if not isinstance(entries, list):
        raise ConfigError(f'error: kubeconfig "{path}": "{key}" must be a list')
    out = {}
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f'error: kubeconfig "{path}": every entry of "{key}" needs a name')
        body = entry.get(key[:-1] if key != "users" else "user") or {}
        out.setdefault(str(entry["name"]), (body, path))
    return out


def merged_kubeconfig(paths: list[Path], *, explicit: bool) -> tuple[dict[str, Any], bool]:
    """kubectl's merge: the first file to define a name, or current-context, wins. Returns (merged, found)."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": ""}
    found = False
    for path in paths:
        if not path.exists():
            if explicit:
                raise ConfigError(f'error: stat {path}: no such file or directory')
            continue
        found = True
        doc = _read_yaml(path)
        for key in ("clusters", "users", "contexts"):
            for name, value in _named(doc, key, path).items():
                merged[key].setdefault(name, value)
        if not merged["current-context"] and doc.get("current-context"):
            merged["current-context"] = str(doc["current-context"])
    return merged, found


def load(overrides: Overrides) -> ClusterConfig:
    paths = kubeconfig_paths(overrides.kubeconfig)
    merged, found = merged_kubeconfig(paths, explicit=bool(overrides.kubeconfig))
    if not found:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return in_cluster(overrides)
        raise ConfigError(
            "error: no configuration has been provided: no kubeconfig at "
            + ", ".join(str(p) for p in paths)
            + " and not running in a cluster (set KUBECONFIG or use --kubeconfig)"
        )
    context_name = overrides.context or merged["current-context"]
    if not context_name and not (overrides.cluster and overrides.user):
        raise ConfigError("error: current-context is not set in the kubeconfig; use --context")
    context: dict[str, Any] = {}
    if context_name:
        if context_name not in merged["contexts"]:
            raise ConfigError(f'error: context "{context_name}" does not exist in the kubeconfig')
        context = merged["contexts"][context_name][0]
    cluster_name = overrides.cluster or context.get("cluster")
    user_name = overrides.user or context.get("user")
    if not cluster_name or cluster_name not in merged["clusters"]:
        raise ConfigError(f'error: cluster "{cluster_name or ""}" does not exist in the kubeconfig')
    cluster, cluster_file = merged["clusters"][cluster_name]
    user, user_file = merged["users"].get(user_name or "", ({}, cluster_file))
    if user_name and user_name not in merged["users"]:
        raise ConfigError(f'error: user "{user_name}" does not exist in the kubeconfig')
    server = cluster.get("server")
    if not server:
        raise ConfigError(f'error: cluster "{cluster_name}" has no server')
    cfg = ClusterConfig(
        server=str(server).rstrip("/"),
        namespace=overrides.namespace or context.get("namespace") or "default",
        context=context_name or "",
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        impersonate=overrides.impersonate or user.get("as"),
        impersonate_groups=list(overrides.impersonate_groups or user.get("as-groups") or []),
    )
    if not cfg.insecure:
        cfg.ca_data = _data_or_file(cluster, "certificate-authority", cluster_file)
    cfg.client_cert = _data_or_file(user, "client-certificate", user_file)
    cfg.client_key = _data_or_file(user, "client-key", user_file)
    cfg.token = user.get("token")
    if not cfg.token and user.get("tokenFile"):
        cfg.token = _read_relative(user["tokenFile"], user_file).decode().strip()
    cfg.username, cfg.password = user.get("username"), user.get("password")
    if user.get("exec"):
        _run_exec_plugin(cfg, user["exec"], cluster)
    elif user.get("auth-provider"):
        _auth_provider(cfg, merged, context_name, user_file)
    return cfg


def _read_relative(name: str, base: Path) -> bytes:
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base.parent / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f'error: cannot read "{path}" named in the kubeconfig: {exc.strerror}') from None


def _data_or_file(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    data = entry.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data)
        except ValueError:
            raise ConfigError(f'error: kubeconfig "{base}": {key}-data is not valid base64') from None
    if entry.get(key):
        return _read_relative(entry[key], base)
    return None


def _run_exec_plugin(cfg: ClusterConfig, spec: dict[str, Any], cluster: dict[str, Any]) -> None:
    """client.authentication.k8s.io exec credential plugins (kubectl's `users[].user.exec`)."""
    command = spec.get("command")
    if not command:
        raise ConfigError("error: exec credential plugin has no command")
    api_version = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[str(item.get("name"))] = str(item.get("value", ""))
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        proc = subprocess.run(
            [command, *(spec.get("args") or [])],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        hint = spec.get("installHint") or ""
        raise ConfigError(f'error: exec credential plugin "{command}" not found' + (f": {hint.strip()}" if hint else "")) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f'error: exec credential plugin "{command}" did not answer within 60s') from None
    if proc.returncode != 0:
        raise ConfigError(f'error: exec credential plugin "{command}" failed with exit code {proc.returncode}')
    try:
        status = json.loads(proc.stdout).get("status") or {}
    except ValueError:
        raise ConfigError(f'error: exec credential plugin "{command}" printed no ExecCredential') from None
    if status.get("token"):
        cfg.token = status["token"]
    if status.get("clientCertificateData") and status.get("clientKeyData"):
        cfg.client_cert = status["clientCertificateData"].encode()
        cfg.client_key = status["clientKeyData"].encode()


def _auth_provider(cfg: ClusterConfig, merged: dict[str, Any], context_name: str, base: Path) -> None:
    """Legacy auth-provider plugins (oidc, ...): delegate to the official client's loader."""
    try:
        from kubernetes.config.kube_config import KubeConfigLoader
    except ImportError:  # pragma: no cover - kubernetes is a declared dependency
        raise ConfigError("error: this kubeconfig uses an auth-provider; install the kubernetes package") from None
    doc = {
        "clusters": [{"name": n, "cluster": v[0]} for n, v in merged["clusters"].items()],
        "users": [{"name": n, "user": v[0]} for n, v in merged["users"].items()],
        "contexts": [{"name": n, "context": v[0]} for n, v in merged["contexts"].items()],
        "current-context": context_name,
    }
    try:
        loader = KubeConfigLoader(doc, active_context=context_name, config_base_path=str(base.parent))
        loader._load_authentication()
    except Exception as exc:  # the official loader raises many types; report them as one
        raise ConfigError(f"error: auth-provider failed: {type(exc).__name__}") from None
    token = getattr(loader, "token", None)
    if token:
        cfg.token = token.removeprefix("Bearer ").strip()


def in_cluster(overrides: Overrides) -> ClusterConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    try:
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        ca = (SERVICE_ACCOUNT_DIR / "ca.crt").read_bytes()
    except OSError as exc:
        raise ConfigError(f"error: in-cluster configuration incomplete: {exc.strerror}: {exc.filename}") from None
    namespace = overrides.namespace
    if not namespace:
        try:
            namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        except OSError:
            namespace = "default"
    host = f"[{host}]" if ":" in host else host
    return ClusterConfig(
        server=f"https://{host}:{port}",
        namespace=namespace,
        context="in-cluster",
        ca_data=ca,
        token=token,
        impersonate=overrides.impersonate,
        impersonate_groups=list(overrides.impersonate_groups),
    )
