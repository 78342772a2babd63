"""An agnhost-compatible `grpc-health-checking` server.

Behaves like `/agnhost grpc-health-checking` from the Kubernetes e2e images, which the docs and the
1.24 blog use: gRPC health on --port, HTTP control on --http-port (`/make-not-serving`,
`/make-serving`), --service, --delay-unhealthy-sec. The sandbox runs one per simulated container;
`python -m kubectl_grpcprobe.agnhost` runs one on its own.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ...kubelet import gostr


class AgnhostServer:
    """A running server; ports are bound once the constructor returns (port 0 picks a free one)."""

    def __init__(
        self,
        *,
        port: int = 5000,
        http_port: int = 8080,
        service: str = "",
        delay_unhealthy_sec: int = -1,
        host: str = "127.0.0.1",
        enable_watch: bool = False,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
    ) -> None:
        """enable_watch and TLS go beyond agnhost (whose Watch answers Unimplemented)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.service = service
        self.delay_unhealthy_sec = delay_unhealthy_sec
        self.started_ns = time.monotonic_ns()
        self._force_unhealthy = False
        self._changed = threading.Condition()
        self.enable_watch = enable_watch
        self.watchers_changed = threading.Event()  # set when a Watch stream starts (for tests)
        self.streamed = 0  # Watch messages sent, all streams
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.checks = 0
        self.user_agents: list[str] = []
        server_self = self

        class Health(health_pb2_grpc.HealthServicer):
            def Check(self, request, context):  # noqa: N802 - gRPC method name
                server_self.checks += 1
                for key, value in context.invocation_metadata():
                    if key == "user-agent":
                        server_self.user_agents.append(value)
                if request.service != server_self.service:
                    context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
                if server_self.serving():
                    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
                return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)

            def Watch(self, request, context):  # noqa: N802
                if not server_self.enable_watch:
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, "unimplemented")
                if request.service != server_self.service:
                    # As grpc-go's health server: the stream stays open reporting SERVICE_UNKNOWN.
                    yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    while context.is_active():
                        with server_self._changed:
                            server_self._changed.wait(0.25)
                    return
                last = None
                server_self.watchers_changed.set()
                while context.is_active():
                    current = server_self.serving()
                    if current != last:
                        last = current
                        status = health_pb2.HealthCheckResponse.SERVING if current else health_pb2.HealthCheckResponse.NOT_SERVING
                        yield health_pb2.HealthCheckResponse(status=status)
                        with server_self._changed:
                            server_self.streamed += 1
                            server_self._changed.notify_all()
                    with server_self._changed:
                        # Woken by a toggle; the timeout notices --delay-unhealthy-sec and a gone client.
                        server_self._changed.wait(0.25)

        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agnhost-grpc")
        self._grpc = grpc.server(self._executor)
        health_pb2_grpc.add_HealthServicer_to_server(Health(), self._grpc)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("--tls-cert-file and --tls-private-key-file go together")
        if tls_cert is not None and tls_key is not None:
            credentials = grpc.ssl_server_credentials([(tls_key, tls_cert)])
            self.port = self._grpc.add_secure_port(gostr.join_host_port(host, port), credentials)
        else:
            self.port = self._grpc.add_insecure_port(gostr.join_host_port(host, port))
        if not self.port:
            raise OSError(f"agnhost: cannot listen on {host}:{port}")
        self._http = ThreadingHTTPServer((host, http_port), _control_handler(self))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._grpc.start()
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, name="agnhost-http", kwargs={"poll_interval": 0.1}
        )
        self._http_thread.start()

    def respawn(self) -> AgnhostServer:
        """A new process of the same container: same flags, new ports, toggled state gone."""
        return AgnhostServer(
            port=0,
            http_port=0,
            service=self.service,
            delay_unhealthy_sec=self.delay_unhealthy_sec,
            enable_watch=self.enable_watch,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )

    @property
    def force_unhealthy(self) -> bool:
        return self._force_unhealthy

    @force_unhealthy.setter
    def force_unhealthy(self, value: bool) -> None:
        with self._changed:
            self._force_unhealthy = value
            self._changed.notify_all()

    def wait_streamed(self, count: int, timeout: float) -> bool:
        """Block until `count` Watch messages have been handed to gRPC (woken on each)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.streamed >= count, timeout)

    def serving(self) -> bool:
        if self._force_unhealthy:
            return False
        if self.delay_unhealthy_sec >= 0:
            return (time.monotonic_ns() - self.started_ns) < self.delay_unhealthy_sec * 10**9
        return True

    def uptime(self) -> str:
        return gostr.duration(time.monotonic_ns() - self.started_ns)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join()
        self._grpc.stop(grace=None).wait()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> AgnhostServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _control_handler(server: AgnhostServer) -> type[BaseHTTPRequestHandler]:
    class Control(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/make-not-serving":
                server.force_unhealthy = True
            elif path == "/make-serving":
                server.force_unhealthy = False
            else:
                self._reply(404, b"404 page not found\n")
                return
            self._reply(200, server.uptime().encode())

        def _reply(self, code: int, body: bytes) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Control


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="agnhost grpc-health-checking",
        description="gRPC health server with HTTP endpoints to toggle its status (agnhost-compatible).",
    )
    parser.add_argument("--port", type=int, default=5000, help="gRPC port (default 5000)")
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP control port (default 8080)")
    parser.add_argument("--service", default="", help="the service name that answers Check (default \"\")")
    parser.add_argument(
        "--delay-unhealthy-sec",
        type=int,
        default=-1,
        help="report NOT_SERVING once this many seconds have passed since start (default -1: never)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0, as agnhost)")
    parser.add_argument("--tls-cert-file", help="serve gRPC over TLS with this certificate (with --tls-private-key-file)")
    parser.add_argument("--tls-private-key-file", help="the key for --tls-cert-file")
    parser.add_argument(
        "--enable-watch",
        action="store_true",
        help="implement Health/Watch (beyond agnhost, whose Watch answers Unimplemented)",
    )
    args = parser.parse_args(argv)
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        parser.error("--tls-cert-file and --tls-private-key-file go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cert = open(args.tls_cert_file, "rb").read() if args.tls_cert_file else None
        key = open(args.tls_private_key_file, "rb").read() if args.tls_private_key_file else None
        server = AgnhostServer(
            port=args.port,
            http_port=args.http_port,
            service=args.service,
            delay_unhealthy_sec=args.delay_unhealthy_sec,
            host=args.host,
            enable_watch=args.enable_watch,
            tls_cert=cert,
            tls_key=key,
        )
    except (OSError, ValueError) as exc:
        print(f"agnhost: {exc}", file=sys.stderr)
        return 1
    print(f"gRPC health on {args.host}:{server.port}, control on {args.host}:{server.http_port}", file=sys.stderr)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
