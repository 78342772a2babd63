"""Connection settings the way kubectl finds them: kubeconfig files (merged), flags, in-cluster.

Our own loader instead of kubernetes.config: importing that module costs ~0.3 s, more than a whole
probe. Everything kubectl reads for a connection is read here, the same way: proxies, impersonation,
exec credential plugins. The legacy `auth-provider: oidc` is used only while its id-token is valid; it is
never refreshed here (see _auth_provider for why).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
from collections.abc import Mapping
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
    impersonate_uid: str | None = None


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
    impersonate_uid: str | None = None
    impersonate_extra: dict[str, list[str]] = field(default_factory=dict)
    proxy_url: str | None = None

    def __repr__(self) -> str:  # never let a credential reach a log line or a traceback
        return f"ClusterConfig(server={self.server!r}, context={self.context!r}, namespace={self.namespace!r})"

    @property
    def display_server(self) -> str:
        """The server URL for messages and -v: a password in it is replaced, as kubectl's redaction does."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.server)
        if parts.password is None:
            return self.server
        netloc = f"{parts.username}:xxxxx@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit(parts._replace(netloc=netloc))

    def proxy_for(self, scheme: str, host: str, port: int):  # -> transport.Proxy | None
        """The cluster's proxy-url, else the environment's, exactly where kubectl would use one."""
        from .transport import parse_proxy, proxy_from_environment

        if self.proxy_url:
            return parse_proxy(self.proxy_url, f'proxy-url of cluster in context "{self.context}"')
        return proxy_from_environment(scheme, host, port)

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

    def auth_headers(self) -> list[tuple[str, str]]:
        """Authorization and impersonation headers, as client-go's transport sets them."""
        from urllib.parse import quote

        headers: list[tuple[str, str]] = []
        if self.token:
            headers.append(("Authorization", f"Bearer {self.token}"))
        elif self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            headers.append(("Authorization", "Basic " + base64.b64encode(pair).decode()))
        if self.impersonate:
            headers.append(("Impersonate-User", self.impersonate))
            headers += [("Impersonate-Group", g) for g in self.impersonate_groups]
            if self.impersonate_uid:
                headers.append(("Impersonate-Uid", self.impersonate_uid))
            for key, values in self.impersonate_extra.items():
                headers += [(f"Impersonate-Extra-{quote(key, safe='')}", v) for v in values]
        return headers


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl can only load a client certificate from files: write them 0600 and remove at once."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="grpcprobe-") as tmp:
        cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        def no_pass_phrase() -> str:
            # Without this, OpenSSL prompts on the terminal. kubectl cannot use an encrypted key either.
            raise ConfigError("error: the client key in the kubeconfig is encrypted; kubectl does not support encrypted keys")

        try:
            ctx.load_cert_chain(cert_path, key_path, password=no_pass_phrase)
        except ssl.SSLError as exc:
            raise ConfigError(f"error: invalid client certificate or key in kubeconfig ({exc.reason or 'unreadable'})") from None


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    return [Path(p) for p in default_kubeconfig_paths(os.environ, windows=os.name == "nt")]


def default_kubeconfig_paths(environ: Mapping[str, str], *, windows: bool, stat: Any = os.stat) -> list[str]:
    """Where kubectl looks without --kubeconfig: KUBECONFIG split on the platform's list separator (`;` on
    Windows, `:` elsewhere), else <home>/.kube/config with client-go's home (util/homedir)."""
    import ntpath
    import posixpath

    paths = ntpath if windows else posixpath
    env = environ.get("KUBECONFIG")
    if env:
        return [paths.expanduser(p) for p in env.split(";" if windows else ":") if p]
    return [paths.join(home_dir(environ, windows=windows, stat=stat), ".kube", "config")]


