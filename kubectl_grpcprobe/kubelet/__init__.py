"""What the kubelet does: the gRPC check, its probe worker, probes resolved from a pod, Go spellings.

Imports nothing from the rest of the package but errors: this is the semantics, not the transport.
"""
