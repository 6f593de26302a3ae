"""One step, run the same on one server or many: the session and the executor."""
