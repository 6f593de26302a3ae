"""Multi-server coordination through the Kubernetes API: leases, the driver, the followers."""
