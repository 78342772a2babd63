"""Installing it like a kubectl plugin: discovery, completion, the krew manifest and archive, all through real kubectl."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from kubectl_grpcprobe import __version__

from .helpers import ROOT, kubectl_binary, kubectl_dir

pytestmark = pytest.mark.kubectl


def _kubectl(args: list[str], path_dirs: list[Path], sandbox=None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not installed")
    env = {"PATH": os.pathsep.join(str(p) for p in path_dirs), "HOME": "/tmp", "NO_COLOR": "1"}
    if sandbox is not None:
        env["KUBECONFIG"] = sandbox.kubeconfig_path
    return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def _system_path() -> list[Path]:
    return [Path(p) for p in ("/usr/local/bin", "/usr/bin", "/bin")]


# -- from a checkout and from an installed package ----------------------------------------


def test_plugin_from_checkout_is_discovered_and_dispatched(sandbox) -> None:
    # plugin/ first; python3 must be one with the dependencies (the venv's).
    dirs = [ROOT / "plugin", Path(sys.executable).parent, *_system_path()]
    listed = _kubectl(["plugin", "list"], dirs)
    assert str(ROOT / "plugin" / "kubectl-grpcprobe") in listed.stdout
    helped = _kubectl(["grpcprobe", "--help"], dirs)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: kubectl grpcprobe [flags] POD")
    assert "exit codes:" in helped.stdout
    probed = _kubectl(["grpcprobe", "test-grpc"], dirs, sandbox)
    assert probed.returncode == 0, probed.stderr
    assert "Readiness probe succeeded: service healthy" in probed.stdout
    version = _kubectl(["grpcprobe", "--version"], dirs)
    assert version.stdout.strip() == f"kubectl-grpcprobe {__version__}"


def test_installed_console_script_is_discovered(sandbox, tmp_path) -> None:
    installed = Path(sys.executable).parent / "kubectl-grpcprobe"
    assert installed.exists(), "the package's console script (pip install) is missing"
    only = tmp_path / "bin"
    only.mkdir()
    (only / "kubectl-grpcprobe").symlink_to(installed)
    listed = _kubectl(["plugin", "list"], [only, *_system_path()])
    assert str(only / "kubectl-grpcprobe") in listed.stdout
    probed = _kubectl(["grpcprobe", "test-grpc", "-o", "json"], [only, *_system_path()], sandbox)
    assert probed.returncode == 0, probed.stderr


# -- completion through kubectl __complete ------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["te"], ["test-grpc"]),
        (["toggle", ""], ["test-grpc"]),
        (["test-grpc", "-c", ""], ["agnhost"]),
        (["test-grpc", "--probe", "l"], ["liveness"]),
        (["-n", "kube-"], ["kube-node-lease", "kube-public", "kube-system"]),
        (["--context", "sandbox-no-"], ["sandbox-no-get-pods", "sandbox-no-portforward"]),
        (["test-grpc", "--wat"], ["--watch", "--watch-rpc"]),
        (["sandbox", ""], ["up"]),
        (["-o", ""], ["text", "wide", "json"]),
        (["--field-selector", "status.phase"], ["status.phase=Running", "status.phase!=Running"]),
        (["--par"], ["--parallel"]),
        (["-A", "--dead"], ["--deadline"]),
        (["--all"], ["--all-namespaces"]),
        (["pod/te"], ["pod/test-grpc"]),
        (["de"], ["deploy/"]),
        (["test-grpc", "te"], []),  # a pod already named is not offered again
        (["-l", "app=x", ""], []),  # a selector picks the pods: no names
    ],
)
def test_completion_through_kubectl(sandbox, words: list[str], expected: list[str]) -> None:
    dirs = [ROOT / "plugin", Path(sys.executable).parent, *_system_path()]
    result = _kubectl(["__complete", "grpcprobe", *words], dirs, sandbox)
    lines = result.stdout.splitlines()
    assert lines[-1] == ":4"
    assert lines[:-1] == expected


def test_completion_of_label_selectors(sandbox) -> None:
    from .helpers import container, pod_manifest

    sandbox.apply(pod_manifest("web-1", [container("c")], labels={"app": "web", "tier": "front"}))
    dirs = [ROOT / "plugin", Path(sys.executable).parent, *_system_path()]

    def complete(*words: str) -> list[str]:
        return _kubectl(["__complete", "grpcprobe", *words], dirs, sandbox).stdout.splitlines()[:-1]

    assert complete("-l", "") == ["app=web", "tier=front"]
    assert complete("-l", "app=web,") == ["app=web,tier=front"]  # the next term, without the one already there
    assert complete("-A", "--selector", "ti") == ["tier=front"]


def test_completion_offers_nothing_when_the_cluster_is_down(tmp_path) -> None:
    dirs = [ROOT / "plugin", Path(sys.executable).parent, *_system_path()]
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )

    class Down:
        kubeconfig_path = str(config)

    result = _kubectl(["__complete", "grpcprobe", "te"], dirs, Down())
    assert result.stdout.splitlines() == [":4"]
    assert "Traceback" not in result.stderr


# -- krew ---------------------------------------------------------------------------------------

KNOWN_PLATFORMS = [(o, a) for o in ("linux", "darwin", "windows") for a in ("amd64", "arm64", "arm", "386")]


def _selects(selector: dict, os_name: str, arch: str) -> bool:
    labels = {"os": os_name, "arch": arch}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
    return True


def validate_manifest(doc: dict) -> None:
    """krew's own validation rules (pkg/index/validation), plus krew-index's LICENSE requirement."""
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert doc["kind"] == "Plugin"
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) and name != "kubectl"
    spec = doc["spec"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", spec["version"])
    assert spec["version"] == f"v{__version__}", "the manifest's version must be the package's (one place: __init__.py)"
    assert spec["homepage"].startswith("https://")
    assert 0 < len(spec["shortDescription"]) <= 50
    assert spec["description"].strip() and spec["caveats"].strip()
    platforms = spec["platforms"]
    assert platforms
    for os_name, arch in KNOWN_PLATFORMS:
        matching = [p for p in platforms if _selects(p["selector"], os_name, arch)]
        assert len(matching) <= 1, f"platforms overlap for {os_name}/{arch}"
    for p in platforms:
        assert p["selector"].get("matchLabels") or p["selector"].get("matchExpressions")
        assert p["uri"].startswith(("https://", "file://"))
        assert re.fullmatch(r"[0-9a-f]{64}", p["sha256"]), "sha256 must be 64 lowercase hex digits"
        assert p["bin"] and not p["bin"].startswith("/")
        assert p["files"] and all(f["from"] and f["to"] for f in p["files"])
        assert any(f["from"] == "LICENSE" for f in p["files"])


def krew_install(archive: Path, platform: dict, install_dir: Path) -> Path:
    """What `kubectl krew install --manifest --archive` does: check sha256, extract, apply files rules, link bin."""
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == platform["sha256"]
    extract = install_dir.parent / "extract"
    extract.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(extract, filter="tar")
    for rule in platform["files"]:
        target = install_dir / rule["to"]
        target.mkdir(parents=True, exist_ok=True)
        matches = glob.glob(str(extract / rule["from"]))
        assert matches, f"files rule {rule} matched nothing"
        for match in matches:
            shutil.move(match, target / Path(match).name)
    bin_path = install_dir / platform["bin"]
    assert bin_path.is_file() and os.access(bin_path, os.X_OK)
    link_dir = install_dir.parent / "bin"
    link_dir.mkdir(parents=True)
    (link_dir / "kubectl-grpcprobe").symlink_to(bin_path)
    return link_dir


def test_committed_manifest_is_valid() -> None:
    validate_manifest(yaml.safe_load((ROOT / "krew-manifest.yaml").read_text()))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dist")
    manifest = out / "krew-manifest.yaml"
    shutil.copy(ROOT / "krew-manifest.yaml", manifest)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "dist.py"), "--out", str(out), "--manifest", str(manifest)], check=True, timeout=600)
    archives = list(out.glob("kubectl-grpcprobe_*.tar.gz"))
    assert len(archives) == 1
    return archives[0], yaml.safe_load(manifest.read_text())


def test_krew_archive_installs_and_runs_through_kubectl(built, sandbox, tmp_path) -> None:
    archive, manifest = built
    validate_manifest(manifest)
    (platform,) = [p for p in manifest["spec"]["platforms"] if _selects(p["selector"], "linux", "amd64")]
    install_dir = tmp_path / "store" / "grpcprobe" / manifest["spec"]["version"]
    link_dir = krew_install(archive, platform, install_dir)
    assert "Apache License" in (install_dir / "LICENSE").read_text()
    # Nothing from this checkout or its venv on PATH: the bundle must stand alone.
    dirs = [link_dir, *_system_path()]
    assert str(link_dir / "kubectl-grpcprobe") in _kubectl(["plugin", "list"], dirs).stdout
    probed = _kubectl(["grpcprobe", "test-grpc", "-o", "wide"], dirs, sandbox)
    assert probed.returncode == 0, probed.stderr
    assert probed.stdout.splitlines()[1].split()[:7][-1] == "success"
    # Completion shipped in the archive, linked as the caveats say.
    (link_dir / "kubectl_complete-grpcprobe").symlink_to(install_dir / "kubectl_complete-grpcprobe")
    completed = _kubectl(["__complete", "grpcprobe", "te"], dirs, sandbox)
    assert completed.stdout.splitlines() == ["test-grpc", ":4"]


def test_kubectl_dir_has_versioned_binaries() -> None:
    folder = kubectl_dir()
    if folder is None:
        pytest.skip("kubectl is not installed")
    assert (folder / "kubectl.1.27").exists() and (folder / "kubectl.1.33").exists()
