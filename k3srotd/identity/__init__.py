"""Workload identity: the public issuer, token probes, token evidence, and the gates built on them."""
