"""The connection to the API server, held to kubectl (issue 12): the real plugin process against loopback
peers that misbehave in exactly one way each, and kubectl on the same kubeconfig wherever it can run it.

Peers live in tests/hostile.py. docs/RELIABILITY.md lists every case with kubectl's behaviour.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubectl_grpcprobe.errors import ExitCode

from .helpers import ROOT, kubectl_binary
from .hostile import ConnectProxy, HostileApi, Socks5Proxy, TlsConnectProxy, TrickleRelay, run_measured, run_python


def plugin(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "kubectl_grpcprobe", *args, env=env, timeout=timeout)


def kubectl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str] | None:
    binary = kubectl_binary()
    if binary is None:
        return None
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def write(tmp_path: Path, doc: dict, name: str = "kubeconfig") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def admin_token(sandbox) -> str:
    return sandbox.kubeconfig()["users"][0]["user"]["token"]


# -- TLS is never skipped -------------------------------------------------------------------------


def test_connection_close_never_sends_a_request_in_plaintext(tmp_path, sandbox) -> None:
    """Critical: after `Connection: close`, the next request must open a new TLS connection."""
    with HostileApi(sandbox, "close") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
        assert api.seen.plaintext == []
        assert run.returncode == ExitCode.OK, run.stderr
        # GET pod, GET /version, the upgrade: each on its own TLS connection, as the server asked.
        assert api.seen.tls_connections >= 3
        assert admin_token(sandbox) not in run.stdout + run.stderr


def test_kept_alive_connection_is_reused_when_the_server_allows(tmp_path, sandbox) -> None:
    with HostileApi(sandbox, "pass") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
        assert run.returncode == ExitCode.OK, run.stderr
        assert api.seen.plaintext == []
        # both GETs on one connection, the upgrade on a second one
        assert api.seen.tls_connections == 2


def test_insecure_skip_tls_verify_as_a_string_is_refused_like_kubectl(tmp_path, sandbox) -> None:
    doc = sandbox.kubeconfig()
    cluster = doc["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = "false"
    path = write(tmp_path, doc)
    run = plugin("test-grpc", "--kubeconfig", path)
    assert run.returncode == ExitCode.USAGE
    assert one_line(run.stderr).endswith('insecure-skip-tls-verify must be true or false, not "false" (kubectl refuses this kubeconfig too)')
    theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc")
    if theirs is not None:
        assert theirs.returncode != 0 and "insecure-skip-tls-verify" in theirs.stderr.lower().replace("insecureskiptlsverify", "insecure-skip-tls-verify")


# -- credentials ----------------------------------------------------------------------------------


def test_token_with_a_newline_is_one_line_and_never_printed(tmp_path, sandbox) -> None:
    token = admin_token(sandbox)
    (tmp_path / "token").write_text(f"{token}\nsecond-line-secret\n")
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"] = {"tokenFile": str(tmp_path / "token")}
    path = write(tmp_path, doc)
    run = plugin("test-grpc", "--kubeconfig", path, "-v")
    assert run.returncode == ExitCode.USAGE
    assert "Traceback" not in run.stderr
    assert token not in run.stderr + run.stdout and "second-line-secret" not in run.stderr + run.stdout
    assert 'invalid header field value for "Authorization"' in run.stderr
    theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc")
    if theirs is not None:  # kubectl refuses it too
        assert theirs.returncode != 0


def test_token_file_wins_over_an_inline_token_as_in_kubectl(tmp_path, sandbox) -> None:
    (tmp_path / "token").write_text(admin_token(sandbox) + "\n")
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"] = {"token": "stale-token", "tokenFile": str(tmp_path / "token")}
    path = write(tmp_path, doc)
    assert plugin("test-grpc", "--kubeconfig", path).returncode == ExitCode.OK
    theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc")
    if theirs is not None:
        assert theirs.returncode == 0, theirs.stderr


def test_client_certificate_without_a_key_is_an_error(tmp_path, sandbox) -> None:
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"]["client-certificate-data"] = base64.b64encode(sandbox.ca_pem).decode()
    run = plugin("test-grpc", "--kubeconfig", write(tmp_path, doc))
    assert run.returncode == ExitCode.USAGE
    assert one_line(run.stderr) == (
        "error: client-key-data or client-key must be specified for sandbox-admin to use the clientCert authentication method."
    )


def test_encrypted_client_key_fails_without_prompting(tmp_path, sandbox) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"]["client-certificate-data"] = base64.b64encode(sandbox.ca_pem).decode()
    doc["users"][0]["user"]["client-key-data"] = base64.b64encode(pem).decode()
    run = plugin("test-grpc", "--kubeconfig", write(tmp_path, doc))  # stdin is not a terminal: a prompt would hang
    assert run.returncode == ExitCode.USAGE
    assert "encrypted" in one_line(run.stderr)


def test_impersonation_uid_and_extra_are_sent(tmp_path, sandbox) -> None:
    def mutate(doc: dict) -> None:
        doc["users"][0]["user"].update({"as": "jane", "as-uid": "1234", "as-user-extra": {"reason": ["incident 42"], "scopes/x": ["a", "b"]}})

    with HostileApi(sandbox, "pass") as api:
        plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path, mutate=mutate))
        plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path), "--as", "joe", "--as-uid", "77")
        first, last = api.seen.headers[0], api.seen.headers[-1]
    assert first["impersonate-user"] == "jane" and first["impersonate-uid"] == "1234"
    assert first["impersonate-extra-reason"] == "incident 42"
    assert first["impersonate-extra-scopes%2fx"] == "a, b"  # two header lines, joined by the reader
    assert last["impersonate-user"] == "joe" and last["impersonate-uid"] == "77"


def test_exec_plugin_as_kubectl_runs_it(tmp_path, sandbox) -> None:
    """Relative command from the kubeconfig's folder, stderr passed through, cluster info provided."""
    folder = tmp_path / "conf"
    (folder / "bin").mkdir(parents=True)
    script = folder / "bin" / "cred"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "print('cred: server=' + info['spec']['cluster']['server'] + ' interactive=' + str(info['spec']['interactive']), file=sys.stderr)\n"
        f"print(json.dumps({{'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', 'status': {{'token': {admin_token(sandbox)!r}}}}}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"] = {
        "exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "./bin/cred", "interactiveMode": "IfAvailable", "provideClusterInfo": True}
    }
    path = write(folder, doc)
    run = subprocess.run(
        [sys.executable, "-m", "kubectl_grpcprobe", "test-grpc", "--kubeconfig", path],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )
    assert run.returncode == ExitCode.OK, run.stderr
    assert f"cred: server=https://127.0.0.1:{sandbox.port} interactive=False" in run.stderr
    theirs = subprocess.run([kubectl_binary(), "--kubeconfig", path, "get", "pod", "test-grpc"], capture_output=True, text=True, cwd=tmp_path, check=False) if kubectl_binary() else None
    if theirs is not None:
        assert theirs.returncode == 0 and "cred: server=" in theirs.stderr