def home_dir(environ: Mapping[str, str], *, windows: bool, stat: Any = os.stat) -> str:
    """client-go's homedir.HomeDir. Windows: the first of %HOME%, %HOMEDRIVE%%HOMEPATH%, %USERPROFILE% holding a
    .kube\\config; else the first of %HOME%, %USERPROFILE%, %HOMEDRIVE%%HOMEPATH% that is a writable directory, then
    the first that exists, then the first set. Elsewhere $HOME (the password database when unset, as Python does)."""
    import ntpath
    import stat as stat_module

    if not windows:
        return environ.get("HOME") or str(Path.home())
    home = environ.get("HOME", "")
    drive_path = environ.get("HOMEDRIVE", "") + environ.get("HOMEPATH", "") if environ.get("HOMEDRIVE") and environ.get("HOMEPATH") else ""
    profile = environ.get("USERPROFILE", "")

    def stat_or_none(path: str) -> Any:
        try:
            return stat(path)
        except OSError:
            return None

    for p in (home, drive_path, profile):
        if p and stat_or_none(ntpath.join(p, ".kube", "config")) is not None:
            return p
    first_set = first_existing = ""
    for p in (home, profile, drive_path):
        if not p:
            continue
        first_set = first_set or p
        info = stat_or_none(p)
        if info is None:
            continue
        first_existing = first_existing or p
        if stat_module.S_ISDIR(info.st_mode) and info.st_mode & 0o200:
            return p
    return first_existing or first_set


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        if path.is_file():
            text = path.read_text()
        else:
            # A FIFO or a device may block for ever, and a signal that lands just before the read() starts is
            # only acted on when it returns: read it in a helper, so the main thread waits in slices.
            from .. import stop

            text = stop.off_main_thread(path.read_text, name="grpcprobe-kubeconfig")
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
    impersonate = overrides.impersonate or user.get("as")
    cfg = ClusterConfig(
        server=str(server).rstrip("/"),
        namespace=overrides.namespace or context.get("namespace") or "default",
        context=context_name or "",
        insecure=_bool(cluster, "insecure-skip-tls-verify", cluster_file, f'cluster "{cluster_name}"'),
        tls_server_name=_string(cluster, "tls-server-name", cluster_file),
        proxy_url=_string(cluster, "proxy-url", cluster_file),
        impersonate=impersonate,
        # client-go sends groups, uid and extra only together with a user to impersonate; flags replace the file's.
        impersonate_groups=list(overrides.impersonate_groups or user.get("as-groups") or []),
        impersonate_uid=overrides.impersonate_uid or _string(user, "as-uid", user_file),
        impersonate_extra={str(k): [str(v) for v in (vs or [])] for k, vs in (user.get("as-user-extra") or {}).items()},
    )
    if not cfg.insecure:
        cfg.ca_data = _data_or_file(cluster, "certificate-authority", cluster_file)
    cfg.client_cert = _data_or_file(user, "client-certificate", user_file)
    cfg.client_key = _data_or_file(user, "client-key", user_file)
    if bool(cfg.client_cert) != bool(cfg.client_key):
        missing = "client-key-data or client-key" if cfg.client_cert else "client-cert-data or client-cert"
        raise ConfigError(f'error: {missing} must be specified for {user_name} to use the clientCert authentication method.')
    # As client-go: a tokenFile, when set, wins over an inline token (it is the one kept fresh).
    if user.get("tokenFile"):
        cfg.token = _read_relative(str(user["tokenFile"]), user_file).decode("utf-8", "replace").strip()
    else:
        cfg.token = _string(user, "token", user_file)
    cfg.username, cfg.password = _string(user, "username", user_file), _string(user, "password", user_file)
    if user.get("exec"):
        _run_exec_plugin(cfg, user["exec"], cluster, user_file)
    elif user.get("auth-provider"):
        _auth_provider(cfg, user["auth-provider"], user_name or "")
    return cfg


def _bool(entry: dict[str, Any], key: str, path: Path, what: str) -> bool:
    """A YAML boolean, strictly: kubectl refuses `"false"` (a string) rather than reading it as true."""
    value = entry.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(
            f'error: kubeconfig "{path}": {what}: {key} must be true or false, not {json.dumps(value)} '
            "(kubectl refuses this kubeconfig too)"
        )
    return value


def _string(entry: dict[str, Any], key: str, path: Path) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f'error: kubeconfig "{path}": {key} must be a string')
    return str(value)


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


