"""Render the krew manifest for a release: every platform's uri for the tag and its archive's real sha256.

    python scripts/render_manifest.py --tag v0.1.0 --archives DIR [--out grpcprobe.yaml]
    python scripts/render_manifest.py --krew-release-bot-template --out .krew.yaml

The first form is what the release workflow attaches to the release (and what `kubectl krew install
--manifest` takes); every archive the manifest names must be in DIR, so a platform whose build failed
fails the release instead of shipping a stale sha256. The second writes the template krew-release-bot
renders itself ({{ .TagName }}, addURIAndSha) to propose the manifest to krew-index.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASES = "https://github.com/kubectl-grpcprobe/kubectl-grpcprobe/releases/download"


def render(text: str, tag: str, archives: Path) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group("uri").rsplit("/", 1)[1]
        archive = archives / name
        if not archive.is_file():
            raise SystemExit(f"render_manifest: {archive} is missing: every platform's archive must be built")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        return f'{match.group("indent")}uri: {RELEASES}/{tag}/{name}\n{match.group("indent")}sha256: "{digest}"'

    text = re.sub(r"^(?P<indent>\s*)uri: (?P<uri>\S+)\n\s*sha256: \S+", one, text, flags=re.M)
    body = re.sub(r"\A(#.*\n)+", "", text)  # the checkout's notes on placeholders do not apply to a release
    return f"# kubectl grpcprobe {tag}, rendered by scripts/render_manifest.py from the release's archives.\n" + _versioned(body, tag)


def template(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group("uri").rsplit("/", 1)[1]
        return f'{match.group("indent")}{{{{ addURIAndSha "{RELEASES}/{{{{ .TagName }}}}/{name}" .TagName }}}}'

    text = re.sub(r"^(?P<indent>\s*)uri: (?P<uri>\S+)\n\s*sha256: \S+", one, text, flags=re.M)
    return _versioned(text, "{{ .TagName }}")


def _versioned(text: str, version: str) -> str:
    text = re.sub(r"^(\s*version: ).*$", lambda m: m.group(1) + version, text, count=1, flags=re.M)
    return re.sub(r"store/grpcprobe/v[^/]+/", f"store/grpcprobe/{version}/", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=ROOT / "krew-manifest.yaml")
    parser.add_argument("--tag", help="the release tag, vX.Y.Z")
    parser.add_argument("--archives", type=Path, help="the folder holding every platform's archive")
    parser.add_argument("--krew-release-bot-template", action="store_true", help="write krew-release-bot's template instead")
    parser.add_argument("--out", type=Path, help="default: stdout")
    args = parser.parse_args()
    text = args.manifest.read_text()
    if args.krew_release_bot_template:
        out = template(text)
    else:
        if not (args.tag and args.archives):
            parser.error("--tag and --archives are required (or --krew-release-bot-template)")
        if not re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", args.tag):
            parser.error(f"--tag {args.tag!r} is not vX.Y.Z")
        out = render(text, args.tag, args.archives)
    if args.out:
        args.out.write_text(out)
    else:
        sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
