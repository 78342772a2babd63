"""The sandbox's node: containers as local servers (agnhost), and a kubelet that probes them."""