def test_malformed_exec_output_is_one_line(tmp_path, sandbox) -> None:
    doc = sandbox.kubeconfig()
    doc["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "echo", "args": ["[]"], "interactiveMode": "Never"}}
    run = plugin("test-grpc", "--kubeconfig", write(tmp_path, doc))
    assert run.returncode == ExitCode.USAGE
    assert one_line(run.stderr) == 'error: exec credential plugin "echo" printed no ExecCredential on stdout'


def _jwt(exp: float) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none'})}.{b64({'exp': exp, 'sub': 'x'})}.sig"


def test_oidc_valid_id_token_is_used_and_an_expired_one_is_never_refreshed(tmp_path, sandbox) -> None:
    with HostileApi(sandbox, "pass") as idp:  # stands for the IdP: any request reaching it is a refresh attempt
        def oidc(token: str) -> dict:
            doc = sandbox.kubeconfig()
            doc["users"][0]["user"] = {"auth-provider": {"name": "oidc", "config": {
                "id-token": token, "refresh-token": "refresh-secret", "client-id": "k", "client-secret": "client-secret",
                "idp-issuer-url": f"https://127.0.0.1:{idp.port}",
            }}}
            return doc

        with HostileApi(sandbox, "pass") as api:
            valid = _jwt(time.time() + 3600)
            plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path, mutate=lambda d: d["users"][0].update(oidc(valid)["users"][0])))
            assert api.seen.headers[0]["authorization"] == f"Bearer {valid}"
        run = plugin("test-grpc", "--kubeconfig", write(tmp_path, oidc(_jwt(time.time() - 60))))
        assert run.returncode == ExitCode.USAGE
        line = one_line(run.stderr)
        assert "has expired" in line and "kubelogin" in line and "run any kubectl command" in line
        assert "refresh-secret" not in run.stderr and "client-secret" not in run.stderr
        assert idp.seen.requests == [] and idp.seen.tls_connections == 0


