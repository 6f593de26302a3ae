"""What k3srotd tells the world: logs, journald, sd_notify, hooks, metrics."""
