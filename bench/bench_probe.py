"""Benchmark: a cold `kubectl-grpcprobe POD` process against a bare Python grpcio Check process.

Everything is measured in one run on the same machine and the same server, interleaved, and
reported as medians and ratios (the machines are shared and noisy: ratios travel, absolutes don't).

    python bench/bench_probe.py [--runs 15]

Goals (issue 3): process wall time <= 2.5x the bare Check process; RPC latency through the
tunnel <= direct + 2 ms (medians); peak RSS <= 80 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

BARE_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 4)
"""


TIME = "/usr/bin/time"


def timed_process(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit status of one child process.

    Peak RSS comes from GNU time (-f %M) wrapped around the command: a child's own ru_maxrss
    (wait4) starts from the forking parent's RSS on Linux, which here is a benchmark process
    with a sandbox and grpc loaded, and would hide the command's real figure.
    """
    wrapped = [TIME, "-f", "%M", *argv] if os.path.exists(TIME) else argv
    started = time.perf_counter()
    proc = subprocess.run(wrapped, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    lines = proc.stderr.strip().splitlines()
    peak_kib = float(lines[-1]) if wrapped is not argv and lines and lines[-1].isdigit() else float("nan")
    return wall, peak_kib / 1024, proc.returncode


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "probe.json")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="another checkout (e.g. a git worktree of the previous commit) whose plugin is timed interleaved with this one",
    )
    args = parser.parse_args()

    from kubectl_grpcprobe.kube.client import KubeClient
    from kubectl_grpcprobe.kube.config import Overrides, load
    from kubectl_grpcprobe.kube.portforward import port_forward
    from kubectl_grpcprobe.kubelet.probe import check
    from kubectl_grpcprobe.sandbox import Sandbox

    python = sys.executable
    plugin = [python, "-m", "kubectl_grpcprobe"]
    starts = []
    for _ in range(5):
        t0 = time.perf_counter()
        sb = Sandbox([ROOT / "examples" / "test-grpc.yaml"]).start()
        starts.append(time.perf_counter() - t0)
        sb.stop()

    with Sandbox([ROOT / "examples" / "test-grpc.yaml"]) as sandbox:
        direct = f"127.0.0.1:{sandbox.server_for('test-grpc', 'agnhost').port}"
        env = {**os.environ, "KUBECONFIG": sandbox.kubeconfig_path, "PYTHONPATH": str(ROOT)}
        # Warm the page cache for both, then interleave so drift hits both equally.
        timed_process([python, "-c", BARE_CHECK, direct], env)
        timed_process([*plugin, "test-grpc"], env)
        bare, probe, bare_rss, probe_rss, other = [], [], [], [], []
        other_env = {**env, "PYTHONPATH": str(args.compare_tree)} if args.compare_tree else None
        for _ in range(args.runs):
            if other_env:
                # `python -m` puts the working directory first on sys.path, so the compared tree's package wins.
                wall, _, code = timed_process([*plugin, "test-grpc"], other_env, cwd=args.compare_tree)
                assert code == 0, "probe from the compared tree failed"
                other.append(wall)
            wall, rss, code = timed_process([python, "-c", BARE_CHECK, direct], env)
            assert code == 0, "bare check failed"
            bare.append(wall)
            bare_rss.append(rss)
            wall, rss, code = timed_process([*plugin, "test-grpc"], env)
            assert code == 0, "probe failed"
            probe.append(wall)
            probe_rss.append(rss)

        # RPC latency in-process: direct to the server vs through the API-server tunnel.
        client = KubeClient(load(Overrides(kubeconfig=sandbox.kubeconfig_path)))
        direct_rpc, tunnel_rpc = [], []
        with port_forward(client, "default", "test-grpc", 5000, timeout=10) as fwd:
            for _ in range(args.runs * 2):
                r = check(direct, service="", timeout_ns=10**9, user_agent="kube-probe/1.33")
                direct_rpc.append(r.rpc_ms)
                r = check(f"127.0.0.1:{fwd.local_port}", service="", timeout_ns=10**9, user_agent="kube-probe/1.33")
                tunnel_rpc.append(r.rpc_ms)
        client.close()

    results = {
        "runs": args.runs,
        "sandbox_start_ms_median": median(starts) * 1000,
        "bare_check_process_ms_median": median(bare) * 1000,
        "probe_process_ms_median": median(probe) * 1000,
        "process_ratio": median(probe) / median(bare),
        "direct_rpc_ms_median": median(direct_rpc),
        "tunnel_rpc_ms_median": median(tunnel_rpc),
        "tunnel_rpc_overhead_ms": median(tunnel_rpc) - median(direct_rpc),
        "bare_peak_rss_mib_median": median(bare_rss),
        "probe_peak_rss_mib_max": max(probe_rss),
        "probe_peak_rss_mib_median": median(probe_rss),
    }
    if other:
        results["compare_tree"] = str(args.compare_tree)
        results["compare_probe_process_ms_median"] = median(other) * 1000
        results["compare_process_ratio"] = median(other) / median(bare)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'measure':<34}{'value':>10}   goal")
    print(f"{'sandbox start (median)':<34}{results['sandbox_start_ms_median']:>8.1f}ms   < 1000ms")
    print(f"{'bare Check process (median)':<34}{results['bare_check_process_ms_median']:>8.1f}ms")
    print(f"{'kubectl-grpcprobe POD (median)':<34}{results['probe_process_ms_median']:>8.1f}ms")
    print(f"{'ratio probe / bare':<34}{results['process_ratio']:>9.2f}x   <= 2.5x")
    if other:
        print(f"{'compared tree POD (median)':<34}{results['compare_probe_process_ms_median']:>8.1f}ms")
        print(f"{'ratio compared tree / bare':<34}{results['compare_process_ratio']:>9.2f}x")
    print(f"{'RPC direct (median)':<34}{results['direct_rpc_ms_median']:>8.2f}ms")
    print(f"{'RPC through tunnel (median)':<34}{results['tunnel_rpc_ms_median']:>8.2f}ms   <= direct + 2ms")
    print(f"{'peak RSS probe (max of runs)':<34}{results['probe_peak_rss_mib_max']:>7.1f}MiB   <= 80MiB")
    print(f"{'peak RSS bare Check (median)':<34}{results['bare_peak_rss_mib_median']:>7.1f}MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
