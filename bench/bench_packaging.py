"""Start-up by packaging: which form of the plugin should krew ship?

    python bench/bench_packaging.py --onedir DIR/kubectl-grpcprobe [--onefile FILE] [--runs 11]

Interleaves cold runs of `kubectl-grpcprobe test-grpc -q` against the sandbox for each candidate
(the venv console script, a PyInstaller one-folder bundle, optionally a one-file bundle) and the
bare grpcio Check baseline of bench_probe.py; prints medians and ratios to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_probe import BARE_CHECK, timed_process  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onedir", type=Path, required=True, help="the bundle's executable")
    parser.add_argument("--onefile", type=Path)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from kubectl_grpcprobe.sandbox import Sandbox

    candidates = {"venv console script": [str(Path(sys.executable).parent / "kubectl-grpcprobe")], "PyInstaller one-folder": [str(args.onedir)]}
    if args.onefile:
        candidates["PyInstaller one-file"] = [str(args.onefile)]
    with Sandbox([ROOT / "examples" / "test-grpc.yaml"], kubelet=False) as sandbox:
        env = {**os.environ, "KUBECONFIG": sandbox.kubeconfig_path}
        direct = f"127.0.0.1:{sandbox.server_for('test-grpc', 'agnhost').port}"
        commands = {"bare grpcio Check (baseline)": [sys.executable, "-c", BARE_CHECK, direct]}
        commands.update({name: [*argv, "test-grpc", "-q"] for name, argv in candidates.items()})
        for argv in commands.values():  # warm the page cache
            timed_process(argv, env)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        rss: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                wall, peak, code = timed_process(argv, env)
                assert code == 0, f"{name} failed"
                walls[name].append(wall)
                rss[name].append(peak)
    base = statistics.median(walls["bare grpcio Check (baseline)"])
    print(f"{'form':<32}{'median':>10}{'ratio':>9}{'peak RSS':>11}")
    for name in commands:
        med = statistics.median(walls[name])
        print(f"{name:<32}{med * 1000:>8.1f}ms{med / base:>8.2f}x{statistics.median(rss[name]):>8.1f}MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
