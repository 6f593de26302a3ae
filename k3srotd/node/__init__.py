"""This node's side effects: K3s, commands, the API client, files in state-dir and staging, the lock."""
