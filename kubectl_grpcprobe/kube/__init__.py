"""Talking to the API server: kubectl's connection settings, the API client, the port-forward."""
