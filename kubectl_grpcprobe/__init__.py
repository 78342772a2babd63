"""kubectl grpcprobe: run a pod's gRPC probe exactly as the kubelet does."""

__version__ = "0.1.0"
