"""The runbook workflow against `kubectl grpcprobe POD`, on the same server, in one run.

    python bench/bench_runbook.py [--runs 9]

Runbook: start `kubectl port-forward pod/test-grpc :5000`, wait for its `Forwarding from` line,
run a minimal Python grpcio Check process against the local port, stop kubectl. Plugin: one
`kubectl grpcprobe test-grpc` through kubectl's plugin dispatch. Interleaved, medians.
Goal (issue 8): the plugin's wall time <= 0.5x the workflow's.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_probe import BARE_CHECK  # noqa: E402


def runbook(kubectl: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    pf = subprocess.Popen([kubectl, "port-forward", "pod/test-grpc", ":5000", "--address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = pf.stdout.readline()  # type: ignore[union-attr]
    port = int(line.split("127.0.0.1:")[1].split(" ")[0])
    check = subprocess.run([sys.executable, "-c", BARE_CHECK, f"127.0.0.1:{port}"], env=env, check=False)
    pf.send_signal(signal.SIGINT)
    pf.communicate(timeout=20)
    assert check.returncode == 0, "the runbook's check failed"
    return time.perf_counter() - started


def plugin(kubectl: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([kubectl, "grpcprobe", "test-grpc", "-q"], env=env, check=False)
    assert result.returncode == 0, "the plugin's probe failed"
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--kubectl", default="kubectl", help="kubectl binary (default: the one on PATH)")
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import shutil

    from kubectl_grpcprobe.sandbox import Sandbox

    kubectl = shutil.which(args.kubectl) or args.kubectl
    with Sandbox([ROOT / "examples" / "test-grpc.yaml"], kubelet=False) as sandbox:
        env = {
            **os.environ,
            "KUBECONFIG": sandbox.kubeconfig_path,
            # kubectl finds the installed plugin; python3 for the checkout's plugin/ is the venv's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        runbook(kubectl, env)
        plugin(kubectl, env)
        book, plug = [], []
        for _ in range(args.runs):
            book.append(runbook(kubectl, env))
            plug.append(plugin(kubectl, env))
    b, p = statistics.median(book), statistics.median(plug)
    import json

    info = json.loads(subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False).stdout or "{}")
    print(f"kubectl: {kubectl} {info.get('clientVersion', {}).get('gitVersion', '')}")
    print(f"{'runbook: port-forward + Check + stop (median)':<50}{b * 1000:>8.0f}ms")
    print(f"{'kubectl grpcprobe POD (median)':<50}{p * 1000:>8.0f}ms")
    print(f"{'ratio plugin / runbook':<50}{p / b:>9.2f}x   <= 0.5x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
