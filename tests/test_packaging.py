"""Installing it like a kubectl plugin: discovery, completion, the krew manifest and archive, all through real kubectl."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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


# -- krew: the real krew and validate-krew-manifest (sigs.k8s.io/krew v0.4.3, built by `make oracle`) -----------

TOOLS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubectl-grpcprobe" / "k8s" / "v1.37.2" / "bin"
KREW, VALIDATE, ACTIONLINT = TOOLS / "krew", TOOLS / "validate-krew-manifest", TOOLS / "actionlint"
PLATFORMS = {("darwin", "arm64"), ("darwin", "amd64"), ("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64")}


def _tool(path: Path) -> str:
    if not path.exists():
        if os.environ.get("GRPCPROBE_REQUIRE_REAL"):
            pytest.fail(f"{path} is not built (make oracle)")
        pytest.skip(f"{path.name} is not built: run `make oracle` (needs Go)")
    return str(path)


def _validate(manifest: Path) -> subprocess.CompletedProcess[str]:
    """krew's own validation of a krew-index file (named after the plugin); installing each platform needs the
    release's URLs, so that part is done below with the real archive instead (-skip-install here)."""
    return subprocess.run([_tool(VALIDATE), "-skip-install", "-manifest", str(manifest)], capture_output=True, text=True, timeout=60)


def test_committed_manifest_passes_krews_validation(tmp_path) -> None:
    manifest = tmp_path / "grpcprobe.yaml"
    shutil.copy(ROOT / "krew-manifest.yaml", manifest)
    done = _validate(manifest)
    assert done.returncode == 0, done.stderr
    assert "structural validation OK" in done.stderr and "no overlapping spec.platform[].selector" in done.stderr
    spec = yaml.safe_load(manifest.read_text())["spec"]
    assert spec["version"] == f"v{__version__}", "the manifest's version must be the package's (one place: __init__.py)"
    platforms = {(p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"]): p for p in spec["platforms"]}
    assert set(platforms) == PLATFORMS
    assert platforms[("windows", "amd64")]["bin"].endswith(".exe") and platforms[("windows", "amd64")]["uri"].endswith(".zip")
    for p in platforms.values():
        assert any(f["from"] == "LICENSE" for f in p["files"])  # krew-index requires the license in every archive


def test_release_manifest_names_every_archive_with_its_sha256(tmp_path) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    for os_name, arch in PLATFORMS:
        ext = "zip" if os_name == "windows" else "tar.gz"
        (archives / f"kubectl-grpcprobe_{os_name}_{arch}.{ext}").write_bytes(f"{os_name}/{arch}".encode())
    out = tmp_path / "grpcprobe.yaml"
    render = [sys.executable, str(ROOT / "scripts" / "render_manifest.py"), "--tag", f"v{__version__}", "--archives", str(archives), "--out", str(out)]
    subprocess.run(render, check=True, timeout=60)
    assert _validate(out).returncode == 0
    for p in yaml.safe_load(out.read_text())["spec"]["platforms"]:
        name = p["uri"].rsplit("/", 1)[1]
        assert p["uri"] == f"https://github.com/kubectl-grpcprobe/kubectl-grpcprobe/releases/download/v{__version__}/{name}"
        assert p["sha256"] == hashlib.sha256((archives / name).read_bytes()).hexdigest()
    (archives / "kubectl-grpcprobe_darwin_arm64.tar.gz").unlink()  # a platform whose build failed fails the release
    failed = subprocess.run(render, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "kubectl-grpcprobe_darwin_arm64.tar.gz is missing" in failed.stderr


def test_release_workflow_passes_actionlint() -> None:
    done = subprocess.run([_tool(ACTIONLINT), str(ROOT / ".github" / "workflows" / "release.yml")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    manifest = out / "grpcprobe.yaml"
    shutil.copy(ROOT / "krew-manifest.yaml", manifest)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "dist.py"), "--out", str(out), "--manifest", str(manifest)], check=True, timeout=600)
    archives = list(out.glob("kubectl-grpcprobe_*.tar.gz"))
    assert len(archives) == 1
    return archives[0], manifest


def test_real_krew_installs_the_archive_and_kubectl_runs_it(built, sandbox, tmp_path) -> None:
    archive, manifest = built
    krew_root = tmp_path / "krew"
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "kubectl-krew").symlink_to(_tool(KREW))
    # Nothing from this checkout or its venv on PATH: the bundle must stand alone.
    dirs = [shims, krew_root / "bin", *_system_path()]

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        binary = kubectl_binary()
        if binary is None:
            pytest.skip("kubectl is not installed")
        env = {"PATH": os.pathsep.join(str(p) for p in dirs), "HOME": str(tmp_path), "KREW_ROOT": str(krew_root), "NO_COLOR": "1",
               "KUBECONFIG": sandbox.kubeconfig_path}
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120, check=False)

    installed = kubectl("krew", "install", f"--manifest={manifest}", f"--archive={archive}")
    assert installed.returncode == 0, installed.stderr
    assert "Installed plugin: grpcprobe" in installed.stderr + installed.stdout
    link = krew_root / "bin" / "kubectl-grpcprobe"
    assert link.is_symlink()
    assert str(link) in kubectl("plugin", "list").stdout
    probed = kubectl("grpcprobe", "test-grpc", "-o", "wide")
    assert probed.returncode == 0, probed.stderr
    assert probed.stdout.splitlines()[1].split()[6] == "success"
    store = krew_root / "store" / "grpcprobe" / f"v{__version__}"
    assert "Apache License" in (store / "LICENSE").read_text()
    # Completion shipped in the archive, linked as the caveats say.
    (krew_root / "bin" / "kubectl_complete-grpcprobe").symlink_to(store / "kubectl_complete-grpcprobe")
    completed = kubectl("__complete", "grpcprobe", "te")
    assert completed.stdout.splitlines() == ["test-grpc", ":4"]
    (krew_root / "bin" / "kubectl_complete-grpcprobe").unlink()
    # uninstall insists on a local index (a git clone of krew-index, which `krew update` fetches): an empty
    # repository stands in for it here, with no network.
    subprocess.run(["git", "init", "-q", str(krew_root / "index" / "default")], check=True, timeout=30)
    removed = kubectl("krew", "uninstall", "grpcprobe")
    assert removed.returncode == 0, removed.stderr
    assert not link.exists() and not (krew_root / "store" / "grpcprobe").exists()
    assert not (krew_root / "receipts" / "grpcprobe.yaml").exists()
    left = list((krew_root / "bin").iterdir()) if (krew_root / "bin").exists() else []
    assert left == [], left


