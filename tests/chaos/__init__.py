"""Chaos tests: random faults on an emulated cluster, invariants checked by an outside observer (issue 15)."""
