"""Build the krew archive for this platform and write its sha256 into the manifest's entry for it.

    python scripts/dist.py [--out dist] [--manifest krew-manifest.yaml]

Every platform runs this same script on its own runner (.github/workflows/release.yml): linux and
darwin get a .tar.gz of a one-folder bundle; Windows a .zip of a one-file .exe, because a one-folder
bundle's .exe must sit beside its _internal folder, and krew links only the .exe into its bin folder
(where a Windows symlink is not followed back to that folder). Completion is a shell script, or a
.cmd on Windows, since kubectl finds plugin completion helpers through PATHEXT there.

grpcio has a native module, so a zipapp cannot carry it; a PyInstaller one-folder bundle carries
the interpreter and the wheels' native code and starts without unpacking (see bench/RESULTS.md
for the start-up figures that chose it over a one-file bundle). The archive holds
kubectl-grpcprobe/ (the bundle; krew links kubectl-grpcprobe/kubectl-grpcprobe, and PyInstaller
finds its files through the link), kubectl_complete-grpcprobe (completion, a shell script calling
the bundle) and LICENSE, with normalised metadata (sorted, mtime 0, uid/gid 0).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPLETE = """#!/bin/sh
# kubectl plugin completion (kubectl >= 1.26): kubectl runs this with the words after `kubectl grpcprobe`.
here=$(dirname "$(readlink -f "$0")")
exec "$here/kubectl-grpcprobe/kubectl-grpcprobe" __complete "$@"
"""
COMPLETE_CMD = """@echo off\r
rem kubectl plugin completion (kubectl >= 1.26): kubectl runs this with the words after `kubectl grpcprobe`.\r
rem The plugin itself is on PATH (krew's bin folder): a link to this file would not lead back to its folder.\r
kubectl-grpcprobe.exe __complete %*\r
"""


def platform_tag() -> tuple[str, str]:
    """krew's os/arch names for this machine."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return platform.system().lower(), arch


def build_bundle(work: Path, onefile: bool = False) -> Path:
    entry = work / "entry.py"
    entry.write_text("import sys\nfrom kubectl_grpcprobe.cli import main\nsys.exit(main())\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--onefile" if onefile else "--onedir",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--name",
            "kubectl-grpcprobe",
            "--distpath",
            str(work / "dist"),
            "--workpath",
            str(work / "build"),
            "--specpath",
            str(work),
            "--paths",
            str(ROOT),
            # Imported lazily inside functions; listed so the bundle has them whatever the analysis sees.
            "--collect-submodules",
            "kubectl_grpcprobe",
            "--collect-submodules",
            "grpc_health",
            # Test and unrelated packages that module analysis drags in from the build environment.
            *[f"--exclude-module={m}" for m in ("hypothesis", "pytest", "_pytest", "pydantic", "pydantic_core", "tkinter", "IPython", "PyInstaller")],
            str(entry),
        ],
        check=True,
        cwd=work,
    )
    return work / "dist" / ("kubectl-grpcprobe.exe" if onefile else "kubectl-grpcprobe")


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, mode: int = 0o644, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path is not None and path.is_symlink():
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
        tar.addfile(info)
        return
    if path is not None and path.is_dir():
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    if path is not None:
        data = path.read_bytes()
        mode = 0o755 if os.access(path, os.X_OK) else 0o644
    assert data is not None
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def make_zip(exe: Path, out: Path, os_name: str, arch: str) -> Path:
    """Windows: kubectl-grpcprobe/kubectl-grpcprobe.exe, kubectl_complete-grpcprobe.cmd, LICENSE; fixed timestamps."""
    import zipfile

    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"kubectl-grpcprobe_{os_name}_{arch}.zip"
    members = [
        ("LICENSE", (ROOT / "LICENSE").read_bytes()),
        ("kubectl-grpcprobe/kubectl-grpcprobe.exe", exe.read_bytes()),
        ("kubectl_complete-grpcprobe.cmd", COMPLETE_CMD.encode()),
    ]
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(members):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return archive


def make_archive(bundle: Path, out: Path) -> Path:
    os_name, arch = platform_tag()
    archive = out / f"kubectl-grpcprobe_{os_name}_{arch}.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "LICENSE", path=ROOT / "LICENSE")
        _add(tar, "kubectl_complete-grpcprobe", COMPLETE.encode(), mode=0o755)
        for path in sorted(bundle.rglob("*")):
            _add(tar, f"kubectl-grpcprobe/{path.relative_to(bundle)}", path=path)
    import gzip

    out.mkdir(parents=True, exist_ok=True)
    with open(archive, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
        gz.write(buffer.getvalue())
    return archive


def update_manifest(manifest: Path, archive: Path, uri: str | None, os_name: str | None = None, arch: str | None = None) -> str:
    """Rewrite the sha256 (and the uri, if given) of the manifest's entry for os/arch, keeping the file's comments."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    set_platform(manifest, *(platform_tag() if os_name is None else (os_name, arch or "")), sha256=digest, uri=uri)
    return digest


def set_platform(manifest: Path, os_name: str, arch: str, *, sha256: str, uri: str | None = None) -> None:
    import yaml

    text = manifest.read_text()
    platforms = yaml.safe_load(text)["spec"]["platforms"]
    index = next(
        (i for i, p in enumerate(platforms) if p["selector"].get("matchLabels") == {"os": os_name, "arch": arch}), None
    )
    if index is None:
        raise SystemExit(f"{manifest}: no platform entry for {os_name}/{arch}")
    # The platforms' sha256 and uri lines come in the order of the entries.
    shas = list(re.finditer(r'sha256: "?[0-9a-fA-F]{64}"?', text))
    uris = list(re.finditer(r"uri: \S+", text))
    spans = [(shas[index].span(), f'sha256: "{sha256}"')]
    if uri:
        spans.append((uris[index].span(), f"uri: {uri}"))
    for (start, end), new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    manifest.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--manifest", type=Path, default=ROOT / "krew-manifest.yaml")
    parser.add_argument("--uri", help="rewrite the platform's uri too (e.g. a file:// or release URL)")
    args = parser.parse_args()
    work = args.out / "pyinstaller"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os_name, arch = platform_tag()
    if os_name == "windows":
        archive = make_zip(build_bundle(work, onefile=True), args.out, os_name, arch)
    else:
        archive = make_archive(build_bundle(work), args.out)
    digest = update_manifest(args.manifest, archive, args.uri)
    print(f"{archive} sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
