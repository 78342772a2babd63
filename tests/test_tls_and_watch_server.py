"""grpc.mode TLS probes (no verification, as the 1.37 kubelet), the TLS hint, and agnhost's opt-in Watch."""

from __future__ import annotations

import threading

import pytest

from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.sandbox.certs import make_pki

from .helpers import agnhost_container, grpcprobe, pod_manifest


@pytest.fixture
def tls_files(tmp_path):
    pki = make_pki("probe-target")  # signed by a CA nobody trusts: the kubelet's TLS mode must not care
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.cert_pem)
    key.write_bytes(pki.key_pem)
    return str(cert), str(key)


def test_tls_mode_probe_skips_verification(sandbox_no_kubelet, tls_files) -> None:
    sb = sandbox_no_kubelet
    cert, key = tls_files
    flags = ("--tls-cert-file", cert, "--tls-private-key-file", key)
    sb.apply(pod_manifest("secure", [agnhost_container("agnhost", *flags, readinessProbe={"grpc": {"port": 5000, "mode": "TLS"}})]))
    run = grpcprobe(sb, "secure")
    assert run.code == ExitCode.OK, run.out + run.err
    assert "Readiness probe succeeded: service healthy" in run.out
    sb.server_for("secure", "agnhost").force_unhealthy = True
    assert 'responded with "NOT_SERVING"' in grpcprobe(sb, "secure").out


def test_tls_only_server_with_plaintext_probe_gets_a_hint(sandbox_no_kubelet, tls_files) -> None:
    sb = sandbox_no_kubelet
    cert, key = tls_files
    flags = ("--tls-cert-file", cert, "--tls-private-key-file", key)
    sb.apply(pod_manifest("tlsonly", [agnhost_container("agnhost", *flags, readinessProbe={"grpc": {"port": 5000}})]))
    ip = sb.pod("tlsonly")["status"]["podIP"]
    run = grpcprobe(sb, "tlsonly")
    assert run.code == ExitCode.UNREACHABLE
    assert f'Readiness probe failed: timeout: failed to connect service "{ip}:5000" within 1s: context deadline exceeded' in run.out
    assert "hint: the server wants TLS; the kubelet probes in plaintext unless the probe sets grpc.mode: TLS" in run.err


def test_tls_mode_against_a_plaintext_server(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    sb.apply(pod_manifest("plain", [agnhost_container(readinessProbe={"grpc": {"port": 5000, "mode": "TLS"}})]))
    run = grpcprobe(sb, "plain")
    assert run.code == ExitCode.UNREACHABLE
    assert "context deadline exceeded" in run.out
    assert "grpc.mode TLS: TLS handshake with the server failed" in run.err


def test_agnhost_watch_opt_in_streams_toggles(sandbox_no_kubelet) -> None:
    sb = sandbox_no_kubelet
    sb.apply(pod_manifest("watched", [agnhost_container("agnhost", "--enable-watch", readinessProbe={"grpc": {"port": 5000}})]))
    server = sb.server_for("watched", "agnhost")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("run", grpcprobe(sb, "watched", "-w", "--watch-rpc", "--count", "3")))
    thread.start()
    # Watch sends only changes: flip once the stream exists, and again once the flip went out.
    assert server.watchers_changed.wait(10)
    server.force_unhealthy = True
    assert server.wait_streamed(2, 10)
    server.force_unhealthy = False
    thread.join(timeout=10)
    run = result["run"]
    statuses = [line.rsplit(" ", 1)[-1] for line in run.out.splitlines() if "Health/Watch says" in line]
    assert statuses == ["SERVING", "NOT_SERVING", "SERVING"]
    assert run.code == ExitCode.OK