def _run_exec_plugin(cfg: ClusterConfig, spec: dict[str, Any], cluster: dict[str, Any], base: Path) -> None:
    """client.authentication.k8s.io exec credential plugins, run as client-go runs them.

    - a command containing a path separator is relative to the kubeconfig's folder; a bare name is looked up on PATH;
    - its stderr is the user's (prompts and errors show); stdin is the terminal when interactiveMode allows it;
    - KUBERNETES_EXEC_INFO carries spec.interactive and, with provideClusterInfo, spec.cluster.
    """
    import sys

    command = spec.get("command")
    if not command or not isinstance(command, str):
        raise ConfigError("error: exec credential plugin has no command")
    if os.sep in command or (os.altsep and os.altsep in command):
        path = Path(command).expanduser()
        command = str(path if path.is_absolute() else base.parent / path)
    api_version = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
    mode = spec.get("interactiveMode") or ("IfAvailable" if api_version.endswith("v1beta1") else "")
    if mode not in ("Never", "IfAvailable", "Always"):
        raise ConfigError(f'error: exec credential plugin "{command}": interactiveMode must be Never, IfAvailable or Always')
    stdin_is_terminal = bool(getattr(sys.stdin, "isatty", lambda: False)())
    interactive = mode != "Never" and stdin_is_terminal
    if mode == "Always" and not interactive:
        raise ConfigError(f'error: exec plugin "{command}" cannot support interactive mode: standard input is not a terminal')
    exec_spec: dict[str, Any] = {"interactive": interactive}
    if spec.get("provideClusterInfo"):
        info: dict[str, Any] = {"server": cfg.server}
        for key in ("tls-server-name", "insecure-skip-tls-verify", "proxy-url", "disable-compression"):
            if cluster.get(key) not in (None, ""):
                info[key] = cluster[key]
        if cfg.ca_data:
            info["certificate-authority-data"] = base64.b64encode(cfg.ca_data).decode()
        for ext in cluster.get("extensions") or []:
            if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
                info["config"] = ext.get("extension")
        exec_spec["cluster"] = info
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[str(item.get("name"))] = str(item.get("value", ""))
    env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": api_version, "kind": "ExecCredential", "spec": exec_spec})
    try:
        proc = subprocess.run(
            [command, *(str(a) for a in spec.get("args") or [])],
            env=env,
            stdin=None if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,  # the user's terminal, as kubectl leaves it
            timeout=60,
            check=False,
        )
    except (FileNotFoundError, PermissionError) as exc:
        hint = spec.get("installHint") or ""
        what = "not found" if isinstance(exc, FileNotFoundError) else "not executable"
        raise ConfigError(f'error: exec credential plugin "{command}" {what}' + (f": {hint.strip()}" if hint else "")) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f'error: exec credential plugin "{command}" did not answer within 60s') from None
    if proc.returncode != 0:
        raise ConfigError(f'error: exec credential plugin "{command}" failed with exit code {proc.returncode}')
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = None
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict) or doc.get("kind") != "ExecCredential":
        raise ConfigError(f'error: exec credential plugin "{command}" printed no ExecCredential on stdout')
    if doc.get("apiVersion") != api_version:
        raise ConfigError(
            f'error: exec credential plugin "{command}" answered {doc.get("apiVersion")!r}, not the {api_version!r} it was asked for'
        )
    token, cert, key = status.get("token"), status.get("clientCertificateData"), status.get("clientKeyData")
    if (token is not None and not isinstance(token, str)) or not isinstance(cert or "", str) or not isinstance(key or "", str):
        raise ConfigError(f'error: exec credential plugin "{command}" printed a malformed ExecCredential status')
    if bool(cert) != bool(key):
        raise ConfigError(f'error: exec credential plugin "{command}" returned a client certificate without its key, or a key without its certificate')
    if not token and not cert:
        raise ConfigError(f'error: exec credential plugin "{command}" returned neither a token nor a client certificate')
    if token:
        cfg.token = token
    if cert and key:
        cfg.client_cert, cfg.client_key = cert.encode(), key.encode()


def _auth_provider(cfg: ClusterConfig, provider: dict[str, Any], user_name: str) -> None:
    """The legacy `auth-provider` block. Only `oidc`, and only while its id-token is valid.

    Refreshing is refused on purpose. The official client fetched the issuer's discovery document without
    verifying it when `idp-certificate-authority` was absent, posted the refresh token and client secret to
    the endpoint that document named, and did not write the new tokens back (breaking single-use refresh
    tokens for kubectl's next run). kubectl refreshes it correctly and writes it back: after any kubectl
    command the plugin works again. The lasting fix is the exec plugin that replaced auth-provider.
    """
    name = provider.get("name") if isinstance(provider, dict) else None
    replacement = "switch the user to an exec credential plugin (for OIDC: kubelogin, `kubectl oidc-login`)"
    if name != "oidc":
        raise ConfigError(
            f'error: user "{user_name}" uses auth-provider "{name}", which kubectl removed in 1.26; {replacement}'
            + (" or gke-gcloud-auth-plugin for GKE" if name == "gcp" else "")
        )
    config = provider.get("config") or {}
    token = config.get("id-token")
    if isinstance(token, str) and token and not _jwt_expired(token):
        cfg.token = token
        return
    raise ConfigError(
        f'error: the OIDC id-token of user "{user_name}" has expired or is missing, and kubectl-grpcprobe does not refresh '
        f"legacy auth-provider tokens: run any kubectl command with this context to refresh it, or {replacement}"
    )


def _jwt_expired(token: str, skew: float = 10.0) -> bool:
    """Whether a JWT's `exp` has passed (as client-go's oidc provider checks, before any use). Unreadable = expired."""
    import time

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) <= time.time() + skew
    except (IndexError, ValueError, KeyError, TypeError):
        return True


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
        impersonate_uid=overrides.impersonate_uid,
    )
