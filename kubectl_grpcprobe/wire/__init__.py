"""Bytes on sockets: non-blocking TLS I/O, RFC 6455 WebSocket framing, a local TLS terminator.

Knows nothing of Kubernetes or the kubelet.
"""
