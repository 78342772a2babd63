"""Build the krew archive for this platform and write its sha256 into the manifest.

    python scripts/dist.py [--out dist] [--manifest krew-manifest.yaml]

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


def platform_tag() -> tuple[str, str]:
    """krew's os/arch names for this machine."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return platform.system().lower(), arch


def build_bundle(work: Path) -> Path:
    entry = work / "entry.py"
    entry.write_text("import sys\nfrom kubectl_grpcprobe.cli import main\nsys.exit(main())\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--onedir",
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
    return work / "dist" / "kubectl-grpcprobe"


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


def update_manifest(manifest: Path, archive: Path, uri: str | None) -> str:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    text = manifest.read_text()
    text = re.sub(r'sha256: "?[0-9a-fA-F]{64}"?', f'sha256: "{digest}"', text, count=1)
    if uri:
        text = re.sub(r"uri: \S+", f"uri: {uri}", text, count=1)
    manifest.write_text(text)
    return digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--manifest", type=Path, default=ROOT / "krew-manifest.yaml")
    parser.add_argument("--uri", help="rewrite the platform's uri too (e.g. a file:// or release URL)")
    args = parser.parse_args()
    work = args.out / "pyinstaller"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bundle = build_bundle(work)
    archive = make_archive(bundle, args.out)
    digest = update_manifest(args.manifest, archive, args.uri)
    print(f"{archive} sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
