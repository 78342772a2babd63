"""`kubectl grpcprobe sandbox up`: run the sandbox API server in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading

from ..errors import UsageError
from ..render.output import Environment


def run(args: argparse.Namespace, env: Environment) -> int:
    try:
        from ..sandbox import Sandbox
    except ImportError as exc:
        raise UsageError(
            f"error: the sandbox needs the 'sandbox' extra ({exc.name} is missing): pip install 'kubectl-grpcprobe[sandbox]'"
        ) from None
    sandbox = Sandbox(
        args.manifests,
        kubeconfig_path=args.kubeconfig_out,
        kubelet=not args.no_kubelet,
        kubelet_time_scale=1 / args.kubelet_speed,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        import yaml

        from ..sandbox import ApiError, Invalid

        try:
            sandbox.start()
        except (OSError, ValueError, KeyError, yaml.YAMLError, Invalid) as exc:
            raise UsageError(f"error: cannot start the sandbox: {exc}") from None
        except ApiError as exc:
            raise UsageError(f"error: cannot start the sandbox: {exc.message}") from None
        # The path alone on stdout, so a script can read the first line; the rest is for people.
        env.stdout.write(sandbox.kubeconfig_path + "\n")
        env.stdout.flush()
        env.stderr.write(
            f"sandbox API server on {sandbox.server_url} (Kubernetes v{sandbox.version})\n"
            f"  export KUBECONFIG={sandbox.kubeconfig_path}\n"
            "  Ctrl-C to stop\n"
        )
        env.stderr.flush()
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        sandbox.stop()
        signal.signal(signal.SIGTERM, previous)