def test_dot_names_never_reach_the_server(sandbox) -> None:
    for name, problem in ((".", "may not be '.'"), ("..", "may not be '..'")):
        run = plugin(name, "--kubeconfig", sandbox.kubeconfig_path)
        assert run.returncode == ExitCode.USAGE
        assert one_line(run.stderr) == f'error: invalid resource name "{name}": [{problem}]'
    run = plugin("test-grpc", "-n", "..", "--kubeconfig", sandbox.kubeconfig_path)
    assert one_line(run.stderr) == "error: invalid namespace \"..\": [may not be '..']"


def test_verbose_never_prints_a_password_in_the_server_url(tmp_path, sandbox) -> None:
    doc = sandbox.kubeconfig()
    doc["clusters"][0]["cluster"]["server"] = f"https://admin:hunter2@127.0.0.1:{sandbox.port}"
    run = plugin("test-grpc", "-v", "--kubeconfig", write(tmp_path, doc))
    assert "hunter2" not in run.stderr + run.stdout
    assert "admin:xxxxx@127.0.0.1" in run.stderr


def test_json_null_body_is_one_line(tmp_path, sandbox, monkeypatch) -> None:
    with HostileApi(sandbox, "pass") as api:
        original = api._answer

        def null_body(conn, request_line, head_text):
            if "/pods/" in request_line:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\nnull")
                return True
            return original(conn, request_line, head_text)

        api._answer = null_body
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
    assert run.returncode == ExitCode.UNREACHABLE
    assert one_line(run.stderr).endswith("with something that is not a JSON object")


# -- deadlines and retries ------------------------------------------------------------------------


def test_request_timeout_bounds_a_trickled_body(tmp_path, sandbox) -> None:
    with HostileApi(sandbox, "trickle") as api:
        started = time.monotonic()
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path), "--request-timeout", "2s")
        elapsed = time.monotonic() - started
    assert run.returncode == ExitCode.UNREACHABLE
    assert one_line(run.stderr) == f"error: the API server at 127.0.0.1:{api.port} did not answer within 2s (--request-timeout)"
    assert elapsed < 2 + 1.5, elapsed  # the deadline, plus interpreter start-up on a busy machine


def test_request_timeout_bounds_a_trickled_tls_handshake(tmp_path, sandbox) -> None:
    """Each read of the handshake returns at once; only a deadline over the whole handshake ends it."""
    with TrickleRelay(sandbox.port) as relay:
        doc = sandbox.kubeconfig(server=f"https://127.0.0.1:{relay.port}")
        started = time.monotonic()
        run = plugin("test-grpc", "--kubeconfig", write(tmp_path, doc), "--request-timeout", "1s")
        elapsed = time.monotonic() - started
    assert run.returncode == ExitCode.UNREACHABLE
    assert one_line(run.stderr) == f"error: unable to connect to the server 127.0.0.1:{relay.port}: TLS handshake timeout"
    assert elapsed < 1 + 1.5, elapsed  # the deadline, plus interpreter start-up on a busy machine


def test_429_with_retry_after_is_retried(tmp_path, sandbox) -> None:
    with HostileApi(sandbox, "429") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path), "-v")
        pod_gets = [r for r in api.seen.requests if "/pods/test-grpc " in r]
    assert run.returncode == ExitCode.OK, run.stderr
    assert len(pod_gets) == 3
    assert "Retry-After 1s (retry 1 of 10)" in run.stderr


# -- bounded memory and time against floods --------------------------------------------------------


