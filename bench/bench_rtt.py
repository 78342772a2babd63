"""Round trips: the plugin and the runbook under real latency, in one process tree (`make bench-rtt`).

    python bench/bench_rtt.py [--runs 5] [--rtts 0,20,50,100] [--pods 200]

One sandbox (kubelet off): the blog's pod and a 200-pod fleet, half serving. In front of its API server a
LatencyRelay (in a process of its own) delays every chunk by RTT/2 each way. For each RTT, interleaved, medians of --runs:

- plugin:          `kubectl-grpcprobe test-grpc -q` (the console script; a cold process);
- plugin/kubectl:  `kubectl grpcprobe test-grpc -q` (kubectl's plugin dispatch);
- runbook:         `kubectl get pod test-grpc -o jsonpath=…` to read the probe's port, `kubectl port-forward
                   pod/test-grpc :PORT`, the real grpc_health_probe (make oracle) against the local port,
                   then SIGINT to the port-forward;
- fleet:           `kubectl-grpcprobe -l app=fleet -q` over the 200 pods.

Round trips = (T(RTT) - T(0)) / RTT. Goals (issue 16), at RTT 50 ms: a cold single probe <= 5 round trips
and <= 0.4x the runbook; the fleet <= 2 s. At RTT 0: the probe <= 1.5x a bare grpcio Check process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_fleet import deployment  # noqa: E402
from bench_probe import BARE_CHECK  # noqa: E402

RELAY = ROOT / "bench" / "latency_relay.py"


class RelayProcess:
    """The LatencyRelay in a process of its own: its copying must not take CPU (the GIL) from the sandbox's API
    server, which runs in this process; on a real network the latency costs no CPU on either end."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.proc = subprocess.Popen([sys.executable, str(RELAY), str(upstream_port), str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)

VERSION = "v1.37.2"
HEALTH_PROBE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubectl-grpcprobe" / "k8s" / VERSION / "bin" / "grpc_health_probe"


def timed(argv: list[str], env: dict[str, str], expect: int = 0) -> float:
    started = time.perf_counter()
    code = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode
    wall = time.perf_counter() - started
    assert code == expect, f"{argv} exited {code}"
    return wall


def runbook(kubectl: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    port = subprocess.run(
        [kubectl, "get", "pod", "test-grpc", "-o", "jsonpath={.spec.containers[0].readinessProbe.grpc.port}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    pf = subprocess.Popen(
        [kubectl, "port-forward", "pod/test-grpc", f":{port}", "--address", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    line = pf.stdout.readline()  # type: ignore[union-attr]  # "Forwarding from 127.0.0.1:NNNNN -> 5000"
    local = int(line.split("127.0.0.1:")[1].split(" ")[0])
    code = subprocess.run([str(HEALTH_PROBE), "-addr", f"127.0.0.1:{local}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode
    pf.send_signal(signal.SIGINT)
    pf.communicate(timeout=30)
    assert code == 0, "the runbook's grpc_health_probe failed"
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rtts", default="0,20,50,100", help="round-trip times in ms")
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "rtt.json")
    parser.add_argument("--fleet-parallel", type=int, help="the fleet's --parallel (default: the plugin's own)")
    args = parser.parse_args()
    fleet_args = ["--parallel", str(args.fleet_parallel)] if args.fleet_parallel else []
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if not HEALTH_PROBE.exists():
        print(f"grpc_health_probe is not built ({HEALTH_PROBE}): run `make oracle`", file=sys.stderr)
        return 2
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("kubectl is not on PATH", file=sys.stderr)
        return 2
    from grpc_health.v1 import health_pb2
    from helpers import health_server

    from kubectl_grpcprobe.sandbox import Sandbox

    plugin = str(Path(sys.executable).parent / "kubectl-grpcprobe")
    rtts = [int(x) for x in args.rtts.split(",")]
    results: dict[int, dict[str, float]] = {}
    half = args.pods // 2
    with (
        health_server({"": health_pb2.HealthCheckResponse.SERVING}) as (good, _),
        health_server({"": health_pb2.HealthCheckResponse.NOT_SERVING}) as (bad, _),
        Sandbox([ROOT / "examples" / "test-grpc.yaml"], kubelet=False) as sandbox,
    ):
        sandbox.apply(deployment("a", half, good))
        sandbox.apply(deployment("b", args.pods - half, bad))
        bare_env = {**os.environ}
        for rtt in rtts:
            with RelayProcess(sandbox.port, rtt / 2000) as relay:
                path = ROOT / "bench" / "out" / f"kubeconfig-rtt-{rtt}"
                path.parent.mkdir(parents=True, exist_ok=True)
                sandbox.write_kubeconfig(path, server=f"https://127.0.0.1:{relay.port}")  # 0600: it holds a token
                env = {
                    **os.environ,
                    "KUBECONFIG": str(path),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                }
                commands = {
                    "plugin": lambda env=env: timed([plugin, "test-grpc", "-q"], env),
                    "plugin via kubectl": lambda env=env: timed([kubectl, "grpcprobe", "test-grpc", "-q"], env),
                    "runbook": lambda env=env: runbook(kubectl, env),
                    "fleet": lambda env=env: timed([plugin, "-l", "app=fleet", "-q", *fleet_args], env, expect=4),
                }
                for run in commands.values():  # warm each once (page cache, kubectl's discovery cache)
                    run()
                samples: dict[str, list[float]] = {name: [] for name in commands}
                for _ in range(args.runs):
                    for name, run in commands.items():
                        samples[name].append(run())
                results[rtt] = {name: statistics.median(values) for name, values in samples.items()}
                path.unlink()
            print(f"RTT {rtt:>3} ms: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results[rtt].items()), flush=True)
        # The bare grpcio Check process, for the RTT 0 goal (no API server involved).
        target = f"127.0.0.1:{sandbox.server_for('test-grpc', 'agnhost').port}"
        timed([sys.executable, "-c", BARE_CHECK, target], bare_env)
        bare = statistics.median(timed([sys.executable, "-c", BARE_CHECK, target], bare_env) for _ in range(args.runs))
    base = results[rtts[0]]
    print()
    print(f"{'command':<22}" + "".join(f"{'RTT ' + str(r) + ' ms':>14}" for r in rtts) + "   round trips (T(RTT)-T(0))/RTT")
    table = {}
    for name in base:
        trips = [(results[r][name] - base[name]) / (r / 1000) for r in rtts if r]
        table[name] = {"ms": {r: round(results[r][name] * 1000, 1) for r in rtts}, "roundTrips": {r: round(t, 2) for r, t in zip([r for r in rtts if r], trips, strict=True)}}
        print(f"{name:<22}" + "".join(f"{results[r][name] * 1000:>12.0f}ms" for r in rtts) + "   " + ", ".join(f"{t:.1f}" for t in trips))
    for r in rtts:
        print(f"RTT {r:>3} ms: plugin / runbook = {results[r]['plugin'] / results[r]['runbook']:.2f}x")
    if bare:
        print(f"RTT 0: plugin / bare grpcio Check process = {base['plugin'] / bare:.2f}x (bare {bare * 1000:.0f} ms)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rtts": rtts, "results": table, "bareCheckMs": bare and bare * 1000}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
