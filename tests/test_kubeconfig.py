"""kubectl's ways of finding the cluster: merged KUBECONFIG files, flags, impersonation, in-cluster."""

from __future__ import annotations

import base64
import io

import yaml

from kubectl_grpcprobe.cli import main
from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.kube import config as kubeconfig
from kubectl_grpcprobe.render.output import Environment


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Environment(stdout=out, stderr=err, colors=False))
    return code, out.getvalue(), err.getvalue()


def test_kubeconfig_files_merge_like_kubectl(sandbox, tmp_path, monkeypatch) -> None:
    doc = sandbox.kubeconfig()
    # File 1: only a context (and the current-context); file 2: the cluster and users, plus a decoy
    # current-context that must lose because file 1 set it first.
    first = {"apiVersion": "v1", "kind": "Config", "contexts": [{"name": "merged", "context": {"cluster": "sandbox", "user": "sandbox-admin", "namespace": "team-a"}}], "current-context": "merged"}
    second = {**doc, "current-context": "sandbox-no-get-pods"}
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(first))
    b.write_text(yaml.safe_dump(second))
    monkeypatch.setenv("KUBECONFIG", f"{a}:{tmp_path / 'missing.yaml'}:{b}")
    cfg = kubeconfig.load(kubeconfig.Overrides())
    assert (cfg.context, cfg.namespace, cfg.server) == ("merged", "team-a", sandbox.server_url)
    sandbox.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", "namespace": "team-a"}, "spec": {"containers": [
        {"name": "agnhost", "image": "agnhost", "command": ["/agnhost", "grpc-health-checking"], "readinessProbe": {"grpc": {"port": 5000}}}]}})
    code, out, err = _run("t")
    assert code == ExitCode.OK, err
    assert "Readiness probe succeeded" in out
    # --cluster/--user override the context's; --as sends impersonation (the sandbox ignores it, the request still works).
    code, _, err = _run("t", "--context", "sandbox", "-n", "team-a", "--user", "sandbox-admin", "--cluster", "sandbox", "--as", "someone", "--as-group", "g")
    assert code == ExitCode.OK, err


def test_in_cluster_configuration(sandbox, tmp_path, monkeypatch) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(sandbox.users["sandbox-admin"].token + "\n")
    (sa / "ca.crt").write_bytes(sandbox.ca_pem)
    (sa / "namespace").write_text("default")
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", sa)  # where a pod's service account is mounted
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(sandbox.port))
    code, out, err = _run("test-grpc", "-o", "json")
    assert code == ExitCode.OK, err
    assert '"result": "success"' in out
    cfg = kubeconfig.load(kubeconfig.Overrides())
    assert (cfg.context, cfg.namespace) == ("in-cluster", "default")
    assert repr(cfg).count(sandbox.users["sandbox-admin"].token) == 0


def test_exec_credential_plugin(sandbox, tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "cred"
    token = sandbox.users["sandbox-admin"].token
    plugin.write_text(
        "#!/bin/sh\n"
        'echo "$KUBERNETES_EXEC_INFO" | grep -q ExecCredential || exit 3\n'
        f'echo \'{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"{token}"}}}}\'\n'
    )
    plugin.chmod(0o755)
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin), "interactiveMode": "Never"}}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = _run("test-grpc", "--kubeconfig", str(path))
    assert code == ExitCode.OK, err
    doc["users"][0]["user"]["exec"]["command"] = str(tmp_path / "nope")
    path.write_text(yaml.safe_dump(doc))
    code, _, err = _run("test-grpc", "--kubeconfig", str(path))
    assert code == ExitCode.USAGE and err.startswith('error: exec credential plugin "') and "not found" in err


def test_client_certificate_kubeconfig_loads(tmp_path) -> None:
    from kubectl_grpcprobe.sandbox.certs import make_pki

    pki = make_pki("client")
    doc = {
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority-data": base64.b64encode(pki.ca_pem).decode()}}],
        "users": [{"name": "u", "user": {"client-certificate-data": base64.b64encode(pki.cert_pem).decode(), "client-key-data": base64.b64encode(pki.key_pem).decode()}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    cfg = kubeconfig.load(kubeconfig.Overrides(kubeconfig=str(path)))
    assert cfg.ssl_context() is not None
    assert cfg.auth_kind() == "client certificate; TLS verified"
