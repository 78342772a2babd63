"""The fake API server of the sandbox: HTTPS, discovery, storage, watch and port-forward. Imports nothing from node/."""
