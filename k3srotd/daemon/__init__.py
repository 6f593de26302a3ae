"""`k3srotd run`: the daemon."""