@pytest.mark.parametrize("mode", ["ws-continuations", "ws-data-flood", "ws-error-flood"])
def test_floods_keep_memory_and_time_bounded(tmp_path, sandbox, mode: str) -> None:
    with HostileApi(sandbox, mode) as api:
        run = run_measured("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path), "--timeout", "2s")
    assert run.code != ExitCode.OK
    assert "Traceback" not in run.err
    assert run.rss_mib < 100, f"peak RSS {run.rss_mib:.0f} MiB under {mode}"
    assert run.seconds < 2 + 1.5, f"{run.seconds:.1f}s under {mode}"  # timeout + 1 s, + start-up


def test_websocket_close_code_and_reason_are_reported(tmp_path, sandbox) -> None:
    with HostileApi(sandbox, "ws-close-1011") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
    assert run.returncode != ExitCode.OK
    assert "the API server closed the stream with code 1011: kubelet: container runtime gone" in run.stderr


def test_unoffered_subprotocol_is_refused(tmp_path, sandbox) -> None:
    with HostileApi(sandbox, "ws-bad-protocol") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
    assert run.returncode == ExitCode.UNREACHABLE
    assert "chose the subprotocol 'v5.evil.example', which was not offered" in run.stderr


# -- round trips (issue 16) -----------------------------------------------------------------------


def test_a_probe_upgrades_the_connection_that_read_the_pod(tmp_path, sandbox) -> None:
    """Critical path: TLS, GET pod, upgrade on that same connection, dial, RPC. /version goes on a connection of
    its own at the same time (no pipelining: an intermediary that mishandles it would cost the whole deadline)."""
    with HostileApi(sandbox, "pass") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
        assert run.returncode == ExitCode.OK, run.stderr
        conns = sorted(api.seen.connections, key=len)
    pod = "GET /api/v1/namespaces/default/pods/test-grpc HTTP/1.1"
    assert [c for c in conns if c] == [
        ["GET /version HTTP/1.1"],
        [pod, "GET /api/v1/namespaces/default/pods/test-grpc/portforward?ports=5000 HTTP/1.1"],
    ]


def test_a_kept_alive_connection_closed_while_idle_is_replaced_for_the_upgrade(tmp_path, sandbox) -> None:
    """The server closes the connection after the pod's answer, without saying so: the upgrade is retried once
    on a new TLS connection, and the probe succeeds."""
    with HostileApi(sandbox, "drop-idle") as api:
        run = plugin("test-grpc", "--kubeconfig", api.kubeconfig(tmp_path))
        assert run.returncode == ExitCode.OK, run.stderr
        assert api.seen.plaintext == []
        upgrades = [c for c in api.seen.connections if any("portforward" in line for line in c)]
    assert len(upgrades) == 1 and len(upgrades[0]) == 1  # on a connection of its own, the first on it


# -- proxies --------------------------------------------------------------------------------------

HIDDEN = "kube.sandbox.test"  # resolvable only by the proxies


def _behind_proxy(sandbox, tmp_path: Path, proxy_url: str | None) -> str:
    doc = sandbox.kubeconfig(server=f"https://{HIDDEN}:{sandbox.port}")
    cluster = doc["clusters"][0]["cluster"]
    cluster["tls-server-name"] = "localhost"  # a name in the sandbox's certificate
    if proxy_url:
        cluster["proxy-url"] = proxy_url
    return write(tmp_path, doc, "kubeconfig-proxy")


@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_proxy_url_reaches_a_name_only_the_proxy_resolves(tmp_path, sandbox, kind: str) -> None:
    server_class = ConnectProxy if kind == "http" else Socks5Proxy
    with server_class({HIDDEN: "127.0.0.1"}) as proxy:
        path = _behind_proxy(sandbox, tmp_path, f"{kind}://127.0.0.1:{proxy.port}")
        run = plugin("test-grpc", "--kubeconfig", path)
        assert run.returncode == ExitCode.OK, run.stderr
        target = f"{HIDDEN}:{sandbox.port}"
        seen = [c for c in proxy.connects if target in c]
        assert len(seen) >= 2, proxy.connects  # the API GETs and the port-forward WebSocket
        theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc")
        if theirs is not None:
            assert theirs.returncode == 0, theirs.stderr


def test_https_proxy_url_is_tls_to_the_proxy_verified_as_kubectl_does(tmp_path, sandbox) -> None:
    """proxy-url: https://… is TLS to the proxy, then CONNECT, then the API server's TLS inside it. Go's transport
    verifies the proxy with the cluster's TLS settings (the kubeconfig's CA, tls-server-name): a proxy with the
    sandbox's own certificate passes for both kubectl and the plugin, one with an unknown CA fails for both."""
    identity = (Path(sandbox._tmp, "server.crt"), Path(sandbox._tmp, "server.key"))
    with TlsConnectProxy({HIDDEN: "127.0.0.1"}, tmp_path, identity) as proxy:
        path = _behind_proxy(sandbox, tmp_path, f"https://127.0.0.1:{proxy.port}")
        run = plugin("test-grpc", "--kubeconfig", path)
        assert run.returncode == ExitCode.OK, run.stderr
        assert len([c for c in proxy.connects if HIDDEN in c]) >= 2  # the GETs and the WebSocket, TLS inside TLS
        theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc")
        if theirs is not None:
            assert theirs.returncode == 0, theirs.stderr
    with TlsConnectProxy({HIDDEN: "127.0.0.1"}, tmp_path) as stranger:
        path = _behind_proxy(sandbox, tmp_path, f"https://127.0.0.1:{stranger.port}")
        untrusted = plugin("test-grpc", "--kubeconfig", path)
        assert untrusted.returncode == ExitCode.UNREACHABLE
        assert one_line(untrusted.stderr).startswith(f"error: proxy https://127.0.0.1:{stranger.port}: tls: failed to verify certificate")
        assert stranger.connects == []  # no CONNECT went out over an unverified connection
        theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc")
        if theirs is not None:
            assert theirs.returncode != 0 and "proxyconnect tcp: tls: failed to verify certificate" in theirs.stderr


def test_https_proxy_and_no_proxy_from_the_environment(tmp_path, sandbox) -> None:
    path = _behind_proxy(sandbox, tmp_path, None)
    with ConnectProxy({HIDDEN: "127.0.0.1"}) as proxy:
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}", "NO_PROXY": "", "no_proxy": "", "https_proxy": ""}
        assert plugin("test-grpc", "--kubeconfig", path, env=env).returncode == ExitCode.OK
        assert any(HIDDEN in c for c in proxy.connects)
        before = len(proxy.connects)
        run = plugin("test-grpc", "--kubeconfig", path, env={**env, "NO_PROXY": ".sandbox.test"})
        assert len(proxy.connects) == before  # NO_PROXY matched: a direct dial, and the name does not resolve
        assert run.returncode == ExitCode.UNREACHABLE
        assert one_line(run.stderr).startswith(f"error: unable to connect to the server: lookup {HIDDEN}")
        theirs = kubectl("--kubeconfig", path, "get", "pod", "test-grpc", env=env)
        if theirs is not None:
            assert theirs.returncode == 0, theirs.stderr