def test_kubectl_dir_has_versioned_binaries() -> None:
    folder = kubectl_dir()
    if folder is None:
        pytest.skip("kubectl is not installed")
    assert (folder / "kubectl.1.27").exists() and (folder / "kubectl.1.33").exists()


# The wheel tags behind each krew archive, as the release workflow's runners build them (Python 3.12).
WHEEL_PLATFORMS = {
    ("linux", "amd64"): ["manylinux2014_x86_64", "manylinux_2_17_x86_64"],
    ("linux", "arm64"): ["manylinux2014_aarch64", "manylinux_2_17_aarch64"],
    ("darwin", "arm64"): ["macosx_11_0_arm64"],
    ("darwin", "amd64"): ["macosx_10_15_x86_64", "macosx_11_0_x86_64"],
    ("windows", "amd64"): ["win_amd64"],
}
ARCHIVE_PYTHON = "3.12"


@pytest.mark.parametrize(("os_name", "arch"), sorted(WHEEL_PLATFORMS))
def test_every_dependency_has_a_wheel_for_each_archive(os_name: str, arch: str, tmp_path) -> None:
    """PyInstaller bundles installed wheels; a dependency with no binary wheel for a platform would need a compiler
    there. Resolved against the package index with pip's own rules (metadata only, no install)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    platform_flags = [flag for tag in WHEEL_PLATFORMS[(os_name, arch)] for flag in ("--platform", tag)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check", "--ignore-installed",
         "--only-binary=:all:", "--python-version", ARCHIVE_PYTHON, *platform_flags, "--target", str(tmp_path), *deps],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if "Could not fetch URL" in done.stderr or "NewConnectionError" in done.stderr:
        pytest.skip(f"the package index is not reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, f"{os_name}/{arch}: {done.stderr[-2000:]}"
