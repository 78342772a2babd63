"""Fleet benchmark: 200 pods, half serving. One `kubectl grpcprobe -l app=fleet` against the runbook loop.

    python bench/bench_fleet.py [--pods 200] [--runs 3] [--loop-runs 1]

Measured in one run on one sandbox (its kubelet off, so only our traffic): the fleet command as a
cold process (median of --runs), a loop of one cold `kubectl-grpcprobe POD` process per pod (what a
runbook does today; its total wall time, median of --loop-runs), the same fleet command with 20 ms
added to every forwarded chunk, and peak RSS. Goals (issue 7): >= 20x faster than the loop,
>= 100 probes/s, <= 3 s for 200 pods at 20 ms per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_probe import timed_process  # noqa: E402


def deployment(name: str, replicas: int, port: int) -> dict:
    from kubectl_grpcprobe.sandbox import PORTS_ANNOTATION

    labels = {"app": "fleet", "half": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"fleet-{name}"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {PORTS_ANNOTATION: f"5000=127.0.0.1:{port}"}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1", "readinessProbe": {"grpc": {"port": 5000}}}]},
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop-runs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "fleet.json")
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.path.insert(0, str(ROOT / "tests"))
    from grpc_health.v1 import health_pb2
    from helpers import health_server

    from kubectl_grpcprobe.sandbox import Sandbox

    plugin = [str(Path(sys.executable).parent / "kubectl-grpcprobe")]
    half = args.pods // 2
    with (
        health_server({"": health_pb2.HealthCheckResponse.SERVING}) as (good, _),
        health_server({"": health_pb2.HealthCheckResponse.NOT_SERVING}) as (bad, _),
        Sandbox(kubelet=False) as sandbox,
    ):
        sandbox.apply(deployment("a", half, good))
        sandbox.apply(deployment("b", args.pods - half, bad))
        pods = [p["metadata"]["name"] for p in sandbox.store.list("pods", "default")[0]]
        env = {**os.environ, "KUBECONFIG": sandbox.kubeconfig_path}
        fleet_cmd = [*plugin, "-l", "app=fleet", "-o", "json"]

        def fleet_run() -> tuple[float, float]:
            wall, rss, code = timed_process(fleet_cmd, env)
            assert code == 4, f"fleet run exited {code}"  # half NOT_SERVING
            return wall, rss

        fleet_run()  # warm
        fleet = [fleet_run() for _ in range(args.runs)]
        loops = []
        for _ in range(args.loop_runs):
            total = 0.0
            for name in pods:
                wall, _, code = timed_process([*plugin, name, "-q"], env)
                assert code in (0, 4)
                total += wall
            loops.append(total)
        sandbox.faults.chunk_latency = 0.02
        slow = [fleet_run() for _ in range(args.runs)]
        slow32 = []
        for _ in range(args.runs):
            wall, _, code = timed_process([*fleet_cmd, "--parallel", "32"], env)
            slow32.append(wall)

    fleet_wall = statistics.median(w for w, _ in fleet)
    results = {
        "pods": args.pods,
        "fleet_process_s_median": fleet_wall,
        "runbook_loop_s_median": statistics.median(loops),
        "speedup": statistics.median(loops) / fleet_wall,
        "probes_per_s": args.pods / fleet_wall,
        "fleet_20ms_chunk_latency_s_median": statistics.median(w for w, _ in slow),
        "fleet_20ms_chunk_latency_parallel32_s_median": statistics.median(slow32),
        "fleet_peak_rss_mib_max": max(r for _, r in fleet + slow),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'measure':<48}{'value':>10}   goal")
    print(f"{'fleet command, cold process (median)':<48}{fleet_wall:>9.2f}s")
    print(f"{'runbook loop, one cold process per pod':<48}{results['runbook_loop_s_median']:>9.2f}s")
    print(f"{'speed-up':<48}{results['speedup']:>9.1f}x   >= 20x")
    print(f"{'throughput (whole process)':<48}{results['probes_per_s']:>7.0f}/s   >= 100/s")
    print(f"{'fleet at 20 ms per chunk (--parallel 48)':<48}{results['fleet_20ms_chunk_latency_s_median']:>9.2f}s   <= 3s")
    print(f"{'fleet at 20 ms per chunk (--parallel 32)':<48}{results['fleet_20ms_chunk_latency_parallel32_s_median']:>9.2f}s")
    print(f"{'peak RSS of the fleet process (max)':<48}{results['fleet_peak_rss_mib_max']:>7.1f}MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
