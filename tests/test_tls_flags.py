"""--tls and its companions against real grpcio TLS servers behind the sandbox: a CA, a server name, mTLS.

The meanings are grpc_health_probe's (-tls, -tls-no-verify, -tls-ca-cert, -tls-client-cert/-key,
-tls-server-name). The kubelet probes in plaintext (or unverified TLS for grpc.mode TLS), so every
one of these is named in the output as a difference from the kubelet's check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.sandbox.certs import Authority

from .helpers import container, grpcprobe, health_server, pod_manifest


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = Authority("grpcprobe-test-ca")
    (d / "ca.pem").write_bytes(ca.ca_pem)
    cert, key = ca.issue("health.example", hosts=("health.example",), server=True)
    (d / "server.pem").write_bytes(cert)
    (d / "server.key").write_bytes(key)
    cert, key = ca.issue("sre@example", client=True)
    (d / "client.pem").write_bytes(cert)
    (d / "client.key").write_bytes(key)
    other = Authority("someone-else")
    (d / "other-ca.pem").write_bytes(other.ca_pem)
    return {p.stem.replace("-", "_") + ("_key" if p.suffix == ".key" else ""): p for p in d.iterdir()}


@contextmanager
def tls_health_server(pki: dict[str, Path], *, require_client_cert: bool = False) -> Iterator[int]:
    creds = grpc.ssl_server_credentials(
        [(pki["server_key"].read_bytes(), pki["server"].read_bytes())],
        root_certificates=pki["ca"].read_bytes() if require_client_cert else None,
        require_client_auth=require_client_cert,
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()


def _pod(sandbox, port: int, name: str = "tls") -> None:
    sandbox.apply(pod_manifest(name, [container("app", readinessProbe={"grpc": {"port": 5000}})], ports={5000: port}))


def _json(run) -> dict:
    (probe,) = json.loads(run.out)["probes"]
    return probe


def test_verified_against_a_ca_as_a_server_name(sandbox_no_kubelet, pki) -> None:
    with tls_health_server(pki) as port:
        _pod(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "tls", "--tls", "--tls-ca-cert", str(pki["ca"]), "--tls-server-name", "health.example", "-o", "json")
    assert run.code == ExitCode.OK, run
    probe = _json(run)
    assert probe["result"] == "success"
    assert probe["differsFromKubelet"] == [f"TLS verified against {pki['ca']} as health.example"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--tls-server-name", "health.example"], "unable to get local issuer certificate"),  # the system roots do not know our CA
        (["--tls-ca-cert", "{other_ca}", "--tls-server-name", "health.example"], "unable to get local issuer certificate"),
        (["--tls-ca-cert", "{ca}"], "IP address mismatch"),  # the default name is the pod IP, which the certificate does not name
        (["--tls-ca-cert", "{ca}", "--tls-server-name", "wrong.example"], "Hostname mismatch"),
    ],
)
def test_a_server_that_fails_verification_is_unreachable_and_says_why(sandbox_no_kubelet, pki, flags: list[str], words: str) -> None:
    flags = [f.format(ca=pki["ca"], other_ca=pki["other_ca"]) for f in flags]
    with tls_health_server(pki) as port:
        _pod(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "tls", "--tls", *flags)
    assert run.code == ExitCode.UNREACHABLE, run
    assert "Readiness probe failed: timeout: failed to connect service" in run.out
    assert "tls: TLS handshake with the server failed: " in run.err and words in run.err, run.err


def test_no_verify(sandbox_no_kubelet, pki) -> None:
    with tls_health_server(pki) as port:
        _pod(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "tls", "--tls", "--tls-no-verify", "-o", "json")
    assert run.code == ExitCode.OK, run
    assert _json(run)["differsFromKubelet"] == ["TLS without verifying the server"]


def test_mtls_refused_without_a_client_certificate_and_accepted_with_one(sandbox_no_kubelet, pki) -> None:
    verified = ["--tls", "--tls-ca-cert", str(pki["ca"]), "--tls-server-name", "health.example"]
    with tls_health_server(pki, require_client_cert=True) as port:
        _pod(sandbox_no_kubelet, port)
        refused = grpcprobe(sandbox_no_kubelet, "tls", *verified)
        accepted = grpcprobe(sandbox_no_kubelet, "tls", *verified, "--tls-client-cert", str(pki["client"]),
                             "--tls-client-key", str(pki["client_key"]), "-o", "json", "-v")
    assert refused.code == ExitCode.UNREACHABLE, refused
    assert "tls: the server closed the TLS connection right after the handshake, without a word; a server that requires a client " \
        "certificate does that (--tls-client-cert)" in refused.err, refused.err
    assert accepted.code == ExitCode.OK, accepted
    assert _json(accepted)["differsFromKubelet"] == [f"TLS verified against {pki['ca']} as health.example, with a client certificate"]
    key_body = pki["client_key"].read_text().splitlines()[1]
    for text in (refused.out, refused.err, accepted.out, accepted.err):
        assert key_body not in text


def test_tls_to_a_plaintext_server_fails_the_handshake(sandbox_no_kubelet) -> None:
    with health_server() as (port, _):
        _pod(sandbox_no_kubelet, port)
        run = grpcprobe(sandbox_no_kubelet, "tls", "--tls", "--tls-no-verify")
    assert run.code == ExitCode.UNREACHABLE, run
    assert "tls: TLS handshake with the server failed" in run.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-ca-cert", "ca.pem"], "error: --tls-ca-cert needs --tls"),
        (["--tls-no-verify"], "error: --tls-no-verify needs --tls"),
        (["--tls", "--tls-client-cert", "{client}"], "error: --tls-client-cert and --tls-client-key go together"),
        (["--tls", "--tls-no-verify", "--tls-server-name", "x"], "error: --tls-no-verify does not verify the server"),
        (["--tls", "--tls-ca-cert", "/nonexistent/ca.pem"], "error: --tls-ca-cert: cannot read /nonexistent/ca.pem: No such file or directory"),
        (["--tls", "--tls-ca-cert", "{client_key}"], "error: --tls: cannot load the certificates"),
    ],
)
def test_flag_mistakes_are_usage_errors(sandbox_no_kubelet, pki, flags: list[str], message: str) -> None:
    flags = [f.format(client=pki["client"], client_key=pki["client_key"]) for f in flags]
    run = grpcprobe(sandbox_no_kubelet, "anything", "--port", "5000", *flags)
    assert run.code == ExitCode.USAGE, run
    assert run.err.startswith(message), run.err
    assert len(run.err.strip().splitlines()) == 1
