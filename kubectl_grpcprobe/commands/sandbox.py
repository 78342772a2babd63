"""`kubectl grpcprobe sandbox up [--real]`: run a sandbox cluster in the foreground until Ctrl-C or SIGTERM.

The default is the embedded fake API server (fast, no build needed); --real runs the real control plane
from the official Go modules with two sandbox nodes (sandbox/real.py).
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from ..errors import UsageError
from ..render.output import Environment


def _make(args: argparse.Namespace) -> Any:
    try:
        if args.real:
            from ..sandbox.controlplane import ComponentsMissing
            from ..sandbox.real import RealSandbox

            if args.no_kubelet:
                raise UsageError("error: --no-kubelet applies to the fake API server only; the real one needs its nodes")
            try:
                return RealSandbox(args.manifests, kubeconfig_path=args.kubeconfig_out, kubelet_time_scale=1 / args.kubelet_speed)
            except ComponentsMissing as exc:
                raise UsageError(f"error: the real control plane is not built: {exc}") from None
        from ..sandbox import Sandbox
    except ImportError as exc:
        raise UsageError(
            f"error: the sandbox needs the 'sandbox' extra ({exc.name} is missing): pip install 'kubectl-grpcprobe[sandbox]'"
        ) from None
    return Sandbox(
        args.manifests,
        kubeconfig_path=args.kubeconfig_out,
        kubelet=not args.no_kubelet,
        kubelet_time_scale=1 / args.kubelet_speed,
    )


def run(args: argparse.Namespace, env: Environment) -> int:
    sandbox = _make(args)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        import yaml

        from ..sandbox import ApiError, Invalid
        from ..sandbox.real import ApiStatus

        try:
            sandbox.start()
        except (OSError, ValueError, KeyError, RuntimeError, yaml.YAMLError, Invalid, ApiStatus) as exc:
            raise UsageError(f"error: cannot start the sandbox: {exc}") from None
        except ApiError as exc:
            raise UsageError(f"error: cannot start the sandbox: {exc.message}") from None
        # The path alone on stdout, so a script can read the first line; the rest is for people.
        env.stdout.write(sandbox.kubeconfig_path + "\n")
        env.stdout.flush()
        what = "real control plane, 2 nodes" if args.real else "sandbox API server"
        env.stderr.write(
            f"{what} on {sandbox.server_url} (Kubernetes v{sandbox.version})\n"
            f"  export KUBECONFIG={sandbox.kubeconfig_path}\n"
            "  Ctrl-C to stop\n"
        )
        env.stderr.flush()
        try:
            while not stop.wait(0.5):
                if args.real:
                    sandbox.check_alive()
        except KeyboardInterrupt:
            pass
        except RuntimeError as exc:
            raise UsageError(f"error: the real sandbox stopped: {exc}") from None
        return 0
    finally:
        sandbox.stop()
        signal.signal(signal.SIGTERM, previous)
