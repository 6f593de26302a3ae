"""The commands an operator types: rotate-now, prune, rollback, status, doctor."""