def test_env_proxy_is_never_used_for_loopback(sandbox) -> None:
    run = plugin("test-grpc", "--kubeconfig", sandbox.kubeconfig_path, env={"HTTPS_PROXY": "http://127.0.0.1:9"})
    assert run.returncode == ExitCode.OK, run.stderr


def test_proxy_that_refuses_is_one_line(tmp_path, sandbox) -> None:
    with ConnectProxy({}) as proxy:
        run = plugin("test-grpc", "--kubeconfig", _behind_proxy(sandbox, tmp_path, f"http://127.0.0.1:{proxy.port}"))
    assert run.returncode == ExitCode.UNREACHABLE
    assert one_line(run.stderr) == f"error: proxy http://127.0.0.1:{proxy.port} refused to connect to {HIDDEN}:{sandbox.port}: 502 Bad Gateway"


# -- the process's own edges -------------------------------------------------------------------------


def test_closed_stdout_exits_141_like_kubectl(sandbox) -> None:
    """`kubectl grpcprobe POD | true`: the reader is gone before the verdict is written."""
    reader, writer = os.pipe()
    os.close(reader)
    proc = subprocess.run(
        [sys.executable, "-m", "kubectl_grpcprobe", "test-grpc", "--kubeconfig", sandbox.kubeconfig_path],
        stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )
    os.close(writer)
    assert proc.returncode == ExitCode.PIPE_CLOSED == 141
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    theirs = kubectl_binary()
    if theirs:
        r, w = os.pipe()
        os.close(r)
        kube = subprocess.run([theirs, "--kubeconfig", sandbox.kubeconfig_path, "get", "pod", "test-grpc"], stdout=w, stderr=subprocess.PIPE, check=False)
        os.close(w)
        assert kube.returncode in (-13, 141)  # killed by SIGPIPE, as a shell reports it: 128 + 13


def test_sandbox_kubeconfig_out_is_private_even_over_an_existing_file(tmp_path) -> None:
    from kubectl_grpcprobe.sandbox import Sandbox

    out = tmp_path / "kubeconfig"
    out.write_text("old")
    out.chmod(0o644)
    with Sandbox([], kubeconfig_path=out) as sb:
        assert Path(sb.kubeconfig_path) == out
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
